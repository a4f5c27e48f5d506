//! Q5_K: as Q4_K with a 5th bit per quant: bit `2k` of `qh[l]` is bit 4 of value `64k + l`, bit `2k + 1` that
//! of value `64k + 32 + l`. Dotted with Q8_K activations.

use crate::f16::f16_to_f32;
use crate::q4_k::{quantize_scales_k, scale_min_k4};
use crate::q8_k::{BlockQ8K, QK_K};
use crate::{blocks, blocks_mut, Block};

#[repr(C)]
pub struct BlockQ5K {
    /// Super-block scale for the sub-block scales (f16).
    pub d: [u8; 2],
    /// Super-block scale for the sub-block mins (f16).
    pub dmin: [u8; 2],
    /// 8 scales and 8 mins, 6 bits each (as Q4_K).
    pub scales: [u8; 12],
    /// High bits.
    pub qh: [u8; QK_K / 8],
    /// Low 4 bits (as Q4_K).
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ5K {}

impl BlockQ5K {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    pub fn dmin(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.dmin))
    }
    /// The 5-bit quant (0..32) of value `i` (0..256).
    pub fn quant(&self, i: usize) -> u8 {
        let (k, half, l) = (i / 64, (i / 32) % 2, i % 32);
        let lo = (self.qs[32 * k + l] >> (4 * half)) & 0x0f;
        let hi = (self.qh[l] >> (2 * k + half)) & 1;
        lo | (hi << 4)
    }
}

pub fn dequant_q5_k_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ5K>(src).iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d(), b.dmin());
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &b.scales);
            let (dj, mj) = (d * sc as f32, dmin * m as f32);
            for i in 32 * j..32 * j + 32 {
                y[i] = dj * b.quant(i) as f32 - mj;
            }
        }
    }
}

/// `d_x * (d * sum_j sc[j] * sum(q * q_x) - dmin * sum_j m[j] * bsum_j)` per super-block.
pub fn dot_q5_k_q8_k_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in blocks::<BlockQ5K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &bw.scales);
            let s: i32 = (32 * j..32 * j + 32).map(|i| bw.quant(i) as i32 * bx.qs[i] as i32).sum();
            sumi += sc as i32 * s;
            summ += m as i32 * (bx.bsum(2 * j) + bx.bsum(2 * j + 1));
        }
        sumf += bx.d() * bw.d() * sumi as f32 - bx.d() * bw.dmin() * summ as f32;
    }
    sumf
}

/// llama.cpp's `quantize_row_q5_K_ref`.
pub fn quantize_q5_k_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ5K>(dst).iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let (d, dmin, scales) = quantize_scales_k(x, 31, -0.5, 15, &mut l);
        b.d = d.to_le_bytes();
        b.dmin = dmin.to_le_bytes();
        b.scales = scales;
        b.qh = [0; QK_K / 8];
        for k in 0..4 {
            for i in 0..32 {
                let (l1, l2) = (l[64 * k + i], l[64 * k + 32 + i]);
                b.qs[32 * k + i] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
                b.qh[i] |= ((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1));
            }
        }
    }
}
