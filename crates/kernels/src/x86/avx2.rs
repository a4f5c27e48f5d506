//! AVX2 + FMA + F16C kernels (256-bit). Integer dot products use `vpmaddubsw` (u8 x i8 -> i16 pairs) then
//! `vpmaddwd`; no intermediate can saturate because activation quants are in -127..=127 (the Q8 quantizers
//! never produce -128) and weight magnitudes are at most 128 (pairs: 2 * 128 * 127 < 32767).
//!
//! Every function here is safe to call once AVX2, FMA and F16C are known to be present; the only `unsafe`
//! blocks are the loads and stores in the first section, which read fixed-size arrays.

use crate::q4_0::BlockQ4_0;
use crate::q4_1::BlockQ4_1;
use crate::q4_k::BlockQ4K;
use crate::q5_0::BlockQ5_0;
use crate::q5_1::BlockQ5_1;
use crate::q5_k::BlockQ5K;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_1::BlockQ8_1;
use crate::q8_k::{BlockQ8K, QK_K};
use crate::{blocks, blocks_mut};
use std::arch::x86_64::*;

// ---- loads and stores of fixed-size arrays ----

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn load_32(b: &[u8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `b`; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn load_i8_32(b: &[i8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `b`.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn load_16(b: &[u8; 16]) -> __m128i {
    // SAFETY: reads exactly the 16 bytes of `b`.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_i8_32(b: &mut [i8; 32], v: __m256i) {
    // SAFETY: writes exactly the 32 bytes of `b`.
    unsafe { _mm256_storeu_si256(b.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x8(x: &[f32; 8]) -> __m256 {
    // SAFETY: reads exactly the 8 floats of `x`.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x8_bytes(b: &[u8; 32]) -> __m256 {
    // SAFETY: reads exactly the 32 bytes of `b` as 8 floats (unaligned load).
    unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_16(b: &mut [u8; 16], v: __m128i) {
    // SAFETY: writes exactly the 16 bytes of `b`.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
}

pub(crate) fn arr<const N: usize, T>(s: &[T]) -> &[T; N] {
    s.try_into().expect("chunk of exactly N elements")
}

fn arr_mut<const N: usize, T>(s: &mut [T]) -> &mut [T; N] {
    s.try_into().expect("chunk of exactly N elements")
}

// ---- helpers ----

/// f16 bits to f32 with F16C. Broadcasting (rather than inserting into lane 0) keeps LLVM from merging the
/// value into an unrelated register, which made every block wait for the previous block's accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16(h: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(h))))
}

/// `(f16(a), f16(b))` with one conversion of a full 32-bit value (no merge into a stale register).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16_pair(a: [u8; 2], b: [u8; 2]) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_set1_epi32(i32::from_le_bytes([a[0], a[1], b[0], b[1]])));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// `dy * f16(h)` in all 8 lanes; converting a full broadcast keeps the conversion off the accumulator chain.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn scale_x8(dy: f32, h: [u8; 2]) -> __m256 {
    _mm256_mul_ps(_mm256_set1_ps(dy), _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(h))))
}

/// `f16(a) * f16(b)` (the same f32 product) with one conversion.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16_mul(a: [u8; 2], b: [u8; 2]) -> f32 {
    let v = _mm_cvtph_ps(_mm_set1_epi32(i32::from_le_bytes([a[0], a[1], b[0], b[1]])));
    _mm_cvtss_f32(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmin_ps(v: __m256) -> f32 {
    let s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_min_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_min_ss(s, _mm_movehdup_ps(s)))
}

/// 16 bytes of nibbles -> 32 bytes: low nibbles in bytes 0..16, high nibbles in 16..32 (the Q4_0 order).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn nibbles_32(qs: &[u8; 16]) -> __m256i {
    let tmp = load_16(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(tmp), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// The 32 bits of `qh` as 32 bytes: 0xff where bit j is set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn bits_32(qh: [u8; 4]) -> __m256i {
    let x = _mm256_set1_epi32(i32::from_le_bytes(qh));
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(x, shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// sum of `x[i] * y[i]` in pairs of 4 bytes -> 8 i32, for signed `x` and `y` (|x| <= 128, |y| <= 127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn mul_sum_i8_quads(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// As `mul_sum_i8_quads` for unsigned `x` (0..=63).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn mul_sum_u8_quads(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

// ---- dot products ----

/// `sum over blocks of d * q` for the per-block `(d, q)` of `f`, with two accumulators (two blocks in flight).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn fold_blocks<W, X>(bw: &[W], bx: &[X], mut f: impl FnMut(&W, &X) -> (__m256, __m256)) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut pw, mut px) = (bw.chunks_exact(2), bx.chunks_exact(2));
    for (w2, x2) in (&mut pw).zip(&mut px) {
        let (d0, q0) = f(&w2[0], &x2[0]);
        let (d1, q1) = f(&w2[1], &x2[1]);
        acc0 = _mm256_fmadd_ps(d0, q0, acc0);
        acc1 = _mm256_fmadd_ps(d1, q1, acc1);
    }
    for (w, x) in pw.remainder().iter().zip(px.remainder()) {
        let (d, q) = f(w, x);
        acc0 = _mm256_fmadd_ps(d, q, acc0);
    }
    hsum_ps(_mm256_add_ps(acc0, acc1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q4_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    fold_blocks(blocks::<BlockQ4_0>(w), blocks::<BlockQ8_0>(x), |bw, bx| {
        let d = _mm256_set1_ps(f16_mul(bw.d, bx.d));
        let qw = _mm256_sub_epi8(nibbles_32(&bw.qs), _mm256_set1_epi8(8));
        (d, _mm256_cvtepi32_ps(mul_sum_i8_quads(qw, load_i8_32(&bx.qs))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q4_1_q8_1(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (bw, bx) = (blocks::<BlockQ4_1>(w), blocks::<BlockQ8_1>(x));
    let mut summs = _mm_setzero_ps();
    let sum = fold_blocks(bw, bx, |bw, bx| {
        let (d, ms) = scale_and_min_products(&bw.d, &bw.m, &bx.d, &bx.s);
        summs = _mm_add_ps(summs, ms);
        (d, _mm256_cvtepi32_ps(mul_sum_u8_quads(nibbles_32(&bw.qs), load_i8_32(&bx.qs))))
    });
    sum + _mm_cvtss_f32(_mm_movehdup_ps(summs))
}

/// `(broadcast(d_w * d_x), [_, m_w * s_x, _, _])` of a Q4_1/Q5_1 block and its Q8_1 block, each product of two
/// f16 values rounded once (as [`f16_mul`]); the second goes into lane 1 of a running sum, which then adds the
/// blocks' `m * s` in order, as a scalar sum would.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn scale_and_min_products(dw: &[u8; 2], mw: &[u8; 2], dx: &[u8; 2], sx: &[u8; 2]) -> (__m256, __m128) {
    let w = i32::from(u16::from_le_bytes(*dw)) | (i32::from(u16::from_le_bytes(*mw)) << 16);
    let x = i32::from(u16::from_le_bytes(*dx)) | (i32::from(u16::from_le_bytes(*sx)) << 16);
    // [d_w, m_w, d_x, s_x] -> [d_w * d_x, m_w * s_x, ..]
    let v = _mm_cvtph_ps(_mm_set_epi32(0, 0, x, w));
    let prod = _mm_mul_ps(v, _mm_movehl_ps(v, v));
    (_mm256_broadcastss_ps(prod), prod)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q5_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    fold_blocks(blocks::<BlockQ5_0>(w), blocks::<BlockQ8_0>(x), |bw, bx| {
        let d = _mm256_set1_ps(f16_mul(bw.d, bx.d));
        // q - 16 as i8: the low nibble, with 0xf0 or-ed in where the high bit is clear.
        let hi = _mm256_andnot_si256(bits_32(bw.qh), _mm256_set1_epi8(0xf0u8 as i8));
        let qw = _mm256_or_si256(nibbles_32(&bw.qs), hi);
        (d, _mm256_cvtepi32_ps(mul_sum_i8_quads(qw, load_i8_32(&bx.qs))))
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q5_1_q8_1(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (bw, bx) = (blocks::<BlockQ5_1>(w), blocks::<BlockQ8_1>(x));
    let mut summs = _mm_setzero_ps();
    let sum = fold_blocks(bw, bx, |bw, bx| {
        let (d, ms) = scale_and_min_products(&bw.d, &bw.m, &bx.d, &bx.s);
        summs = _mm_add_ps(summs, ms);
        let hi = _mm256_and_si256(bits_32(bw.qh), _mm256_set1_epi8(0x10));
        let qw = _mm256_or_si256(nibbles_32(&bw.qs), hi);
        (d, _mm256_cvtepi32_ps(mul_sum_u8_quads(qw, load_i8_32(&bx.qs))))
    });
    sum + _mm_cvtss_f32(_mm_movehdup_ps(summs))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    fold_blocks(blocks::<BlockQ8_0>(w), blocks::<BlockQ8_0>(x), |bw, bx| {
        let d = _mm256_set1_ps(f16_mul(bw.d, bx.d));
        (d, _mm256_cvtepi32_ps(mul_sum_i8_quads(load_i8_32(&bw.qs), load_i8_32(&bx.qs))))
    })
}

/// Scales and mins of the 8 sub-blocks of a Q4_K/Q5_K block, and `sum_j m[j] * (bsum[2j] + bsum[2j+1])`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn scales_mins_k(scales: &[u8; 12], bx: &BlockQ8K) -> ([i16; 8], i32) {
    let (sc, mins) = unpack_scales_mins_k(scales);
    (sc, min_sum_k(mins, bx))
}

/// The 8 scales and the 8 mins of a Q4_K/Q5_K block as bytes in four u32 words (scales 0-3, 4-7, mins 0-3, 4-7),
/// unpacked from the 12 packed bytes with ggml's mask trick (same result as `scale_min_k4`, without branches).
#[inline]
pub(crate) fn scale_min_words(scales: &[u8; 12]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let word = |i: usize| u32::from_le_bytes([scales[4 * i], scales[4 * i + 1], scales[4 * i + 2], scales[4 * i + 3]]);
    let (u0, u1, u2) = (word(0), word(1), word(2));
    [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ]
}

/// The 8 scales (as i16) and the 8 mins (as i16 lanes) of a Q4_K/Q5_K block ([`scale_min_words`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn unpack_scales_mins_k(scales: &[u8; 12]) -> ([i16; 8], __m128i) {
    let [sc_lo, sc_hi, m_lo, m_hi] = scale_min_words(scales);
    let sc_bytes = (sc_lo as u64 | ((sc_hi as u64) << 32)).to_le_bytes();
    let sc = sc_bytes.map(|b| b as i16);
    (sc, _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, m_hi as i32, m_lo as i32)))
}

/// `sum_j m[j] * (bsum[2j] + bsum[2j+1])` for the 8 i16 mins of `unpack_scales_mins_k`: the 16 bsums are
/// paired with `vphaddw` (|pair| <= 2 * 16 * 127).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn min_sum_k(mins: __m128i, bx: &BlockQ8K) -> i32 {
    // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
    let bsums = unsafe { _mm256_loadu_si256(bx.bsums.as_ptr().cast()) };
    let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums));
    let p = _mm_madd_epi16(mins, pairs);
    let p = _mm_add_epi32(p, _mm_unpackhi_epi64(p, p));
    _mm_cvtsi128_si32(_mm_add_epi32(p, _mm_shuffle_epi32::<0b01>(p)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q5_k_q8_k(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let m1 = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = 0f32;
    for (bw, bx) in blocks::<BlockQ5K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let dy = f32::from_le_bytes(bx.d);
        let (d, dmin) = f16_pair(bw.d, bw.dmin);
        let (sc, summ) = scales_mins_k(&bw.scales, bx);
        acc_m += dy * dmin * summ as f32;
        let hbits = load_32(&bw.qh);
        let mut sumi = _mm256_setzero_si256();
        for k in 0..4 {
            let q4 = load_32(arr(&bw.qs[32 * k..32 * k + 32]));
            let hl = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * k as i32)), m1);
            let hh = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * k as i32 + 1)), m1);
            let q5l = _mm256_or_si256(_mm256_and_si256(q4, m4), _mm256_slli_epi16::<4>(hl));
            let q5h = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4), _mm256_slli_epi16::<4>(hh));
            let q8l = load_i8_32(arr(&bx.qs[64 * k..64 * k + 32]));
            let q8h = load_i8_32(arr(&bx.qs[64 * k + 32..64 * k + 64]));
            let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(q5l, q8l), _mm256_set1_epi16(sc[2 * k]));
            let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(q5h, q8h), _mm256_set1_epi16(sc[2 * k + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dy * d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc) - acc_m
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (bw, bx) in blocks::<BlockQ6K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let d = scale_x8(f32::from_le_bytes(bx.d), bw.d);
        // SAFETY: reads exactly the 16 bytes of the i8 scales, and the 32 bytes of the 16 i16 bsums.
        let (sc8, bsums) =
            unsafe { (_mm_loadu_si128(bw.scales.as_ptr().cast()), _mm256_loadu_si256(bx.bsums.as_ptr().cast())) };
        // Quants are stored as q + 32: subtract 32 * sum_j sc[j] * bsum[j] (|pair| <= 2 * 128 * 2032).
        let offset = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), bsums);
        let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(offset));
        for h in 0..2 {
            // The 8 i16 scales of this half in both 128-bit lanes.
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
                // Low lane: scale 2t of the half (values base..base + 16), high lane: scale 2t + 1.
                let (lo, hi) = ((4 * t) as i16, (4 * t + 2) as i16);
                let pick = _mm256_set_m128i(_mm_set1_epi16(hi | ((hi + 1) << 8)), _mm_set1_epi16(lo | ((lo + 1) << 8)));
                let sc = _mm256_shuffle_epi8(sc_h, pick);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q6, q8), sc));
            }
        }
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(128), x.chunks_exact(128));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (w, x) in wc.zip(xc) {
        for u in 0..4 {
            let a = load_f32x8_bytes(arr(&w[32 * u..32 * u + 32]));
            let b = load_f32x8_bytes(arr(&x[32 * u..32 * u + 32]));
            acc[u] = _mm256_fmadd_ps(a, b, acc[u]);
        }
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail = n % 32;
    hsum_ps(sum) + crate::f16::dot_f32_ref(tail, wt, xt)
}

/// 8 bf16 values widened to f32 (exact: the bf16 bits are the top half of the f32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16x8(b: &[u8; 16]) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load_16(b))))
}

/// 8 f16 (`BF16 == false`, F16C) or bf16 values widened to f32, exactly.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn half_x8<const BF16: bool>(b: &[u8; 16]) -> __m256 {
    if BF16 {
        bf16x8(b)
    } else {
        _mm256_cvtph_ps(load_16(b))
    }
}

/// `sum(w[i] * x[i])` of a 16-bit float weight row and an f32 activation row: 32 values per step in four
/// independent accumulators, then 8 at a time, then the last `n % 8` with the scalar reference.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_half_f32<const BF16: bool>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(64), x.chunks_exact(128));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (w, x) in wc.zip(xc) {
        for u in 0..4 {
            let a = half_x8::<BF16>(arr(&w[16 * u..16 * u + 16]));
            let b = load_f32x8_bytes(arr(&x[32 * u..32 * u + 32]));
            acc[u] = _mm256_fmadd_ps(a, b, acc[u]);
        }
    }
    let (w8, x8) = (wt.chunks_exact(16), xt.chunks_exact(32));
    let (wt, xt) = (w8.remainder(), x8.remainder());
    // At most three chunks of 8: one per accumulator.
    for (u, (w, x)) in w8.zip(x8).enumerate() {
        acc[u] = _mm256_fmadd_ps(half_x8::<BF16>(arr(w)), load_f32x8_bytes(arr(x)), acc[u]);
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail =
        if BF16 { crate::f16::dot_bf16_f32_ref(n % 8, wt, xt) } else { crate::f16::dot_f16_f32_ref(n % 8, wt, xt) };
    hsum_ps(sum) + tail
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_f16_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_half_f32::<false>(n, w, x)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dot_bf16_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_half_f32::<true>(n, w, x)
}

// ---- activation quantizers (bit-identical to the scalar ones) ----

/// Quantizes 32 floats as `quantize_block_q8`: returns the f32 scale and the sum of the quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block_q8(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let v: [__m256; 4] = std::array::from_fn(|u| load_f32x8(arr(&x[8 * u..8 * u + 8])));
    let sign = _mm256_set1_ps(-0.0);
    let mut amax = _mm256_andnot_ps(sign, v[0]);
    for vu in &v[1..] {
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, *vu));
    }
    let amax = hmax_ps(amax);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let q: [__m256i; 4] = std::array::from_fn(|u| {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v[u], id));
        _mm256_cvtps_epi32(r)
    });
    let sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    store_i8_32(qs, ordered);
    (d, sum)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_q8_0(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8_0>(dst).iter_mut().zip(x.chunks_exact(32)) {
        let (d, _) = quantize_block_q8(x, &mut b.qs);
        b.d = crate::f32_to_f16(d).to_le_bytes();
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_q8_1(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8_1>(dst).iter_mut().zip(x.chunks_exact(32)) {
        let (d, sum) = quantize_block_q8(x, &mut b.qs);
        b.d = crate::f32_to_f16(d).to_le_bytes();
        b.s = crate::f32_to_f16(d * sum as f32).to_le_bytes();
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_q8_k(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8K>(dst).iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut vmax, mut vmin) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in x.chunks_exact(8) {
            let v = load_f32x8(arr(c));
            vmax = _mm256_max_ps(vmax, v);
            vmin = _mm256_min_ps(vmin, v);
        }
        let (hi, lo) = (hmax_ps(vmax), hmin_ps(vmin));
        // The signed value of largest magnitude; on a +/- tie the first one in the row, as the scalar scan.
        let max = if hi > -lo {
            hi
        } else if hi < -lo {
            lo
        } else {
            crate::q8_k::signed_absmax(x)
        };
        if max == 0.0 {
            b.d = 0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        let vs = _mm256_set1_ps(iscale);
        for (g, c) in x.chunks_exact(32).enumerate() {
            let q: [__m256i; 4] = std::array::from_fn(|u| {
                let v = _mm256_mul_ps(load_f32x8(arr(&c[8 * u..8 * u + 8])), vs);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_min_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(127))
            });
            b.bsums[2 * g] = (hsum_epi32(_mm256_add_epi32(q[0], q[1])) as i16).to_le_bytes();
            b.bsums[2 * g + 1] = (hsum_epi32(_mm256_add_epi32(q[2], q[3])) as i16).to_le_bytes();
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            store_i8_32(arr_mut(&mut b.qs[32 * g..32 * g + 32]), ordered);
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_f16(x: &[f32], dst: &mut [u8]) {
    let (xc, dc) = (x.chunks_exact(8), dst.chunks_exact_mut(16));
    let xt = xc.remainder();
    let n_main = x.len() - xt.len();
    for (x, d) in xc.zip(dc) {
        let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(load_f32x8(arr(x)));
        store_16(arr_mut(d), h);
    }
    crate::f16::quantize_f16_ref(xt, &mut dst[2 * n_main..]);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn quantize_bf16(x: &[f32], dst: &mut [u8]) {
    let (xc, dc) = (x.chunks_exact(8), dst.chunks_exact_mut(16));
    let xt = xc.remainder();
    let n_main = x.len() - xt.len();
    for (x, d) in xc.zip(dc) {
        let v = load_f32x8(arr(x));
        let u = _mm256_castps_si256(v);
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
        let rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
        let rounded = _mm256_srli_epi32::<16>(rounded);
        let nan = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(64));
        let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let h = _mm256_blendv_epi8(rounded, nan, is_nan);
        let packed = _mm256_packus_epi32(h, h);
        let packed = _mm256_permute4x64_epi64::<0b1000>(packed);
        store_16(arr_mut(d), _mm256_castsi256_si128(packed));
    }
    crate::f16::quantize_bf16_ref(xt, &mut dst[2 * n_main..]);
}

// ---- dequantizers (bit-identical to the scalar ones: the same f32 operations in the same order, no FMA) ----

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_f32x8(y: &mut [f32; 8], v: __m256) {
    // SAFETY: writes exactly the 8 floats of `y`.
    unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) }
}

/// 8 quant bytes (u8 or i8 already widened by the caller) -> f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8x8_to_f32(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dequant_f16(src: &[u8], y: &mut [f32]) {
    let (sc, yc) = (src.chunks_exact(16), y.chunks_exact_mut(8));
    let st = sc.remainder();
    for (s, y) in sc.zip(yc) {
        store_f32x8(arr_mut(y), _mm256_cvtph_ps(load_16(arr(s))));
    }
    let n_main = y.len() - st.len() / 2;
    crate::f16::dequant_f16_ref(st, &mut y[n_main..]);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dequant_bf16(src: &[u8], y: &mut [f32]) {
    let (sc, yc) = (src.chunks_exact(16), y.chunks_exact_mut(8));
    let st = sc.remainder();
    for (s, y) in sc.zip(yc) {
        store_f32x8(arr_mut(y), bf16x8(arr(s)));
    }
    let n_main = y.len() - st.len() / 2;
    crate::f16::dequant_bf16_ref(st, &mut y[n_main..]);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dequant_q8_0(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ8_0>(src).iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16(b.d));
        let q = load_i8_32(&b.qs);
        let halves = [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)];
        for (h, half) in halves.into_iter().enumerate() {
            let lo = i8x8_to_f32(half);
            let hi = i8x8_to_f32(_mm_unpackhi_epi64(half, half));
            store_f32x8(arr_mut(&mut y[16 * h..16 * h + 8]), _mm256_mul_ps(lo, d));
            store_f32x8(arr_mut(&mut y[16 * h + 8..16 * h + 16]), _mm256_mul_ps(hi, d));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dequant_q4_0(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ4_0>(src).iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16(b.d));
        let q = _mm256_sub_epi8(nibbles_32(&b.qs), _mm256_set1_epi8(8));
        let halves = [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)];
        for (h, half) in halves.into_iter().enumerate() {
            let lo = i8x8_to_f32(half);
            let hi = i8x8_to_f32(_mm_unpackhi_epi64(half, half));
            store_f32x8(arr_mut(&mut y[16 * h..16 * h + 8]), _mm256_mul_ps(lo, d));
            store_f32x8(arr_mut(&mut y[16 * h + 8..16 * h + 16]), _mm256_mul_ps(hi, d));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dequant_q4_k(src: &[u8], y: &mut [f32]) {
    let m4 = _mm_set1_epi8(0x0f);
    for (b, y) in blocks::<BlockQ4K>(src).iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16(b.d), f16(b.dmin));
        for j in 0..8 {
            let (sc, m) = crate::q4_k::scale_min_k4(j, &b.scales);
            let (dj, mj) = (_mm256_set1_ps(d * sc as f32), _mm256_set1_ps(dmin * m as f32));
            let (k, shift) = (j / 2, _mm_cvtsi32_si128(4 * (j % 2) as i32));
            for h in 0..2 {
                let q = load_16(arr(&b.qs[32 * k + 16 * h..32 * k + 16 * h + 16]));
                let q = _mm_and_si128(_mm_srl_epi16(q, shift), m4);
                for e in 0..2 {
                    let v = i8x8_to_f32(if e == 0 { q } else { _mm_unpackhi_epi64(q, q) });
                    let at = 32 * j + 16 * h + 8 * e;
                    store_f32x8(arr_mut(&mut y[at..at + 8]), _mm256_sub_ps(_mm256_mul_ps(dj, v), mj));
                }
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn dequant_q6_k(src: &[u8], y: &mut [f32]) {
    let m4 = _mm_set1_epi8(0x0f);
    let m2 = _mm_set1_epi8(3);
    for (b, y) in blocks::<BlockQ6K>(src).iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = f16(b.d);
        for h in 0..2 {
            for o in [0, 16] {
                let ql0 = load_16(arr(&b.ql[64 * h + o..64 * h + o + 16]));
                let ql1 = load_16(arr(&b.ql[64 * h + 32 + o..64 * h + 32 + o + 16]));
                let qh = load_16(arr(&b.qh[32 * h + o..32 * h + o + 16]));
                let high = |t: i32| _mm_slli_epi16::<4>(_mm_and_si128(_mm_srl_epi16(qh, _mm_cvtsi32_si128(2 * t)), m2));
                let q = [
                    _mm_or_si128(_mm_and_si128(ql0, m4), high(0)),
                    _mm_or_si128(_mm_and_si128(ql1, m4), high(1)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(ql0), m4), high(2)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(ql1), m4), high(3)),
                ];
                for (t, q) in q.into_iter().enumerate() {
                    let q = _mm_sub_epi8(q, _mm_set1_epi8(32));
                    let at = 128 * h + 32 * t + o;
                    let dsc = _mm256_set1_ps(d * b.scales[at / 16] as f32);
                    for e in 0..2 {
                        let v = i8x8_to_f32(if e == 0 { q } else { _mm_unpackhi_epi64(q, q) });
                        store_f32x8(arr_mut(&mut y[at + 8 * e..at + 8 * e + 8]), _mm256_mul_ps(dsc, v));
                    }
                }
            }
        }
    }
}
