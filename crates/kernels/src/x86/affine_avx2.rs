//! AVX2 + FMA kernels for MLX affine rows (see `crate::affine`): 8 packed values at a time are spread into the
//! eight 32-bit lanes by one byte shuffle (lane `i` takes the two bytes holding bits `bits * i ..`), shifted
//! right per lane and masked, converted to f32, dequantized with one FMA (`q * scale + bias`, exactly the
//! scalar reference's `mul_add`) and multiply-added with the activations. One body serves every bit width.
//!
//! Summation order (fixed, so `_r4` and `_x4` equal the single-row dot bit for bit): chunk `c` of 8 values goes
//! to accumulator `c % 4`; the result is `hsum((acc0 + acc1) + (acc2 + acc3))`.
//!
//! The entry points are safe: they check every length, and are only stored in tables built after AVX2, FMA
//! and F16C were detected.

use std::arch::x86_64::*;

use super::avx2::hsum_ps;
use crate::affine::{AffineFormat, AffineRow};

/// The shuffle, shifts and mask that turn 8 bytes of a `B`-bit stream into 8 lanes of codes.
#[derive(Clone, Copy)]
struct Unpack {
    idx: __m256i,
    shift: __m256i,
    mask: __m256i,
}

/// Lane `i` of 8: the byte holding bit `B * i` and the next, then two zero bytes (`0x80`).
const fn shuffle_bytes(bits: u32) -> [u8; 32] {
    let mut t = [0x80u8; 32];
    let mut i = 0;
    while i < 8 {
        let byte = (i as u32 * bits / 8) as u8;
        // Both 128-bit halves hold the same 8 bytes; lanes 0-3 live in the low half, 4-7 in the high one.
        t[4 * i] = byte;
        t[4 * i + 1] = byte + 1;
        i += 1;
    }
    t
}

const fn shifts(bits: u32) -> [i32; 8] {
    let mut t = [0i32; 8];
    let mut i = 0;
    while i < 8 {
        t[i] = (i as u32 * bits % 8) as i32;
        i += 1;
    }
    t
}

impl Unpack {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn new(bits: u32) -> Unpack {
        let idx = shuffle_bytes(bits);
        let sh = shifts(bits);
        // SAFETY: both loads read exactly the 32 bytes of local arrays.
        let (idx, shift) = unsafe { (_mm256_loadu_si256(idx.as_ptr().cast()), _mm256_loadu_si256(sh.as_ptr().cast())) };
        Unpack { idx, shift, mask: _mm256_set1_epi32((1 << bits) - 1) }
    }

    /// Codes `8 c .. 8 c + 8` of the packed row `q` (`bits` bytes per chunk) as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn codes(self, q: &[u8], bits: usize, c: usize) -> __m256 {
        let p = c * bits;
        let v = if p + 8 <= q.len() {
            // SAFETY: reads the 8 bytes q[p..p + 8], inside the slice (checked above).
            unsafe { _mm_loadl_epi64(q.as_ptr().add(p).cast()) }
        } else {
            // The row's last chunks: fewer than 8 bytes remain, copy them (the rest stays zero).
            let mut b = [0u8; 8];
            b[..q.len() - p].copy_from_slice(&q[p..]);
            _mm_set1_epi64x(i64::from_le_bytes(b))
        };
        let v = _mm256_broadcastsi128_si256(v);
        let lanes = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(v, self.idx), self.shift), self.mask);
        _mm256_cvtepi32_ps(lanes)
    }
}

/// 8 activations `x[8 c .. 8 c + 8]` from an F32 row of bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn acts(x: &[u8], c: usize) -> __m256 {
    let b = &x[32 * c..32 * c + 32];
    // SAFETY: reads exactly the 32 bytes of `b` (bounds-checked slice); loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish(acc: [__m256; 4]) -> f32 {
    hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

/// The dequantized chunk `c` (of group `g`'s scale `s` and bias `b`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weights(u: Unpack, q: &[u8], bits: usize, c: usize, s: __m256, b: __m256) -> __m256 {
    _mm256_fmadd_ps(u.codes(q, bits, c), s, b)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn group_params(f: AffineFormat, w: AffineRow<'_>, g: usize) -> (__m256, __m256) {
    (_mm256_set1_ps(f.param_at(w.scales, g)), _mm256_set1_ps(f.param_at(w.biases, g)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_impl(f: AffineFormat, n: usize, w: AffineRow<'_>, x: &[u8]) -> f32 {
    let (u, bits, cpg) = (Unpack::new(f.bits), f.bits as usize, f.group / 8);
    let mut acc = [_mm256_setzero_ps(); 4];
    for g in 0..n / f.group {
        let (s, b) = group_params(f, w, g);
        for c0 in (g * cpg..(g + 1) * cpg).step_by(4) {
            for k in 0..4 {
                acc[k] = _mm256_fmadd_ps(weights(u, w.q, bits, c0 + k, s, b), acts(x, c0 + k), acc[k]);
            }
        }
    }
    finish(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_r4_impl(f: AffineFormat, n: usize, w: [AffineRow<'_>; 4], x: &[u8], out: &mut [f32; 4]) {
    let (u, bits, cpg) = (Unpack::new(f.bits), f.bits as usize, f.group / 8);
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    for g in 0..n / f.group {
        let sb =
            [group_params(f, w[0], g), group_params(f, w[1], g), group_params(f, w[2], g), group_params(f, w[3], g)];
        for c0 in (g * cpg..(g + 1) * cpg).step_by(4) {
            for k in 0..4 {
                let xv = acts(x, c0 + k);
                for r in 0..4 {
                    let wv = weights(u, w[r].q, bits, c0 + k, sb[r].0, sb[r].1);
                    acc[r][k] = _mm256_fmadd_ps(wv, xv, acc[r][k]);
                }
            }
        }
    }
    for r in 0..4 {
        out[r] = finish(acc[r]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_x4_impl(f: AffineFormat, n: usize, w: AffineRow<'_>, x: [&[u8]; 4], out: &mut [f32; 4]) {
    let (u, bits, cpg) = (Unpack::new(f.bits), f.bits as usize, f.group / 8);
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    for g in 0..n / f.group {
        let (s, b) = group_params(f, w, g);
        for c0 in (g * cpg..(g + 1) * cpg).step_by(4) {
            for k in 0..4 {
                let wv = weights(u, w.q, bits, c0 + k, s, b);
                for t in 0..4 {
                    acc[t][k] = _mm256_fmadd_ps(wv, acts(x[t], c0 + k), acc[t][k]);
                }
            }
        }
    }
    for t in 0..4 {
        out[t] = finish(acc[t]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dequant_impl(f: AffineFormat, w: AffineRow<'_>, dst: &mut [f32]) {
    let (u, bits, cpg) = (Unpack::new(f.bits), f.bits as usize, f.group / 8);
    for g in 0..dst.len() / f.group {
        let (s, b) = group_params(f, w, g);
        for c in g * cpg..(g + 1) * cpg {
            let out = &mut dst[8 * c..8 * c + 8];
            // SAFETY: writes exactly the 8 floats of `out` (bounds-checked slice).
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), weights(u, w.q, bits, c, s, b)) };
        }
    }
}

fn check(f: AffineFormat, n: usize, w: AffineRow<'_>, x: &[u8]) {
    f.check_row(n, w);
    assert_eq!(x.len(), 4 * n, "F32 activation row of {n} values");
}

pub(crate) fn dot(f: AffineFormat, n: usize, w: AffineRow<'_>, x: &[u8]) -> f32 {
    check(f, n, w, x);
    // SAFETY: only reachable through a table built when has_avx2() held; lengths checked above.
    unsafe { dot_impl(f, n, w, x) }
}

pub(crate) fn dot_r4(f: AffineFormat, n: usize, w: [AffineRow<'_>; 4], x: &[u8], out: &mut [f32; 4]) {
    for row in w {
        check(f, n, row, x);
    }
    // SAFETY: as in `dot`.
    unsafe { dot_r4_impl(f, n, w, x, out) }
}

pub(crate) fn dot_x4(f: AffineFormat, n: usize, w: AffineRow<'_>, x: [&[u8]; 4], out: &mut [f32; 4]) {
    for xr in x {
        check(f, n, w, xr);
    }
    // SAFETY: as in `dot`.
    unsafe { dot_x4_impl(f, n, w, x, out) }
}

pub(crate) fn dequant(f: AffineFormat, w: AffineRow<'_>, dst: &mut [f32]) {
    f.check_row(dst.len(), w);
    // SAFETY: as in `dot`.
    unsafe { dequant_impl(f, w, dst) }
}
