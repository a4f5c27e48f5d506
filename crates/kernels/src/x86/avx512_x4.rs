//! AVX-512 multi-row dots for the formats with their own 512-bit (or VNNI) single-row kernel in `avx512.rs`:
//! one weight row against four activation rows, each weight block decoded once. As in `avx2_x4.rs`, every
//! output repeats the single-row kernel's f32 operations in the same order, so it is BIT-IDENTICAL to it.

use super::avx2::{f16, hsum_epi32, load_32, load_i8_32};
use super::avx2_x4::{blocks_x4, fold_blocks_x4};
use super::avx512::{arr, dot_i8_quads, hsum_512, join, load_64, load_i8_64};
use crate::blocks;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_k::BlockQ8K;
use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q8_0_q8_0_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let bw = blocks::<BlockQ8_0>(w);
    let decode = |bw: &BlockQ8_0| (f16(bw.d), load_i8_32(&bw.qs));
    // As avx512::dot_q8_0_q8_0: the f32 product f16(w.d) * f16(x.d), and one `vpdpbusd` per block.
    *out = fold_blocks_x4(bw, blocks_x4(bw.len(), xs), decode, |&(dw, qw), bx: &BlockQ8_0| {
        let d = _mm256_set1_ps(dw * f16(bx.d));
        (d, _mm256_cvtepi32_ps(dot_i8_quads(qw, load_i8_32(&bx.qs))))
    });
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) fn dot_q6_k_q8_k_x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
    let m4 = _mm512_set1_epi8(0x0f);
    let m2 = _mm512_set1_epi8(3);
    let zero = _mm512_setzero_si512();
    let bw = blocks::<BlockQ6K>(w);
    let bx = blocks_x4::<BlockQ8K>(bw.len(), xs);
    let mut acc = [_mm512_setzero_ps(); 4];
    for (b, bw) in bw.iter().enumerate() {
        let dw = _mm512_cvtph_ps(_mm256_set1_epi16(i16::from_le_bytes(bw.d)));
        let d = [0, 1, 2, 3].map(|i| _mm512_mul_ps(_mm512_set1_ps(f32::from_le_bytes(bx[i][b].d)), dw));
        // SAFETY: reads exactly the 16 bytes of the scales array.
        let sc8 = unsafe { _mm_loadu_si128(bw.scales.as_ptr().cast()) };
        let sc32 = _mm512_cvtepi8_epi32(sc8);
        // `q6k_offset` (an exact integer) with one `vpmaddwd` per row instead of 16 scalar products.
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let mut sumi = [0, 1, 2, 3].map(|i| {
            // SAFETY: reads exactly the 32 bytes of the 16 i16 bsums.
            let bsums = unsafe { _mm256_loadu_si256(bx[i][b].bsums.as_ptr().cast()) };
            let offset = 32 * hsum_epi32(_mm256_madd_epi16(sc16, bsums));
            _mm512_mask_set1_epi32(zero, 1, -offset)
        });
        for h in 0..2 {
            let ql = load_64(arr(&bw.ql[64 * h..64 * h + 64]));
            let qh = load_32(arr(&bw.qh[32 * h..32 * h + 32]));
            let qh2 = join(qh, _mm256_srli_epi16::<2>(qh));
            let halves = [
                _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16::<4>(_mm512_and_si512(qh2, m2))),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                    _mm512_slli_epi16::<4>(_mm512_and_si512(_mm512_srli_epi16::<4>(qh2), m2)),
                ),
            ];
            for (p, q6) in halves.into_iter().enumerate() {
                let base = 128 * h + 64 * p;
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
                for i in 0..4 {
                    let q8 = load_i8_64(arr(&bx[i][b].qs[base..base + 64]));
                    sumi[i] = _mm512_add_epi32(sumi[i], _mm512_mullo_epi32(_mm512_dpbusd_epi32(zero, q6, q8), scale));
                }
            }
        }
        for i in 0..4 {
            acc[i] = _mm512_fmadd_ps(d[i], _mm512_cvtepi32_ps(sumi[i]), acc[i]);
        }
    }
    *out = [0, 1, 2, 3].map(|i| hsum_512(acc[i]));
}
