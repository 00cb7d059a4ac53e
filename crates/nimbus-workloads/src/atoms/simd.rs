//! x86-64 SIMD rows of the atom kernel (AVX-512F, or AVX2 with FMA), chosen at run time.
//!
//! The reciprocal square root is the hardware estimate (`vrsqrt14ps`: 14 bits, `vrsqrtps`: 12
//! bits) refined by one Newton step, y1 = y0 (1.5 - 0.5 r² y0²), to about 22 bits, close to f32's
//! 24; it replaces a square root and a division (each several cycles per vector) by a handful of
//! one-cycle operations. Several vectors of x are computed per atom (register blocking), so each
//! atom's broadcast values are loaded once per block, and the accumulators stay in registers.
//! This is the only module with `unsafe`: the intrinsics, called only after the CPU has been
//! seen to support them.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::kernel::{Atoms, CHUNK, MIN_DISTANCE};

const MIN_R2: f32 = MIN_DISTANCE * MIN_DISTANCE;

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

/// `R` rows (1 or 2) of one z-plane with `isa`, which the caller got from [`available`];
/// `dyz[r][i]` is atom i's squared distance in y and z from row r. Two rows at once share each
/// x difference between them.
pub fn rows<const R: usize>(
    isa: Isa,
    atoms: &Atoms,
    dyz: [&[f32]; R],
    n: usize,
    out: [&mut [f64]; R],
) {
    match isa {
        // SAFETY: `available` saw the CPU support AVX-512F.
        Isa::Avx512 => unsafe { rows_avx512::<R>(atoms, dyz, n, out) },
        // SAFETY: `available` saw the CPU support AVX2 and FMA.
        Isa::Avx2Fma => unsafe { rows_avx2::<R>(atoms, dyz, n, out) },
    }
}

macro_rules! simd_rows {
    ($name:ident, $block:ident, $features:literal, $lanes:expr, $vec:ty, $set1:ident, $zero:ident, $loadu:ident,
     $storeu:ident, $sub:ident, $mul:ident, $fmadd:ident, $fnmadd:ident, $max:ident, $rsqrt:ident) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(
            atoms: &Atoms,
            dyz: [&[f32]; R],
            n: usize,
            mut out: [&mut [f64]; R],
        ) {
            let mut xb = 0;
            while xb < n {
                // Up to 8 vectors (4 for two rows) per block, fewer at the row's end.
                let left = n - xb;
                let width = if left > 4 * $lanes {
                    $block::<8, R>(atoms, &dyz, xb, left, &mut out)
                } else if left > 2 * $lanes {
                    $block::<4, R>(atoms, &dyz, xb, left, &mut out)
                } else if left > $lanes {
                    $block::<2, R>(atoms, &dyz, xb, left, &mut out)
                } else {
                    $block::<1, R>(atoms, &dyz, xb, left, &mut out)
                };
                xb += width;
            }
        }

        /// `B` vectors of x from `xb` on `R` rows: every atom, accumulators in registers.
        /// Returns the points written per row.
        #[target_feature(enable = $features)]
        #[inline]
        fn $block<const B: usize, const R: usize>(
            atoms: &Atoms,
            dyz: &[&[f32]; R],
            xb: usize,
            left: usize,
            out: &mut [&mut [f64]; R],
        ) -> usize {
            const L: usize = $lanes;
            let mut px: [$vec; B] = [$zero(); B];
            for (k, p) in px.iter_mut().enumerate() {
                let mut xs = [0f32; L];
                for (l, v) in xs.iter_mut().enumerate() {
                    *v = (xb + k * L + l) as f32;
                }
                // SAFETY: `xs` holds L floats.
                *p = unsafe { $loadu(xs.as_ptr()) };
            }
            let (three, min_r2) = ($set1(3.0), $set1(MIN_R2));
            let mut total = [[[0f64; L]; B]; R];
            for start in (0..atoms.len()).step_by(CHUNK) {
                let end = (start + CHUNK).min(atoms.len());
                let mut acc: [[$vec; B]; R] = [[$zero(); B]; R];
                for i in start..end {
                    // e / r = (e/2) y0 (3 - r² y0²): one Newton step on the estimate y0, folded
                    // into the sum. Only an atom within MIN_DISTANCE of a row's line can come
                    // closer than MIN_DISTANCE to one of its points: only then is r² clamped.
                    let (ax, half_e) = ($set1(atoms.x[i]), $set1(0.5 * atoms.e[i]));
                    let mut d = [$zero(); R];
                    let mut near = false;
                    for r in 0..R {
                        d[r] = $set1(dyz[r][i]);
                        near |= dyz[r][i] < MIN_R2;
                    }
                    for k in 0..B {
                        let dx = $sub(px[k], ax);
                        for r in 0..R {
                            let mut r2 = $fmadd(dx, dx, d[r]);
                            if near {
                                r2 = $max(r2, min_r2);
                            }
                            let y0 = $rsqrt(r2);
                            let refine = $fnmadd($mul(r2, y0), y0, three);
                            acc[r][k] = $fmadd($mul(half_e, y0), refine, acc[r][k]);
                        }
                    }
                }
                let mut lanes = [0f32; L];
                for r in 0..R {
                    for k in 0..B {
                        // SAFETY: `lanes` has room for L floats.
                        unsafe { $storeu(lanes.as_mut_ptr(), acc[r][k]) };
                        for (t, v) in total[r][k].iter_mut().zip(lanes) {
                            *t += f64::from(v);
                        }
                    }
                }
            }
            let width = (B * L).min(left);
            for r in 0..R {
                for (i, slot) in out[r][xb..xb + width].iter_mut().enumerate() {
                    *slot = total[r][i / L][i % L];
                }
            }
            width
        }
    };
}

simd_rows!(
    rows_avx2,
    block_avx2,
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
    block_avx512,
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
