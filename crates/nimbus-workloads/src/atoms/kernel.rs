//! The atom-effect kernel: the effect at grid point p is the sum over atoms a of e_a / |p - a|.
//!
//! The grid is the n x n x n cube of integer points; a point's linear index is
//! `(z * n + y) * n + x`, and ties for the minimum go to the lowest linear index.
//! Distance rule: an atom closer than [`MIN_DISTANCE`] to a grid point (an atom on a grid
//! point included) counts as [`MIN_DISTANCE`] away, so the effect stays finite.
//! Arithmetic: f32 over blocks of [`CHUNK`] atoms, summed into f64 per point. Measured against
//! a straightforward f64 computation on 17 inputs (1 to 5,000 random atoms, grids 1 to 70;
//! energies scaled by 1e-30 and 1e6, of one sign, partly zero, 30 orders of magnitude apart),
//! the relative error of the minimum was at most 3.9e-7 (portable), 5.1e-7 (AVX2: reciprocal
//! square root estimate plus a Newton step) and 4.5e-7 (AVX-512), always at the same grid
//! point; the tests hold every path to 1e-5 (`NIMBUS_PRINT_ERRORS=1` prints each error).

/// The smallest distance counted between an atom and a grid point.
pub const MIN_DISTANCE: f32 = 1e-3;
const MIN_R2: f32 = MIN_DISTANCE * MIN_DISTANCE;
/// Grid points computed together along x.
const LANES: usize = 8;
/// The most rows any path computes at once.
#[cfg(target_arch = "x86_64")]
const MAX_ROWS: usize = super::simd::ROWS;
#[cfg(not(target_arch = "x86_64"))]
const MAX_ROWS: usize = 1;
/// Atoms summed in f32 before the partial sum joins the f64 total.
pub const CHUNK: usize = 256;

/// Atoms as structure of arrays (coordinates in grid units, and energies).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Atoms {
    /// x coordinates.
    pub x: Vec<f32>,
    /// y coordinates.
    pub y: Vec<f32>,
    /// z coordinates.
    pub z: Vec<f32>,
    /// Energies.
    pub e: Vec<f32>,
}

impl Atoms {
    /// How many atoms.
    pub fn len(&self) -> usize {
        self.e.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.e.is_empty()
    }

    /// Adds an atom.
    pub fn push(&mut self, x: f32, y: f32, z: f32, e: f32) {
        self.x.push(x);
        self.y.push(y);
        self.z.push(z);
        self.e.push(e);
    }

    /// 16 bytes per atom, little-endian f32 x, y, z, e.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * 16);
        for i in 0..self.len() {
            for v in [self.x[i], self.y[i], self.z[i], self.e[i]] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Reads [`Atoms::to_bytes`]; `None` if the length is not a multiple of 16.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(16) {
            return None;
        }
        let mut atoms = Self::default();
        for a in bytes.chunks_exact(16) {
            let f = |i: usize| f32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            atoms.push(f(0), f(4), f(8), f(12));
        }
        Some(atoms)
    }
}

/// A minimum effect and where it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minimum {
    /// The effect.
    pub value: f64,
    /// The grid point `[x, y, z]`.
    pub point: [u32; 3],
}

impl Minimum {
    /// The point's linear index in an `n`-grid.
    pub fn linear(&self, n: u32) -> u64 {
        let [x, y, z] = self.point.map(u64::from);
        (z * u64::from(n) + y) * u64::from(n) + x
    }

    /// The smaller of two, ties to the lower linear index.
    pub fn min(self, other: Self, n: u32) -> Self {
        if other.value < self.value
            || (other.value == self.value && other.linear(n) < self.linear(n))
        {
            other
        } else {
            self
        }
    }
}

/// Which code computes rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Plain Rust that compiles everywhere (the compiler vectorizes it for the build target).
    Portable,
    /// x86-64 SIMD chosen at run time.
    #[cfg(target_arch = "x86_64")]
    Simd(super::simd::Isa),
}

impl KernelPath {
    /// Every path this CPU runs, fastest first.
    pub fn all() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut paths = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        paths.splice(0..0, super::simd::available().into_iter().map(Self::Simd));
        paths
    }

    /// The fastest path this CPU runs (looked up once).
    pub fn best() -> Self {
        static BEST: std::sync::OnceLock<KernelPath> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Self::all()[0])
    }

    /// Its name, as jobs record it (`cpu-avx512`, `cpu-avx2`, `cpu-portable`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "cpu-portable",
            #[cfg(target_arch = "x86_64")]
            Self::Simd(super::simd::Isa::Avx512) => "cpu-avx512",
            #[cfg(target_arch = "x86_64")]
            Self::Simd(super::simd::Isa::Avx2Fma) => "cpu-avx2",
        }
    }
}

/// The effects of one grid row (fixed y and z, x = 0..n) into `out`, on a chosen path. It
/// prepares the atoms for that one row: for many rows use [`slab_minimum`] or [`plane`].
pub fn row_on(path: KernelPath, atoms: &Atoms, n: u32, y: u32, z: u32, out: &mut [f64]) {
    Rows::new(path, atoms, n).compute(y, z, &mut [out]);
}

/// Computes rows with one path over one atom set, prepared once.
enum Rows<'a> {
    Portable(&'a Atoms, u32),
    #[cfg(target_arch = "x86_64")]
    Simd(super::simd::Isa, Box<super::simd::Prepared>, u32),
}

impl<'a> Rows<'a> {
    fn new(path: KernelPath, atoms: &'a Atoms, n: u32) -> Self {
        match path {
            KernelPath::Portable => Self::Portable(atoms, n),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Simd(isa) => {
                Self::Simd(isa, Box::new(super::simd::Prepared::new(atoms, n)), n)
            }
        }
    }

    /// Rows y, y + 1, .. of plane z into `outs` (as many as the path computes at once, at
    /// least one); returns how many.
    fn compute(&self, y: u32, z: u32, outs: &mut [&mut [f64]]) -> usize {
        match (self, outs) {
            #[cfg(target_arch = "x86_64")]
            (Self::Simd(isa, prepared, n), outs) => {
                super::simd::rows(*isa, prepared, *n as usize, y, z, outs)
            }
            (Self::Portable(atoms, n), [out, ..]) => {
                row_portable(atoms, *n, y, z, out);
                1
            }
            (Self::Portable(..), []) => 0,
        }
    }
}

fn row_portable(atoms: &Atoms, n: u32, y: u32, z: u32, out: &mut [f64]) {
    let n = n as usize;
    let (py, pz) = (y as f32, z as f32);
    for xb in (0..n).step_by(LANES) {
        let mut px = [0f32; LANES];
        for (l, p) in px.iter_mut().enumerate() {
            *p = (xb + l) as f32;
        }
        let mut total = [0f64; LANES];
        for start in (0..atoms.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(atoms.len());
            let mut acc = [0f32; LANES];
            for i in start..end {
                let (dy, dz) = (py - atoms.y[i], pz - atoms.z[i]);
                let dyz = dy * dy + dz * dz;
                let (ax, e) = (atoms.x[i], atoms.e[i]);
                for l in 0..LANES {
                    let dx = px[l] - ax;
                    let r2 = (dx * dx + dyz).max(MIN_R2);
                    acc[l] += e / r2.sqrt();
                }
            }
            for l in 0..LANES {
                total[l] += f64::from(acc[l]);
            }
        }
        let lanes = LANES.min(n - xb);
        out[xb..xb + lanes].copy_from_slice(&total[..lanes]);
    }
}

/// The minimum over z-planes `z0..z1`, calling `on_row(points)` after each block of rows
/// with the points it computed (progress).
pub fn slab_minimum(
    atoms: &Atoms,
    n: u32,
    z0: u32,
    z1: u32,
    on_row: impl FnMut(u64),
) -> Option<Minimum> {
    slab_minimum_on(KernelPath::best(), atoms, n, z0, z1, on_row)
}

/// [`slab_minimum`] on a chosen path.
pub fn slab_minimum_on(
    path: KernelPath,
    atoms: &Atoms,
    n: u32,
    z0: u32,
    z1: u32,
    mut on_row: impl FnMut(u64),
) -> Option<Minimum> {
    let width = n as usize;
    let rows = Rows::new(path, atoms, n);
    let mut values = vec![0f64; width * MAX_ROWS];
    let mut best: Option<Minimum> = None;
    for z in z0..z1.min(n) {
        let mut y = 0;
        while y < n {
            let left = ((n - y) as usize).min(MAX_ROWS);
            let mut outs: Vec<&mut [f64]> = values.chunks_mut(width).take(left).collect();
            let done = rows.compute(y, z, &mut outs);
            for (r, row) in values.chunks(width).take(done).enumerate() {
                let (x, value) = first_smallest(row);
                let candidate = Minimum {
                    value,
                    point: [x as u32, y + r as u32, z],
                };
                best = Some(best.map_or(candidate, |b| b.min(candidate, n)));
            }
            on_row(done as u64 * u64::from(n));
            y += done as u32;
        }
    }
    best
}

/// The smallest value of a non-empty row and its first index.
fn first_smallest(row: &[f64]) -> (usize, f64) {
    row.iter()
        .enumerate()
        .skip(1)
        .fold((0, row[0]), |(bx, bv), (x, &v)| {
            if v < bv || bv.is_nan() {
                (x, v)
            } else {
                (bx, bv)
            }
        })
}

/// The effects of the whole z-plane `z`, row by row (`n * n` values, index `y * n + x`).
pub fn plane(atoms: &Atoms, n: u32, z: u32) -> Vec<f64> {
    let rows = Rows::new(KernelPath::best(), atoms, n);
    let mut values = vec![0f64; (n * n) as usize];
    let mut outs: Vec<&mut [f64]> = values.chunks_mut(n as usize).collect();
    let mut y = 0;
    while y < outs.len() {
        let end = (y + MAX_ROWS).min(outs.len());
        y += rows.compute(y as u32, z, &mut outs[y..end]);
    }
    values
}

/// The straightforward f64 computation, point by point: the reference the tests compare with.
pub fn reference_minimum(atoms: &Atoms, n: u32) -> Minimum {
    let mut best = Minimum {
        value: f64::INFINITY,
        point: [0; 3],
    };
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let mut sum = 0f64;
                for i in 0..atoms.len() {
                    let d = [
                        x as f64 - f64::from(atoms.x[i]),
                        y as f64 - f64::from(atoms.y[i]),
                        z as f64 - f64::from(atoms.z[i]),
                    ];
                    let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
                        .sqrt()
                        .max(f64::from(MIN_DISTANCE));
                    sum += f64::from(atoms.e[i]) / r;
                }
                best = best.min(
                    Minimum {
                        value: sum,
                        point: [x, y, z],
                    },
                    n,
                );
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_atoms(count: u32, n: u32, seed: u64) -> Atoms {
        crate::atoms::generate(count, n, seed)
    }

    /// Every path this machine has agrees with the f64 reference: the relative error of the
    /// minimum stays under 1e-5 and the point is the same.
    fn check(atoms: &Atoms, n: u32) {
        let reference = reference_minimum(atoms, n);
        for path in KernelPath::all() {
            let fast = slab_minimum_on(path, atoms, n, 0, n, |_| {}).unwrap();
            let rel = (fast.value - reference.value).abs() / reference.value.abs().max(1e-300);
            if std::env::var_os("NIMBUS_PRINT_ERRORS").is_some() {
                eprintln!("{} n={n} atoms={} rel={rel:.2e}", path.name(), atoms.len());
            }
            assert!(
                rel < 1e-5,
                "{path:?} n={n} atoms={}: {fast:?} vs {reference:?} (rel {rel:e})",
                atoms.len()
            );
            assert_eq!(
                fast.point,
                reference.point,
                "{path:?} n={n} atoms={}",
                atoms.len()
            );
        }
    }

    #[test]
    fn agrees_with_the_f64_reference_on_random_inputs() {
        // Sizes around the vector widths (8, 16) and blocks (32, 64), odd rows for the two-row
        // pass, one atom, many atoms.
        let cases = [
            (1, 1, 1),
            (1, 5, 2),
            (7, 3, 3),
            (300, 9, 4),
            (1000, 13, 5),
            (600, 17, 6),
            (200, 33, 7),
            (2000, 20, 8),
            (50, 47, 9),
            (5000, 8, 10),
            (120, 70, 11),
        ];
        for (count, n, seed) in cases {
            check(&random_atoms(count, n, seed), n);
        }
    }

    #[test]
    fn energies_of_any_scale_and_sign_agree_with_the_reference() {
        let base = random_atoms(400, 19, 12);
        let with_energies = |f: &dyn Fn(usize, f32) -> f32| {
            let mut atoms = base.clone();
            for (i, e) in atoms.e.iter_mut().enumerate() {
                *e = f(i, *e);
            }
            atoms
        };
        check(&with_energies(&|_, e| e * 1e-30), 19);
        check(&with_energies(&|_, e| e * 1e6), 19);
        check(&with_energies(&|_, e| -e.abs()), 19);
        check(&with_energies(&|_, e| e.abs()), 19);
        // Zero energies add nothing; energies 30 orders of magnitude apart keep the large ones.
        check(&with_energies(&|i, e| if i % 3 == 0 { 0.0 } else { e }), 19);
        check(
            &with_energies(&|i, e| if i % 2 == 0 { e * 1e-25 } else { e * 1e5 }),
            19,
        );
        let mut none = base.clone();
        none.e.iter_mut().for_each(|e| *e = 0.0);
        let m = slab_minimum(&none, 5, 0, 5, |_| {}).unwrap();
        assert_eq!((m.value, m.point), (0.0, [0, 0, 0]));
    }

    /// An atom 2^50 times weaker than the strongest, seen from 30,000 grid units away: its
    /// scaled squared distance would overflow f32, so it is left out at this grid size, and
    /// the row stays finite and right.
    #[test]
    fn far_points_and_tiny_energies_stay_finite() {
        let mut atoms = Atoms::default();
        atoms.push(0.0, 0.0, 0.0, 1.0);
        atoms.push(1.0, 1.0, 1.0, 1e-15);
        let n = 20_000u32;
        let (y, z) = (n - 1, n - 1);
        let expected = |x: usize| -> f64 {
            (0..atoms.len())
                .map(|i| {
                    let d = [
                        x as f64 - f64::from(atoms.x[i]),
                        f64::from(y) - f64::from(atoms.y[i]),
                        f64::from(z) - f64::from(atoms.z[i]),
                    ];
                    f64::from(atoms.e[i]) / (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
                })
                .sum()
        };
        for path in KernelPath::all() {
            let mut out = vec![0f64; n as usize];
            row_on(path, &atoms, n, y, z, &mut out);
            for x in [0, 1, 4_999, 19_999] {
                let rel = (out[x] - expected(x)).abs() / expected(x);
                assert!(rel < 1e-5, "{path:?} x={x}: {} vs {}", out[x], expected(x));
            }
        }
    }

    #[test]
    fn every_path_this_cpu_has_is_tested() {
        let paths = KernelPath::all();
        assert_eq!(paths.last(), Some(&KernelPath::Portable));
        assert_eq!(paths[0], KernelPath::best());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            assert!(paths.len() >= 2, "the SIMD path is among {paths:?}");
        }
    }

    #[test]
    fn an_atom_on_a_grid_point_counts_at_the_minimum_distance() {
        let mut atoms = Atoms::default();
        atoms.push(2.0, 1.0, 0.0, -0.5);
        let m = slab_minimum(&atoms, 4, 0, 4, |_| {}).unwrap();
        assert_eq!(m.point, [2, 1, 0]);
        assert!(
            (m.value - (-0.5 / f64::from(MIN_DISTANCE))).abs() < 1e-3,
            "{m:?}"
        );
        check(&atoms, 4);
    }

    #[test]
    fn ties_go_to_the_lowest_linear_index() {
        let mut atoms = Atoms::default();
        atoms.push(1.5, 0.0, 0.0, -1.0); // equidistant from x=1 and x=2
        let m = slab_minimum(&atoms, 4, 0, 4, |_| {}).unwrap();
        assert_eq!(m.point, [1, 0, 0]);
    }

    #[test]
    fn slabs_cover_the_grid_and_report_every_row() {
        let atoms = random_atoms(50, 6, 9);
        let mut rows = 0;
        let parts: Vec<_> = [(0, 2), (2, 5), (5, 6)]
            .iter()
            .map(|&(a, b)| slab_minimum(&atoms, 6, a, b, |p| rows += p).unwrap())
            .collect();
        assert_eq!(rows, 6 * 6 * 6, "progress counts every grid point");
        let whole = parts.into_iter().reduce(|a, b| a.min(b, 6)).unwrap();
        assert_eq!(whole.point, reference_minimum(&atoms, 6).point);
        assert_eq!(Atoms::from_bytes(&atoms.to_bytes()), Some(atoms));
        assert_eq!(Atoms::from_bytes(&[0; 17]), None);
    }
}
