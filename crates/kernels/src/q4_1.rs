//! Q4_1: 32 values as `d * q + m` with f16 scale and min and 4-bit quants (nibble order as Q4_0). Dotted with
//! Q8_1 activations, whose `s = d * sum(q)` carries the min term.

use crate::f16::{f16_to_f32, f32_to_f16};
use crate::q8_1::BlockQ8_1;
use crate::{blocks, blocks_mut, Block};

pub const QK4_1: usize = 32;

#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Min (f16).
    pub m: [u8; 2],
    /// Nibbles: low of `qs[j]` is value `j`, high is value `j + 16`.
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ4_1 {}

impl BlockQ4_1 {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    pub fn m(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.m))
    }
}

pub fn dequant_q4_1_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ4_1>(src).iter().zip(y.chunks_exact_mut(QK4_1)) {
        let (d, m) = (b.d(), b.m());
        for j in 0..QK4_1 / 2 {
            y[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            y[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// llama.cpp's `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`, `q = min(15, trunc((x - min) / d + 0.5))`.
pub fn quantize_q4_1_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ4_1>(dst).iter_mut().zip(x.chunks_exact(QK4_1)) {
        let min = x.iter().fold(f32::MAX, |a, &v| a.min(v));
        let max = x.iter().fold(-f32::MAX, |a, &v| a.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d).to_le_bytes();
        b.m = f32_to_f16(min).to_le_bytes();
        for j in 0..QK4_1 / 2 {
            let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// sum over blocks of `d_w * d_x * sum(q_w * q_x) + m_w * s_x`.
pub fn dot_q4_1_q8_1_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in blocks::<BlockQ4_1>(w).iter().zip(blocks::<BlockQ8_1>(x)) {
        let mut sumi = 0i32;
        for j in 0..QK4_1 / 2 {
            sumi += (bw.qs[j] & 0x0f) as i32 * bx.qs[j] as i32;
            sumi += (bw.qs[j] >> 4) as i32 * bx.qs[j + 16] as i32;
        }
        sumf += bw.d() * bx.d() * sumi as f32 + bw.m() * bx.s();
    }
    sumf
}
