//! AVX-512 tile for prompts of Q4_1 (SmolLM2's format): four weight rows by one to four Q8_1 activation rows per
//! call, two activation rows side by side in each 512-bit register (lanes 0-7 one token, 8-15 the next), as the
//! Q8_0 tile does. Every output repeats the single-row kernel's (`avx2::dot_q4_1_q8_1`, which the AVX-512 table
//! keeps for Q4_1) f32 operations in the same order, so it is BIT-IDENTICAL to it: per block the exact integer
//! quad sums (unsigned nibbles times signed activations, `vpdpbusd`), converted, times the f32 product
//! f16(w.d) * f16(x.d), fused into the even-block or odd-block accumulator; the blocks' f32 products
//! f16(w.m) * f16(x.s) summed in block order, one lane per (token, row); at the end the single kernel's horizontal
//! sum of the two accumulators, plus that sum.

use super::avx2::{f16, hsum_ps, nibbles_32};
use super::avx512_kq::join_i8;
use crate::blocks;
use crate::q4_1::BlockQ4_1;
use crate::q8_1::BlockQ8_1;
use std::arch::x86_64::*;

/// `[f32(x_a.d) x 8 | f32(x_b.d) x 8]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pair_scales(a: &BlockQ8_1, b: &BlockQ8_1) -> __m512 {
    let (lo, hi) = (_mm512_castps_pd(_mm512_set1_ps(f16(a.d))), _mm256_castps_pd(_mm256_set1_ps(f16(b.d))));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, hi))
}

/// Four f16 values as `[f32; 4]` in a register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn four_f16(h: [[u8; 2]; 4]) -> __m128 {
    let v = h.map(i16::from_le_bytes);
    _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, v[3], v[2], v[1], v[0]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile<const P: usize>(bw: [&[BlockQ4_1]; 4], bx: [&[BlockQ8_1]; 4]) -> [[f32; 4]; 4] {
    let n = bx[0].len();
    assert!(bx.iter().all(|b| b.len() == n) && bw.iter().all(|b| b.len() == n), "rows of different lengths");
    // acc[parity][r][p]: the even- and odd-block accumulators of row r against token pair p.
    let mut acc = [[[_mm512_setzero_ps(); P]; 4]; 2];
    // Lane 4 t + r: the running sum of row r's m times token t's s.
    let mut mins = _mm512_setzero_ps();
    let token_of_lane = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for b in 0..n {
        // fold_blocks: even blocks into the first accumulator, odd ones into the second (an odd count's last
        // block is even).
        let parity = b % 2;
        let mut xs = [_mm512_setzero_si512(); P];
        let mut dx = [_mm512_setzero_ps(); P];
        for p in 0..P {
            xs[p] = join_i8(&bx[2 * p][b].qs, &bx[2 * p + 1][b].qs);
            dx[p] = pair_scales(&bx[2 * p][b], &bx[2 * p + 1][b]);
        }
        let m = _mm512_broadcast_f32x4(four_f16([0, 1, 2, 3].map(|r| bw[r][b].m)));
        let s =
            _mm512_permutexvar_ps(token_of_lane, _mm512_castps128_ps512(four_f16([0, 1, 2, 3].map(|t| bx[t][b].s))));
        mins = _mm512_add_ps(mins, _mm512_mul_ps(m, s));
        for r in 0..4 {
            let w = &bw[r][b];
            let q4 = nibbles_32(&w.qs);
            let w2 = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q4), q4);
            let dw = _mm512_set1_ps(f16(w.d));
            for p in 0..P {
                let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w2, xs[p]));
                acc[parity][r][p] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dx[p]), q, acc[parity][r][p]);
            }
        }
    }
    let mut mins_out = [0f32; 16];
    // SAFETY: writes exactly the 16 floats of `mins_out`.
    unsafe { _mm512_storeu_ps(mins_out.as_mut_ptr(), mins) };
    let mut out = [[0f32; 4]; 4];
    for r in 0..4 {
        for p in 0..P {
            let s = _mm512_add_ps(acc[0][r][p], acc[1][r][p]);
            let t = 2 * p;
            out[t][r] = hsum_ps(_mm512_castps512_ps256(s)) + mins_out[4 * t + r];
            out[t + 1][r] =
                hsum_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)))) + mins_out[4 * t + 4 + r];
        }
    }
    out
}

/// Four Q4_1 weight rows against one to four Q8_1 activation rows: `out[t][r]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_1_q8_1_tile(n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
    assert!((1..=4).contains(&xs.len()), "a tile has 1 to 4 activation rows, not {}", xs.len());
    if let [x] = *xs {
        // One token (decode): four single dots, as the table's four-row entry does.
        for (o, w) in out[0].iter_mut().zip(ws) {
            *o = super::avx2::dot_q4_1_q8_1(n, w, x);
        }
        return;
    }
    let bw: [&[BlockQ4_1]; 4] = [blocks(ws[0]), blocks(ws[1]), blocks(ws[2]), blocks(ws[3])];
    // Missing tokens repeat the last one (computed, not returned).
    let x = |t: usize| blocks::<BlockQ8_1>(xs[t.min(xs.len() - 1)]);
    let bx: [&[BlockQ8_1]; 4] = [x(0), x(1), x(2), x(3)];
    let all = if xs.len() <= 2 { tile::<1>(bw, bx) } else { tile::<2>(bw, bx) };
    out[..xs.len()].copy_from_slice(&all[..xs.len()]);
}
