//! Q4_0: 32 values as `d * (q - 8)` with an f16 scale and 4-bit quants; value `j` of the block is the low
//! nibble of `qs[j]`, value `j + 16` its high nibble. Dotted with Q8_0 activations.

use crate::f16::{f16_to_f32, f32_to_f16};
use crate::q8_0::BlockQ8_0;
use crate::{blocks, blocks_mut, Block};

pub const QK4_0: usize = 32;

#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Nibbles: low of `qs[j]` is value `j`, high is value `j + 16`.
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ4_0 {}

impl BlockQ4_0 {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
}

pub fn dequant_q4_0_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ4_0>(src).iter().zip(y.chunks_exact_mut(QK4_0)) {
        let d = b.d();
        for j in 0..QK4_0 / 2 {
            y[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// llama.cpp's `quantize_row_q4_0_ref`: `d = max / -8` with `max` the signed absmax, `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_q4_0_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ4_0>(dst).iter_mut().zip(x.chunks_exact(QK4_0)) {
        let max = crate::q8_k::signed_absmax(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d).to_le_bytes();
        for j in 0..QK4_0 / 2 {
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// sum over blocks of `d_w * d_x * sum((q_w - 8) * q_x)`.
pub fn dot_q4_0_q8_0_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in blocks::<BlockQ4_0>(w).iter().zip(blocks::<BlockQ8_0>(x)) {
        let mut sumi = 0i32;
        for j in 0..QK4_0 / 2 {
            sumi += ((bw.qs[j] & 0x0f) as i32 - 8) * bx.qs[j] as i32;
            sumi += ((bw.qs[j] >> 4) as i32 - 8) * bx.qs[j + 16] as i32;
        }
        sumf += bw.d() * bx.d() * sumi as f32;
    }
    sumf
}
