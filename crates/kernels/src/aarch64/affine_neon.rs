//! NEON kernels for MLX affine rows with int8 activations (`DType::Q8_A`, see `crate::affine`): every bit width
//! (2, 3, 4, 5, 6, 8), one row, four rows x one token (decode) and one row x four tokens (prompts), each output
//! `dot_affine_q8_ref` bit for bit. Two variants of each, chosen at run time by `Kernels::affine_dot_q8*`:
//! base NEON (every aarch64 CPU) and, where the CPU has the dotprod extension (ARMv8.2+, optional), `sdot`.
//!
//! Per block of 32 values the exact integer `sum(q_w * q_x)` comes from `sdot` (four i8 products into each i32
//! lane), or in base NEON from `smull`/`smlal` (i8 x i8 -> i16) and `saddlp`/`sadalp` (pairs of i16 -> i32);
//! the weight codes become signed bytes first:
//! - 4 bits: byte `j` of the block holds value `2j` (low nibble) and `2j + 1` (high nibble); the activation
//!   block is loaded de-interleaved (`ld2`: even values, odd values), once per block and token, shared by the
//!   rows. Four products per i16 lane (at most 4 * 15 * 128).
//! - 8 bits: codes recentred to `q_w - 128` (as the AVX2 kernel and llama.cpp's Q8_0), one product per i16
//!   lane, and `128 * sum(q_x)` (the row's block sum) added back.
//! - 2, 3, 5, 6 bits: 16 values at a time spread into 16-bit lanes by two table lookups (lane `i` takes the two
//!   bytes holding bits `bits * i ..`), shifted right per lane, narrowed and masked. Four products per i16 lane
//!   (at most 4 * 63 * 128 < 2^15).
//!
//! Four blocks' i32 lanes are reduced together by two pairwise adds, giving the four block sums in one vector,
//! lane `k` = block `b0 + k`; the f32 steps are then those of `dot_affine_q8_ref` with its `acc[b % 4]` as the
//! lanes of one accumulator (`fmla` is the reference's fused `mul_add`), so the result is the reference's bit
//! for bit. Unlike the AVX2 kernel there is no software prefetch (unmeasured on aarch64 so far).
//!
//! The entry points are safe: they check every length, are only stored in tables built after NEON was
//! detected, and the `sdot` ones assert that the CPU has dotprod.

use std::arch::aarch64::*;

use super::{has_dotprod, sdot};
use crate::affine::{q8_a_planes, read_i32, AffineFormat, AffineRow, QK8_A};
use crate::f16::read_f32;
use crate::DType;

/// The 16 bytes of `b`.
#[inline]
#[target_feature(enable = "neon")]
fn ld16(b: &[u8]) -> uint8x16_t {
    let b: &[u8; 16] = b.try_into().expect("16 bytes");
    // SAFETY: reads exactly the 16 bytes of `b`.
    unsafe { vld1q_u8(b.as_ptr()) }
}

/// The 16 bytes at `q[p..p + 16]`, or those before the end of `q` followed by zeros (a row's last block).
#[inline]
#[target_feature(enable = "neon")]
fn ld16_tail(q: &[u8], p: usize) -> uint8x16_t {
    if p + 16 <= q.len() {
        ld16(&q[p..p + 16])
    } else {
        let mut b = [0u8; 16];
        b[..q.len() - p].copy_from_slice(&q[p..]);
        ld16(&b)
    }
}

/// The table-lookup indices and per-lane shifts that spread 16 values of a `bits`-bit stream (2 `bits` bytes)
/// into two vectors of eight 16-bit lanes: lane `i` gets the byte holding bit `bits * i` and the next one.
#[derive(Clone, Copy)]
struct Spread {
    idx: [uint8x16_t; 2],
    /// Negative: `ushl` shifts right.
    shift: [int16x8_t; 2],
    mask: uint8x16_t,
}

const fn spread_bytes(bits: u32, half: usize) -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut l = 0;
    while l < 8 {
        let byte = ((8 * half + l) as u32 * bits / 8) as u8;
        t[2 * l] = byte;
        t[2 * l + 1] = byte + 1;
        l += 1;
    }
    t
}

const fn spread_shifts(bits: u32, half: usize) -> [i16; 8] {
    let mut t = [0i16; 8];
    let mut l = 0;
    while l < 8 {
        t[l] = -(((8 * half + l) as u32 * bits % 8) as i16);
        l += 1;
    }
    t
}

impl Spread {
    #[inline]
    #[target_feature(enable = "neon")]
    fn new(bits: u32) -> Spread {
        let (i0, i1) = (spread_bytes(bits, 0), spread_bytes(bits, 1));
        let (s0, s1) = (spread_shifts(bits, 0), spread_shifts(bits, 1));
        // SAFETY: each load reads exactly the 16 bytes of a local array.
        let (idx, shift) = unsafe {
            ([vld1q_u8(i0.as_ptr()), vld1q_u8(i1.as_ptr())], [vld1q_s16(s0.as_ptr()), vld1q_s16(s1.as_ptr())])
        };
        Spread { idx, shift, mask: vdupq_n_u8(((1u32 << bits) - 1) as u8) }
    }

    /// The 16 codes whose `2 bits` bytes start the vector `v`, as bytes.
    #[inline]
    #[target_feature(enable = "neon")]
    fn codes(self, v: uint8x16_t) -> int8x16_t {
        let lo = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(v, self.idx[0])), self.shift[0]);
        let hi = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(v, self.idx[1])), self.shift[1]);
        // The low byte of each 16-bit lane, masked to `bits`.
        vreinterpretq_s8_u8(vandq_u8(vuzp1q_u8(vreinterpretq_u8_u16(lo), vreinterpretq_u8_u16(hi)), self.mask))
    }
}

/// Block `b`'s weight codes of a `BITS`-bit row as two vectors of signed bytes, in the order the matching
/// activations take (`acts`): values `0..16` and `16..32`, except for 4 bits (even values, odd values) and
/// 8 bits (recentred to `q - 128`).
#[inline]
#[target_feature(enable = "neon")]
fn weights<const BITS: u32>(q: &[u8], b: usize, spread: Spread) -> [int8x16_t; 2] {
    match BITS {
        4 => {
            let v = ld16(&q[16 * b..16 * b + 16]);
            [vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(v))]
        }
        8 => {
            let (v0, v1) = (ld16(&q[32 * b..32 * b + 16]), ld16(&q[32 * b + 16..32 * b + 32]));
            let m = vdupq_n_u8(0x80);
            [vreinterpretq_s8_u8(veorq_u8(v0, m)), vreinterpretq_s8_u8(veorq_u8(v1, m))]
        }
        _ => {
            // The block's 4 BITS bytes, 2 BITS per 16 values; near the row's end (its last one or two blocks)
            // a 16-byte load reaches past it and goes through a copy.
            let p = 4 * BITS as usize * b;
            [spread.codes(ld16_tail(q, p)), spread.codes(ld16_tail(q, p + 2 * BITS as usize))]
        }
    }
}

/// Block `b` of a Q8_A row's quants (`qs`), in the order of `weights::<BITS>`.
#[inline]
#[target_feature(enable = "neon")]
fn acts<const BITS: u32>(qs: &[u8], b: usize) -> [int8x16_t; 2] {
    let xb: &[u8; QK8_A] = qs[QK8_A * b..QK8_A * (b + 1)].try_into().expect("a block of 32 bytes");
    if BITS == 4 {
        // SAFETY: reads exactly the 32 bytes of `xb`, de-interleaved (even values, odd values).
        let v = unsafe { vld2q_s8(xb.as_ptr().cast()) };
        [v.0, v.1]
    } else {
        // SAFETY: each load reads 16 of the 32 bytes of `xb`.
        unsafe { [vld1q_s8(xb.as_ptr().cast()), vld1q_s8(xb.as_ptr().add(16).cast())] }
    }
}

/// The exact `sum(w * x)` of one block as four i32 partial sums: `sdot` when `SDOT`, else `smull` and pairwise
/// adds.
#[inline]
#[target_feature(enable = "neon")]
fn block_dot<const BITS: u32, const SDOT: bool>(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> int32x4_t {
    if SDOT {
        // Four products per i32 lane and step: exact.
        // SAFETY: SDOT is true only in `tile_q8_sdot`, which is only called where the CPU has dotprod.
        unsafe { sdot(sdot(vdupq_n_s32(0), w[0], x[0]), w[1], x[1]) }
    } else if BITS == 8 {
        // |w|, |x| <= 128: one product per i16 lane.
        let s = vpaddlq_s16(vmull_s8(vget_low_s8(w[0]), vget_low_s8(x[0])));
        let s = vpadalq_s16(s, vmull_high_s8(w[0], x[0]));
        let s = vpadalq_s16(s, vmull_s8(vget_low_s8(w[1]), vget_low_s8(x[1])));
        vpadalq_s16(s, vmull_high_s8(w[1], x[1]))
    } else {
        // 0 <= w < 64, |x| <= 128: four products per i16 lane stay below 2^15.
        let t = vmull_s8(vget_low_s8(w[0]), vget_low_s8(x[0]));
        let t = vmlal_high_s8(t, w[0], x[0]);
        let t = vmlal_s8(t, vget_low_s8(w[1]), vget_low_s8(x[1]));
        vpaddlq_s16(vmlal_high_s8(t, w[1], x[1]))
    }
}

/// IEEE binary16 lanes to f32 (exact; `fcvtl`, which Rust's stable intrinsics lack, as they lack `f16`).
#[inline]
#[target_feature(enable = "neon")]
fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: one register-to-register conversion of the base ARMv8 instruction set; touches no memory.
    unsafe {
        std::arch::asm!("fcvtl {o:v}.4s, {h:v}.4h", o = lateout(vreg) out, h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// The scales (or biases) of blocks `b0 .. b0 + 4` (a whole chunk) of one row: 4, 2 or 1 parameters (groups of
/// 32, 64 or 128), widened exactly to f32 (as `param_at`) and spread to the blocks they cover. A macro, so that
/// it is inlined into the target-feature function that uses it (`#[inline(always)]` cannot be combined with
/// `#[target_feature]`, and an `#[inline]` function was not inlined: a call per chunk and row).
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
            let h = vcreate_u16(bits);
            if f.param == DType::F16 {
                f16x4_to_f32(h)
            } else {
                vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
            }
        } else if count == 4 {
            vreinterpretq_f32_u8(ld16(bytes))
        } else {
            let mut t = [0.0f32; 4];
            for (k, v) in t.iter_mut().enumerate().take(count) {
                *v = read_f32(bytes, k);
            }
            // SAFETY: reads the 16 bytes of the local array.
            unsafe { vld1q_f32(t.as_ptr()) }
        };
        match count {
            4 => v,
            2 => vzip1q_f32(v, v),
            _ => vdupq_laneq_f32::<0>(v),
        }
    }};
}

/// `R` weight rows times `T` activation rows (R or T is 1), each output exactly `dot_affine_q8_ref`: the
/// integer sums are exact whatever the grouping, and every (row, token) pair runs the reference's f32 steps on
/// its own accumulator. Shares each activation block's load across the rows and each weight block's unpack
/// across the tokens.
#[inline]
#[target_feature(enable = "neon")]
fn tile_q8<const BITS: u32, const R: usize, const T: usize, const SDOT: bool>(
    f: AffineFormat,
    n: usize,
    w: [AffineRow<'_>; R],
    x: [&[u8]; T],
    out: &mut [[f32; R]; T],
) {
    let planes = x.map(|x| q8_a_planes(n, x));
    let nb = n / QK8_A;
    let per_group = f.group / QK8_A;
    let spread = Spread::new(if matches!(BITS, 4 | 8) { 2 } else { BITS });
    let mut acc = [[vdupq_n_f32(0.0); R]; T];
    let mut b0 = 0;
    while b0 < nb {
        let m = (nb - b0).min(4);
        // Integer block sums: p[t][r][k] for block b0 + k (zero past the row's end).
        let mut p = [[[vdupq_n_s32(0); 4]; R]; T];
        for k in 0..m {
            let b = b0 + k;
            let mut xv = [[vdupq_n_s8(0); 2]; T];
            for t in 0..T {
                xv[t] = acts::<BITS>(planes[t].0, b);
            }
            for r in 0..R {
                let wv = weights::<BITS>(w[r].q, b, spread);
                for t in 0..T {
                    p[t][r][k] = block_dot::<BITS, SDOT>(wv, xv[t]);
                }
            }
        }
        // Per-row parameters of the four blocks.
        let (mut s4, mut bi4) = ([vdupq_n_f32(0.0); R], [vdupq_n_f32(0.0); R]);
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
                    s4[r] = vld1q_f32(s.as_ptr());
                    bi4[r] = vld1q_f32(bi.as_ptr());
                }
            }
        }
        for t in 0..T {
            let (_, dp, sp) = planes[t];
            let (d, sq) = if m == 4 {
                let (db, sb) = (&dp[4 * b0..4 * b0 + 16], &sp[4 * b0..4 * b0 + 16]);
                // SAFETY: each load reads exactly the 16 bytes of a bounds-checked slice.
                unsafe { (vld1q_f32(db.as_ptr().cast()), vld1q_s32(sb.as_ptr().cast())) }
            } else {
                let (mut d, mut sq) = ([0.0f32; 4], [0i32; 4]);
                for k in 0..m {
                    d[k] = read_f32(dp, b0 + k);
                    sq[k] = read_i32(sp, b0 + k);
                }
                // SAFETY: each load reads the 16 bytes of a local array.
                unsafe { (vld1q_f32(d.as_ptr()), vld1q_s32(sq.as_ptr())) }
            };
            let sqf = vcvtq_f32_s32(sq);
            for r in 0..R {
                let q = &p[t][r];
                let mut isum = vpaddq_s32(vpaddq_s32(q[0], q[1]), vpaddq_s32(q[2], q[3]));
                if BITS == 8 {
                    isum = vaddq_s32(isum, vshlq_n_s32::<7>(sq));
                }
                let a = vfmaq_f32(acc[t][r], vcvtq_f32_s32(isum), vmulq_f32(d, s4[r]));
                acc[t][r] = vfmaq_f32(a, sqf, vmulq_f32(d, bi4[r]));
            }
        }
        b0 += 4;
    }
    for t in 0..T {
        for r in 0..R {
            // (acc0 + acc1) + (acc2 + acc3), as the reference.
            let pairs = vpaddq_f32(acc[t][r], acc[t][r]);
            out[t][r] = vpadds_f32(vget_low_f32(pairs));
        }
    }
}

/// `tile_q8` with `sdot`.
#[target_feature(enable = "neon,dotprod")]
fn tile_q8_sdot<const BITS: u32, const R: usize, const T: usize>(
    f: AffineFormat,
    n: usize,
    w: [AffineRow<'_>; R],
    x: [&[u8]; T],
    out: &mut [[f32; R]; T],
) {
    tile_q8::<BITS, R, T, true>(f, n, w, x, out)
}

/// Checks the lengths (and for `SDOT` the CPU), then runs the tile for the row's bit width.
fn tile_any<const R: usize, const T: usize, const SDOT: bool>(
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
    assert!(!SDOT || has_dotprod(), "the sdot affine kernels need a CPU with dotprod");
    macro_rules! run {
        ($bits:literal) => {
            if SDOT {
                // SAFETY: only reachable through a table built when has_neon() held, and dotprod checked above;
                // lengths checked above.
                unsafe { tile_q8_sdot::<$bits, R, T>(f, n, w, x, out) }
            } else {
                // SAFETY: only reachable through a table built when has_neon() held; lengths checked above.
                unsafe { tile_q8::<$bits, R, T, false>(f, n, w, x, out) }
            }
        };
    }
    match f.bits {
        2 => run!(2),
        3 => run!(3),
        4 => run!(4),
        5 => run!(5),
        6 => run!(6),
        8 => run!(8),
        b => unreachable!("no MLX affine format has {b}-bit weights"),
    }
}

/// One row against one activation row (`SDOT`: with `sdot`, only where [`has_dotprod`]).
pub(crate) fn dot_q8<const SDOT: bool>(f: AffineFormat, n: usize, w: AffineRow<'_>, x: &[u8]) -> f32 {
    let mut out = [[0.0f32; 1]; 1];
    tile_any::<1, 1, SDOT>(f, n, [w], [x], &mut out);
    out[0][0]
}

/// Four rows against one activation row, as four `dot_q8`.
pub(crate) fn dot_q8_r4<const SDOT: bool>(
    f: AffineFormat,
    n: usize,
    w: [AffineRow<'_>; 4],
    x: &[u8],
    out: &mut [f32; 4],
) {
    let mut o = [[0.0f32; 4]; 1];
    tile_any::<4, 1, SDOT>(f, n, w, [x], &mut o);
    *out = o[0];
}

/// One row against four activation rows, as four `dot_q8`.
pub(crate) fn dot_q8_x4<const SDOT: bool>(
    f: AffineFormat,
    n: usize,
    w: AffineRow<'_>,
    x: [&[u8]; 4],
    out: &mut [f32; 4],
) {
    let mut o = [[0.0f32; 1]; 4];
    tile_any::<1, 4, SDOT>(f, n, [w], x, &mut o);
    *out = o.map(|v| v[0]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affine::{dot_affine_q8_ref, quantize_affine_ref, quantize_q8_a_ref};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Both variants (plain NEON always, `sdot` where the CPU has it) against the reference, whichever of them
    /// the table picks here (`tests/affine.rs` checks the table's choice on every format; `tools/test_aarch64.sh`
    /// runs it on CPUs with and without dotprod).
    #[test]
    fn plain_and_sdot_variants_equal_the_reference() {
        let mut rng = SmallRng::seed_from_u64(21);
        let variants: &[bool] = if has_dotprod() { &[false, true] } else { &[false] };
        println!("dotprod: {}", has_dotprod());
        for bits in [2, 3, 4, 5, 6, 8] {
            for (group, param) in [(32, DType::BF16), (64, DType::F16), (128, DType::F32)] {
                let f = AffineFormat::new(bits, group, param).expect("format");
                let n = 5 * group;
                let rows: Vec<[Vec<u8>; 3]> = (0..4)
                    .map(|_| {
                        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
                        let mut q = vec![0u8; f.q_bytes(n)];
                        let (mut s, mut b) = (vec![0u8; f.param_bytes(n)], vec![0u8; f.param_bytes(n)]);
                        quantize_affine_ref(f, &x, &mut q, &mut s, &mut b);
                        // Random codes over the whole range (the quantizer's only give valid planes).
                        q.iter_mut().for_each(|v| *v = rng.gen());
                        [q, s, b]
                    })
                    .collect();
                let views: [AffineRow<'_>; 4] =
                    std::array::from_fn(|r| AffineRow { q: &rows[r][0], scales: &rows[r][1], biases: &rows[r][2] });
                let xs: Vec<Vec<u8>> = (0..4)
                    .map(|_| {
                        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
                        let mut xq = vec![0u8; n / QK8_A * 40];
                        quantize_q8_a_ref(&x, &mut xq);
                        xq
                    })
                    .collect();
                let xv = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
                for &sdot in variants {
                    let (mut r4, mut x4) = ([0.0f32; 4], [0.0f32; 4]);
                    let one = if sdot {
                        dot_q8_r4::<true>(f, n, views, xv[0], &mut r4);
                        dot_q8_x4::<true>(f, n, views[1], xv, &mut x4);
                        dot_q8::<true>(f, n, views[2], xv[3])
                    } else {
                        dot_q8_r4::<false>(f, n, views, xv[0], &mut r4);
                        dot_q8_x4::<false>(f, n, views[1], xv, &mut x4);
                        dot_q8::<false>(f, n, views[2], xv[3])
                    };
                    let what = format!("{f:?} sdot {sdot}");
                    assert_eq!(one.to_bits(), dot_affine_q8_ref(f, n, views[2], xv[3]).to_bits(), "{what}");
                    for i in 0..4 {
                        assert_eq!(r4[i].to_bits(), dot_affine_q8_ref(f, n, views[i], xv[0]).to_bits(), "{what} r4");
                        assert_eq!(x4[i].to_bits(), dot_affine_q8_ref(f, n, views[1], xv[i]).to_bits(), "{what} x4");
                    }
                }
            }
        }
    }
}
