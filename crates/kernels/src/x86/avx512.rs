//! AVX-512 (F/BW/VL/VNNI) kernels: `vpdpbusd` (u8 x i8 -> i32, four products per lane, no saturation) for
//! Q8_0 and Q4_0 (256-bit), and 512-bit F16 and BF16 weight x F32 activation dots (tails by masked loads).
//! Q4_K and Q6_K have their own family in block-total form (`avx512_kq.rs`); other formats use the AVX2 entries.
//! The only `unsafe` blocks are the fixed-size loads; everything else is safe once the features are present.

use super::avx2::{f16_mul, fold_blocks, hsum_ps, load_32, load_i8_32, nibbles_32};
use crate::blocks;
use crate::q4_0::BlockQ4_0;
use crate::q8_0::BlockQ8_0;
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn load_64(b: &[u8; 64]) -> __m512i {
    // SAFETY: reads exactly the 64 bytes of `b`; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn load_i8_64(b: &[i8; 64]) -> __m512i {
    // SAFETY: reads exactly the 64 bytes of `b`.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

pub(super) fn arr<const N: usize, T>(s: &[T]) -> &[T; N] {
    s.try_into().expect("chunk of exactly N elements")
}

/// Horizontal sum in a fixed order (256-bit halves, then `hsum_ps`), built from plain adds the compiler may not
/// reorder (unlike a reduction intrinsic, which LLVM may reassociate): the four-row kernels call it too and so
/// stay bit-identical to the single-row ones.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn hsum_512(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
}

/// Signed x signed byte dot in groups of 4 with one `vpdpbusd`: |x| (as u8, so -128 is 128) times y with x's
/// sign (|y| <= 127).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn dot_i8_quads(x: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

// Q8_0 and Q4_0 blocks are 32 quants: one 256-bit `vpdpbusd` per block (Zen 4 splits 512-bit operations in two
// anyway), two blocks in flight.

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    fold_blocks(blocks::<BlockQ8_0>(w), blocks::<BlockQ8_0>(x), |bw, bx| {
        let d = _mm256_set1_ps(f16_mul(bw.d, bx.d));
        (d, _mm256_cvtepi32_ps(dot_i8_quads(load_i8_32(&bw.qs), load_i8_32(&bx.qs))))
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    fold_blocks(blocks::<BlockQ4_0>(w), blocks::<BlockQ8_0>(x), |bw, bx| {
        let d = _mm256_set1_ps(f16_mul(bw.d, bx.d));
        let qw = _mm256_sub_epi8(nibbles_32(&bw.qs), _mm256_set1_epi8(8));
        (d, _mm256_cvtepi32_ps(dot_i8_quads(qw, load_i8_32(&bx.qs))))
    })
}

/// 16 f16 (`BF16 == false`) or bf16 values widened to f32, exactly.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn half_x16<const BF16: bool>(h: __m256i) -> __m512 {
    if BF16 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    } else {
        _mm512_cvtph_ps(h)
    }
}

/// `sum(w[i] * x[i])` of a 16-bit float weight row and an f32 activation row: 64 values per step in four
/// independent accumulators, then 16 at a time, then the last `n % 16` with masked loads (no scalar tail).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_half_f32<const BF16: bool>(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(128), x.chunks_exact(256));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (w, x) in wc.zip(xc) {
        for u in 0..4 {
            let a = half_x16::<BF16>(load_32(arr(&w[32 * u..32 * u + 32])));
            // SAFETY: reads exactly the 64 bytes of the chunk of x (16 floats, unaligned load).
            let b = unsafe { _mm512_loadu_ps(x[64 * u..64 * u + 64].as_ptr().cast()) };
            acc[u] = _mm512_fmadd_ps(a, b, acc[u]);
        }
    }
    let (w16, x16) = (wt.chunks_exact(32), xt.chunks_exact(64));
    let (wt, xt) = (w16.remainder(), x16.remainder());
    // At most three chunks of 16: one per accumulator.
    for (u, (w, x)) in w16.zip(x16).enumerate() {
        // SAFETY: reads exactly the 64 bytes of `x` (16 floats, unaligned load).
        let b = unsafe { _mm512_loadu_ps(x.as_ptr().cast()) };
        acc[u] = _mm512_fmadd_ps(half_x16::<BF16>(load_32(arr(w))), b, acc[u]);
    }
    let r = n % 16;
    assert!(wt.len() == 2 * r && xt.len() == 4 * r);
    if r > 0 {
        let mask = ((1u32 << r) - 1) as __mmask16;
        // SAFETY: the masked loads touch only the first r lanes, i.e. the 2r bytes of `wt` and the 4r bytes of
        // `xt` (checked above); masked-off lanes are never accessed, so they cannot fault.
        let (h, b) = unsafe {
            (_mm256_maskz_loadu_epi16(mask, wt.as_ptr().cast()), _mm512_maskz_loadu_ps(mask, xt.as_ptr().cast()))
        };
        acc[3] = _mm512_fmadd_ps(half_x16::<BF16>(h), b, acc[3]);
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    hsum_512(sum)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_f16_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_half_f32::<false>(n, w, x)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_bf16_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    dot_half_f32::<true>(n, w, x)
}
