//! NEON kernels. Integer dots widen i8 x i8 products to i16 (`smull`, |p| <= 128 * 127) and pairwise-add
//! them into i32 (`sadalp`), so every integer sum is exact; the quantizers round with `fcvtns` (nearest, ties
//! to even), bit-identical to the scalar ones.
//!
//! Each integer dot (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) is one body generic over `SDOT`, with two
//! entry points: [`base`] and [`dotprod`], which forms the same exact sums with `sdot` (ARMv8.2's dotprod
//! extension, chosen at run time where the CPU has it; four products per i32 lane). The f32 arithmetic is the
//! same in both, so are the results, bit for bit: where a dot sums its integer lanes before any f32 step (the
//! K-quants) the split between lanes is free; where it converts each lane to f32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
//! the `sdot` variant first reorders both operands ([`lane_order`]) so that every lane holds the same products.
//! The `unsafe` blocks are loads and stores of fixed arrays, and `sdot` in the dotprod instances.

use super::sdot;
use crate::f16::f16_to_f32;
use crate::q4_0::BlockQ4_0;
use crate::q4_1::BlockQ4_1;
use crate::q4_k::{scale_min_k4, BlockQ4K};
use crate::q5_0::BlockQ5_0;
use crate::q5_1::BlockQ5_1;
use crate::q5_k::BlockQ5K;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_1::BlockQ8_1;
use crate::q8_k::{BlockQ8K, QK_K};
use crate::{blocks, blocks_mut};
use std::arch::aarch64::*;

#[inline]
#[target_feature(enable = "neon")]
pub(super) fn ld_u8(b: &[u8; 16]) -> uint8x16_t {
    // SAFETY: reads exactly the 16 bytes of `b` (ld1 has no alignment requirement for bytes).
    unsafe { vld1q_u8(b.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
pub(super) fn ld_s8(b: &[i8; 16]) -> int8x16_t {
    // SAFETY: reads exactly the 16 bytes of `b`.
    unsafe { vld1q_s8(b.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
pub(super) fn ld_f32(x: &[f32; 4]) -> float32x4_t {
    // SAFETY: reads exactly the 4 floats of `x`.
    unsafe { vld1q_f32(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn st_s8(b: &mut [i8; 8], v: int8x8_t) {
    // SAFETY: writes exactly the 8 bytes of `b`.
    unsafe { vst1_s8(b.as_mut_ptr(), v) }
}

pub(super) fn arr<const N: usize, T>(s: &[T]) -> &[T; N] {
    s.try_into().expect("chunk of exactly N elements")
}

fn arr_mut<const N: usize, T>(s: &mut [T]) -> &mut [T; N] {
    s.try_into().expect("chunk of exactly N elements")
}

pub(super) fn f16(h: [u8; 2]) -> f32 {
    f16_to_f32(u16::from_le_bytes(h))
}

/// Four partial sums of `a[i] * b[i]` over 16 signed bytes (|a|, |b| <= 128, not both -128).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn dot_i8x16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpaddlq_s16(lo), hi)
}

/// Four i32 lanes whose total is `sum(a[i] * b[i])` over 16 signed bytes, exact: [`dot_i8x16`] in base NEON, one
/// `sdot` with `SDOT` (which splits the products between the lanes otherwise). Only for sums taken across the
/// lanes.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn dot16<const SDOT: bool>(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if SDOT {
        // SAFETY: SDOT is true only in code instantiated by the `dotprod` entry points (`variants!` here,
        // `shapes!` in neon_tile.rs), which are only called where the CPU has dotprod.
        unsafe { sdot(vdupq_n_s32(0), a, b) }
    } else {
        dot_i8x16(a, b)
    }
}

/// `acc + dot16::<SDOT>(a, b)` (with `SDOT`, one accumulating `sdot`).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn dot16_acc<const SDOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if SDOT {
        // SAFETY: as in `dot16`.
        unsafe { sdot(acc, a, b) }
    } else {
        vaddq_s32(acc, dot_i8x16(a, b))
    }
}

/// Four i32 lanes of the products of the two halves `a[h] . b[h]` of a 32-value block, exact. Call the 16-bit
/// pairs of a vector (bytes `2p, 2p + 1`) `p = 0..8`. Base NEON ([`dot_i8x16`] of each half): lane `j` holds pairs
/// `j` and `j + 4` of both halves. `SDOT` (`sdot`): lane `j` holds the bytes `4j..4j + 4` of both vectors, which
/// are those same pairs when both operands went through [`lane_order`]; so the lanes equal base NEON's, as the
/// Q8_0-like dots need (they convert each lane to f32). Without `lane_order` only the total agrees.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn dot32<const SDOT: bool>(a: [int8x16_t; 2], b: [int8x16_t; 2]) -> int32x4_t {
    if SDOT {
        dot16_acc::<true>(dot16::<true>(a[0], b[0]), a[1], b[1])
    } else {
        vaddq_s32(dot_i8x16(a[0], b[0]), dot_i8x16(a[1], b[1]))
    }
}

/// The two halves of a 32-value block in the order for which [`dot32`] gives base NEON's lanes: unchanged in base
/// NEON; with `SDOT` zipped by 16-bit pairs, `[h0.0, h1.0, h0.1, h1.1, .., h1.3]` and `[h0.4, h1.4, .., h1.7]`,
/// so that the 4-byte group `j` of the first holds pair `j` of each half and that of the second pair `j + 4`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn lane_order<const SDOT: bool>(v: [int8x16_t; 2]) -> [int8x16_t; 2] {
    if SDOT {
        let (h0, h1) = (vreinterpretq_s16_s8(v[0]), vreinterpretq_s16_s8(v[1]));
        [vreinterpretq_s8_s16(vzip1q_s16(h0, h1)), vreinterpretq_s8_s16(vzip2q_s16(h0, h1))]
    } else {
        v
    }
}

/// 16 nibble bytes -> (low nibbles, high nibbles) as signed bytes 0..16.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let q = ld_u8(qs);
    (vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)))
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q8_0_q8_0<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (i, (bw, bx)) in blocks::<BlockQ8_0>(w).iter().zip(blocks::<BlockQ8_0>(x)).enumerate() {
        let q = lane_order::<SDOT>([ld_s8(arr(&bw.qs[..16])), ld_s8(arr(&bw.qs[16..]))]);
        let y = lane_order::<SDOT>([ld_s8(arr(&bx.qs[..16])), ld_s8(arr(&bx.qs[16..]))]);
        let d = vdupq_n_f32(f16(bw.d) * f16(bx.d));
        acc[i % 2] = vfmaq_f32(acc[i % 2], d, vcvtq_f32_s32(dot32::<SDOT>(q, y)));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q4_0_q8_0<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    let eight = vdupq_n_s8(8);
    for (i, (bw, bx)) in blocks::<BlockQ4_0>(w).iter().zip(blocks::<BlockQ8_0>(x)).enumerate() {
        let (lo, hi) = nibbles(&bw.qs);
        let q = lane_order::<SDOT>([vsubq_s8(lo, eight), vsubq_s8(hi, eight)]);
        let y = lane_order::<SDOT>([ld_s8(arr(&bx.qs[..16])), ld_s8(arr(&bx.qs[16..]))]);
        let d = vdupq_n_f32(f16(bw.d) * f16(bx.d));
        acc[i % 2] = vfmaq_f32(acc[i % 2], d, vcvtq_f32_s32(dot32::<SDOT>(q, y)));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q4_1_q8_1<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut summs = 0f32;
    for (i, (bw, bx)) in blocks::<BlockQ4_1>(w).iter().zip(blocks::<BlockQ8_1>(x)).enumerate() {
        summs += f16(bw.m) * f16(bx.s);
        let (lo, hi) = nibbles(&bw.qs);
        let q = lane_order::<SDOT>([lo, hi]);
        let y = lane_order::<SDOT>([ld_s8(arr(&bx.qs[..16])), ld_s8(arr(&bx.qs[16..]))]);
        let d = vdupq_n_f32(f16(bw.d) * f16(bx.d));
        acc[i % 2] = vfmaq_f32(acc[i % 2], d, vcvtq_f32_s32(dot32::<SDOT>(q, y)));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1])) + summs
}

/// The 5th bits of a Q5_0/Q5_1 block as two 16-byte vectors of 0x10 (bit set) or 0: values 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn high_bits_q5(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let bit = vcombine_u8(vcreate_u8(0x8040201008040201), vcreate_u8(0x8040201008040201));
    let spread = |a: u8, b: u8| vcombine_u8(vdup_n_u8(a), vdup_n_u8(b));
    let set = |v: uint8x16_t| vandq_u8(vtstq_u8(v, bit), vdupq_n_u8(0x10));
    (set(spread(qh[0], qh[1])), set(spread(qh[2], qh[3])))
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q5_0_q8_0<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    let sixteen = vdupq_n_s8(16);
    for (i, (bw, bx)) in blocks::<BlockQ5_0>(w).iter().zip(blocks::<BlockQ8_0>(x)).enumerate() {
        let (lo, hi) = nibbles(&bw.qs);
        let (h0, h1) = high_bits_q5(bw.qh);
        let q0 = vsubq_s8(vorrq_s8(lo, vreinterpretq_s8_u8(h0)), sixteen);
        let q1 = vsubq_s8(vorrq_s8(hi, vreinterpretq_s8_u8(h1)), sixteen);
        let q = lane_order::<SDOT>([q0, q1]);
        let y = lane_order::<SDOT>([ld_s8(arr(&bx.qs[..16])), ld_s8(arr(&bx.qs[16..]))]);
        let d = vdupq_n_f32(f16(bw.d) * f16(bx.d));
        acc[i % 2] = vfmaq_f32(acc[i % 2], d, vcvtq_f32_s32(dot32::<SDOT>(q, y)));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q5_1_q8_1<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut summs = 0f32;
    for (i, (bw, bx)) in blocks::<BlockQ5_1>(w).iter().zip(blocks::<BlockQ8_1>(x)).enumerate() {
        summs += f16(bw.m) * f16(bx.s);
        let (lo, hi) = nibbles(&bw.qs);
        let (h0, h1) = high_bits_q5(bw.qh);
        let q = lane_order::<SDOT>([vorrq_s8(lo, vreinterpretq_s8_u8(h0)), vorrq_s8(hi, vreinterpretq_s8_u8(h1))]);
        let y = lane_order::<SDOT>([ld_s8(arr(&bx.qs[..16])), ld_s8(arr(&bx.qs[16..]))]);
        let d = vdupq_n_f32(f16(bw.d) * f16(bx.d));
        acc[i % 2] = vfmaq_f32(acc[i % 2], d, vcvtq_f32_s32(dot32::<SDOT>(q, y)));
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1])) + summs
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q5_k_q8_k<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0f32;
    let m4 = vdupq_n_u8(0x0f);
    for (bw, bx) in blocks::<BlockQ5K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let (mut sumi, mut summ) = (0i32, 0i32);
        let qh = [ld_u8(arr(&bw.qh[..16])), ld_u8(arr(&bw.qh[16..]))];
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &bw.scales);
            summ += m as i32 * (bx.bsum(2 * j) + bx.bsum(2 * j + 1));
            // Sub-block j: nibble j % 2 of qs[32 (j / 2)..][..32], 5th bit j of qh[l].
            let (k, shift) = (j / 2, j % 2);
            let bit = vdupq_n_u8(1 << j);
            let mut s = vdupq_n_s32(0);
            for half in 0..2 {
                let q4 = ld_u8(arr(&bw.qs[32 * k + 16 * half..32 * k + 16 * half + 16]));
                let low = if shift == 0 { vandq_u8(q4, m4) } else { vshrq_n_u8::<4>(q4) };
                let high = vandq_u8(vtstq_u8(qh[half], bit), vdupq_n_u8(0x10));
                let q5 = vreinterpretq_s8_u8(vorrq_u8(low, high));
                let y = ld_s8(arr(&bx.qs[32 * j + 16 * half..32 * j + 16 * half + 16]));
                s = dot16_acc::<SDOT>(s, q5, y);
            }
            sumi += sc as i32 * vaddvq_s32(s);
        }
        let dy = f32::from_le_bytes(bx.d);
        sumf += dy * f16(bw.d) * sumi as f32 - dy * f16(bw.dmin) * summ as f32;
    }
    sumf
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q4_k_q8_k<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (bw, bx) in blocks::<BlockQ4K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let (mut sumi, mut summ) = (0i32, 0i32);
        for k in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * k, &bw.scales);
            let (sc1, m1) = scale_min_k4(2 * k + 1, &bw.scales);
            summ += m0 as i32 * (bx.bsum(4 * k) + bx.bsum(4 * k + 1));
            summ += m1 as i32 * (bx.bsum(4 * k + 2) + bx.bsum(4 * k + 3));
            let (l0, h0) = nibbles(arr(&bw.qs[32 * k..32 * k + 16]));
            let (l1, h1) = nibbles(arr(&bw.qs[32 * k + 16..32 * k + 32]));
            let y = |o: usize| ld_s8(arr(&bx.qs[64 * k + o..64 * k + o + 16]));
            let s_lo = vaddvq_s32(dot32::<SDOT>([l0, l1], [y(0), y(16)]));
            let s_hi = vaddvq_s32(dot32::<SDOT>([h0, h1], [y(32), y(48)]));
            sumi += sc0 as i32 * s_lo + sc1 as i32 * s_hi;
        }
        let dy = f32::from_le_bytes(bx.d);
        sumf += dy * f16(bw.d) * sumi as f32 - dy * f16(bw.dmin) * summ as f32;
    }
    sumf
}

/// Bytes `16 half..16 half + 16` of half `h` of a Q6_K block (values `128 h..128 h + 128`) as signed quants
/// `q - 32`: vector `t` holds values `128 h + 32 t + 16 half..` (+16), from the low or high nibbles of `ql` and
/// bits `2 t..2 t + 2` of `qh`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn q6k_quants(bw: &BlockQ6K, h: usize, half: usize) -> [int8x16_t; 4] {
    let (m4, m2) = (vdupq_n_u8(0x0f), vdupq_n_u8(3));
    let o = 16 * half;
    let ql0 = ld_u8(arr(&bw.ql[64 * h + o..64 * h + o + 16]));
    let ql1 = ld_u8(arr(&bw.ql[64 * h + 32 + o..64 * h + 32 + o + 16]));
    let qh = ld_u8(arr(&bw.qh[32 * h + o..32 * h + o + 16]));
    let q6 = |q: uint8x16_t| vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(32));
    [
        q6(vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8::<4>(vandq_u8(qh, m2)))),
        q6(vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), m2)))),
        q6(vorrq_u8(vshrq_n_u8::<4>(ql0), vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), m2)))),
        q6(vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh)))),
    ]
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q6_k_q8_k<const SDOT: bool>(_n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (bw, bx) in blocks::<BlockQ6K>(w).iter().zip(blocks::<BlockQ8K>(x)) {
        let mut sumi = 0i32;
        for h in 0..2 {
            for half in 0..2 {
                for (t, q6) in q6k_quants(bw, h, half).into_iter().enumerate() {
                    let base = 128 * h + 32 * t + 16 * half;
                    let s = vaddvq_s32(dot16::<SDOT>(q6, ld_s8(arr(&bx.qs[base..base + 16]))));
                    sumi += bw.scales[base / 16] as i32 * s;
                }
            }
        }
        sumf += f32::from_le_bytes(bx.d) * f16(bw.d) * sumi as f32;
    }
    sumf
}

/// The entry points of the integer dots above, twice: [`base`] (NEON alone, every aarch64 CPU) and [`dotprod`]
/// (with `sdot`), each an instance of the one body generic over `SDOT`. The instances differ only in how they form
/// exact integer sums, so they return the same bits. The bodies are `#[inline]`: inlined into a `dotprod` entry
/// point, their `sdot` calls inline too (a body left out of line, which enables only NEON, calls `sdot` as a
/// function for every instruction).
macro_rules! variants {
    ($($f:ident),* $(,)?) => {
        /// The integer dots in base NEON (`smull`, `sadalp`).
        pub(crate) mod base {
            $(
                #[target_feature(enable = "neon")]
                pub(crate) fn $f(n: usize, w: &[u8], x: &[u8]) -> f32 {
                    super::$f::<false>(n, w, x)
                }
            )*
        }

        /// The integer dots with `sdot`: only for CPUs with dotprod.
        pub(crate) mod dotprod {
            $(
                #[target_feature(enable = "neon,dotprod")]
                pub(crate) fn $f(n: usize, w: &[u8], x: &[u8]) -> f32 {
                    super::$f::<true>(n, w, x)
                }
            )*
        }
    };
}

variants!(
    dot_q8_0_q8_0,
    dot_q4_0_q8_0,
    dot_q4_1_q8_1,
    dot_q5_0_q8_0,
    dot_q5_1_q8_1,
    dot_q5_k_q8_k,
    dot_q4_k_q8_k,
    dot_q6_k_q8_k,
);

#[target_feature(enable = "neon")]
pub(crate) fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (wc, xc) = (w.chunks_exact(64), x.chunks_exact(64));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (w, x) in wc.zip(xc) {
        for u in 0..4 {
            let a = vreinterpretq_f32_u8(ld_u8(arr(&w[16 * u..16 * u + 16])));
            let b = vreinterpretq_f32_u8(ld_u8(arr(&x[16 * u..16 * u + 16])));
            acc[u] = vfmaq_f32(acc[u], a, b);
        }
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(sum) + crate::f16::dot_f32_ref(n % 16, wt, xt)
}

/// `sum(w[i] * x[i])` of a bf16 weight row (widened exactly by a 16-bit shift) and an f32 activation row: 16
/// values per step in four independent accumulators, the last `n % 16` with the scalar reference.
#[target_feature(enable = "neon")]
pub(crate) fn dot_bf16_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let (wc, xc) = (w.chunks_exact(32), x.chunks_exact(64));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    let widen = |b: uint16x8_t| {
        (vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(b))), vreinterpretq_f32_u32(vshll_high_n_u16::<16>(b)))
    };
    let ld_f32_bytes = |b: &[u8]| vreinterpretq_f32_u8(ld_u8(arr(b)));
    for (w, x) in wc.zip(xc) {
        for u in 0..2 {
            let (a0, a1) = widen(vreinterpretq_u16_u8(ld_u8(arr(&w[16 * u..16 * u + 16]))));
            let b0 = ld_f32_bytes(&x[32 * u..32 * u + 16]);
            let b1 = ld_f32_bytes(&x[32 * u + 16..32 * u + 32]);
            acc[2 * u] = vfmaq_f32(acc[2 * u], a0, b0);
            acc[2 * u + 1] = vfmaq_f32(acc[2 * u + 1], a1, b1);
        }
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    vaddvq_f32(sum) + crate::f16::dot_bf16_f32_ref(n % 16, wt, xt)
}

/// Rounds `v * s` to nearest-even i32 and narrows 8 of them (two vectors) to saturated i8.
#[inline]
#[target_feature(enable = "neon")]
fn round_narrow(v0: int32x4_t, v1: int32x4_t) -> int8x8_t {
    vqmovn_s16(vcombine_s16(vqmovn_s32(v0), vqmovn_s32(v1)))
}

/// As `quantize_block_q8` of the scalar Q8_0: returns the f32 scale and the sum of the quants.
#[inline]
#[target_feature(enable = "neon")]
fn quantize_block_q8(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    let v: [float32x4_t; 8] = std::array::from_fn(|u| ld_f32(arr(&x[4 * u..4 * u + 4])));
    let amax = v.iter().fold(vdupq_n_f32(0.0), |m, &vu| vmaxq_f32(m, vabsq_f32(vu)));
    let amax = vmaxvq_f32(amax);
    let d = amax / 127.0;
    let id = vdupq_n_f32(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let q: [int32x4_t; 8] = std::array::from_fn(|u| vcvtnq_s32_f32(vmulq_f32(v[u], id)));
    let mut sum = vdupq_n_s32(0);
    for u in 0..4 {
        sum = vaddq_s32(sum, vaddq_s32(q[2 * u], q[2 * u + 1]));
        st_s8(arr_mut(&mut qs[8 * u..8 * u + 8]), round_narrow(q[2 * u], q[2 * u + 1]));
    }
    (d, vaddvq_s32(sum))
}

#[target_feature(enable = "neon")]
pub(crate) fn quantize_q8_0(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8_0>(dst).iter_mut().zip(x.chunks_exact(32)) {
        let (d, _) = quantize_block_q8(x, &mut b.qs);
        b.d = crate::f32_to_f16(d).to_le_bytes();
    }
}

#[target_feature(enable = "neon")]
pub(crate) fn quantize_q8_1(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8_1>(dst).iter_mut().zip(x.chunks_exact(32)) {
        let (d, sum) = quantize_block_q8(x, &mut b.qs);
        b.d = crate::f32_to_f16(d).to_le_bytes();
        b.s = crate::f32_to_f16(d * sum as f32).to_le_bytes();
    }
}

#[target_feature(enable = "neon")]
pub(crate) fn quantize_q8_k(x: &[f32], dst: &mut [u8]) {
    for (b, x) in blocks_mut::<BlockQ8K>(dst).iter_mut().zip(x.chunks_exact(QK_K)) {
        let (mut vmax, mut vmin) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        for c in x.chunks_exact(4) {
            let v = ld_f32(arr(c));
            vmax = vmaxq_f32(vmax, v);
            vmin = vminq_f32(vmin, v);
        }
        let (hi, lo) = (vmaxvq_f32(vmax), vminvq_f32(vmin));
        // The signed value of largest magnitude; on a +/- tie the first one in the row, as the scalar scan.
        let max = if hi > -lo {
            hi
        } else if hi < -lo {
            lo
        } else {
            crate::q8_k::signed_absmax(x)
        };
        if max == 0.0 {
            b.d = 0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        let vs = vdupq_n_f32(iscale);
        let cap = vdupq_n_s32(127);
        for g in 0..QK_K / 16 {
            let q: [int32x4_t; 4] = std::array::from_fn(|u| {
                let v = ld_f32(arr(&x[16 * g + 4 * u..16 * g + 4 * u + 4]));
                vminq_s32(vcvtnq_s32_f32(vmulq_f32(v, vs)), cap)
            });
            let sum = vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
            b.bsums[g] = (sum as i16).to_le_bytes();
            st_s8(arr_mut(&mut b.qs[16 * g..16 * g + 8]), round_narrow(q[0], q[1]));
            st_s8(arr_mut(&mut b.qs[16 * g + 8..16 * g + 16]), round_narrow(q[2], q[3]));
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
