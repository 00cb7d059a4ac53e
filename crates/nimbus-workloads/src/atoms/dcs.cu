// The atom kernel on NVIDIA GPUs, compiled at run time by NVRTC (see gpu.rs).
// Atoms sit in constant memory, CHUNK at a time (every thread reads the same atom at once, which
// constant memory broadcasts); each thread owns UNROLL consecutive points of one row, so one
// atom's dy and dz serve UNROLL points. Sums run in f32 over blocks of BLOCK_ATOMS atoms, each
// added to an f64 total, as the CPU kernel does (kernel.rs, CHUNK = 256).
#define CHUNK 4000
#define UNROLL 8
#define BLOCK_ATOMS 256

__constant__ float4 atoms[CHUNK];

extern "C" __global__ void dcs_slab(double* grid, int n, int z0, int na, float min_r2) {
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int x0 = (blockIdx.x * blockDim.x + threadIdx.x) * UNROLL;
    int plane = blockIdx.z;
    if (y >= n || x0 >= n) return;
    float z = (float)(z0 + plane);
    double total[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) total[u] = 0.0;
    for (int a0 = 0; a0 < na; a0 += BLOCK_ATOMS) {
        int a1 = min(a0 + BLOCK_ATOMS, na);
        float acc[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) acc[u] = 0.0f;
        for (int a = a0; a < a1; a++) {
            float4 at = atoms[a];
            float dy = (float)y - at.y, dz = z - at.z;
            float d2 = dy * dy + dz * dz;
            float dx = (float)x0 - at.x;
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                // An atom closer than MIN_DISTANCE counts as MIN_DISTANCE away.
                acc[u] += at.w * rsqrtf(fmaxf(dx * dx + d2, min_r2));
                dx += 1.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) total[u] += (double)acc[u];
    }
    double* row = grid + ((size_t)plane * n + y) * n;
#pragma unroll
    for (int u = 0; u < UNROLL; u++)
        if (x0 + u < n) row[x0 + u] += total[u];
}
