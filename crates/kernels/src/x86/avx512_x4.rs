//! AVX-512 four-token dot of Q8_0 (its VNNI single-row kernel is in `avx512.rs`): one weight row against four
//! activation rows, each weight block decoded once. As in `avx2_x4.rs`, every output repeats the single-row
//! kernel's f32 operations in the same order, so it is BIT-IDENTICAL to it. (Q4_K and Q6_K: `avx512_kq.rs`.)

use super::avx2::{f16, load_i8_32};
use super::avx2_x4::{blocks_x4, fold_blocks_x4};
use super::avx512::dot_i8_quads;
use crate::blocks;
use crate::q8_0::BlockQ8_0;
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
