//! The atom-effect calculator (seed 000) as a pipeline: the web tier creates a job and sends it
//! to `atoms-generate`; the generator makes the atoms (seeded, reproducible) or takes an
//! uploaded set, stores them in blobs and sends one message per slab of z-planes to
//! `atoms-solve`; solvers compute slabs, publish progress in grid points, record partial minima
//! in the ledger; whichever solver finds every slab recorded reduces, renders the picture and
//! publishes the result.

#[cfg(feature = "cuda")]
pub mod gpu;
mod heatmap;
pub mod kernel;
mod pipeline;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use heatmap::render as render_heatmap;
pub use kernel::{Atoms, Minimum};
pub use pipeline::{start_job, AtomsResult, GenerateHandler, SolveHandler, GENERATE, SOLVE};

use serde::{Deserialize, Serialize};

/// The job kind.
pub const KIND: &str = "atoms";

/// What a user asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtomsParams {
    /// The grid is `grid_size`^3 integer points.
    pub grid_size: u32,
    /// Atoms to generate (or the count of the uploaded set).
    #[serde(default)]
    pub atom_count: Option<u32>,
    /// Seed of the generator (default: derived from the job id).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Blob key of an uploaded atom set, instead of generated atoms.
    #[serde(default)]
    pub atoms_key: Option<String>,
}

/// Bounds on what one job may ask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest grid size.
    pub max_grid: u32,
    /// Most atoms.
    pub max_atoms: u32,
    /// Most atom evaluations (grid points x atoms).
    pub max_work: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_grid: 512,
            max_atoms: 1_000_000,
            max_work: 2e11,
        }
    }
}

impl Limits {
    /// Checks a grid size and an atom count; the error names the allowed range.
    pub fn check(&self, grid: u32, atoms: u32) -> Result<(), String> {
        if grid == 0 || grid > self.max_grid {
            return Err(format!(
                "grid_size {grid} is outside the allowed range 1 to {}",
                self.max_grid
            ));
        }
        if atoms == 0 || atoms > self.max_atoms {
            return Err(format!(
                "atom_count {atoms} is outside the allowed range 1 to {}",
                self.max_atoms
            ));
        }
        let work = f64::from(grid).powi(3) * f64::from(atoms);
        if work > self.max_work {
            return Err(format!(
                "grid_size^3 x atom_count = {work:.3e} atom evaluations is over the limit of {:.1e}; use a smaller grid or fewer atoms",
                self.max_work
            ));
        }
        Ok(())
    }
}

/// Generates `count` atoms inside an `n`-grid: coordinates uniform in [0, n-1], energies
/// uniform in [-1, 1), from `seed`.
pub fn generate(count: u32, n: u32, seed: u64) -> Atoms {
    let mut rng = fastrand::Rng::with_seed(seed);
    let span = n.saturating_sub(1) as f32;
    let mut atoms = Atoms::default();
    for _ in 0..count {
        atoms.push(
            rng.f32() * span,
            rng.f32() * span,
            rng.f32() * span,
            rng.f32() * 2.0 - 1.0,
        );
    }
    atoms
}

/// The largest |energy| of an uploaded atom: sums of a million of them stay far from f32's range.
pub const MAX_ENERGY: f32 = 1e6;

/// Parses an uploaded atom set: one atom a line, `x y z e` (spaces, tabs or commas), `#`
/// comments and blank lines ignored; coordinates must lie inside an `n`-grid when `n` is given.
/// The error names the line.
pub fn parse_atoms(text: &str, max_atoms: u32) -> Result<Atoms, String> {
    let mut atoms = Atoms::default();
    for (no, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|f| !f.is_empty())
            .collect();
        if fields.len() != 4 {
            return Err(format!(
                "line {}: expected 4 numbers `x y z e`, found {}",
                no + 1,
                fields.len()
            ));
        }
        let mut v = [0f32; 4];
        for (slot, f) in v.iter_mut().zip(&fields) {
            *slot = f
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("line {}: `{f}` is not a finite number", no + 1))?;
        }
        if v[3].abs() > MAX_ENERGY {
            return Err(format!(
                "line {}: energy {} is outside -{MAX_ENERGY:e} to {MAX_ENERGY:e}",
                no + 1,
                v[3]
            ));
        }
        if atoms.len() as u64 >= u64::from(max_atoms) {
            return Err(format!(
                "more than {max_atoms} atoms; the limit is {max_atoms}"
            ));
        }
        atoms.push(v[0], v[1], v[2], v[3]);
    }
    if atoms.is_empty() {
        return Err("the atom file has no atoms".into());
    }
    Ok(atoms)
}

/// Checks that every atom lies inside the `n`-grid.
pub fn check_inside(atoms: &Atoms, n: u32) -> Result<(), String> {
    let hi = n.saturating_sub(1) as f32;
    for i in 0..atoms.len() {
        let (x, y, z) = (atoms.x[i], atoms.y[i], atoms.z[i]);
        // Written so that NaN counts as outside.
        if [x, y, z].iter().any(|c| !(*c >= 0.0 && *c <= hi)) {
            return Err(format!(
                "atom {} at ({x}, {y}, {z}) lies outside the grid [0, {hi}]^3",
                i + 1
            ));
        }
    }
    Ok(())
}

/// Splits the grid's z-planes into slabs, at most 32 (enough to spread over many solvers).
pub fn slabs(n: u32) -> Vec<(u32, u32)> {
    let per = n.div_ceil(32).max(1);
    (0..n)
        .step_by(per as usize)
        .map(|z0| (z0, (z0 + per).min(n)))
        .collect()
}

/// The GPUs this process runs slabs on, found once; `None` (and a log line saying why) without.
#[cfg(feature = "cuda")]
fn gpus() -> Option<&'static gpu::Gpus> {
    static GPUS: std::sync::OnceLock<Option<gpu::Gpus>> = std::sync::OnceLock::new();
    GPUS.get_or_init(|| match gpu::Gpus::detect() {
        Ok(gpus) => {
            tracing::info!(backend = %gpus.name(), "the atom kernel runs on the GPU");
            Some(gpus)
        }
        Err(why) => {
            tracing::info!(reason = %why, "the atom kernel runs on the CPU");
            None
        }
    })
    .as_ref()
}

/// The kernel this process runs slabs on, as jobs record it (`cuda: 1 x <GPU>`, `cpu-avx512`, ..).
pub fn backend_name() -> String {
    #[cfg(feature = "cuda")]
    if let Some(gpus) = gpus() {
        return gpus.name();
    }
    kernel::KernelPath::best().name().to_string()
}

/// The minimum over planes `z0..z1` on this process's backend (the GPU where there is one and
/// the `cuda` feature is on, else the CPU), calling `on_points` with the points finished.
pub fn solve_slab(
    atoms: &Atoms,
    n: u32,
    z0: u32,
    z1: u32,
    on_points: impl FnMut(u64) + Send,
) -> Option<Minimum> {
    #[cfg(feature = "cuda")]
    if let Some(gpus) = gpus() {
        let on_points = std::sync::Mutex::new(on_points);
        let report = |points| {
            if let Ok(mut f) = on_points.lock() {
                f(points);
            }
        };
        match gpus.slab_minimum(atoms, n, z0, z1, report) {
            Ok(m) => return m,
            Err(e) => {
                tracing::warn!(error = %e, "the GPU failed on a slab; the CPU computes it");
                let on_points = on_points
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                return kernel::slab_minimum(atoms, n, z0, z1, on_points);
            }
        }
    }
    kernel::slab_minimum(atoms, n, z0, z1, on_points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_allowed_range() {
        let l = Limits::default();
        assert!(l.check(16, 1000).is_ok());
        assert!(l.check(0, 10).unwrap_err().contains("1 to 512"));
        assert!(l.check(513, 10).unwrap_err().contains("1 to 512"));
        assert!(l.check(4, 0).unwrap_err().contains("atom_count 0"));
        assert!(l
            .check(512, 1_000_000)
            .unwrap_err()
            .contains("over the limit"));
    }

    #[test]
    fn generation_is_reproducible_and_inside_the_grid() {
        let a = generate(100, 8, 42);
        assert_eq!(a, generate(100, 8, 42));
        assert_ne!(a, generate(100, 8, 43));
        assert!(check_inside(&a, 8).is_ok());
    }

    #[test]
    fn uploads_are_parsed_and_bad_lines_named() {
        let atoms = parse_atoms("# x y z e\n1 2 3 -0.5\n\n0.5,0.5,0.5,1\n", 10).unwrap();
        assert_eq!(atoms.len(), 2);
        assert!(parse_atoms("1 2 3\n", 10).unwrap_err().contains("line 1"));
        assert!(parse_atoms("1 2 x 4\n", 10).unwrap_err().contains("`x`"));
        assert!(parse_atoms("1 2 NaN 4\n", 10)
            .unwrap_err()
            .contains("`NaN`"));
        assert!(parse_atoms("", 10).unwrap_err().contains("no atoms"));
        assert!(parse_atoms("0 0 0 1\n0 0 0 1\n", 1)
            .unwrap_err()
            .contains("limit"));
        assert!(
            parse_atoms("0 0 0 -3e38\n", 10)
                .unwrap_err()
                .contains("energy"),
            "sums must stay finite"
        );
        assert!(check_inside(&atoms, 2).unwrap_err().contains("atom 1"));
    }

    #[test]
    fn slabs_cover_every_plane_once() {
        for n in [1, 5, 32, 33, 100, 512] {
            let s = slabs(n);
            assert!(s.len() <= 32);
            assert_eq!(s.first().map(|s| s.0), Some(0));
            assert_eq!(s.last().map(|s| s.1), Some(n));
            assert!(s.windows(2).all(|w| w[0].1 == w[1].0));
        }
    }
}
