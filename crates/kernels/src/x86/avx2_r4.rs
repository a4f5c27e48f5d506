//! AVX2 four-row dots for single-token decode: four weight rows against one activation row, sharing the
//! activation loads (and, for the k-quants, the Q8_K `bsums` work) across the rows, and doing the four
//! horizontal sums together at the end. The engine's exactness invariant needs each output BIT-IDENTICAL to
//! the single-row kernel of `avx2.rs`: every output repeats that kernel's f32 operations in the same order
//! (same accumulators, same block-to-accumulator assignment, same horizontal-sum tree); only loads, the
//! activation decode and exact integer work are shared.
//! Q4_K and Q8_0 walk the four rows block by block (each activation block loaded once for the four rows);
//! Q6_K, whose weight decode needs all the registers, runs the rows one after the other over the same
//! activation row (in L1) and saves only the calls, the per-call setup and three horizontal sums: interleaving
//! its rows measured slower.

use super::avx2::{arr, f16_mul, load_32, load_i8_32, scale_x8};
use crate::blocks;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_k::BlockQ8K;
use std::arch::x86_64::*;

/// Four weight rows viewed as blocks, each as long as the activation row.
#[inline(always)]
pub(crate) fn blocks_r4<W: crate::Block>(n_blocks: usize, ws: [&[u8]; 4]) -> [&[W]; 4] {
    // Spelled out: `ws.map(..)` was left as a call to `array::try_map` in the kernels' prologue.
    let row = |i: usize| {
        let b = blocks::<W>(ws[i]);
        assert!(b.len() == n_blocks, "weight rows must match the activation row");
        b
    };
    [row(0), row(1), row(2), row(3)]
}

/// `[hsum_ps(v[0]), .., hsum_ps(v[3])]` with the four reductions interleaved: each lane adds exactly the
/// values `hsum_ps` adds, in the same tree (`(v0 + v4) + (v2 + v6)` and `(v1 + v5) + (v3 + v7)`, then their
/// sum), since f32 addition is commutative; only the shuffles differ.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum4_ps(v: [__m256; 4]) -> [f32; 4] {
    let s = v.map(|v| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)));
    // [a0 + a2, b0 + b2, a1 + a3, b1 + b3] and the same for c, d.
    let ab = _mm_add_ps(_mm_unpacklo_ps(s[0], s[1]), _mm_unpackhi_ps(s[0], s[1]));
    let cd = _mm_add_ps(_mm_unpacklo_ps(s[2], s[3]), _mm_unpackhi_ps(s[2], s[3]));
    let r = _mm_add_ps(_mm_movelh_ps(ab, cd), _mm_movehl_ps(cd, ab));
    let mut out = [0f32; 4];
    // SAFETY: writes exactly the 16 bytes of `out`.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), r) };
    out
}

/// `fold_blocks` for four weight rows: `decode` runs once per activation block, `f` once per (row, block).
/// Row i's accumulators see exactly the fused multiply-adds `fold_blocks` would give it (blocks 0, 2, 4, ...
/// in `acc0`, 1, 3, 5, ... in `acc1`, an odd last block in `acc0`), and the same final sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn fold_blocks_r4<W, X, S>(
    bw: [&[W]; 4],
    bx: &[X],
    mut decode: impl FnMut(&X) -> S,
    mut f: impl FnMut(&W, &S) -> (__m256, __m256),
) -> [f32; 4] {
    let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
    let n_pairs = bx.len() / 2;
    for p in 0..n_pairs {
        let (s0, s1) = (decode(&bx[2 * p]), decode(&bx[2 * p + 1]));
        for i in 0..4 {
            let (d0, q0) = f(&bw[i][2 * p], &s0);
            let (d1, q1) = f(&bw[i][2 * p + 1], &s1);
            acc0[i] = _mm256_fmadd_ps(d0, q0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(d1, q1, acc1[i]);
        }
    }
    if bx.len() % 2 == 1 {
        let last = bx.len() - 1;
        let s = decode(&bx[last]);
        for i in 0..4 {
            let (d, q) = f(&bw[i][last], &s);
            acc0[i] = _mm256_fmadd_ps(d, q, acc0[i]);
        }
    }
    hsum4_ps([0, 1, 2, 3].map(|i| _mm256_add_ps(acc0[i], acc1[i])))
}

/// The 8 pair sums `bsum[2j] + bsum[2j + 1]` of a Q8_K block, as `min_sum_k` forms them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn bsum_pairs_k(bx: &BlockQ8K) -> __m128i {
    // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
    let bsums = unsafe { _mm256_loadu_si256(bx.bsums.as_ptr().cast()) };
    _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums))
}

/// `min_sum_k(mins, bx)` from the shared `bsum_pairs_k(bx)`: the same exact integer.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn min_sum_pairs(mins: __m128i, pairs: __m128i) -> i32 {
    let p = _mm_madd_epi16(mins, pairs);
    let p = _mm_add_epi32(p, _mm_unpackhi_epi64(p, p));
    _mm_cvtsi128_si32(_mm_add_epi32(p, _mm_shuffle_epi32::<0b01>(p)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let bx = blocks::<BlockQ8_0>(x);
    // As avx2::dot_q8_0_q8_0: the f32 product f16(w.d) * f16(x.d) (`f16_mul`, one conversion per row: faster
    // than sharing f16(x.d)) and `mul_sum_i8_quads` (|w| x (y with w's sign) summed in quads), with the
    // activation's quants loaded once per block.
    let decode = |bx: &BlockQ8_0| (bx.d, load_i8_32(&bx.qs));
    *out = fold_blocks_r4(blocks_r4(bx.len(), ws), bx, decode, |bw: &BlockQ8_0, &(dx, qx)| {
        let d = _mm256_set1_ps(f16_mul(bw.d, dx));
        let qw = load_i8_32(&bw.qs);
        let prod = _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
        (d, _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, _mm256_set1_epi16(1))))
    });
}

/// One Q6_K block of one weight row against its Q8_K activation block, as the loop body of
/// avx2::dot_q6_k_q8_k: the f32 scale `dy * d` in 8 lanes and the exact i32 sums (`bsums`: the activation
/// block's, loaded by the caller).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k_block(bw: &BlockQ6K, bx: &BlockQ8K, dy: f32, bsums: __m256i) -> (__m256, __m256i) {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let d = scale_x8(dy, bw.d);
    // SAFETY: reads exactly the 16 bytes of the i8 scales.
    let sc8 = unsafe { _mm_loadu_si128(bw.scales.as_ptr().cast()) };
    // Quants are stored as q + 32: start from -32 * sum_j sc[j] * bsum[j] (exact).
    let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), bsums);
    let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(offset));
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
            let base = 128 * h + 32 * t;
            let q8 = load_i8_32(arr(&bx.qs[base..base + 32]));
            let (lo, hi) = ((4 * t) as i16, (4 * t + 2) as i16);
            let pick = _mm256_set_m128i(_mm_set1_epi16(hi | ((hi + 1) << 8)), _mm_set1_epi16(lo | ((lo + 1) << 8)));
            let sc = _mm256_shuffle_epi8(sc_h, pick);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q6, q8), sc));
        }
    }
    (d, sumi)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let bx = blocks::<BlockQ8K>(x);
    let bw = blocks_r4::<BlockQ6K>(bx.len(), ws);
    // Row by row: the weight decode needs all the registers, the activation row (at most a few KB) stays in L1
    // for the four passes, and each weight row is read front to back, as the prefetchers like it.
    let row = |bw: &[BlockQ6K]| {
        let mut acc = _mm256_setzero_ps();
        for (bw, bx) in bw.iter().zip(bx) {
            // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
            let bsums = unsafe { _mm256_loadu_si256(bx.bsums.as_ptr().cast()) };
            let (d, sumi) = q6_k_block(bw, bx, f32::from_le_bytes(bx.d), bsums);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        acc
    };
    let acc = [row(bw[0]), row(bw[1]), row(bw[2]), row(bw[3])];
    *out = hsum4_ps(acc);
}
