//! Q8_1: Q8_0 plus `s = d * sum(q)` (f16), the activation format for Q4_1 and Q5_1 weights (their min term
//! `m * sum(x)` becomes `m * s`). Owns the Q8_1 activation quantizer.

use crate::f16::{f16_to_f32, f32_to_f16};
use crate::q8_0::quantize_block_q8;
use crate::{blocks, blocks_mut, Block};

pub const QK8_1: usize = 32;

#[repr(C)]
pub struct BlockQ8_1 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// `d * sum(qs)` (f16).
    pub s: [u8; 2],
    pub qs: [i8; QK8_1],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ8_1 {}

impl BlockQ8_1 {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    pub fn s(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.s))
    }
}

pub fn dequant_q8_1_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ8_1>(src).iter().zip(y.chunks_exact_mut(QK8_1)) {
        let d = b.d();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

/// As Q8_0, plus `s = f16(d * sum(q))` with `d` the f32 scale before rounding to f16 (as llama.cpp).
pub fn quantize_q8_1_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8_1>(dst).iter_mut().zip(x.chunks_exact(QK8_1)) {
        let (d, sum) = quantize_block_q8(x, &mut b.qs);
        b.d = f32_to_f16(d).to_le_bytes();
        b.s = f32_to_f16(d * sum as f32).to_le_bytes();
    }
}
