//! NEON kernels of Q4_K, Q6_K and Q8_0 that share work between rows: one body per format over a tile of `R`
//! weight rows by `T` activation rows, in three shapes: one weight row by four activation rows (`vec_dot_x4`:
//! each weight block decoded once for the four), four by one (`vec_dot_r4`, decode: each activation block
//! loaded once for the four rows) and four by one to four (`vec_dot_tile`, prompts: both at once).
//!
//! Each body is generic over `SDOT` too, like the single-row kernels: the entry points come twice, in [`base`]
//! (NEON alone) and [`dotprod`] (the integer sums with `sdot`, where the CPU has it), and the two return the same
//! bits, as the integer sums are exact either way and the f32 steps are the same.
//!
//! Every output is BIT-IDENTICAL to the single-row kernel of `neon.rs` (the engine's batch invariance rests
//! on it):
//! - Q4_K, Q6_K: the single kernel sums each super-block exactly into an i32 (`sumi`; for Q4_K also the min
//!   term `summ`) and only then does f32 arithmetic, in scalars: `sumf += dy * d * sumi - dy * dmin * summ`
//!   (Q6_K: `sumf += dy * d * sumi`). The tiles compute the same integers in their own order (exact: the
//!   bounds are on [`mla_dot32`] and [`dot16x4`]) and repeat those f32 operations, in the same order, in
//!   vectors whose four lanes are four rows (with one weight row: four tokens). Each lane is the scalar IEEE
//!   operation, so it has the scalar's bits. (With `sdot` the products fall into other i32 lanes; the totals,
//!   and so every f32 input, are the same.)
//! - Q8_0: the single kernel converts four i32 partial sums per block to f32 (lane `j`: the products at
//!   positions 2j, 2j + 1, 2j + 8, 2j + 9 of each 16-value half) and fuses them, times the f32 product
//!   `f16(w.d) * f16(x.d)`, into the even-block or odd-block accumulator, ending with
//!   `vaddvq_f32(acc0 + acc1)`. The tile does exactly this for each (row, token) pair, with the same four i32
//!   lanes (`neon::dot32`; for `sdot` its operands are reordered by `neon::lane_order` first, so that each lane
//!   holds the same products).
//!
//! What is shared, per block: the weight decode (Q4_K nibbles, 6-bit scales and mins; Q6_K 6-bit quants and
//! scales; Q8_0 loads and `f16(w.d)`) runs once per row for all the tokens of a call; the activation loads
//! (and Q8_0's `f16(x.d)`, Q4_K's bsum pairs) once per token for all the rows; the f32 arithmetic of K-quant
//! blocks runs on four (row, token) pairs per instruction. The integer work per (row, token) pair is its own:
//! per 32 values Q4_K spends 6 instructions (4 widening multiply-accumulates into i16 lanes, 2 into i32 by the
//! sub-block scale) where the single kernel spends 11 (two 4-instruction dots, an add, a horizontal add, a
//! scalar multiply-add); per 64 values Q6_K 14 (8 products, 5 pairwise adds, one multiply-accumulate by the
//! four sub-block scales) where the single kernel spends 28; Q8_0 the single kernel's 9 per block. With `sdot`:
//! Q4_K 4 per 32 values (a zeroed accumulator, two `sdot`, a multiply-accumulate by the scale); Q6_K 12 per 64
//! (four zeroed accumulators, four `sdot`, three pairwise adds, a multiply-accumulate); Q8_0 3 per block (a zeroed
//! accumulator, two `sdot`), plus the two zips of `lane_order` once per row and once per token. (Instruction
//! counts only: no aarch64 timing so far.)
//! Register pressure: the integer accumulators of a K-quant tile are `R * T` vectors (16 at four by four);
//! Q8_0 needs two f32 accumulators per pair, 32 at four by four, so that tile keeps some on the stack.

use super::neon::{arr, dot16, dot32, f16, lane_order, ld_f32, ld_s8, ld_u8, q6k_quants};
use crate::q4_k::{scale_min_k4, BlockQ4K};
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::q8_k::BlockQ8K;
use crate::shape::{lane, n_groups};
use crate::{blocks, Block};
use std::arch::aarch64::*;

/// `[f(0), .., f(N - 1)]` by a plain loop (which LLVM unrolls and inlines here; `array::from_fn` and `map`
/// were left as a call per element in these kernels).
#[inline(always)]
fn fill<const N: usize, U: Copy>(zero: U, mut f: impl FnMut(usize) -> U) -> [U; N] {
    let mut a = [zero; N];
    for (i, ai) in a.iter_mut().enumerate() {
        *ai = f(i);
    }
    a
}

/// The blocks of `R` weight rows and `T` activation rows; panics unless all have one number of blocks. Always
/// inlined, as its x86 twin in `avx512_kq.rs`: called out of line, the slices come back through the stack, and on
/// x86 the kernel's wide reloads of them stalled on store forwarding (a quarter of a one-block row's decode).
#[inline(always)]
fn rows_and_tokens<'a, W: Block, X: Block, const R: usize, const T: usize>(
    ws: [&'a [u8]; R],
    xs: [&'a [u8]; T],
) -> ([&'a [W]; R], [&'a [X]; T]) {
    let (bw, bx) = (fill(&[][..], |r| blocks::<W>(ws[r])), fill(&[][..], |t| blocks::<X>(xs[t])));
    let n = bw[0].len();
    assert!(bw.iter().all(|b| b.len() == n) && bx.iter().all(|b| b.len() == n), "rows of different lengths");
    (bw, bx)
}

/// Block `b` of each row.
#[inline(always)]
fn column<'a, B, const N: usize>(rows: &[&'a [B]; N], b: usize) -> [&'a B; N] {
    fill(&rows[0][b], |i| &rows[i][b])
}

#[inline]
#[target_feature(enable = "neon")]
fn ld_s32(v: &[i32; 4]) -> int32x4_t {
    // SAFETY: reads exactly the 4 integers of `v`.
    unsafe { vld1q_s32(v.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn st_f32(v: &mut [f32; 4], x: float32x4_t) {
    // SAFETY: writes exactly the 4 floats of `v`.
    unsafe { vst1q_f32(v.as_mut_ptr(), x) }
}

/// Lane `i` of group `g` (see [`lane`]): the sum of the four i32 lanes of `v[row][token]` (exact: integers),
/// zero where unused.
#[inline]
#[target_feature(enable = "neon")]
fn group_totals<const R: usize, const T: usize>(g: usize, v: &[[int32x4_t; T]; R]) -> int32x4_t {
    let v: [int32x4_t; 4] = fill(vdupq_n_s32(0), |i| lane::<R, T>(g, i).map_or(vdupq_n_s32(0), |(r, t)| v[r][t]));
    vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]))
}

/// Lane `i` of group `g`: the value of its row (`rows`) or of its token (`tokens`), zero where unused.
#[inline]
#[target_feature(enable = "neon")]
fn group_f32<const R: usize, const T: usize>(
    g: usize,
    rows: Option<&[f32; R]>,
    tokens: Option<&[f32; T]>,
) -> float32x4_t {
    let v: [f32; 4] = fill(0.0, |i| match (lane::<R, T>(g, i), rows, tokens) {
        (Some((r, _)), Some(rows), _) => rows[r],
        (Some((_, t)), _, Some(tokens)) => tokens[t],
        _ => 0.0,
    });
    ld_f32(&v)
}

/// `out[t][r]` from the lanes of the groups.
#[inline]
#[target_feature(enable = "neon")]
fn ungroup<const R: usize, const T: usize>(v: [float32x4_t; 4]) -> [[f32; R]; T] {
    let mut out = [[0f32; R]; T];
    for g in 0..n_groups::<R, T>() {
        let mut l = [0f32; 4];
        st_f32(&mut l, v[g]);
        for (i, &li) in l.iter().enumerate() {
            if let Some((r, t)) = lane::<R, T>(g, i) {
                out[t][r] = li;
            }
        }
    }
    out
}

/// `acc + sc * sum(q[i] * y[i])` over the 32 values of two vector pairs, in four i32 lanes (only their total is
/// used: the split between lanes is the variant's). Base NEON: each i16 lane of the products sums four of them,
/// exact for |q| <= 63 (|y| <= 128: 4 * 63 * 128 < 2^15). `SDOT`: two `sdot` into i32 lanes (8 products of at
/// most 2^14 each), then one multiply-accumulate by the scale.
#[inline]
#[target_feature(enable = "neon")]
fn mla_dot32<const SDOT: bool>(acc: int32x4_t, q: &[int8x16_t; 2], y: &[int8x16_t; 2], sc: i16) -> int32x4_t {
    if SDOT {
        return vmlaq_n_s32(acc, dot32::<true>(*q, *y), i32::from(sc));
    }
    let p = vmlal_high_s8(vmull_s8(vget_low_s8(q[0]), vget_low_s8(y[0])), q[0], y[0]);
    let p = vmlal_high_s8(vmlal_s8(p, vget_low_s8(q[1]), vget_low_s8(y[1])), q[1], y[1]);
    vmlal_high_n_s16(vmlal_n_s16(acc, vget_low_s16(p), sc), p, sc)
}

/// Lane `u`: `sum(q[u][i] * y[u][i])` over 16 values. Base NEON: exact for |q| <= 32, |y| <= 128 (the i16 lanes
/// sum at most four products, 4 * 32 * 128 <= 2^14, before widening). `SDOT`: one `sdot` per vector `u` (four i32
/// lanes), whose lanes two pairwise adds gather into lane `u`.
#[inline]
#[target_feature(enable = "neon")]
fn dot16x4<const SDOT: bool>(q: &[int8x16_t; 4], y: [int8x16_t; 4]) -> int32x4_t {
    if SDOT {
        let s = |u: usize| dot16::<true>(q[u], y[u]);
        return vpaddq_s32(vpaddq_s32(s(0), s(1)), vpaddq_s32(s(2), s(3)));
    }
    let p = |u: usize| vmlal_high_s8(vmull_s8(vget_low_s8(q[u]), vget_low_s8(y[u])), q[u], y[u]);
    let (a, b) = (vpaddq_s16(p(0), p(1)), vpaddq_s16(p(2), p(3)));
    vpaddq_s32(vpaddlq_s16(a), vpaddlq_s16(b))
}

/// The scales of the sub-blocks 8 h + 2 u + half (u = 0..4) of a Q6_K block, in lanes u.
#[inline]
#[target_feature(enable = "neon")]
fn q6k_scales(w: &BlockQ6K, h: usize, half: usize) -> int32x4_t {
    // SAFETY: reads exactly the 8 bytes of the scales of half h.
    let sc = vmovl_s8(unsafe { vld1_s8(w.scales[8 * h..8 * h + 8].as_ptr()) });
    let (lo, hi) = (vmovl_s16(vget_low_s16(sc)), vmovl_high_s16(sc));
    if half == 0 {
        vuzp1q_s32(lo, hi)
    } else {
        vuzp2q_s32(lo, hi)
    }
}

/// The sums `bsum(2j) + bsum(2j + 1)` of a Q8_K block for j in 0..4 and 4..8, in i32 (exact for any bsums).
#[inline]
#[target_feature(enable = "neon")]
fn bsum_pairs(x: &BlockQ8K) -> [int32x4_t; 2] {
    let b = x.bsums.as_flattened();
    let pairs = |h: usize| vpaddlq_s16(vreinterpretq_s16_u8(ld_u8(arr(&b[16 * h..16 * h + 16]))));
    [pairs(0), pairs(1)]
}

/// Sub-block `j` of each Q4_K row against each token, scaled by `sc[r][j]`, into `isum[r][t]`: the low nibbles
/// of `qs[32 (j / 2)..][..32]` for even `j`, the high ones (`HIGH`) for odd `j`, against activations
/// `32 j..32 j + 32`. (`HIGH` a parameter: no select between the two in the loop.)
#[inline]
#[target_feature(enable = "neon")]
fn q4k_sub_block<const R: usize, const T: usize, const HIGH: bool, const SDOT: bool>(
    isum: &mut [[int32x4_t; T]; R],
    w: &[&BlockQ4K; R],
    x: &[&BlockQ8K; T],
    sc: &[[i16; 8]; R],
    j: usize,
) {
    let y: [[int8x16_t; 2]; T] = fill([vdupq_n_s8(0); 2], |t| {
        let y = &x[t].qs[32 * j..32 * j + 32];
        [ld_s8(arr(&y[..16])), ld_s8(arr(&y[16..]))]
    });
    let o = 32 * (j / 2);
    for r in 0..R {
        let nib =
            |v: uint8x16_t| vreinterpretq_s8_u8(if HIGH { vshrq_n_u8::<4>(v) } else { vandq_u8(v, vdupq_n_u8(0x0f)) });
        let q = [nib(ld_u8(arr(&w[r].qs[o..o + 16]))), nib(ld_u8(arr(&w[r].qs[o + 16..o + 32])))];
        let mut acc = isum[r];
        for t in 0..T {
            acc[t] = mla_dot32::<SDOT>(acc[t], &q, &y[t], sc[r][j]);
        }
        isum[r] = acc;
    }
}

/// Q4_K rows `bw` against Q8_K rows `bx`: `out[t][r]`, each the single kernel's `dot_q4_k_q8_k`.
#[inline]
#[target_feature(enable = "neon")]
fn q4k_tile<const R: usize, const T: usize, const SDOT: bool>(
    bw: [&[BlockQ4K]; R],
    bx: [&[BlockQ8K]; T],
) -> [[f32; R]; T] {
    let zero = vdupq_n_s32(0);
    let mut sumf = [vdupq_n_f32(0.0); 4];
    for b in 0..bx[0].len() {
        let (w, x) = (column(&bw, b), column(&bx, b));
        let sm: [[(u8, u8); 8]; R] = fill([(0, 0); 8], |r| fill((0, 0), |j| scale_min_k4(j, &w[r].scales)));
        // isum[r][t]: sum_j sc_j * (sub-block j of row r . token t), in four lanes (|.| < 2^23).
        let mut isum = [[zero; T]; R];
        let sc: [[i16; 8]; R] = fill([0; 8], |r| fill(0, |j| i16::from(sm[r][j].0)));
        for k in 0..4 {
            q4k_sub_block::<R, T, false, SDOT>(&mut isum, &w, &x, &sc, 2 * k);
            q4k_sub_block::<R, T, true, SDOT>(&mut isum, &w, &x, &sc, 2 * k + 1);
        }
        // The min terms sum_j m_j * (bsum(2j) + bsum(2j + 1)) (|.| < 2^25), from the rows' mins and the tokens'
        // bsum pairs.
        let pairs: [[int32x4_t; 2]; T] = fill([zero; 2], |t| bsum_pairs(x[t]));
        let mut msum = [[zero; T]; R];
        for r in 0..R {
            let m: [i32; 8] = fill(0, |j| i32::from(sm[r][j].1));
            let (m_lo, m_hi) = (ld_s32(arr(&m[..4])), ld_s32(arr(&m[4..])));
            for t in 0..T {
                msum[r][t] = vmlaq_s32(vmulq_s32(m_lo, pairs[t][0]), m_hi, pairs[t][1]);
            }
        }
        let dy: [f32; T] = fill(0.0, |t| f32::from_le_bytes(x[t].d));
        let (d, dmin): ([f32; R], [f32; R]) = (fill(0.0, |r| f16(w[r].d)), fill(0.0, |r| f16(w[r].dmin)));
        for g in 0..n_groups::<R, T>() {
            // The single kernel's `sumf += dy * d * sumi - dy * dmin * summ`, lane for lane.
            let dy = group_f32::<R, T>(g, None, Some(&dy));
            let sumi = vcvtq_f32_s32(group_totals::<R, T>(g, &isum));
            let summ = vcvtq_f32_s32(group_totals::<R, T>(g, &msum));
            let a = vmulq_f32(vmulq_f32(dy, group_f32::<R, T>(g, Some(&d), None)), sumi);
            let m = vmulq_f32(vmulq_f32(dy, group_f32::<R, T>(g, Some(&dmin), None)), summ);
            sumf[g] = vaddq_f32(sumf[g], vsubq_f32(a, m));
        }
    }
    ungroup::<R, T>(sumf)
}

/// Q6_K rows `bw` against Q8_K rows `bx`: `out[t][r]`, each the single kernel's `dot_q6_k_q8_k`.
#[inline]
#[target_feature(enable = "neon")]
fn q6k_tile<const R: usize, const T: usize, const SDOT: bool>(
    bw: [&[BlockQ6K]; R],
    bx: [&[BlockQ8K]; T],
) -> [[f32; R]; T] {
    let zero = vdupq_n_s32(0);
    let mut sumf = [vdupq_n_f32(0.0); 4];
    for b in 0..bx[0].len() {
        let (w, x) = (column(&bw, b), column(&bx, b));
        // isum[r][t]: sum_j sc_j * (sub-block j of row r . token t), in four lanes (|.| < 2^26).
        let mut isum = [[zero; T]; R];
        for h in 0..2 {
            for half in 0..2 {
                // Vector u: values 128 h + 32 u + 16 half.. (+16), sub-block 8 h + 2 u + half.
                let y: [[int8x16_t; 4]; T] = fill([vdupq_n_s8(0); 4], |t| {
                    fill(vdupq_n_s8(0), |u| {
                        let base = 128 * h + 32 * u + 16 * half;
                        ld_s8(arr(&x[t].qs[base..base + 16]))
                    })
                });
                for r in 0..R {
                    let (q, sc) = (q6k_quants(w[r], h, half), q6k_scales(w[r], h, half));
                    let mut acc = isum[r];
                    for t in 0..T {
                        acc[t] = vmlaq_s32(acc[t], dot16x4::<SDOT>(&q, y[t]), sc);
                    }
                    isum[r] = acc;
                }
            }
        }
        let dy: [f32; T] = fill(0.0, |t| f32::from_le_bytes(x[t].d));
        let d: [f32; R] = fill(0.0, |r| f16(w[r].d));
        for g in 0..n_groups::<R, T>() {
            // The single kernel's `sumf += dy * d * sumi`, lane for lane.
            let dd = vmulq_f32(group_f32::<R, T>(g, None, Some(&dy)), group_f32::<R, T>(g, Some(&d), None));
            let sumi = vcvtq_f32_s32(group_totals::<R, T>(g, &isum));
            sumf[g] = vaddq_f32(sumf[g], vmulq_f32(dd, sumi));
        }
    }
    ungroup::<R, T>(sumf)
}

/// One Q8_0 block of each row and token into the accumulators `acc[P][t][r]`, as the single kernel's
/// `dot_q8_0_q8_0` adds a block to its accumulator `P`, with the same i32 lanes (for `SDOT` through
/// `lane_order`, once per token and once per row). (`P` a parameter: one call site per instance, so each is
/// inlined and the accumulators can stay in registers.)
#[inline]
#[target_feature(enable = "neon")]
fn q8_0_block<const R: usize, const T: usize, const P: usize, const SDOT: bool>(
    acc: &mut [[[float32x4_t; R]; T]; 2],
    w: [&BlockQ8_0; R],
    x: [&BlockQ8_0; T],
) {
    let y: [[int8x16_t; 2]; T] =
        fill([vdupq_n_s8(0); 2], |t| lane_order::<SDOT>([ld_s8(arr(&x[t].qs[..16])), ld_s8(arr(&x[t].qs[16..]))]));
    let dx: [f32; T] = fill(0.0, |t| f16(x[t].d));
    for r in 0..R {
        let q = lane_order::<SDOT>([ld_s8(arr(&w[r].qs[..16])), ld_s8(arr(&w[r].qs[16..]))]);
        let dw = f16(w[r].d);
        for t in 0..T {
            let s = dot32::<SDOT>(q, y[t]);
            acc[P][t][r] = vfmaq_f32(acc[P][t][r], vdupq_n_f32(dw * dx[t]), vcvtq_f32_s32(s));
        }
    }
}

/// Q8_0 rows `bw` against Q8_0 rows `bx`: `out[t][r]`, each the single kernel's `dot_q8_0_q8_0` (block `i`
/// into the accumulator `i % 2`).
#[inline]
#[target_feature(enable = "neon")]
fn q8_0_tile<const R: usize, const T: usize, const SDOT: bool>(
    bw: [&[BlockQ8_0]; R],
    bx: [&[BlockQ8_0]; T],
) -> [[f32; R]; T] {
    let mut acc = [[[vdupq_n_f32(0.0); R]; T]; 2];
    let n = bx[0].len();
    for b in (0..n).step_by(2) {
        q8_0_block::<R, T, 0, SDOT>(&mut acc, column(&bw, b), column(&bx, b));
        if b + 1 < n {
            q8_0_block::<R, T, 1, SDOT>(&mut acc, column(&bw, b + 1), column(&bx, b + 1));
        }
    }
    let mut out = [[0f32; R]; T];
    for t in 0..T {
        for r in 0..R {
            out[t][r] = vaddvq_f32(vaddq_f32(acc[0][t][r], acc[1][t][r]));
        }
    }
    out
}

/// The three entry points of a format: `$x4` (one weight row by four activation rows), `$r4` (four by one),
/// `$tile` (four by one to four), all through the body `$body` over weight blocks `$W` and activation blocks
/// `$X`, with the target features `$features` and `SDOT = $sdot`. Lengths are checked by the callers (`mod.rs`);
/// `rows_and_tokens` asserts they agree. Without a format, the entry points of all three formats.
macro_rules! shapes {
    ($features:literal, $sdot:literal) => {
        shapes!($features, $sdot, q4k_tile, BlockQ4K, BlockQ8K, dot_q4_k_q8_k_x4, dot_q4_k_q8_k_r4, dot_q4_k_q8_k_tile);
        shapes!($features, $sdot, q6k_tile, BlockQ6K, BlockQ8K, dot_q6_k_q8_k_x4, dot_q6_k_q8_k_r4, dot_q6_k_q8_k_tile);
        shapes!(
            $features,
            $sdot,
            q8_0_tile,
            BlockQ8_0,
            BlockQ8_0,
            dot_q8_0_q8_0_x4,
            dot_q8_0_q8_0_r4,
            dot_q8_0_q8_0_tile
        );
    };
    ($features:literal, $sdot:literal, $body:ident, $W:ty, $X:ty, $x4:ident, $r4:ident, $tile:ident) => {
        #[target_feature(enable = $features)]
        pub(crate) fn $x4(_n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
            let (bw, bx) = rows_and_tokens::<$W, $X, 1, 4>([w], xs);
            let v = $body::<1, 4, $sdot>(bw, bx);
            *out = [v[0][0], v[1][0], v[2][0], v[3][0]];
        }

        #[target_feature(enable = $features)]
        pub(crate) fn $r4(_n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
            let (bw, bx) = rows_and_tokens::<$W, $X, 4, 1>(ws, [x]);
            *out = $body::<4, 1, $sdot>(bw, bx)[0];
        }

        #[target_feature(enable = $features)]
        pub(crate) fn $tile(_n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
            match *xs {
                [a] => {
                    let (bw, bx) = rows_and_tokens::<$W, $X, 4, 1>(ws, [a]);
                    out[0] = $body::<4, 1, $sdot>(bw, bx)[0];
                }
                [a, b] => {
                    let (bw, bx) = rows_and_tokens::<$W, $X, 4, 2>(ws, [a, b]);
                    out[..2].copy_from_slice(&$body::<4, 2, $sdot>(bw, bx));
                }
                [a, b, c] => {
                    let (bw, bx) = rows_and_tokens::<$W, $X, 4, 3>(ws, [a, b, c]);
                    out[..3].copy_from_slice(&$body::<4, 3, $sdot>(bw, bx));
                }
                [a, b, c, d] => {
                    let (bw, bx) = rows_and_tokens::<$W, $X, 4, 4>(ws, [a, b, c, d]);
                    *out = $body::<4, 4, $sdot>(bw, bx);
                }
                _ => panic!("a tile has 1 to 4 activation rows, not {}", xs.len()),
            }
        }
    };
}

/// The shapes in base NEON (`smull`, `smlal`, `sadalp`).
pub(crate) mod base {
    use super::*;
    shapes!("neon", false);
}

/// The shapes with `sdot`: only for CPUs with dotprod.
pub(crate) mod dotprod {
    use super::*;
    shapes!("neon,dotprod", true);
}
