//! Q6_K: super-blocks of 256 values in 16 sub-blocks of 16; value = `d * sc[j] * (q - 32)` with an f16 `d`,
//! i8 sub-block scales and 6-bit quants split into low nibbles `ql` and 2-bit high parts `qh`. Per half of 128
//! values (64 bytes of `ql`, 32 of `qh`): value `l + 32 t` (t = 0..4, l = 0..32) takes the low or high nibble
//! of `ql[l + 32 (t % 2)]` (high when t >= 2) and bits `2t..2t+2` of `qh[l]`. Dotted with Q8_K activations.

use crate::f16::{f16_to_f32, f32_to_f16};
use crate::q8_k::{BlockQ8K, QK_K};
use crate::{blocks, blocks_mut, nearest_int, Block};

#[repr(C)]
pub struct BlockQ6K {
    /// Low 4 bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales (i8).
    pub scales: [i8; QK_K / 16],
    /// Super-block scale (f16).
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ6K {}

impl BlockQ6K {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    /// The signed quant (-32..32) of value `i` (0..256).
    pub fn quant(&self, i: usize) -> i32 {
        let (h, t, l) = (i / 128, (i / 32) % 4, i % 32);
        let ql = self.ql[64 * h + l + 32 * (t % 2)] >> (4 * (t / 2)) & 0x0f;
        let qh = (self.qh[32 * h + l] >> (2 * t)) & 3;
        (ql | (qh << 4)) as i32 - 32
    }
}

pub fn dequant_q6_k_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ6K>(src).iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (i, y) in y.iter_mut().enumerate() {
            *y = d * b.scales[i / 16] as f32 * b.quant(i) as f32;
        }
    }
}

/// `d_x * d * sum_j sc[j] * sum((q - 32) * q_x)` per super-block.
pub fn dot_q6_k_q8_k_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in blocks::<BlockQ6K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let s: i32 = (16 * j..16 * j + 16).map(|i| bw.quant(i) * bx.qs[i] as i32).sum();
            sumi += bw.scales[j] as i32 * s;
        }
        sumf += bx.d() * bw.d() * sumi as f32;
    }
    sumf
}

/// The block-total form of [`dot_q6_k_q8_k_ref`], the arithmetic of the AVX-512 table's Q6_K kernels: per
/// super-block the exact integer `isum = sum_j sc[j] * sum((q - 32) * q_x)` enters one fused multiply-add,
/// `acc = fma(isum, d_x * d, acc)`, blocks in order. Every kernel of that family gives exactly these bits.
pub fn dot_q6_k_q8_k_blocks_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = 0.0f32;
    for (bw, bx) in blocks::<BlockQ6K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let mut isum = 0i32;
        for j in 0..16 {
            let s: i32 = (16 * j..16 * j + 16).map(|i| bw.quant(i) * bx.qs[i] as i32).sum();
            isum += bw.scales[j] as i32 * s;
        }
        acc = (isum as f32).mul_add(bx.d() * bw.d(), acc);
    }
    acc
}

/// ggml's `make_qx_quants` with `rmse_type = 1` (weights x^2): signed quants `l - nmax` in `-nmax..nmax` and the
/// best scale over 19 trial scales.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let max = crate::q8_k::signed_absmax(x);
    if max.abs() < 1e-15 {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(sumlx, suml2), &v| {
            let (q, w) = (q(iscale, v) as f32, v * v);
            (sumlx + w * v * q, suml2 + w * q * q)
        })
    };
    let iscale = -(nmax as f32) / max;
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (q(iscale, v) + nmax) as u8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (q(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// llama.cpp's `quantize_row_q6_K_ref`.
pub fn quantize_q6_k_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ6K>(dst).iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_qx_quants(32, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > max_abs_scale {
                max_abs_scale = scales[j].abs();
                max_scale = scales[j];
            }
        }
        if max_abs_scale < 1e-15 {
            b.ql = [0; QK_K / 2];
            b.qh = [0; QK_K / 4];
            b.scales = [0; QK_K / 16];
            b.d = [0; 2];
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = f32_to_f16(1.0 / iscale);
        b.d = d.to_le_bytes();
        for j in 0..16 {
            b.scales[j] = nearest_int(iscale * scales[j]).min(127) as i8;
            let dj = f16_to_f32(d) * b.scales[j] as f32;
            if dj == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                l[i] = (nearest_int(x[i] / dj).clamp(-32, 31) + 32) as u8;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let q = |t: usize| l[128 * h + 32 * t + i];
                b.ql[64 * h + i] = (q(0) & 0x0f) | ((q(2) & 0x0f) << 4);
                b.ql[64 * h + 32 + i] = (q(1) & 0x0f) | ((q(3) & 0x0f) << 4);
                b.qh[32 * h + i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
    }
}
