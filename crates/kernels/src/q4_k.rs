//! Q4_K: super-blocks of 256 values in 8 sub-blocks of 32; value = `d * sc[j] * q - dmin * m[j]` with f16
//! `d`/`dmin`, 6-bit sub-block scales and mins packed in 12 bytes, and 4-bit quants: each 32 bytes of `qs` hold
//! sub-block `2k` in the low nibbles and `2k + 1` in the high ones. Dotted with Q8_K activations. Also owns the
//! k-quant scale search shared with Q5_K (`make_qkx2_quants`, `pack_scales_mins`).

use crate::f16::{f16_to_f32, f32_to_f16};
use crate::q8_k::{BlockQ8K, QK_K};
use crate::{blocks, blocks_mut, nearest_int, Block};

#[repr(C)]
pub struct BlockQ4K {
    /// Super-block scale for the sub-block scales (f16).
    pub d: [u8; 2],
    /// Super-block scale for the sub-block mins (f16).
    pub dmin: [u8; 2],
    /// 8 scales and 8 mins, 6 bits each (see [`scale_min_k4`]).
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ4K {}

impl BlockQ4K {
    pub fn d(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.d))
    }
    pub fn dmin(&self) -> f32 {
        f16_to_f32(u16::from_le_bytes(self.dmin))
    }
}

/// ggml's `get_scale_min_k4`: 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes. Sub-blocks
/// 0..4 keep theirs in the low 6 bits of bytes `j` and `j + 4`; 4..8 in the nibbles of byte `j + 4` plus the top
/// 2 bits of bytes `j - 4` and `j`.
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The inverse of [`scale_min_k4`] for 8 scales and mins below 64.
pub(crate) fn pack_scales_mins(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

pub fn dequant_q4_k_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ4K>(src).iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d(), b.dmin());
        for k in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * k, &b.scales);
            let (sc1, m1) = scale_min_k4(2 * k + 1, &b.scales);
            let (d0, d1) = (d * sc0 as f32, d * sc1 as f32);
            let (dm0, dm1) = (dmin * m0 as f32, dmin * m1 as f32);
            for l in 0..32 {
                let q = b.qs[32 * k + l];
                y[64 * k + l] = d0 * (q & 0x0f) as f32 - dm0;
                y[64 * k + 32 + l] = d1 * (q >> 4) as f32 - dm1;
            }
        }
    }
}

/// `d_x * (d * sum_j sc[j] * sum(q * q_x) - dmin * sum_j m[j] * bsum_j)` per super-block.
pub fn dot_q4_k_q8_k_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0.0f32;
    for (bw, bx) in blocks::<BlockQ4K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &bw.scales);
            let (k, shift) = (j / 2, 4 * (j % 2));
            let mut s = 0i32;
            for l in 0..32 {
                let q = (bw.qs[32 * k + l] >> shift) & 0x0f;
                s += q as i32 * bx.qs[32 * j + l] as i32;
            }
            sumi += sc as i32 * s;
            summ += m as i32 * (bx.bsum(2 * j) + bx.bsum(2 * j + 1));
        }
        sumf += bx.d() * bw.d() * sumi as f32 - bx.d() * bw.dmin() * summ as f32;
    }
    sumf
}

/// The block-total form of [`dot_q4_k_q8_k_ref`], the arithmetic of the AVX-512 table's Q4_K kernels (and of
/// llama.cpp's repacked Q4_K ones): per super-block the exact integers `isum = sum_j sc[j] * sum(q * q_x)` and
/// `msum = sum_j m[j] * (bsum[2j] + bsum[2j + 1])` each enter one fused multiply-add,
/// `acc = fma(isum, d_x * d, acc)`, `accm = fma(msum, d_x * dmin, accm)`, blocks in order; the result is
/// `acc - accm`. Every kernel of that family gives exactly these bits.
pub fn dot_q4_k_q8_k_blocks_ref(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let (mut acc, mut accm) = (0.0f32, 0.0f32);
    for (bw, bx) in blocks::<BlockQ4K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &bw.scales);
            let (k, shift) = (j / 2, 4 * (j % 2));
            let s: i32 = (0..32).map(|l| ((bw.qs[32 * k + l] >> shift) & 0x0f) as i32 * bx.qs[32 * j + l] as i32).sum();
            isum += sc as i32 * s;
            msum += m as i32 * (bx.bsum(2 * j) + bx.bsum(2 * j + 1));
        }
        acc = (isum as f32).mul_add(bx.d() * bw.d(), acc);
        accm = (msum as f32).mul_add(bx.d() * bw.dmin(), accm);
    }
    acc - accm
}

/// ggml's `make_qkx2_quants`: quants `l[i]` in `0..=nmax` and `(scale, min)` with `x ~ scale * l - min`,
/// minimizing the weighted squared error over `nstep + 1` trial scales.
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x.iter().fold(x[0], |a, &v| if v < a { v } else { a });
    let max = x.iter().fold(x[0], |a, &v| if v > a { v } else { a });
    let sum_w: f32 = w.iter().sum();
    let sum_x: f32 = w.iter().zip(x).map(|(w, x)| w * x).sum();
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let quant = |iscale: f32, min: f32, v: f32| nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        l[i] = quant(iscale, min, x[i]);
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += w[i] * diff * diff;
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = quant(iscale, min, x[i]);
            laux[i] = q;
            let q = q as f32;
            sum_l += w[i] * q;
            sum_l2 += w[i] * q * q;
            sum_xl += w[i] * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error: f32 = (0..n)
                .map(|i| {
                    let diff = this_scale * laux[i] as f32 + this_min - x[i];
                    w[i] * diff * diff
                })
                .sum();
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Scales, mins and packed super-block scales for Q4_K/Q5_K: returns `(d, dmin, packed)`.
pub(crate) fn quantize_scales_k(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> (u16, u16, [u8; 12]) {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let av_x = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let mut w = [0f32; 32];
        for (w, v) in w.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &w, &mut l[32 * j..32 * j + 32], rmin, 0.1, nstep);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        ls[j] = nearest_int(inv_scale * scales[j]).min(63) as u8;
        lm[j] = nearest_int(inv_min * mins[j]).min(63) as u8;
    }
    let packed = pack_scales_mins(&ls, &lm);
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    // Requantize with the scales as stored.
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = f16_to_f32(d) * sc as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin) * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed)
}

/// llama.cpp's `quantize_row_q4_K_ref`.
pub fn quantize_q4_k_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ4K>(dst).iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let (d, dmin, scales) = quantize_scales_k(x, 15, -1.0, 20, &mut l);
        b.d = d.to_le_bytes();
        b.dmin = dmin.to_le_bytes();
        b.scales = scales;
        for k in 0..4 {
            for i in 0..32 {
                b.qs[32 * k + i] = l[64 * k + i] | (l[64 * k + 32 + i] << 4);
            }
        }
    }
}
