//! AVX2 multi-row dots: one weight row against four activation rows, decoding each weight block once (nibbles,
//! 6-bit scales, the sign trick) and reusing it for the four rows. The engine's exactness invariant (a prompt
//! processed as a batch gives the logits of token-by-token decoding) needs each output BIT-IDENTICAL to the
//! single-row kernel of `avx2.rs`: every output repeats that kernel's f32 operations in the same order (same
//! accumulators, same block-to-accumulator assignment, same horizontal sum); only integer work, which is exact,
//! and the weight decode are shared.

use super::avx2::{arr, f16, hsum_ps, load_32, load_i8_32, mul_sum_u8_quads, nibbles_32, scale_and_min_products};
use crate::blocks;
use crate::q4_1::BlockQ4_1;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_1::BlockQ8_1;
use crate::q8_k::BlockQ8K;
use std::arch::x86_64::*;

/// Four activation rows viewed as blocks, each as long as the weight row. Spelled out and always inlined, as
/// `avx2_r4::blocks_r4`: slices handed back through the stack stall the kernel's first wide reloads of them.
#[inline(always)]
pub(crate) fn blocks_x4<X: crate::Block>(n_blocks: usize, xs: [&[u8]; 4]) -> [&[X]; 4] {
    let bx = [blocks::<X>(xs[0]), blocks::<X>(xs[1]), blocks::<X>(xs[2]), blocks::<X>(xs[3])];
    assert!(bx.iter().all(|b| b.len() == n_blocks), "activation rows must match the weight row");
    bx
}

/// `fold_blocks` for four activation rows: `decode` runs once per weight block, `f` once per (block, row).
/// Row i's accumulators see exactly the sequence of fused multiply-adds `fold_blocks` would give it (blocks
/// 0, 2, 4, ... in `acc0`, 1, 3, 5, ... in `acc1`, an odd last block in `acc0`), and the same final sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn fold_blocks_x4<W, X, S>(
    bw: &[W],
    bx: [&[X]; 4],
    mut decode: impl FnMut(&W) -> S,
    mut f: impl FnMut(&S, &X) -> (__m256, __m256),
) -> [f32; 4] {
    let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
    let n_pairs = bw.len() / 2;
    for p in 0..n_pairs {
        let (s0, s1) = (decode(&bw[2 * p]), decode(&bw[2 * p + 1]));
        for i in 0..4 {
            let (d0, q0) = f(&s0, &bx[i][2 * p]);
            let (d1, q1) = f(&s1, &bx[i][2 * p + 1]);
            acc0[i] = _mm256_fmadd_ps(d0, q0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(d1, q1, acc1[i]);
        }
    }
    if bw.len() % 2 == 1 {
        let last = bw.len() - 1;
        let s = decode(&bw[last]);
        for i in 0..4 {
            let (d, q) = f(&s, &bx[i][last]);
            acc0[i] = _mm256_fmadd_ps(d, q, acc0[i]);
        }
    }
    [0, 1, 2, 3].map(|i| hsum_ps(_mm256_add_ps(acc0[i], acc1[i])))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let bw = blocks::<BlockQ8_0>(w);
    let bx = blocks_x4::<BlockQ8_0>(bw.len(), xs);
    // As avx2::dot_q8_0_q8_0 for each row (`fold_blocks`: even blocks into the first accumulator, odd ones into the
    // second, an odd last block, which is even, into the first): the f32 product f16(w.d) * f16(x.d) (here the four
    // tokens' scales converted together, each product the same single rounding) and `mul_sum_i8_quads` (|w| x (y
    // with w's sign) summed in quads), with the weight block's quants and magnitudes loaded once for the four.
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let half = |h: [u8; 2]| i16::from_le_bytes(h);
    for (b, bw) in bw.iter().enumerate() {
        let qw = load_i8_32(&bw.qs);
        let abs = _mm256_sign_epi8(qw, qw);
        let dx = _mm_cvtph_ps(_mm_set_epi16(
            0,
            0,
            0,
            0,
            half(bx[3][b].d),
            half(bx[2][b].d),
            half(bx[1][b].d),
            half(bx[0][b].d),
        ));
        let d4 = _mm256_castps128_ps256(_mm_mul_ps(_mm_set1_ps(f16(bw.d)), dx));
        for i in 0..4 {
            let d = _mm256_permutevar8x32_ps(d4, _mm256_set1_epi32(i as i32));
            let sy = _mm256_sign_epi8(load_i8_32(&bx[i][b].qs), qw);
            let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(abs, sy), _mm256_set1_epi16(1)));
            acc[i][b % 2] = _mm256_fmadd_ps(d, p, acc[i][b % 2]);
        }
    }
    *out = [0, 1, 2, 3].map(|i| hsum_ps(_mm256_add_ps(acc[i][0], acc[i][1])));
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let bw = blocks::<BlockQ6K>(w);
    let bx = blocks_x4::<BlockQ8K>(bw.len(), xs);
    let mut acc = [_mm256_setzero_ps(); 4];
    for (b, bw) in bw.iter().enumerate() {
        // As `scale_x8`: dy times the f16 scale converted in all 8 lanes.
        let dw = _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(bw.d)));
        let d = [0, 1, 2, 3].map(|i| _mm256_mul_ps(_mm256_set1_ps(f32::from_le_bytes(bx[i][b].d)), dw));
        // SAFETY: reads exactly the 16 bytes of the i8 scales.
        let sc8 = unsafe { _mm_loadu_si128(bw.scales.as_ptr().cast()) };
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let mut sumi = [0, 1, 2, 3].map(|i| {
            // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
            let bsums = unsafe { _mm256_loadu_si256(bx[i][b].bsums.as_ptr().cast()) };
            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bsums)))
        });
        for h in 0..2 {
            let sc8_h = if h == 0 { sc8 } else { _mm_unpackhi_epi64(sc8, sc8) };
            let sc_h = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc8_h));
            let ql0 = load_32(arr(&bw.ql[64 * h..64 * h + 32]));
            let ql1 = load_32(arr(&bw.ql[64 * h + 32..64 * h + 64]));
            let qh = load_32(arr(&bw.qh[32 * h..32 * h + 32]));
            let lows = [
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
            ];
            for (t, low) in lows.into_iter().enumerate() {
                let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * t as i32)), m2);
                let q6 = _mm256_or_si256(low, _mm256_slli_epi16::<4>(high));
                let (lo, hi) = ((4 * t) as i16, (4 * t + 2) as i16);
                let pick = _mm256_set_m128i(_mm_set1_epi16(hi | ((hi + 1) << 8)), _mm_set1_epi16(lo | ((lo + 1) << 8)));
                let sc = _mm256_shuffle_epi8(sc_h, pick);
                let base = 128 * h + 32 * t;
                for i in 0..4 {
                    let q8 = load_i8_32(arr(&bx[i][b].qs[base..base + 32]));
                    sumi[i] = _mm256_add_epi32(sumi[i], _mm256_madd_epi16(_mm256_maddubs_epi16(q6, q8), sc));
                }
            }
        }
        for i in 0..4 {
            acc[i] = _mm256_fmadd_ps(d[i], _mm256_cvtepi32_ps(sumi[i]), acc[i]);
        }
    }
    *out = [0, 1, 2, 3].map(|i| hsum_ps(acc[i]));
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q4_1_q8_1_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let bw = blocks::<BlockQ4_1>(w);
    let bx = blocks_x4::<BlockQ8_1>(bw.len(), xs);
    // As avx2::dot_q4_1_q8_1 for each row (`fold_blocks`: even blocks into the first accumulator, odd ones into the
    // second, an odd last block, which is even, into the first; the `m * s` products summed in block order), with
    // each weight block's nibbles expanded once for the four.
    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
    let mut summs = [_mm_setzero_ps(); 4];
    for (b, bw) in bw.iter().enumerate() {
        let q = nibbles_32(&bw.qs);
        for i in 0..4 {
            let bx = &bx[i][b];
            let (d, ms) = scale_and_min_products(&bw.d, &bw.m, &bx.d, &bx.s);
            summs[i] = _mm_add_ps(summs[i], ms);
            let p = _mm256_cvtepi32_ps(mul_sum_u8_quads(q, load_i8_32(&bx.qs)));
            acc[i][b % 2] = _mm256_fmadd_ps(d, p, acc[i][b % 2]);
        }
    }
    *out =
        [0, 1, 2, 3].map(|i| hsum_ps(_mm256_add_ps(acc[i][0], acc[i][1])) + _mm_cvtss_f32(_mm_movehdup_ps(summs[i])));
}
