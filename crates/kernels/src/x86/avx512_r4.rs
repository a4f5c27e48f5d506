//! AVX-512 four-row dot for single-token decode of Q8_0 (its VNNI single-row kernel is in `avx512.rs`): four
//! weight rows against one activation row, walking the rows block by block so each activation block is loaded
//! once for the four, with the four horizontal sums done together. As in `avx2_r4.rs`, every output repeats
//! the single-row kernel's f32 operations in the same order, so it is BIT-IDENTICAL to it. (Q4_K and Q6_K:
//! `avx512_kq.rs`.)

use super::avx2::{f16_mul, load_i8_32};
use super::avx2_r4::{blocks_r4, fold_blocks_r4};
use super::avx512::dot_i8_quads;
use crate::blocks;
use crate::q8_0::BlockQ8_0;
use std::arch::x86_64::*;

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
