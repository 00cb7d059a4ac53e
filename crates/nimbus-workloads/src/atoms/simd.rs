//! x86-64 SIMD rows of the atom kernel (AVX-512F, or AVX2 with FMA), chosen at run time.
//!
//! Each atom's energy is folded into its distance: with e' = e / s (s a power of two, the
//! largest |e| rounded up) and r'² = r² / e'², the term is e / r = sign(e) s rsqrt(r'²). So
//! one x difference scaled by 1/|e'| serves a block of rows, and per grid point and atom the
//! work is r'² (one fused multiply-add), the hardware reciprocal-square-root estimate y0
//! (`vrsqrt14ps`: 14 bits, `vrsqrtps`: 12 bits) and one Newton step folded into the sum,
//! acc += y0 (3 - r'² y0²) (three operations, about 22 bits, close to f32's 24), or taken
//! from the sum for a negative energy; the factor s/2 is applied once per chunk of atoms.
//! Atoms are grouped by sign so that a positive and a negative one can go side by side. The
//! estimate's instruction is the costly one (three micro-operations for 16 lanes on the Intel
//! cores measured), so everything around it is kept to the minimum: a block of rows shares each
//! atom's x difference, the accumulators stay in registers, and the distance clamp runs only
//! where an atom lies within [`MIN_DISTANCE`] of one of the block's row lines.
//!
//! This is the only module with `unsafe`: the intrinsics, called only after the CPU has been
//! seen to support them.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::kernel::{Atoms, CHUNK, MIN_DISTANCE};

const MIN_R2: f32 = MIN_DISTANCE * MIN_DISTANCE;
/// Rows computed together (fewer at the end of a plane): 8 keeps the accumulators and the
/// shared x difference in registers with both instruction sets; measured faster than 4 with
/// both, and than 2, 4 or 8 vectors of x a block.
pub const ROWS: usize = 8;
/// Atoms whose |e| is below the largest |e| times this are left out: at one point each adds
/// less than 2^-50 (r_max / MIN_DISTANCE) of the largest atom's term there, about 2^-30 at
/// n = 512, below f32's resolution of that term.
const NEGLIGIBLE: f64 = 1.0 / (1u64 << 50) as f64;
/// r'² = r² / e'² must stay below f32's largest value (2^128) for r up to √3 n.
const LARGEST_SCALED_R2: f64 = (1u128 << 126) as f64;

/// Which instruction set a row runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 16 lanes.
    Avx512,
    /// 8 lanes with fused multiply-add.
    Avx2Fma,
}

/// Every instruction set this CPU has, best first (tests run each of them).
pub fn available() -> Vec<Isa> {
    let mut isas = Vec::new();
    if is_x86_feature_detected!("avx512f") {
        isas.push(Isa::Avx512);
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        isas.push(Isa::Avx2Fma);
    }
    isas
}

/// The atoms of one energy sign, scaled as the module describes.
#[derive(Debug, Default)]
struct SignGroup {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    /// 1 / |e'|.
    inv: Vec<f32>,
    /// 1 / e'².
    inv2: Vec<f32>,
    /// MIN_DISTANCE² / e'²: the clamp in scaled units.
    floor: Vec<f32>,
}

impl SignGroup {
    /// Atoms `range` with their scaled distances from a block of R rows (`d`, atom-major).
    fn atoms<'a, const R: usize>(
        &'a self,
        d: &'a [f32],
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (f32, f32, f32, &'a [f32; R])> + 'a {
        let dyz = &d.as_chunks::<R>().0[range.clone()];
        let (x, inv, floor) = (
            &self.x[range.clone()],
            &self.inv[range.clone()],
            &self.floor[range],
        );
        x.iter()
            .zip(inv)
            .zip(floor)
            .zip(dyz)
            .map(|(((&x, &inv), &floor), dyz)| (x, inv, floor, dyz))
    }
}

/// Atoms prepared for the SIMD rows (once per slab).
#[derive(Debug)]
pub struct Prepared {
    /// Positive energies, then negative.
    groups: [SignGroup; 2],
    /// s/2: what the sums are multiplied by.
    half_scale: f64,
}

impl Prepared {
    /// Groups and scales `atoms` for an `n`-grid; atoms with zero (or negligible) energy add
    /// nothing and are left out. The atoms must be finite (the parser and generator see to it).
    pub fn new(atoms: &Atoms, n: u32) -> Self {
        let farthest2 = 3.0 * f64::from(n).powi(2);
        let smallest = NEGLIGIBLE.max((farthest2 / LARGEST_SCALED_R2).sqrt());
        let largest = atoms.e.iter().fold(0f32, |m, e| m.max(e.abs()));
        let scale = if largest > 0.0 {
            f64::from(largest).log2().ceil().exp2()
        } else {
            1.0
        };
        let mut groups = [SignGroup::default(), SignGroup::default()];
        for i in 0..atoms.len() {
            let e = f64::from(atoms.e[i]) / scale;
            if e.abs() < smallest || e.is_nan() {
                continue;
            }
            let group = &mut groups[usize::from(e < 0.0)];
            let inv = (1.0 / e.abs()) as f32;
            let inv2 = f64::from(inv) * f64::from(inv);
            group.x.push(atoms.x[i]);
            group.y.push(atoms.y[i]);
            group.z.push(atoms.z[i]);
            group.inv.push(inv);
            group.inv2.push(inv2 as f32);
            group.floor.push((f64::from(MIN_R2) * inv2) as f32);
        }
        Self {
            groups,
            half_scale: 0.5 * scale,
        }
    }
}

/// The rows `y, y + 1, ..` of plane `z` into `outs` (one slice of `n` values a row) with
/// `isa`, which the caller got from [`available`]. Computes as many rows as the instruction
/// set's block holds (at most `outs.len()`, at least one if any) and returns how many.
pub fn rows(
    isa: Isa,
    prepared: &Prepared,
    n: usize,
    y: u32,
    z: u32,
    outs: &mut [&mut [f64]],
) -> usize {
    match isa {
        // SAFETY: `available` saw the CPU support AVX-512F.
        Isa::Avx512 => unsafe { rows_avx512(prepared, n, y, z, outs) },
        // SAFETY: `available` saw the CPU support AVX2 and FMA.
        Isa::Avx2Fma => unsafe { rows_avx2(prepared, n, y, z, outs) },
    }
}

macro_rules! simd_rows {
    ($name:ident, $set:ident, $distances:ident, $block:ident, $add:ident, $flush:ident, $features:literal, $lanes:expr, $vec:ty,
     $set1:ident, $zero:ident, $loadu:ident, $storeu:ident, $sub:ident, $mul:ident,
     $fmadd:ident, $fnmadd:ident, $max:ident, $rsqrt:ident) => {
        #[target_feature(enable = $features)]
        fn $name(prepared: &Prepared, n: usize, y: u32, z: u32, outs: &mut [&mut [f64]]) -> usize {
            match outs.len() {
                0 => 0,
                left if left >= ROWS => $set::<ROWS>(prepared, n, y, z, outs),
                left if left >= 2 => $set::<2>(prepared, n, y, z, outs),
                _ => $set::<1>(prepared, n, y, z, outs),
            }
        }

        /// `R` rows: each group's scaled y-z distances (atom-major, R per atom), then the
        /// x vectors one by one.
        #[target_feature(enable = $features)]
        fn $set<const R: usize>(
            prepared: &Prepared,
            n: usize,
            y: u32,
            z: u32,
            outs: &mut [&mut [f64]],
        ) -> usize {
            const L: usize = $lanes;
            let py: [f32; R] = std::array::from_fn(|r| (y as usize + r) as f32);
            let mut near = false;
            let scaled: Vec<Vec<f32>> = prepared
                .groups
                .iter()
                .map(|g| {
                    let mut d = vec![0f32; g.x.len() * R];
                    near |= $distances::<R>(g, py, z as f32, &mut d);
                    d
                })
                .collect();
            let mut iota = [0f32; L];
            for (l, v) in iota.iter_mut().enumerate() {
                *v = l as f32;
            }
            // SAFETY: `iota` holds L floats.
            let iota = unsafe { $loadu(iota.as_ptr()) };
            for xb in (0..n).step_by(L) {
                let px = $fmadd($set1(1.0), iota, $set1(xb as f32));
                let totals = if near {
                    $block::<R, true>(prepared, &scaled, px)
                } else {
                    $block::<R, false>(prepared, &scaled, px)
                };
                let width = L.min(n - xb);
                for (out, total) in outs.iter_mut().zip(&totals) {
                    out[xb..xb + width].copy_from_slice(&total[..width]);
                }
            }
            R
        }

        /// Each atom's squared y-z distance from each of the rows at `py` (plane `pz`), times
        /// 1/e'², into `d` (atom-major); whether an atom lies within MIN_DISTANCE of a row's
        /// line. Written so the compiler vectorizes it over the rows.
        #[target_feature(enable = $features)]
        #[inline]
        fn $distances<const R: usize>(g: &SignGroup, py: [f32; R], pz: f32, d: &mut [f32]) -> bool {
            let mut closest = [f32::INFINITY; R];
            let atoms = g.y.iter().zip(&g.z).zip(&g.inv2);
            for (per_atom, ((&ay, &az), &inv2)) in d.as_chunks_mut::<R>().0.iter_mut().zip(atoms) {
                let dz = pz - az;
                for r in 0..R {
                    let dy = py[r] - ay;
                    let raw = dy * dy + dz * dz;
                    closest[r] = closest[r].min(raw);
                    per_atom[r] = raw * inv2;
                }
            }
            closest.iter().any(|&c| c < MIN_R2)
        }

        /// One vector of x (`px`) on `R` rows over every atom. A positive and a negative atom
        /// go into the f32 sums side by side, so the sums cancel as they grow, as the data's
        /// do; the rest of the larger group follows. Every CHUNK atoms the sums join the f64
        /// totals.
        #[target_feature(enable = $features)]
        #[inline]
        fn $block<const R: usize, const CLAMP: bool>(
            prepared: &Prepared,
            scaled: &[Vec<f32>],
            px: $vec,
        ) -> [[f64; $lanes]; R] {
            let ([pos, neg], [dpos, dneg]) = (&prepared.groups, scaled) else {
                unreachable!("two sign groups");
            };
            let mut totals = [[0f64; $lanes]; R];
            let pairs = pos.x.len().min(neg.x.len());
            for start in (0..pairs).step_by(CHUNK / 2) {
                let range = start..(start + CHUNK / 2).min(pairs);
                let mut acc = [$zero(); R];
                let both = pos
                    .atoms::<R>(dpos, range.clone())
                    .zip(neg.atoms::<R>(dneg, range));
                for (p, n) in both {
                    $add::<R, CLAMP, false>(&mut acc, px, p);
                    $add::<R, CLAMP, true>(&mut acc, px, n);
                }
                $flush::<R>(acc, prepared.half_scale, &mut totals);
            }
            let (rest, d, negative) = if pos.x.len() > pairs {
                (pos, dpos, false)
            } else {
                (neg, dneg, true)
            };
            for start in (pairs..rest.x.len()).step_by(CHUNK) {
                let range = start..(start + CHUNK).min(rest.x.len());
                let mut acc = [$zero(); R];
                for atom in rest.atoms::<R>(d, range) {
                    if negative {
                        $add::<R, CLAMP, true>(&mut acc, px, atom);
                    } else {
                        $add::<R, CLAMP, false>(&mut acc, px, atom);
                    }
                }
                $flush::<R>(acc, prepared.half_scale, &mut totals);
            }
            totals
        }

        /// One atom's term on `R` rows, added to (or, `NEG`, taken from) `acc`.
        #[target_feature(enable = $features)]
        #[inline]
        fn $add<const R: usize, const CLAMP: bool, const NEG: bool>(
            acc: &mut [$vec; R],
            px: $vec,
            (x, inv, floor, dyz): (f32, f32, f32, &[f32; R]),
        ) {
            let dx = $mul($sub(px, $set1(x)), $set1(inv));
            for r in 0..R {
                let mut r2 = $fmadd(dx, dx, $set1(dyz[r]));
                if CLAMP {
                    r2 = $max(r2, $set1(floor));
                }
                let y0 = $rsqrt(r2);
                let refine = $fnmadd($mul(r2, y0), y0, $set1(3.0));
                acc[r] = if NEG {
                    $fnmadd(y0, refine, acc[r])
                } else {
                    $fmadd(y0, refine, acc[r])
                };
            }
        }

        /// Adds f32 sums times `weight` to the f64 totals.
        #[target_feature(enable = $features)]
        #[inline]
        fn $flush<const R: usize>(acc: [$vec; R], weight: f64, totals: &mut [[f64; $lanes]; R]) {
            let mut lanes = [0f32; $lanes];
            for (total, sum) in totals.iter_mut().zip(acc) {
                // SAFETY: `lanes` has room for all the vector's floats.
                unsafe { $storeu(lanes.as_mut_ptr(), sum) };
                for (t, v) in total.iter_mut().zip(lanes) {
                    *t += weight * f64::from(v);
                }
            }
        }
    };
}

simd_rows!(
    rows_avx2,
    set_avx2,
    distances_avx2,
    block_avx2,
    add_avx2,
    flush_avx2,
    "avx2,fma",
    8,
    __m256,
    _mm256_set1_ps,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_sub_ps,
    _mm256_mul_ps,
    _mm256_fmadd_ps,
    _mm256_fnmadd_ps,
    _mm256_max_ps,
    _mm256_rsqrt_ps
);
simd_rows!(
    rows_avx512,
    set_avx512,
    distances_avx512,
    block_avx512,
    add_avx512,
    flush_avx512,
    "avx512f",
    16,
    __m512,
    _mm512_set1_ps,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_sub_ps,
    _mm512_mul_ps,
    _mm512_fmadd_ps,
    _mm512_fnmadd_ps,
    _mm512_max_ps,
    _mm512_rsqrt14_ps
);
