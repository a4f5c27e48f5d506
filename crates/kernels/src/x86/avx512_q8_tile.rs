//! AVX-512 tiles for prompts of Q8_0 and Q5_0 (against Q8_0 activations): four weight rows by one to four activation rows per call, two activation
//! rows side by side in each 512-bit register (lanes 0-7 one token, 8-15 the next). Every output repeats the
//! single-row kernel's (`avx512::dot_q8_0_q8_0`; for Q5_0 `avx2::dot_q5_0_q8_0`, whose per-block arithmetic is the
//! same) f32 operations in the same order, so it is BIT-IDENTICAL to it: per block the exact integer quad sums
//! (`vpdpbusd` on x + 128 and w, less 128 sum(w)), converted, times the f32 product
//! f16(w.d) * f16(x.d), fused into the even-block or odd-block accumulator (the last block of an odd count into the
//! even one), and at the end the single kernel's horizontal sum of the two.

use super::avx2::{bits_32, f16, hsum_ps, nibbles_32};
use super::avx512_kq::join_i8;
use crate::blocks;
use crate::q5_0::BlockQ5_0;
use crate::q8_0::BlockQ8_0;
use std::arch::x86_64::*;

/// `[f32(x_a.d) x 8 | f32(x_b.d) x 8]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pair_scales(a: &BlockQ8_0, b: &BlockQ8_0) -> __m512 {
    let (lo, hi) = (_mm512_castps_pd(_mm512_set1_ps(f16(a.d))), _mm256_castps_pd(_mm256_set1_ps(f16(b.d))));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, hi))
}

/// The 32 weights of a Q8_0 block as signed bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quants_q8_0(w: &BlockQ8_0) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of the block.
    unsafe { _mm256_loadu_si256(w.qs.as_ptr().cast()) }
}

/// The 32 weights of a Q5_0 block as signed bytes `q - 16`, as the AVX2 single-row kernel forms them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn quants_q5_0(w: &BlockQ5_0) -> __m256i {
    // q - 16 as i8: the low nibble, with 0xf0 or-ed in where the high bit is clear.
    let hi = _mm256_andnot_si256(bits_32(w.qh), _mm256_set1_epi8(0xf0u8 as i8));
    _mm256_or_si256(nibbles_32(&w.qs), hi)
}

/// The tile over weight blocks `$block` whose quants `$quants` gives as signed bytes, against Q8_0 activations.
macro_rules! signed_tile {
    ($tile:ident, $block:ty, $quants:ident) => {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        fn $tile<const P: usize>(bw: [&[$block]; 4], bx: [&[BlockQ8_0]; 4]) -> [[f32; 4]; 4] {
            let n = bx[0].len();
            assert!(bx.iter().all(|b| b.len() == n) && bw.iter().all(|b| b.len() == n), "rows of different lengths");
            // acc[parity][r][p]: the even- and odd-block accumulators of row r against token pair p.
            let mut acc = [[[_mm512_setzero_ps(); P]; 4]; 2];
            let (bias, zero) = (_mm512_set1_epi8(i8::MIN), _mm512_setzero_si512());
            for b in 0..n {
                let parity = if b % 2 == 1 && !(b + 1 == n && n % 2 == 1) { 1 } else { 0 };
                // The activations as unsigned bytes x + 128 (`vpdpbusd` multiplies unsigned by signed), once per block.
                let mut xs = [zero; P];
                let mut dx = [_mm512_setzero_ps(); P];
                for p in 0..P {
                    xs[p] = _mm512_xor_si512(join_i8(&bx[2 * p][b].qs, &bx[2 * p + 1][b].qs), bias);
                    dx[p] = pair_scales(&bx[2 * p][b], &bx[2 * p + 1][b]);
                }
                for r in 0..4 {
                    let w = &bw[r][b];
                    let w2 = _mm512_broadcast_i64x4($quants(w));
                    // sum((x + 128) w) - 128 sum(w) = sum(x w) per group of four bytes: the same exact integers as the
                    // single-row kernel's sign trick, so the same f32 after conversion. The accumulation starts at
                    // -128 sum(w).
                    let start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, w2));
                    let dw = _mm512_set1_ps(f16(w.d));
                    for p in 0..P {
                        let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, xs[p], w2));
                        acc[parity][r][p] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx[p]), q, acc[parity][r][p]);
                    }
                }
            }
            let mut out = [[0f32; 4]; 4];
            for r in 0..4 {
                for p in 0..P {
                    let s = _mm512_add_ps(acc[0][r][p], acc[1][r][p]);
                    out[2 * p][r] = hsum_ps(_mm512_castps512_ps256(s));
                    if 2 * p + 1 < 4 {
                        out[2 * p + 1][r] = hsum_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s))));
                    }
                }
            }
            out
        }
    };
}

signed_tile!(tile_q8_0, BlockQ8_0, quants_q8_0);
signed_tile!(tile_q5_0, BlockQ5_0, quants_q5_0);

/// Four Q8_0 weight rows against one to four Q8_0 activation rows: `out[t][r]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0_tile(_n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
    assert!((1..=4).contains(&xs.len()), "a tile has 1 to 4 activation rows, not {}", xs.len());
    if let [x] = *xs {
        // One token (decode): the four-row kernel, which does not pay for a second token's lanes.
        return super::avx512_r4::dot_q8_0_q8_0_r4(_n, ws, x, &mut out[0]);
    }
    let bw: [&[BlockQ8_0]; 4] = [blocks(ws[0]), blocks(ws[1]), blocks(ws[2]), blocks(ws[3])];
    // Missing tokens repeat the last one (computed, not returned).
    let x = |t: usize| blocks::<BlockQ8_0>(xs[t.min(xs.len() - 1)]);
    let bx: [&[BlockQ8_0]; 4] = [x(0), x(1), x(2), x(3)];
    let all = if xs.len() <= 2 { tile_q8_0::<1>(bw, bx) } else { tile_q8_0::<2>(bw, bx) };
    out[..xs.len()].copy_from_slice(&all[..xs.len()]);
}

/// Four Q5_0 weight rows against one to four Q8_0 activation rows: `out[t][r]`, each bit-identical to the AVX2
/// single-row kernel (`avx2::dot_q5_0_q8_0`, which the AVX-512 table keeps for Q5_0).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q5_0_q8_0_tile(n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
    assert!((1..=4).contains(&xs.len()), "a tile has 1 to 4 activation rows, not {}", xs.len());
    if let [x] = *xs {
        // One token (decode): four single dots, as the table's four-row entry does.
        for (o, w) in out[0].iter_mut().zip(ws) {
            *o = super::avx2::dot_q5_0_q8_0(n, w, x);
        }
        return;
    }
    let bw: [&[BlockQ5_0]; 4] = [blocks(ws[0]), blocks(ws[1]), blocks(ws[2]), blocks(ws[3])];
    // Missing tokens repeat the last one (computed, not returned).
    let x = |t: usize| blocks::<BlockQ8_0>(xs[t.min(xs.len() - 1)]);
    let bx: [&[BlockQ8_0]; 4] = [x(0), x(1), x(2), x(3)];
    let all = if xs.len() <= 2 { tile_q5_0::<1>(bw, bx) } else { tile_q5_0::<2>(bw, bx) };
    out[..xs.len()].copy_from_slice(&all[..xs.len()]);
}
