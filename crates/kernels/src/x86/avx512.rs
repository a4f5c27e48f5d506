//! AVX-512 (F/BW/VL/VNNI) kernels: 512-bit registers and `vpdpbusd` (u8 x i8 -> i32, four products per lane,
//! no saturation) for Q8_0, Q4_0, Q4_K and Q6_K, and 512-bit F16/BF16 dots. Other formats use the AVX2 entries.
//! The only `unsafe` blocks are the fixed-size loads; everything else is safe once the features are present.

use super::avx2::{f16, hsum_ps, load_16, load_32, load_i8_32, q6k_offset, scales_mins_k};
use crate::blocks;
use crate::q4_0::BlockQ4_0;
use crate::q4_k::BlockQ4K;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_k::BlockQ8K;
use std::arch::x86_64::*;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_64(b: &[u8; 64]) -> __m512i {
    // SAFETY: reads exactly the 64 bytes of `b`; loadu has no alignment requirement.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_i8_64(b: &[i8; 64]) -> __m512i {
    // SAFETY: reads exactly the 64 bytes of `b`.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

fn arr<const N: usize, T>(s: &[T]) -> &[T; N] {
    s.try_into().expect("chunk of exactly N elements")
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Two f32 scales, each broadcast to 8 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn scales2(a: f32, b: f32) -> __m512 {
    let lo = _mm512_castps256_ps512(_mm256_set1_ps(a));
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castps_pd(lo),
        _mm256_castps_pd(_mm256_set1_ps(b)),
    ))
}

/// Signed x signed byte dot in groups of 4: |x| (as u8, so -128 is 128) times y with x's sign.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_i8_quads(x: __m512i, y: __m512i) -> __m512i {
    let neg = _mm512_movepi8_mask(x);
    let sy = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(x), sy)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (bw, bx) = (blocks::<BlockQ8_0>(w), blocks::<BlockQ8_0>(x));
    let mut acc = _mm512_setzero_ps();
    let (pw, px) = (bw.chunks_exact(2), bx.chunks_exact(2));
    let (tw, tx) = (pw.remainder(), px.remainder());
    for (w2, x2) in pw.zip(px) {
        let qw = join(load_i8_32(&w2[0].qs), load_i8_32(&w2[1].qs));
        let qx = join(load_i8_32(&x2[0].qs), load_i8_32(&x2[1].qs));
        let d = scales2(f16(w2[0].d) * f16(x2[0].d), f16(w2[1].d) * f16(x2[1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(dot_i8_quads(qw, qx)), acc);
    }
    let mut sum = _mm512_reduce_add_ps(acc);
    for (bw, bx) in tw.iter().zip(tx) {
        let qw = _mm512_castsi256_si512(load_i8_32(&bw.qs));
        let qx = _mm512_castsi256_si512(load_i8_32(&bx.qs));
        let p = _mm512_castsi512_si256(dot_i8_quads(qw, qx));
        sum += hsum_ps(_mm256_mul_ps(
            _mm256_set1_ps(f16(bw.d) * f16(bx.d)),
            _mm256_cvtepi32_ps(p),
        ));
    }
    sum
}

/// Q4_0 quants (0..16) of a block as 32 bytes in value order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn nibbles_32(qs: &[u8; 16]) -> __m256i {
    let tmp = load_16(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(tmp), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_0_q8_0(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (bw, bx) = (blocks::<BlockQ4_0>(w), blocks::<BlockQ8_0>(x));
    let eight = _mm512_set1_epi8(8);
    let zero = _mm512_setzero_si512();
    // sum((q - 8) * y) = sum(q * y) - sum(8 * y), both as u8 x i8 VNNI products.
    let quads = |qw: __m512i, qx: __m512i| {
        _mm512_sub_epi32(
            _mm512_dpbusd_epi32(zero, qw, qx),
            _mm512_dpbusd_epi32(zero, eight, qx),
        )
    };
    let mut acc = _mm512_setzero_ps();
    let (pw, px) = (bw.chunks_exact(2), bx.chunks_exact(2));
    let (tw, tx) = (pw.remainder(), px.remainder());
    for (w2, x2) in pw.zip(px) {
        let qw = join(nibbles_32(&w2[0].qs), nibbles_32(&w2[1].qs));
        let qx = join(load_i8_32(&x2[0].qs), load_i8_32(&x2[1].qs));
        let d = scales2(f16(w2[0].d) * f16(x2[0].d), f16(w2[1].d) * f16(x2[1].d));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(quads(qw, qx)), acc);
    }
    let mut sum = _mm512_reduce_add_ps(acc);
    for (bw, bx) in tw.iter().zip(tx) {
        let qw = _mm512_castsi256_si512(nibbles_32(&bw.qs));
        let qx = _mm512_castsi256_si512(load_i8_32(&bx.qs));
        let p = _mm512_castsi512_si256(quads(qw, qx));
        sum += hsum_ps(_mm256_mul_ps(
            _mm256_set1_ps(f16(bw.d) * f16(bx.d)),
            _mm256_cvtepi32_ps(p),
        ));
    }
    sum
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q4_k_q8_k(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let zero = _mm512_setzero_si512();
    let mut acc = _mm512_setzero_ps();
    let mut acc_m = 0f32;
    for (bw, bx) in blocks::<BlockQ4K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let dy = f32::from_le_bytes(bx.d);
        let (sc, summ) = scales_mins_k(&bw.scales, bx);
        acc_m += dy * f16(bw.dmin) * summ as f32;
        // SAFETY: reads exactly the 16 bytes of the [i16; 8] array `sc`.
        let sc16 = unsafe { _mm_loadu_si128(sc.as_ptr().cast()) };
        let sc32 = _mm512_castsi256_si512(_mm256_cvtepi16_epi32(sc16));
        let mut sumi = _mm512_setzero_si512();
        for k in 0..4 {
            let q4 = load_32(arr(&bw.qs[32 * k..32 * k + 32]));
            let q = join(
                _mm256_and_si256(q4, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4),
            );
            let q8 = load_i8_64(arr(&bx.qs[64 * k..64 * k + 64]));
            // Lanes 0..8 belong to sub-block 2k, lanes 8..16 to 2k + 1.
            let idx = join(
                _mm256_set1_epi32(2 * k as i32),
                _mm256_set1_epi32(2 * k as i32 + 1),
            );
            let scale = _mm512_permutexvar_epi32(idx, sc32);
            sumi = _mm512_add_epi32(
                sumi,
                _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, q, q8), scale),
            );
        }
        acc = _mm512_fmadd_ps(
            _mm512_set1_ps(dy * f16(bw.d)),
            _mm512_cvtepi32_ps(sumi),
            acc,
        );
    }
    _mm512_reduce_add_ps(acc) - acc_m
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let m4 = _mm512_set1_epi8(0x0f);
    let m2 = _mm512_set1_epi8(3);
    let zero = _mm512_setzero_si512();
    let mut acc = _mm512_setzero_ps();
    for (bw, bx) in blocks::<BlockQ6K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let d = _mm512_set1_ps(f32::from_le_bytes(bx.d) * f16(bw.d));
        // SAFETY: reads exactly the 16 bytes of the scales array.
        let sc8 = unsafe { _mm_loadu_si128(bw.scales.as_ptr().cast()) };
        let sc32 = _mm512_cvtepi8_epi32(sc8);
        let mut sumi = _mm512_mask_set1_epi32(zero, 1, -q6k_offset(bw, bx));
        for h in 0..2 {
            let ql = load_64(arr(&bw.ql[64 * h..64 * h + 64]));
            let qh = load_32(arr(&bw.qh[32 * h..32 * h + 32]));
            let qh2 = join(qh, _mm256_srli_epi16::<2>(qh));
            // Values 128h + 0..64 (low nibbles, qh bits 0..4) and 128h + 64..128 (high nibbles, bits 4..8).
            let halves = [
                _mm512_or_si512(
                    _mm512_and_si512(ql, m4),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(qh2, m2)),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(qh2), m2)),
                ),
            ];
            for (p, q6) in halves.into_iter().enumerate() {
                let base = 128 * h + 64 * p;
                let q8 = load_i8_64(arr(&bx.qs[base..base + 64]));
                // Lane i covers values base + 4i .. base + 4i + 4: sub-block base / 16 + i / 4.
                let j = (base / 16) as i32;
                let idx = _mm512_setr_epi32(
                    j,
                    j,
                    j,
                    j,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 1,
                    j + 2,
                    j + 2,
                    j + 2,
                    j + 2,
                    j + 3,
                    j + 3,
                    j + 3,
                    j + 3,
                );
                let scale = _mm512_permutexvar_epi32(idx, sc32);
                sumi = _mm512_add_epi32(
                    sumi,
                    _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, q6, q8), scale),
                );
            }
        }
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
    }
    _mm512_reduce_add_ps(acc)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_f16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(128), x.chunks_exact(128));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (w, x) in wc.zip(xc) {
        for u in 0..4 {
            let a = _mm512_cvtph_ps(load_32(arr(&w[32 * u..32 * u + 32])));
            let b = _mm512_cvtph_ps(load_32(arr(&x[32 * u..32 * u + 32])));
            acc[u] = _mm512_fmadd_ps(a, b, acc[u]);
        }
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum) + super::avx2::dot_f16(n % 64, wt, xt)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bf16x16(b: &[u8; 32]) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(load_32(b))))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_bf16(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let (wc, xc) = (w.chunks_exact(128), x.chunks_exact(128));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (w, x) in wc.zip(xc) {
        for u in 0..4 {
            let a = bf16x16(arr(&w[32 * u..32 * u + 32]));
            let b = bf16x16(arr(&x[32 * u..32 * u + 32]));
            acc[u] = _mm512_fmadd_ps(a, b, acc[u]);
        }
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum) + super::avx2::dot_bf16(n % 64, wt, xt)
}
