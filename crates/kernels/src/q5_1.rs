//! Q5_1: 32 values as `d * q + m` with f16 scale and min and 5-bit quants (bit layout as Q5_0). Dotted with
//! Q8_1 activations.

use crate::f16::{f16_to_f32, f32_to_f16};
use crate::q8_1::BlockQ8_1;
use crate::{blocks, blocks_mut, Block};

pub const QK5_1: usize = 32;

#[repr(C)]
pub struct BlockQ5_1 {
    /// Scale (f16).
    pub d: [u8; 2],
    /// Min (f16).
    pub m: [u8; 2],
    /// High bits (u32, little-endian): bit `j` is bit 4 of value `j`.
    pub qh: [u8; 4],
    /// Low nibbles: low of `qs[j]` is value `j`, high is value `j + 16`.
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ5_1 {}

impl BlockQ5_1 {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    pub fn m(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.m))
    }
    /// The 5-bit quants (0..32) of values `j` and `j + 16`.
    pub fn quants(&self, j: usize) -> (i32, i32) {
        let qh = u32::from_le_bytes(self.qh);
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        (((self.qs[j] & 0x0f) as u32 | h0) as i32, ((self.qs[j] >> 4) as u32 | h1) as i32)
    }
}

pub fn dequant_q5_1_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ5_1>(src).iter().zip(y.chunks_exact_mut(QK5_1)) {
        let (d, m) = (b.d(), b.m());
        for j in 0..QK5_1 / 2 {
            let (q0, q1) = b.quants(j);
            y[j] = q0 as f32 * d + m;
            y[j + 16] = q1 as f32 * d + m;
        }
    }
}

/// llama.cpp's `quantize_row_q5_1_ref`: `d = (max - min) / 31`, `m = min`, `q = trunc((x - min) / d + 0.5)`.
pub fn quantize_q5_1_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ5_1>(dst).iter_mut().zip(x.chunks_exact(QK5_1)) {
        let min = x.iter().fold(f32::MAX, |a, &v| a.min(v));
        let max = x.iter().fold(-f32::MAX, |a, &v| a.max(v));
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d).to_le_bytes();
        b.m = f32_to_f16(min).to_le_bytes();
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
            let q0 = (((x[j] - min) * id + 0.5) as u8).min(31);
            let q1 = (((x[j + 16] - min) * id + 0.5) as u8).min(31);
            b.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= ((q0 as u32 >> 4) << j) | ((q1 as u32 >> 4) << (j + 16));
        }
        b.qh = qh.to_le_bytes();
    }
}

/// sum over blocks of `d_w * d_x * sum(q_w * q_x) + m_w * s_x`.
pub fn dot_q5_1_q8_1_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in blocks::<BlockQ5_1>(w).iter().zip(blocks::<BlockQ8_1>(x)) {
        let mut sumi = 0i32;
        for j in 0..QK5_1 / 2 {
            let (q0, q1) = bw.quants(j);
            sumi += q0 * bx.qs[j] as i32 + q1 * bx.qs[j + 16] as i32;
        }
        sumf += bw.d() * bx.d() * sumi as f32 + bw.m() * bx.s();
    }
    sumf
}
