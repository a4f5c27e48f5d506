//! Q8_0: 32 values as `d * q` with an f16 scale `d` and i8 quants. A weight format and the activation format
//! that Q4_0, Q5_0 and Q8_0 weights are dotted with; owns the Q8_0 activation quantizer.

use crate::f16::{f16_to_f32, f32_to_f16};
use crate::{blocks, blocks_mut, Block};

pub const QK8_0: usize = 32;

#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Quants: value i is `d * qs[i]`.
    pub qs: [i8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ8_0 {}

impl BlockQ8_0 {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
}

pub fn dequant_q8_0_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ8_0>(src).iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = b.d();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

/// Scale and quants of one block as llama.cpp's AVX `quantize_row_q8_0`: `d = amax / 127`,
/// `q = round_half_even(x * (127 / amax))`. Returns the f16 bits of `d`, the quants and their sum.
pub(crate) fn quantize_block_q8(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// Q8_0 quantizer (activations and weights alike).
pub fn quantize_q8_0_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8_0>(dst).iter_mut().zip(x.chunks_exact(QK8_0)) {
        let (d, _) = quantize_block_q8(x, &mut b.qs);
        b.d = f32_to_f16(d).to_le_bytes();
    }
}

/// sum over blocks of `d_w * d_x * sum(qw[i] * qx[i])`.
pub fn dot_q8_0_q8_0_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in blocks::<BlockQ8_0>(w).iter().zip(blocks::<BlockQ8_0>(x)) {
        let sumi: i32 = bw.qs.iter().zip(&bx.qs).map(|(&a, &b)| a as i32 * b as i32).sum();
        sumf += bw.d() * bx.d() * sumi as f32;
    }
    sumf
}
