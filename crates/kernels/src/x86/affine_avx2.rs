//! AVX2 + FMA kernels for MLX affine rows (see `crate::affine`).
//!
//! Int8 activations (`DType::Q8_A`, 4- and 8-bit weights): see the section below; each output is
//! `dot_affine_q8_ref` bit for bit.
//!
//! F32 activations: 8 packed values at a time are spread into the
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

// ---- int8 activations (Q8_A): 4- and 8-bit weights ----
//
// Per block of 32 values the exact integer `sum(q_w * q_x)` comes from `maddubs` (unsigned weight bytes times
// signed activation bytes, pairs summed into i16 without saturation: at most 2 * 15 * 127 for 4 bits, and
// 2 * 128 * 127 for 8 bits, whose codes are first recentred to `q_w - 128` and signed as llama.cpp's Q8_0 does)
// and `madd` with ones (8 i32 lanes). Four blocks' lanes are reduced together by three `hadd`s, giving the four
// block sums in one vector, lane `k` = block `b0 + k`; the f32 steps are then those of `dot_affine_q8_ref`
// with its `acc[b % 4]` as the lanes of one 128-bit accumulator, so the result is the reference's bit for bit.

use crate::affine::{q8_a_planes, QK8_A};

/// How far ahead the Q8_A kernels prefetch each weight row's packed bytes. Past the row's end this reaches the
/// next rows of the matrix (rows are contiguous), which the following calls read: on the 'small' MLX shape
/// (rows of 512 bytes), decode with 2 threads went 54 -> 66 tok/s at 512 bytes ahead and -> 92 at 4096.
/// A prefetch never faults, so the address may lie past the allocation (it is formed with `wrapping_add`).
const PREFETCH_BYTES: usize = 4096;

/// Four f32 values (`read(k)` for `k < m`), zero past `m`: the parameters of a row's last, short chunk.
#[inline]
fn four(m: usize, read: impl Fn(usize) -> f32) -> [f32; 4] {
    let mut t = [0.0f32; 4];
    for (k, v) in t.iter_mut().enumerate().take(m) {
        *v = read(k);
    }
    t
}

/// The scales (or biases) of blocks `b0 .. b0 + 4` (a whole chunk) of one row: 4, 2 or 1 parameters (groups of 32,
/// 64 or 128), widened exactly to f32 (the shift of bf16, F16C for f16: both exact, as `param_at`) and spread
/// to the blocks they cover. A macro, so that it is inlined into the target-feature function that uses it (an
/// `#[inline]` target-feature function was not, and cost a call per chunk and row).
macro_rules! params4 {
    ($f:expr, $plane:expr, $b0:expr) => {{
        let (f, plane, b0): (AffineFormat, &[u8], usize) = ($f, $plane, $b0);
        let per = f.group / QK8_A;
        let count = 4 / per;
        let psize = f.param.block_bytes();
        let g0 = b0 / per;
        let bytes = &plane[g0 * psize..(g0 + count) * psize];
        let v = if psize == 2 {
            // Fixed-size reads (a variable-length copy would be a memcpy call).
            let bits = match count {
                4 => u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
                2 => u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as u64,
                _ => u16::from_le_bytes(bytes[..2].try_into().expect("2 bytes")) as u64,
            };
            let h = _mm_set_epi64x(0, bits as i64);
            if f.param == crate::DType::F16 {
                _mm_cvtph_ps(h)
            } else {
                _mm_castsi128_ps(_mm_slli_epi32::<16>(_mm_cvtepu16_epi32(h)))
            }
        } else {
            let mut t = [0.0f32; 4];
            for (k, v) in t.iter_mut().enumerate().take(count) {
                *v = crate::f16::read_f32(bytes, k);
            }
            // SAFETY: reads the 16 bytes of the local array.
            unsafe { _mm_loadu_ps(t.as_ptr()) }
        };
        match count {
            4 => v,
            2 => _mm_unpacklo_ps(v, v),
            _ => _mm_shuffle_ps::<0>(v, v),
        }
    }};
}

/// `R` weight rows times `T` activation rows (R or T is 1), each output exactly `dot_affine_q8_ref`: the
/// integer sums are exact whatever the grouping, and every (row, token) pair runs the reference's f32 steps on
/// its own accumulator. Shares each activation block's load across the rows and each weight block's unpack
/// across the tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q8<const BITS: u32, const R: usize, const T: usize>(
    f: AffineFormat,
    n: usize,
    w: [AffineRow<'_>; R],
    x: [&[u8]; T],
    out: &mut [[f32; R]; T],
) {
    let planes = x.map(|x| q8_a_planes(n, x));
    let nb = n / QK8_A;
    let per_group = f.group / QK8_A;
    let mut acc = [[_mm_setzero_ps(); R]; T];
    let ones = _mm256_set1_epi16(1);
    let deint = _mm256_setr_epi8(
        0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
    );
    let nib_shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    let nib_mask = _mm256_set1_epi8(0x0f);
    let mut b0 = 0;
    while b0 < nb {
        let m = (nb - b0).min(4);
        // Integer block sums: p[t][r][k] for block b0 + k.
        let mut p = [[[_mm256_setzero_si256(); 4]; R]; T];
        // Weights stream from RAM when experts are many: ask for each row's packed bytes well ahead (four rows,
        // each three planes, are more streams than the hardware prefetchers follow well).
        for row in &w {
            let ahead = row.q.as_ptr().wrapping_add(b0 * QK8_A * BITS as usize / 8 + PREFETCH_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            if BITS == 8 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
            }
        }
        for k in 0..m {
            let b = b0 + k;
            // (Plain loops, not closures: a closure would not inherit this function's target features.)
            let mut xv = [_mm256_setzero_si256(); T];
            for (t, xt) in xv.iter_mut().enumerate() {
                let xb = &planes[t].0[QK8_A * b..QK8_A * (b + 1)];
                // SAFETY: reads exactly the 32 bytes of `xb` (bounds-checked slice).
                let x = unsafe { _mm256_loadu_si256(xb.as_ptr().cast()) };
                *xt = if BITS == 4 {
                    // Even values to the low half, odd ones to the high half: the order of the weights' low
                    // and high nibbles (done once per block, shared by the R rows).
                    _mm256_permute4x64_epi64::<0xd8>(_mm256_shuffle_epi8(x, deint))
                } else {
                    x
                };
            }
            for r in 0..R {
                if BITS == 4 {
                    let wb = &w[r].q[16 * b..16 * b + 16];
                    // SAFETY: reads exactly the 16 bytes of `wb`.
                    let v = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(wb.as_ptr().cast()) });
                    // Byte j holds value 2j (low nibble) and 2j + 1 (high nibble): low half the even values, high
                    // half (shifted by 4 per 32-bit lane, then masked) the odd ones.
                    let wv = _mm256_and_si256(_mm256_srlv_epi32(v, nib_shift), nib_mask);
                    for t in 0..T {
                        p[t][r][k] = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv[t]), ones);
                    }
                } else {
                    let wb = &w[r].q[32 * b..32 * b + 32];
                    // SAFETY: reads exactly the 32 bytes of `wb`.
                    let v = unsafe { _mm256_loadu_si256(wb.as_ptr().cast()) };
                    // q_w - 128 as i8; |q_w - 128| (as u8) times x carrying that sign (|q_x| <= 127).
                    let ws = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                    let wa = _mm256_abs_epi8(ws);
                    for t in 0..T {
                        p[t][r][k] = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(xv[t], ws)), ones);
                    }
                }
            }
        }
        // Per-row parameters of the four blocks.
        let (mut s4, mut bi4) = ([_mm_setzero_ps(); R], [_mm_setzero_ps(); R]);
        for r in 0..R {
            if m == 4 {
                s4[r] = params4!(f, w[r].scales, b0);
                bi4[r] = params4!(f, w[r].biases, b0);
            } else {
                let (mut s, mut bi) = ([0.0f32; 4], [0.0f32; 4]);
                for k in 0..m {
                    let g = (b0 + k) / per_group;
                    s[k] = f.param_at(w[r].scales, g);
                    bi[k] = f.param_at(w[r].biases, g);
                }
                // SAFETY: each load reads the 16 bytes of a local array.
                unsafe {
                    s4[r] = _mm_loadu_ps(s.as_ptr());
                    bi4[r] = _mm_loadu_ps(bi.as_ptr());
                }
            }
        }
        for t in 0..T {
            let (_, dp, sp) = planes[t];
            let (d, sq) = if m == 4 {
                let (db, sb) = (&dp[4 * b0..4 * b0 + 16], &sp[4 * b0..4 * b0 + 16]);
                // SAFETY: each load reads exactly the 16 bytes of a bounds-checked slice.
                unsafe { (_mm_loadu_ps(db.as_ptr().cast()), _mm_loadu_si128(sb.as_ptr().cast())) }
            } else {
                let d = four(m, |k| crate::f16::read_f32(dp, b0 + k));
                let mut sq = [0i32; 4];
                for (k, v) in sq.iter_mut().enumerate().take(m) {
                    *v = crate::affine::read_i32(sp, b0 + k);
                }
                // SAFETY: each load reads the 16 bytes of a local array.
                unsafe { (_mm_loadu_ps(d.as_ptr()), _mm_loadu_si128(sq.as_ptr().cast())) }
            };
            let sqf = _mm_cvtepi32_ps(sq);
            for r in 0..R {
                let q = &p[t][r];
                let h = _mm256_hadd_epi32(_mm256_hadd_epi32(q[0], q[1]), _mm256_hadd_epi32(q[2], q[3]));
                let mut isum = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                if BITS == 8 {
                    isum = _mm_add_epi32(isum, _mm_slli_epi32::<7>(sq));
                }
                let a = _mm_fmadd_ps(_mm_cvtepi32_ps(isum), _mm_mul_ps(d, s4[r]), acc[t][r]);
                acc[t][r] = _mm_fmadd_ps(sqf, _mm_mul_ps(d, bi4[r]), a);
            }
        }
        b0 += 4;
    }
    for t in 0..T {
        for r in 0..R {
            // (acc0 + acc1) + (acc2 + acc3), as the reference.
            let a = acc[t][r];
            let pairs = _mm_add_ps(a, _mm_movehdup_ps(a));
            out[t][r] = _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehl_ps(pairs, pairs)));
        }
    }
}

/// Runs the tile for the row's bit width (only 4 and 8 bits reach these entry points, see `Kernels::affine_dot_q8`).
fn tile_any<const R: usize, const T: usize>(
    f: AffineFormat,
    n: usize,
    w: [AffineRow<'_>; R],
    x: [&[u8]; T],
    out: &mut [[f32; R]; T],
) {
    for row in w {
        f.check_row(n, row);
    }
    for xr in x {
        q8_a_planes(n, xr);
    }
    // SAFETY: only reachable through a table built when has_avx2() held; lengths checked above.
    unsafe {
        match f.bits {
            4 => tile_q8::<4, R, T>(f, n, w, x, out),
            8 => tile_q8::<8, R, T>(f, n, w, x, out),
            b => unreachable!("no AVX2 Q8_A kernel for {b}-bit weights"),
        }
    }
}

pub(crate) fn dot_q8(f: AffineFormat, n: usize, w: AffineRow<'_>, x: &[u8]) -> f32 {
    let mut out = [[0.0f32; 1]; 1];
    tile_any::<1, 1>(f, n, [w], [x], &mut out);
    out[0][0]
}

pub(crate) fn dot_q8_r4(f: AffineFormat, n: usize, w: [AffineRow<'_>; 4], x: &[u8], out: &mut [f32; 4]) {
    let mut o = [[0.0f32; 4]; 1];
    tile_any::<4, 1>(f, n, w, [x], &mut o);
    *out = o[0];
}

pub(crate) fn dot_q8_x4(f: AffineFormat, n: usize, w: AffineRow<'_>, x: [&[u8]; 4], out: &mut [f32; 4]) {
    let mut o = [[0.0f32; 1]; 4];
    tile_any::<1, 4>(f, n, [w], x, &mut o);
    *out = o.map(|v| v[0]);
}
