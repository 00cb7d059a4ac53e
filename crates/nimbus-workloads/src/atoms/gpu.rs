//! The atom kernel on NVIDIA GPUs (cargo feature `cuda`): the CUDA source in `dcs.cu` is compiled
//! by NVRTC at run time and CUDA is loaded dynamically, so building needs no CUDA toolkit and a
//! machine without a GPU falls back to the CPU kernel, saying why.
//!
//! Chunking: atoms go to constant memory [`CONST_ATOMS`] at a time (one launch each); a slab's
//! planes are split across the GPUs, and each GPU's share into passes whose f64 grid fits its
//! memory budget (and the launch grid's z limit). The minimum is found on the host over each
//! pass's values, with the CPU kernel's tie rule (lowest linear index). A GPU runs one pass at a
//! time (its constant memory holds one chunk of atoms), whatever the number of slabs in flight.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use super::kernel::{Atoms, Minimum, MIN_DISTANCE};

/// Atoms per launch: the `__constant__` array's length in `dcs.cu` (64 KiB of constant memory
/// holds 4,096 float4).
pub const CONST_ATOMS: usize = 4000;
/// Points per thread along x, as `UNROLL` in `dcs.cu`.
pub const UNROLL: u32 = 8;
/// Threads per block in x and y.
pub const BLOCK: u32 = 16;
/// The largest z extent of a launch grid.
pub const MAX_GRID_Z: u32 = 65_535;
/// Device memory one pass may use for its grid of f64 values.
pub const PASS_BYTES: u64 = 1 << 30;

const SOURCE: &str = include_str!("dcs.cu");

/// Why the GPU is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Contiguous, near-equal shares of planes `z0..z1` for `devices` GPUs (none empty).
pub fn split_planes(z0: u32, z1: u32, devices: usize) -> Vec<Range<u32>> {
    let total = z1.saturating_sub(z0);
    let shares = u32::try_from(devices.max(1))
        .unwrap_or(u32::MAX)
        .min(total.max(1));
    let (base, extra) = (total / shares, total % shares);
    let mut start = z0;
    (0..shares)
        .map(|i| {
            let len = base + u32::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .filter(|r| !r.is_empty())
        .collect()
}

/// Planes per pass on a grid of side `n`: as many as `budget` bytes of f64 hold, at least one,
/// at most the launch grid's z limit.
pub fn planes_per_pass(n: u32, budget: u64) -> u32 {
    let plane_bytes = u64::from(n) * u64::from(n) * 8;
    let fit = budget / plane_bytes.max(1);
    u32::try_from(fit.clamp(1, u64::from(MAX_GRID_Z))).unwrap_or(MAX_GRID_Z)
}

/// The atom ranges of one launch each.
pub fn atom_chunks(m: usize) -> Vec<Range<usize>> {
    (0..m)
        .step_by(CONST_ATOMS)
        .map(|s| s..(s + CONST_ATOMS).min(m))
        .collect()
}

/// The launch shape for `planes` planes of side `n`: every point of every row of every plane
/// belongs to exactly one thread.
pub fn launch_config(n: u32, planes: u32) -> LaunchConfig {
    let threads_x = n.div_ceil(UNROLL);
    LaunchConfig {
        grid_dim: (threads_x.div_ceil(BLOCK), n.div_ceil(BLOCK), planes),
        block_dim: (BLOCK, BLOCK, 1),
        shared_mem_bytes: 0,
    }
}

/// The minimum of a pass's values (`planes` planes from `z0`, index `(plane * n + y) * n + x`).
pub fn pass_minimum(values: &[f64], n: u32, z0: u32) -> Option<Minimum> {
    let (i, &value) =
        values
            .iter()
            .enumerate()
            .fold(None, |best: Option<(usize, &f64)>, (i, v)| match best {
                Some((_, b)) if b <= v => best,
                _ => Some((i, v)),
            })?;
    let (n, i) = (n as usize, i);
    let point = [i % n, (i / n) % n, i / n / n].map(|c| u32::try_from(c).unwrap_or(u32::MAX));
    Some(Minimum {
        value,
        point: [point[0], point[1], point[2] + z0],
    })
}

/// One GPU with the kernel loaded.
struct Device {
    /// Held for a whole pass: concurrent slabs must not swap atoms in constant memory.
    busy: std::sync::Mutex<()>,
    name: String,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    slab: CudaFunction,
}

/// Every GPU of the machine, ready to run the kernel.
pub struct Gpus {
    devices: Vec<Device>,
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Unavailable {
    Unavailable(format!("{what}: {e}"))
}

/// Compiles `dcs.cu` to PTX with NVRTC; `Unavailable` if NVRTC cannot be loaded.
pub fn compile() -> Result<Ptx, Unavailable> {
    // SAFETY: only tries to open the shared library; no symbol is called.
    #[allow(unsafe_code)]
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present {
        return Err(Unavailable("NVRTC (libnvrtc.so) is not installed".into()));
    }
    let options = CompileOptions {
        options: vec!["--use_fast_math".into()],
        ..CompileOptions::default()
    };
    std::panic::catch_unwind(|| compile_ptx_with_opts(SOURCE, options))
        .map_err(|_| Unavailable("NVRTC panicked while compiling the kernel".into()))?
        .map_err(|e| unavailable("NVRTC could not compile the kernel", e))
}

impl Gpus {
    /// Every GPU, with the kernel compiled and loaded; `Unavailable` says why not.
    pub fn detect() -> Result<Self, Unavailable> {
        // SAFETY: only tries to open the shared library; no symbol is called.
        #[allow(unsafe_code)]
        let driver = unsafe { cudarc::driver::sys::is_culib_present() };
        if !driver {
            return Err(Unavailable(
                "no CUDA driver (libcuda.so) on this machine".into(),
            ));
        }
        let count = std::panic::catch_unwind(CudaContext::device_count)
            .map_err(|_| Unavailable("the CUDA driver panicked when asked for devices".into()))?
            .map_err(|e| unavailable("no CUDA device", e))?;
        if count < 1 {
            return Err(Unavailable("the CUDA driver sees no device".into()));
        }
        let ptx = compile()?;
        let devices = (0..usize::try_from(count).unwrap_or(0))
            .map(|ordinal| Device::load(ordinal, ptx.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { devices })
    }

    /// What the job records as its backend, e.g. `cuda: 1 x NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> String {
        let first = self.devices.first().map_or("", |d| d.name.as_str());
        format!("cuda: {} x {first}", self.devices.len())
    }

    /// The minimum over planes `z0..z1`, the GPUs sharing the planes; `on_points` gets the
    /// points of each finished pass.
    pub fn slab_minimum(
        &self,
        atoms: &Atoms,
        n: u32,
        z0: u32,
        z1: u32,
        on_points: impl Fn(u64) + Sync,
    ) -> Result<Option<Minimum>, Unavailable> {
        let packed = pack(atoms);
        let shares = split_planes(z0, z1.min(n), self.devices.len());
        let results: Vec<Result<Option<Minimum>, Unavailable>> = std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .into_iter()
                .zip(&self.devices)
                .map(|(share, device)| {
                    let (packed, on_points) = (&packed, &on_points);
                    scope.spawn(move || device.share_minimum(packed, n, share, on_points))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Unavailable("a GPU thread panicked".into())))
                })
                .collect()
        });
        let mut best: Option<Minimum> = None;
        for m in results {
            if let Some(m) = m? {
                best = Some(best.map_or(m, |b| b.min(m, n)));
            }
        }
        Ok(best)
    }
}

/// Atoms as the kernel's float4 (x, y, z, e).
fn pack(atoms: &Atoms) -> Vec<f32> {
    (0..atoms.len())
        .flat_map(|i| [atoms.x[i], atoms.y[i], atoms.z[i], atoms.e[i]])
        .collect()
}

impl Device {
    fn load(ordinal: usize, ptx: Ptx) -> Result<Self, Unavailable> {
        let context =
            CudaContext::new(ordinal).map_err(|e| unavailable("cannot open the GPU", e))?;
        let name = context
            .name()
            .map_err(|e| unavailable("cannot name the GPU", e))?;
        let module = context
            .load_module(ptx)
            .map_err(|e| unavailable("cannot load the kernel", e))?;
        let slab = module
            .load_function("dcs_slab")
            .map_err(|e| unavailable("the kernel has no dcs_slab", e))?;
        Ok(Self {
            busy: std::sync::Mutex::new(()),
            name,
            stream: context.default_stream(),
            module,
            slab,
        })
    }

    fn share_minimum(
        &self,
        packed: &[f32],
        n: u32,
        share: Range<u32>,
        on_points: &(impl Fn(u64) + Sync),
    ) -> Result<Option<Minimum>, Unavailable> {
        let per_pass = planes_per_pass(n, PASS_BYTES);
        let mut best: Option<Minimum> = None;
        let mut z = share.start;
        while z < share.end {
            let planes = per_pass.min(share.end - z);
            let values = self
                .pass(packed, n, z, planes)
                .map_err(|e| unavailable("the GPU failed", e))?;
            if let Some(m) = pass_minimum(&values, n, z) {
                best = Some(best.map_or(m, |b| b.min(m, n)));
            }
            on_points(u64::from(planes) * u64::from(n) * u64::from(n));
            z += planes;
        }
        Ok(best)
    }

    /// The values of `planes` planes from `z0`: one launch per chunk of atoms.
    fn pass(
        &self,
        packed: &[f32],
        n: u32,
        z0: u32,
        planes: u32,
    ) -> Result<Vec<f64>, cudarc::driver::DriverError> {
        let _busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let points = n as usize * n as usize * planes as usize;
        let mut grid = self.stream.alloc_zeros::<f64>(points)?;
        let config = launch_config(n, planes);
        let (n_arg, z0_arg) = (n as i32, z0 as i32);
        let min_r2 = MIN_DISTANCE * MIN_DISTANCE;
        for chunk in atom_chunks(packed.len() / 4) {
            let count = chunk.len() as i32;
            let mut symbol = self.module.get_global("atoms", &self.stream)?;
            // SAFETY: `atoms` is `float4[CONST_ATOMS]` (4 * CONST_ATOMS f32) and a chunk holds at
            // most CONST_ATOMS atoms; the view is checked against the symbol's size.
            #[allow(unsafe_code)]
            let mut target = unsafe { symbol.transmute_mut::<f32>(4 * chunk.len()) }.ok_or(
                cudarc::driver::DriverError(
                    cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_VALUE,
                ),
            )?;
            self.stream
                .memcpy_htod(&packed[4 * chunk.start..4 * chunk.end], &mut target)?;
            let mut launch = self.stream.launch_builder(&self.slab);
            launch
                .arg(&mut grid)
                .arg(&n_arg)
                .arg(&z0_arg)
                .arg(&count)
                .arg(&min_r2);
            // SAFETY: the arguments match `dcs_slab(double*, int, int, int, float)`; the grid
            // holds `planes` planes of n * n values and the launch shape stays inside them.
            #[allow(unsafe_code)]
            unsafe {
                launch.launch(config)?;
            }
        }
        let values = self.stream.clone_dtoh(&grid)?;
        self.stream.synchronize()?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_are_shared_contiguously_and_evenly() {
        assert_eq!(split_planes(0, 10, 3), [0..4, 4..7, 7..10]);
        assert_eq!(
            split_planes(5, 7, 8),
            [5..6, 6..7],
            "never more shares than planes"
        );
        assert_eq!(split_planes(3, 3, 2), Vec::<Range<u32>>::new());
        let shares = split_planes(0, 1000, 7);
        assert_eq!(shares.first().unwrap().start, 0);
        assert_eq!(shares.last().unwrap().end, 1000);
        assert!(shares.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn passes_fit_the_budget_and_the_launch_limit() {
        assert_eq!(planes_per_pass(256, PASS_BYTES), 2048);
        assert_eq!(planes_per_pass(4096, 1 << 20), 1, "at least one plane");
        assert_eq!(planes_per_pass(1, u64::MAX), MAX_GRID_Z);
        let n = 1000;
        let p = planes_per_pass(n, PASS_BYTES);
        assert!(u64::from(p) * u64::from(n) * u64::from(n) * 8 <= PASS_BYTES);
    }

    #[test]
    fn atoms_go_to_constant_memory_in_chunks() {
        assert_eq!(atom_chunks(0), Vec::<Range<usize>>::new());
        assert_eq!(atom_chunks(4000), vec![0..4000_usize]);
        assert_eq!(
            atom_chunks(16_001),
            [0..4000, 4000..8000, 8000..12000, 12000..16000, 16000..16001]
        );
    }

    #[test]
    fn the_launch_covers_every_point_once() {
        for n in [1, 7, 8, 9, 127, 128, 129, 256, 1000] {
            let c = launch_config(n, 3);
            let xs = c.grid_dim.0 * c.block_dim.0 * UNROLL;
            let ys = c.grid_dim.1 * c.block_dim.1;
            assert!(
                xs >= n && xs < n + BLOCK * UNROLL,
                "n={n}: x covered by {xs}"
            );
            assert!(ys >= n && ys < n + BLOCK, "n={n}: y covered by {ys}");
            assert_eq!(c.grid_dim.2, 3);
        }
    }

    #[test]
    fn the_pass_minimum_takes_the_lowest_index_of_ties_and_offsets_z() {
        let n = 2;
        let values = [3.0, -1.0, 5.0, 0.0, -1.0, 2.0, 2.0, 2.0];
        let m = pass_minimum(&values, n, 10).unwrap();
        assert_eq!((m.value, m.point), (-1.0, [1, 0, 10]));
        assert_eq!(pass_minimum(&[], n, 0), None);
    }

    /// Where NVRTC is installed (a GPU machine, or `pip install nvidia-cuda-nvrtc-cu12` with its
    /// lib folder on LD_LIBRARY_PATH), the kernel source compiles to PTX with its entry point.
    #[test]
    fn the_kernel_compiles_with_nvrtc_or_says_it_is_missing() {
        let required = std::env::var_os("NIMBUS_REQUIRE_GPU").is_some();
        match compile() {
            Err(why) if required => panic!("NIMBUS_REQUIRE_GPU is set: {why}"),
            Ok(ptx) => assert!(
                ptx.to_src().contains("dcs_slab"),
                "no entry point in the PTX"
            ),
            Err(why) => assert!(why.0.contains("NVRTC"), "{why}"),
        }
    }

    /// On a machine with a GPU, the GPU agrees with the CPU kernel on random inputs; on one
    /// without, detection says why and the CPU serves. `NIMBUS_REQUIRE_GPU=1` (the device
    /// check, scripts/gpu_check.sh) makes a missing GPU a failure.
    #[test]
    fn the_gpu_matches_the_cpu_or_says_why_it_is_not_used() {
        match Gpus::detect() {
            Err(why) => {
                assert!(
                    std::env::var_os("NIMBUS_REQUIRE_GPU").is_none(),
                    "NIMBUS_REQUIRE_GPU is set and no GPU is used: {why}"
                );
                assert!(!why.0.is_empty());
                assert!(!super::super::backend_name().starts_with("cuda"));
            }
            Ok(gpus) => {
                for (m, n, seed) in [(1, 9, 1), (300, 17, 2), (5000, 40, 3), (9001, 33, 4)] {
                    let atoms = super::super::generate(m, n, seed);
                    let cpu = super::super::kernel::slab_minimum(&atoms, n, 0, n, |_| {}).unwrap();
                    let gpu = gpus.slab_minimum(&atoms, n, 0, n, |_| {}).unwrap().unwrap();
                    let rel = ((gpu.value - cpu.value) / cpu.value).abs();
                    assert!(rel < 1e-5, "m={m} n={n}: gpu {gpu:?} cpu {cpu:?}");
                    assert_eq!(gpu.point, cpu.point, "m={m} n={n}");
                }
            }
        }
    }
}
