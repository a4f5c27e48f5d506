//! Q8_0 kernels for AVX2 CPUs with AVX-VNNI (`vpdpbusd` on 256-bit registers: Intel since Alder Lake, AMD since
//! Zen 5), each output BIT-IDENTICAL to the plain AVX2 kernels (`avx2::dot_q8_0_q8_0` and its x4 / r4 twins).
//!
//! Those kernels form each block's i32 quad sums with the sign trick (`maddubs` of |w| by x with w's sign, then
//! `madd` by ones); `vpdpbusd` of the same two operands forms the same integers in one instruction (exact: no i16
//! pair sum saturates, as in `maddubs`, for any bytes; the sign trick's own quirk, x = -128 against a negative
//! weight, which the quantizers never write, is kept the same). Everything after the integers (the conversion,
//! the f32 scale product f16(w.d) * f16(x.d), the FMA into the even-block or odd-block accumulator, the final sum
//! of the two) is the plain kernels' arithmetic in their order.

use super::avx2::{f16, f16_mul, hsum_ps, load_i8_32};
use super::avx2_r4::{blocks_r4, fold_blocks_r4};
use super::avx2_x4::{blocks_x4, fold_blocks_x4};
use crate::blocks;
use crate::q8_0::BlockQ8_0;
use std::arch::x86_64::*;

/// The exact quad sums of `w` by `x` (signed bytes), as `avx2::mul_sum_i8_quads` computes them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn quads(w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) fn dot_q8_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    super::avx2::fold_blocks(blocks::<BlockQ8_0>(w), blocks::<BlockQ8_0>(x), |bw, bx| {
        let d = _mm256_set1_ps(f16_mul(bw.d, bx.d));
        (d, _mm256_cvtepi32_ps(quads(load_i8_32(&bw.qs), load_i8_32(&bx.qs))))
    })
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) fn dot_q8_0_q8_0_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let bw = blocks::<BlockQ8_0>(w);
    // The weight block's quants, magnitudes and f32 scale once for the four tokens.
    let decode = |bw: &BlockQ8_0| {
        let qw = load_i8_32(&bw.qs);
        (qw, _mm256_sign_epi8(qw, qw), _mm256_set1_ps(f16(bw.d)))
    };
    *out = fold_blocks_x4(bw, blocks_x4(bw.len(), xs), decode, |&(qw, abs, dw), bx: &BlockQ8_0| {
        let sy = _mm256_sign_epi8(load_i8_32(&bx.qs), qw);
        let d = _mm256_mul_ps(dw, _mm256_set1_ps(f16(bx.d)));
        (d, _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), abs, sy)))
    });
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) fn dot_q8_0_q8_0_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let bx = blocks::<BlockQ8_0>(x);
    // The activation block's quants and f32 scale once for the four rows.
    let decode = |bx: &BlockQ8_0| (load_i8_32(&bx.qs), _mm256_set1_ps(f16(bx.d)));
    *out = fold_blocks_r4(blocks_r4(bx.len(), ws), bx, decode, |bw: &BlockQ8_0, &(qx, dx)| {
        let d = _mm256_mul_ps(_mm256_set1_ps(f16(bw.d)), dx);
        (d, _mm256_cvtepi32_ps(quads(load_i8_32(&bw.qs), qx)))
    });
}

/// Four weight rows against `T` tokens (1 or 2), in two passes over the blocks (even, then odd) with one
/// accumulator per pair: `out[t][r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
fn tile<const T: usize>(bw: [&[BlockQ8_0]; 4], bx: [&[BlockQ8_0]; T]) -> [[f32; 4]; T] {
    let n = bw[0].len();
    assert!(bx.iter().all(|b| b.len() == n) && bw.iter().all(|b| b.len() == n), "rows of different lengths");
    let mut even = [[_mm256_setzero_ps(); 4]; T];
    let mut odd = [[_mm256_setzero_ps(); 4]; T];
    macro_rules! pass {
        ($from:expr, $acc:ident) => {
            for b in ($from..n).step_by(2) {
                let qx: [__m256i; T] = std::array::from_fn(|t| load_i8_32(&bx[t][b].qs));
                let dx: [__m256; T] = std::array::from_fn(|t| _mm256_set1_ps(f16(bx[t][b].d)));
                for r in 0..4 {
                    let qw = load_i8_32(&bw[r][b].qs);
                    let abs = _mm256_sign_epi8(qw, qw);
                    let dw = _mm256_set1_ps(f16(bw[r][b].d));
                    for t in 0..T {
                        let sx = _mm256_sign_epi8(qx[t], qw);
                        let q = _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), abs, sx));
                        $acc[t][r] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx[t]), q, $acc[t][r]);
                    }
                }
            }
        };
    }
    pass!(0, even);
    pass!(1, odd);
    std::array::from_fn(|t| std::array::from_fn(|r| hsum_ps(_mm256_add_ps(even[t][r], odd[t][r]))))
}

/// Four Q8_0 weight rows against one to four Q8_0 activation rows: `out[t][r]`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(crate) fn dot_q8_0_q8_0_tile(n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
    assert!((1..=4).contains(&xs.len()), "a tile has 1 to 4 activation rows, not {}", xs.len());
    let bw: [&[BlockQ8_0]; 4] = [blocks(ws[0]), blocks(ws[1]), blocks(ws[2]), blocks(ws[3])];
    // Tokens two at a time (eight accumulators a pass); a lone token goes to the four-row kernel.
    let mut t = 0;
    while t < xs.len() {
        if t + 1 < xs.len() {
            let two = tile::<2>(bw, [blocks(xs[t]), blocks(xs[t + 1])]);
            out[t..t + 2].copy_from_slice(&two);
            t += 2;
        } else {
            dot_q8_0_q8_0_r4(n, ws, xs[t], &mut out[t]);
            t += 1;
        }
    }
}
