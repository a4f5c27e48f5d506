//! AVX-512 four-row dots for single-token decode, for the formats with their own 512-bit (or VNNI) single-row
//! kernel in `avx512.rs`: four weight rows against one activation row, sharing the activation loads and the
//! Q8_K `bsums` work, with the four horizontal sums done together. As in `avx2_r4.rs`, every output repeats
//! the single-row kernel's f32 operations in the same order, so it is BIT-IDENTICAL to it.
//! Q8_0 walks the four rows block by block (each activation block loaded once for the four rows); Q4_K and
//! Q6_K, whose weight decode needs most of the registers, run the rows one after the other over the same
//! activation row (in L1) and save only the calls, the per-call setup and three horizontal sums: interleaving
//! their rows measured slower (0.96x to 1.1x of four single calls against 1.02x to 1.2x, depending on the
//! build's code layout).

use super::avx2::{f16_mul, hsum_epi32, load_32, load_i8_32};
use super::avx2_r4::{blocks_r4, fold_blocks_r4, hsum4_ps};
use super::avx512::{arr, dot_i8_quads, join, load_64, load_i8_64};
use crate::blocks;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_k::BlockQ8K;
use std::arch::x86_64::*;

/// `[hsum_512(v[0]), .., hsum_512(v[3])]`: the same 256-bit halves added, then `hsum4_ps` (the `hsum_ps` tree).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum4_512(v: [__m512; 4]) -> [f32; 4] {
    hsum4_ps(v.map(|v| {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        _mm256_add_ps(_mm512_castps512_ps256(v), hi)
    }))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let bx = blocks::<BlockQ8_0>(x);
    let decode = |bx: &BlockQ8_0| (bx.d, load_i8_32(&bx.qs));
    // As avx512::dot_q8_0_q8_0: the f32 product f16(w.d) * f16(x.d) (`f16_mul`), and one `vpdpbusd` per block.
    *out = fold_blocks_r4(blocks_r4(bx.len(), ws), bx, decode, |bw: &BlockQ8_0, &(dx, qx)| {
        let d = _mm256_set1_ps(f16_mul(bw.d, dx));
        (d, _mm256_cvtepi32_ps(dot_i8_quads(load_i8_32(&bw.qs), qx)))
    });
}

/// One Q6_K block of one weight row against its Q8_K activation block, as the loop body of
/// avx512::dot_q6_k_q8_k: the f32 scale in 16 lanes and the exact i32 sums (`bsums`: the activation block's,
/// loaded by the caller).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6_k_block(bw: &BlockQ6K, bx: &BlockQ8K, dy: __m512, bsums: __m256i) -> (__m512, __m512i) {
    let m4 = _mm512_set1_epi8(0x0f);
    let m2 = _mm512_set1_epi8(3);
    let zero = _mm512_setzero_si512();
    let d = _mm512_mul_ps(dy, _mm512_cvtph_ps(_mm256_set1_epi16(i16::from_le_bytes(bw.d))));
    // SAFETY: reads exactly the 16 bytes of the scales array.
    let sc8 = unsafe { _mm_loadu_si128(bw.scales.as_ptr().cast()) };
    let sc32 = _mm512_cvtepi8_epi32(sc8);
    // `q6k_offset` (an exact integer), as avx512::dot_q6_k_q8_k.
    let offset = 32 * hsum_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), bsums));
    let mut sumi = _mm512_mask_set1_epi32(zero, 1, -offset);
    for h in 0..2 {
        let ql = load_64(arr(&bw.ql[64 * h..64 * h + 64]));
        let qh = load_32(arr(&bw.qh[32 * h..32 * h + 32]));
        let qh2 = join(qh, _mm256_srli_epi16::<2>(qh));
        // Values 128h + 0..64 (low nibbles, qh bits 0..4) and 128h + 64..128 (high nibbles, bits 4..8).
        let halves = [
            _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16::<4>(_mm512_and_si512(qh2, m2))),
            _mm512_or_si512(
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(qh2), m2)),
            ),
        ];
        for (p, q6) in halves.into_iter().enumerate() {
            let base = 128 * h + 64 * p;
            let q8 = load_i8_64(arr(&bx.qs[base..base + 64]));
            // Lane l covers values base + 4l .. base + 4l + 4: sub-block base / 16 + l / 4.
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
            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, q6, q8), scale));
        }
    }
    (d, sumi)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k_r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
    let bx = blocks::<BlockQ8K>(x);
    let bw = blocks_r4::<BlockQ6K>(bx.len(), ws);
    // Row by row, as avx2_r4::dot_q6_k_q8_k_r4.
    let row = |bw: &[BlockQ6K]| {
        let mut acc = _mm512_setzero_ps();
        for (bw, bx) in bw.iter().zip(bx) {
            // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
            let bsums = unsafe { _mm256_loadu_si256(bx.bsums.as_ptr().cast()) };
            let (d, sumi) = q6_k_block(bw, bx, _mm512_set1_ps(f32::from_le_bytes(bx.d)), bsums);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
        }
        acc
    };
    *out = hsum4_512([row(bw[0]), row(bw[1]), row(bw[2]), row(bw[3])]);
}
