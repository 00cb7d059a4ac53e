//! `nimbus bench atoms`: the atom kernel's evaluations per second on 1 thread and on all
//! threads, beside a reference program (`dcs_cpu.c`) built and run on the same n and m in the
//! same run.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use nimbus_workloads::atoms::generate;
use nimbus_workloads::atoms::kernel::{slab_minimum_on, KernelPath, Minimum};

/// Evaluations per second of nimbus's kernel on `path` with `threads` threads (z-planes shared
/// out one at a time), and the minimum it found.
pub fn kernel_rate(path: KernelPath, n: u32, m: u32, threads: usize) -> (f64, Option<Minimum>) {
    let atoms = generate(m, n, 1);
    let next = AtomicU32::new(0);
    let best: Mutex<Option<Minimum>> = Mutex::new(None);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let z = next.fetch_add(1, Ordering::Relaxed);
                if z >= n {
                    break;
                }
                if let Some(found) = slab_minimum_on(path, &atoms, n, z, z + 1, |_| {}) {
                    let mut b = best
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    *b = Some(b.map_or(found, |b| b.min(found, n)));
                }
            });
        }
    });
    let evals = f64::from(n).powi(3) * f64::from(m);
    (
        evals / started.elapsed().as_secs_f64(),
        best.into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// Builds the C reference with `gcc -O3 -march=native -ffast-math -fopenmp` into `dir`.
pub fn build_reference(source: &Path, dir: &Path) -> Result<std::path::PathBuf, String> {
    let flags = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-lm"];
    compile(
        "gcc",
        &flags,
        "install it: apt-get install gcc",
        source,
        &dir.join("dcs_reference"),
    )
}

/// Builds the CUDA reference with `nvcc -O3 -arch=sm_90 -use_fast_math` into `dir`.
pub fn build_gpu_reference(source: &Path, dir: &Path) -> Result<std::path::PathBuf, String> {
    let flags = ["-O3", "-arch=sm_90", "-use_fast_math"];
    let exe = dir.join("dcs_gpu_reference");
    compile("nvcc", &flags, "the CUDA toolkit", source, &exe)
}

/// `compiler flags.. source -o exe`; errors name the compiler (with `hint` when it cannot run)
/// and carry its messages.
fn compile(
    compiler: &str,
    flags: &[&str],
    hint: &str,
    source: &Path,
    exe: &Path,
) -> Result<std::path::PathBuf, String> {
    let out = Command::new(compiler)
        .arg(source)
        .arg("-o")
        .arg(exe)
        .args(flags)
        .output()
        .map_err(|e| format!("cannot run {compiler} ({hint}): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{compiler} failed on {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(exe.to_path_buf())
}

/// Runs the reference with `threads` OpenMP threads; its `evals/s=` figure.
pub fn reference_rate(exe: &Path, n: u32, m: u32, threads: usize) -> Result<f64, String> {
    let out = Command::new(exe)
        .args([n.to_string(), m.to_string()])
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("evals/s="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("the reference printed no evals/s: {text}"))
}
