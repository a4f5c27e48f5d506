//! Q8_K: 256 values as `d * q` with an f32 scale, i8 quants and the sums of each 16 quants (`bsums`), the
//! activation format for the k-quants (the sums serve their min terms). Owns the Q8_K activation quantizer.

use crate::f16::read_f32;
use crate::{blocks, blocks_mut, nearest_int, Block};

pub const QK_K: usize = 256;

#[repr(C)]
pub struct BlockQ8K {
    /// Scale (f32).
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    /// `bsums[j] = sum(qs[16 j .. 16 j + 16])` (i16).
    pub bsums: [[u8; 2]; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
// SAFETY: repr(C), byte-array fields only, every bit pattern is a valid block.
unsafe impl Block for BlockQ8K {}

impl BlockQ8K {
    pub fn d(&self) -> f32 {
        read_f32(&self.d, 0)
    }
    pub fn bsum(&self, j: usize) -> i32 {
        i16::from_le_bytes(self.bsums[j]) as i32
    }
}

pub fn dequant_q8_k_ref(src: &[u8], y: &mut [f32]) {
    for (b, y) in blocks::<BlockQ8K>(src).iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

/// The signed value of largest magnitude (the first one on ties), as `quantize_row_q8_K_ref` picks it.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// llama.cpp's `quantize_row_q8_K_ref`: `iscale = -127 / max` with `max` the signed absmax,
/// `q = min(127, nearest_int(iscale * x))`, `d = 1 / iscale`. An all-zero block gets `d = 0`, zero quants and
/// zero sums.
pub fn quantize_q8_k_ref(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8K>(dst).iter_mut().zip(x.chunks_exact(QK_K)) {
        let max = signed_absmax(x);
        if max == 0.0 {
            b.d = 0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let sum: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            b.bsums[j] = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
