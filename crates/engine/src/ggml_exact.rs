//! llama.cpp's exact float arithmetic (ggml-cpu b11434, built `GGML_NATIVE` for an AVX-512 x86 CPU), emulated
//! in scalar Rust for the ops a Llama or Qwen3(-MoE) forward pass uses: [`Numerics::Ggml`](crate::models::Numerics).
//!
//! Why: before every quantized matmul ggml rounds the activations to 8-bit blocks, so a 1-ulp difference
//! anywhere upstream (a summation order, an exp approximation) eventually flips one rounding, and over 30 layers
//! logits drift by ~1e-2 relative: enough to change a greedy token now and then. Reproducing each op's exact
//! arithmetic (its SIMD lane layout, reduction order, fused multiply-adds, f64 accumulators) makes the whole
//! forward pass bit-identical to llama.cpp's. Speed is not a goal here: every function is plain scalar code,
//! lane by lane, documented with the ggml function it emulates. What each one matches was checked against
//! single ggml ops (the `against_ggml` tests below) and tensors dumped from real llama.cpp runs (see
//! `tools/ggml_exact/README.md`).
//!
//! Which ggml path runs (x86 with AVX-512F/BW/DQ/VL/VNNI, one thread):
//! - Q4_1 matmul: `quantize_row_q8_1` (AVX2 path) + `ggml_vec_dot_q4_1_q8_1` (AVX2 path) for every token,
//!   prompt or not (tinyBLAS and the repacked kernels do not handle Q4_1): [`quantize_q8_1`], [`dot_q4_1_q8_1`].
//! - Q8_0 matmul: `quantize_row_q8_0` + `ggml_vec_dot_q8_0_q8_0` for one token, `tinyBLAS_Q0_AVX` for a batch;
//!   both compute each output the same way: [`quantize_q8_0`], [`dot_q8_0_q8_0`]. `mul_mat_id` (experts): the
//!   same dot for every row. Q5_0 experts: [`dot_q5_0_q8_0`].
//! - Q4_K (rows a multiple of 8): repacked to `q4_K_8x8_q8_K` at load; activations by `quantize_row_q8_K`
//!   ([`quantize_q8_k`]); `ggml_gemm_q4_K_8x8_q8_K` for groups of 4 tokens of a `mul_mat`
//!   ([`dot_q4_k_q8_k_gemm`]), `ggml_gemv_q4_K_8x8_q8_K` for the rest and for every `mul_mat_id` row
//!   ([`dot_q4_k_q8_k_gemv`]); the two accumulate in f32 at different granularities.
//! - Q6_K (not repacked on x86): `ggml_vec_dot_q6_K_q8_K` ([`dot_q6_k_q8_k`]) below 8 tokens, the tiled kernels
//!   of ggml-cpu/tiled/ from 8 ([`dot_q6_k_q8_k_tiled`]); Q4_K/Q6_K embeddings by `dequantize_row_q4_K/q6_K`.
//! - q.k scores: `ggml_vec_dot_f32` (q is a permuted, non-contiguous view, so tinyBLAS is skipped): [`dot_f32`].
//! - probabilities times values, and the f32 MoE router: `tinyBLAS<16, __m512>` for a batch of 2 or more tokens
//!   (rows a multiple of 4) ([`dot_f32_tinyblas`]), `ggml_vec_dot_f32` for one token.
//! - `ggml_compute_forward_soft_max_f32` with `ggml_v_expf` ([`soft_max`], [`expf`]; the router's too), the
//!   router's `argsort_top_k`, `sum_rows`, `clamp`, `div` ([`top_k_weights`]), `rms_norm` (+ `mul`, fused or
//!   not: same arithmetic; [`rms_norm_mul`]), `rope` mode 0 and NeoX ([`RopeCache`], [`rope_pairs`],
//!   [`rope_neox`]), `swiglu` with `ggml_v_silu` ([`swiglu`]).

use kernels::f16_to_f32;
use kernels::f32_to_f16;

/// Values per quantization block (Q4_1, Q8_0, Q8_1).
pub const QK: usize = 32;

/// GCC's `_mm512_reduce_add_ps`: 256-bit halves, 128-bit halves, then lanes {0,1} + {2,3}, then lane 0 + 1.
pub fn reduce_add_16(v: &[f32; 16]) -> f32 {
    let mut t8 = [0.0f32; 8];
    for i in 0..8 {
        t8[i] = v[i + 8] + v[i];
    }
    let mut t4 = [0.0f32; 4];
    for i in 0..4 {
        t4[i] = t8[i + 4] + t8[i];
    }
    (t4[0] + t4[2]) + (t4[1] + t4[3])
}

/// `hsum_float_8` (arch/x86/quants.c) and tinyBLAS's `hsum(__m256)`: 128-bit halves, movehl, movehdup.
pub fn hsum_8(v: &[f32; 8]) -> f32 {
    let r = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// `ggml_vec_dot_f32` (vec.cpp, AVX-512: `GGML_F32_STEP` 64, four 16-lane FMA accumulators reduced pairwise
/// with `GGML_F32x16_REDUCE`, then a scalar tail of plain multiply-adds).
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let np = n & !63;
    let mut sum = [[0.0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, acc) in sum.iter_mut().enumerate() {
            for (l, a) in acc.iter_mut().enumerate() {
                let k = i + 16 * j + l;
                *a = x[k].mul_add(y[k], *a);
            }
        }
    }
    let mut r = [0.0f32; 16];
    for l in 0..16 {
        r[l] = (sum[0][l] + sum[2][l]) + (sum[1][l] + sum[3][l]);
    }
    let mut s = reduce_add_16(&r);
    // The scalar tail (head sizes below 64): not fused. GCC with -ffp-contract=fast could have made it an FMA
    // but does not form FMAs along a loop-carried sum when tuning for Zen; the fixture (n = 80) confirms it.
    for k in np..n {
        s += x[k] * y[k];
    }
    s
}

/// One output of `tinyBLAS<16, __m512, __m512, float, float, float>` (llamafile/sgemm.cpp): one 16-lane FMA
/// accumulator over the whole row, reduced with `_mm512_reduce_add_ps`. `x.len()` must be a multiple of 16.
pub fn dot_f32_tinyblas(x: &[f32], y: &[f32]) -> f32 {
    assert!(x.len().is_multiple_of(16) && x.len() == y.len(), "tinyBLAS dot: length {}", x.len());
    let mut acc = [0.0f32; 16];
    for (cx, cy) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] = cx[l].mul_add(cy[l], acc[l]);
        }
    }
    reduce_add_16(&acc)
}

/// `ggml_compute_forward_rms_norm_f32` followed by `ggml_compute_forward_mul` (or the two fused): per row,
/// `sum` in f64 of the f32 squares, `mean = (float)(sum / n)`, `scale = 1.0f / sqrtf(mean + eps)`, then
/// `(x * scale) * w`.
pub fn rms_norm_mul(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mut sum = 0.0f64;
        for &v in row {
            sum += (v * v) as f64;
        }
        let mean = (sum / n as f64) as f32;
        let scale = 1.0f32 / (mean + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = (v * scale) * g;
        }
    }
}

/// One block of 8-bit activations: `d` (and, for Q8_1, `s = d * sum(qs)`) as stored (f16 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; QK],
}

/// The block quantization shared by `quantize_row_q8_0` and `quantize_row_q8_1` (arch/x86/quants.c, AVX2):
/// `d = amax / 127`, `q = round_half_even(x * (127 / amax))` saturated to i8; returns the f32 `d` too.
fn quantize_block(x: &[f32]) -> (f32, [i8; QK], i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let r = (v * id).round_ties_even();
        // _mm256_cvtps_epi32 then the saturating packs (values stay within +-127 in practice).
        let i = if r.is_nan() || r.abs() >= 2_147_483_648.0 { i32::MIN } else { r as i32 };
        sum = sum.wrapping_add(i);
        *q = i.clamp(-128, 127) as i8;
    }
    (d, qs, sum)
}

/// `quantize_row_q8_0` (x86): `x.len()` a multiple of 32.
pub fn quantize_q8_0(x: &[f32]) -> Vec<BlockQ8> {
    x.chunks_exact(QK)
        .map(|b| {
            let (d, qs, _) = quantize_block(b);
            BlockQ8 { d: f32_to_f16(d), s: 0, qs }
        })
        .collect()
}

/// `quantize_row_q8_1` (x86, AVX2): like Q8_0 plus `s = f16(d * (float) sum(q))`, `d` unrounded.
pub fn quantize_q8_1(x: &[f32]) -> Vec<BlockQ8> {
    x.chunks_exact(QK)
        .map(|b| {
            let (d, qs, sum) = quantize_block(b);
            BlockQ8 { d: f32_to_f16(d), s: f32_to_f16(d * sum as f32), qs }
        })
        .collect()
}

/// The 8 lanes of `mul_sum_us8_pairs_float` / tinyBLAS `updot` (VNNI `dpbusd`): lane `j` is the exact integer
/// sum of products `4j..4j + 4`, as f32.
fn lane_sums(qx: &[i32; QK], qy: &[i8; QK]) -> [f32; 8] {
    let mut r = [0.0f32; 8];
    for (j, r) in r.iter_mut().enumerate() {
        let s: i32 = (4 * j..4 * j + 4).map(|i| qx[i] * qy[i] as i32).sum();
        *r = s as f32;
    }
    r
}

/// Bytes of one Q4_1 block: f16 d, f16 m, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Bytes of one Q8_0 block: f16 d, 32 signed bytes.
const Q8_0_BYTES: usize = 34;

/// `ggml_vec_dot_q4_1_q8_1` (arch/x86/quants.c, AVX2 path with VNNI): per block `acc = fma(d0 * d1, lanes,
/// acc)` in 8 lanes and `summs += m * s`, result `hsum_float_8(acc) + summs`. (Whether GCC fuses `m * s` into
/// the sum does not matter: a product of two f16 values is exact in f32. Likewise `d0 * d1`.)
pub fn dot_q4_1_q8_1(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (b, y) in w.chunks_exact(Q4_1_BYTES).zip(a) {
        let d0 = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let d1 = f16_to_f32(y.d);
        summs += m * f16_to_f32(y.s);
        let d0d1 = d0 * d1;
        let mut qx = [0i32; QK];
        for i in 0..16 {
            qx[i] = (b[4 + i] & 0x0f) as i32;
            qx[i + 16] = (b[4 + i] >> 4) as i32;
        }
        let xy = lane_sums(&qx, &y.qs);
        for j in 0..8 {
            acc[j] = d0d1.mul_add(xy[j], acc[j]);
        }
    }
    hsum_8(&acc) + summs
}

/// `ggml_vec_dot_q8_0_q8_0` (AVX2 path) and one output of `tinyBLAS_Q0_AVX<block_q8_0, block_q8_0>`: per block
/// `acc = fma(d0 * d1, lanes, acc)`, result `hsum_float_8(acc)`.
pub fn dot_q8_0_q8_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (b, y) in w.chunks_exact(Q8_0_BYTES).zip(a) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * f16_to_f32(y.d);
        let mut qx = [0i32; QK];
        for (q, &v) in qx.iter_mut().zip(&b[2..2 + QK]) {
            *q = v as i8 as i32;
        }
        let xy = lane_sums(&qx, &y.qs);
        for j in 0..8 {
            acc[j] = d.mul_add(xy[j], acc[j]);
        }
    }
    hsum_8(&acc)
}

/// `dequantize_row_q8_0` (get_rows of a Q8_0 embedding): `d * q`.
pub fn dequantize_q8_0(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        for (o, &q) in o.iter_mut().zip(&b[2..]) {
            *o = d * (q as i8 as f32);
        }
    }
}

/// `ggml_v_expf` (vec.h, AVX-512 version), one lane: the ARM optimized-routines exp with a degree-5 polynomial,
/// `_mm512_scalef_ps` for the exponent, 0 below and infinity above the range (|n| > 192).
pub fn expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(f32::from_bits(0x35bf_be8e), (-n).mul_add(f32::from_bits(0x3f31_7200), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let c = |bits: u32| f32::from_bits(bits);
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    // _mm512_scalef_ps(j, n) = j * 2^n, rounded once (exact in f64, then one rounding to f32).
    if n.is_nan() {
        return f32::NAN;
    }
    (j as f64 * (n as f64).exp2()) as f32
}

/// `ggml_v_silu` (AVX-512), one lane: `x / (1 + expf(0 - x))`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + expf(0.0 - x))
}

/// `ggml_vec_swiglu_f32`: `gate = silu(gate) * up`, 16 lanes at a time with [`silu`]; the last `len % 16`
/// through `ggml_silu_f32`, `x / (1 + expf(-x))` with the C library's `expf` (Rust's `f32::exp` calls the same
/// `expf` on Linux).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n16 = gate.len() / 16 * 16;
    for (i, (g, &u)) in gate.iter_mut().zip(up).enumerate() {
        *g = if i < n16 { silu(*g) } else { *g / (1.0 + (-*g).exp()) } * u;
    }
}

/// `ggml_compute_forward_soft_max_f32` in place on one row of scores: `w = x * scale` (entries at or beyond
/// `n_valid` get -inf: the causal mask), the max, `ggml_vec_soft_max_f32` (16-lane `ggml_v_expf`, each chunk's
/// `_mm512_reduce_add_ps` summed in f64, then a scalar tail of libm `expf` for the last `len % 16`), then times
/// `(float)(1.0 / sum)`. Attention rows have a multiple of 256 entries (llama.cpp's KV length; padding with masked
/// entries changes nothing); the MoE router's `ggml_soft_max` is this with `n_valid = len`, `scale = 1`.
pub fn soft_max(row: &mut [f32], n_valid: usize, scale: f32) {
    for (i, v) in row.iter_mut().enumerate() {
        *v = if i < n_valid { *v * scale } else { f32::NEG_INFINITY };
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = 0.0f64;
    let n16 = row.len() / 16 * 16;
    let (body, tail) = row.split_at_mut(n16);
    for chunk in body.chunks_exact_mut(16) {
        let mut e = [0.0f32; 16];
        for (e, v) in e.iter_mut().zip(chunk.iter_mut()) {
            *e = expf(*v - max);
            *v = *e;
        }
        sum += reduce_add_16(&e) as f64;
    }
    for v in tail.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `ggml_rope_cache_init` for one position (no YaRN, `freq_scale` 1, `attn_factor` 1): `theta` starts at the
/// position and is multiplied by `theta_scale = powf(base, -2.0f / n_dims)` after each pair; `cosf`/`sinf`.
pub struct RopeCache {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeCache {
    pub fn new(pos: usize, n_dims: usize, base: f32) -> RopeCache {
        let theta_scale = base.powf(-2.0f32 / n_dims as f32);
        let mut theta = pos as f32;
        let (mut cos, mut sin) = (Vec::with_capacity(n_dims / 2), Vec::with_capacity(n_dims / 2));
        for _ in 0..n_dims / 2 {
            cos.push(theta.cos());
            sin.push(theta.sin());
            theta *= theta_scale;
        }
        RopeCache { cos, sin }
    }
}

/// `rotate_pairs` for `GGML_ROPE_TYPE_NORMAL` (adjacent pairs) on one head, as GCC compiled it (with
/// `-ffp-contract=fast`): `x0 * c - x1 * s` and `x0 * s + x1 * c` each with one product fused.
pub fn rope_pairs(head: &mut [f32], rc: &RopeCache) {
    for (i, (&c, &s)) in rc.cos.iter().zip(&rc.sin).enumerate() {
        let (x0, x1) = (head[2 * i], head[2 * i + 1]);
        head[2 * i] = x0.mul_add(c, -(x1 * s));
        head[2 * i + 1] = x0.mul_add(s, x1 * c);
    }
}

/// `rotate_pairs` for `GGML_ROPE_TYPE_NEOX` (dimension `i` paired with `i + n_dims / 2`) on one head: the same
/// contraction as [`rope_pairs`], `x0 * c - x1 * s` and `x0 * s + x1 * c` each with the `x0` product fused
/// (checked against `ggml_rope_ext` mode 2 by the fixture).
pub fn rope_neox(head: &mut [f32], rc: &RopeCache) {
    let half = rc.cos.len();
    for (i, (&c, &s)) in rc.cos.iter().zip(&rc.sin).enumerate() {
        let (x0, x1) = (head[i], head[i + half]);
        head[i] = x0.mul_add(c, -(x1 * s));
        head[i + half] = x0.mul_add(s, x1 * c);
    }
}

/// The expert choice of `build_moe_ffn` for softmax gating, from one token's probabilities (after
/// [`soft_max`]): `ggml_argsort_top_k` (`std::sort` descending, the first `k`), `get_rows` of their
/// probabilities, and with `norm_w` `sum_rows` (`ggml_vec_sum_f32`: an f64 sum rounded to f32), `clamp` to at
/// least 6.103515625e-5, `div`. Equal probabilities go to the lower expert id here; `std::sort` leaves their
/// order unspecified (never seen with trained routers, where probabilities differ in their last bits).
pub fn top_k_weights(probs: &[f32], k: usize, norm_w: bool, experts: &mut Vec<u32>, weights: &mut Vec<f32>) {
    let mut order: Vec<u32> = (0..probs.len() as u32).collect();
    order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]).then(a.cmp(&b)));
    experts.clear();
    experts.extend_from_slice(&order[..k.min(order.len())]);
    weights.clear();
    weights.extend(experts.iter().map(|&e| probs[e as usize]));
    if norm_w {
        // 6.103515625e-5 = 2^-14, the smallest normal f16.
        let sum = (weights.iter().map(|&w| w as f64).sum::<f64>() as f32).max(2.0f32.powi(-14));
        for w in weights.iter_mut() {
            *w /= sum;
        }
    }
}

/// Values per K-quant super-block (Q4_K, Q6_K, Q8_K).
pub const QK_K: usize = 256;
/// Bytes of one Q4_K block: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
const Q4_K_BYTES: usize = 144;
/// Bytes of one Q6_K block: 128 bytes low nibbles, 64 bytes high bits, 16 i8 scales, f16 d.
const Q6_K_BYTES: usize = 210;
/// Bytes of one Q5_0 block: f16 d, 4 bytes of fifth bits, 16 bytes of nibbles.
const Q5_0_BYTES: usize = 22;

/// One block of 8-bit activations for K-quant dots (`block_q8_K`): f32 `d`, 256 values, sums of each 16.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// `quantize_row_q8_K` (x86: `quantize_row_q8_K_ref`, built without FMA): per 256 values `max` = the first value
/// of largest magnitude (sign kept), `iscale = -127 / max`, `q = nearest_int(iscale * x)` (the product rounded
/// to f32, then to the nearest integer, ties to even), `d = 1 / iscale`.
pub fn quantize_q8_k(x: &[f32]) -> Vec<BlockQ8K> {
    quantize_q8_k_with(x, false)
}

/// `ggml_quantize_mat_q8_K_4x8` (arch/x86/repack.cpp, AVX2; the repacked Q4_K gemm's quantizer), one of its 4
/// rows: the blocks of [`quantize_q8_k`] except that when `+max` and `-max` both occur it takes the positive one.
pub fn quantize_q8_k_4x8(x: &[f32]) -> Vec<BlockQ8K> {
    quantize_q8_k_with(x, true)
}

fn quantize_q8_k_with(x: &[f32], positive_ties: bool) -> Vec<BlockQ8K> {
    x.chunks_exact(QK_K)
        .map(|b| {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in b {
                if v.abs() > amax || (positive_ties && v.abs() == amax && v > 0.0) {
                    amax = v.abs();
                    max = v;
                }
            }
            let mut out = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
            if amax == 0.0 {
                return out;
            }
            let iscale = -127.0f32 / max;
            for (q, &v) in out.qs.iter_mut().zip(b) {
                *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (s, c) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
                *s = c.iter().map(|&q| q as i16).sum();
            }
            out.d = 1.0 / iscale;
            out
        })
        .collect()
}

/// `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
fn scale_min_k4(j: usize, q: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((q[j] & 63) as i32, (q[j + 4] & 63) as i32)
    } else {
        (((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4)) as i32, ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as i32)
    }
}

/// One Q4_K super-block against one Q8_K block: per 32-value sub-block `scale * sum(q4 * q8)` and
/// `min * sum(q8)`, exact integers (the repacked kernels' int16 partial sums stay below 2^15).
fn q4_k_sub_sums(b: &[u8], y: &BlockQ8K) -> ([i32; 8], [i32; 8]) {
    let (mut dots, mut mins) = ([0i32; 8], [0i32; 8]);
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (chunk, high) = (j / 2, j % 2 == 1);
        let mut dot = 0i32;
        for l in 0..32 {
            let byte = qs[32 * chunk + l];
            let q = if high { byte >> 4 } else { byte & 0xf } as i32;
            dot += q * y.qs[32 * j + l] as i32;
        }
        dots[j] = sc * dot;
        mins[j] = m * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
    }
    (dots, mins)
}

/// One output of `ggml_gemv_q4_K_8x8_q8_K` (arch/x86/repack.cpp, AVX2; the Q4_K weights repacked 8 rows at a
/// time, used for one token of a `mul_mat` and for every row of a `mul_mat_id`): per super-block
/// `acc = fma((float) sum_j scale_j dot_j, d * d8, acc)` and `acc_min = fma((float) sum_j min_j bsum_j, dmin * d8,
/// acc_min)`; result `acc - acc_min`.
pub fn dot_q4_k_q8_k_gemv(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (b, y) in w.chunks_exact(Q4_K_BYTES).zip(a) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let dmin = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let (dots, mins) = q4_k_sub_sums(b, y);
        let (i, m): (i32, i32) = (dots.iter().sum(), mins.iter().sum());
        acc = (i as f32).mul_add(d * y.d, acc);
        acc_min = (m as f32).mul_add(dmin * y.d, acc_min);
    }
    acc - acc_min
}

/// One output of `ggml_gemm_q4_K_8x8_q8_K` (AVX-512 and AVX2 paths alike; groups of 4 tokens of a `mul_mat`):
/// like [`dot_q4_k_q8_k_gemv`] but the float accumulation runs per pair of sub-blocks (64 values), four times per
/// super-block.
pub fn dot_q4_k_q8_k_gemm(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (b, y) in w.chunks_exact(Q4_K_BYTES).zip(a) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let dmin = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        let (dots, mins) = q4_k_sub_sums(b, y);
        for sb in 0..4 {
            let i = dots[2 * sb] + dots[2 * sb + 1];
            let m = mins[2 * sb] + mins[2 * sb + 1];
            acc = (i as f32).mul_add(d * y.d, acc);
            acc_min = (m as f32).mul_add(dmin * y.d, acc_min);
        }
    }
    acc - acc_min
}

/// The 6-bit value `i` (0..256) of a Q6_K block, unsigned (0..64), and its scale index.
fn q6_k_value(b: &[u8], i: usize) -> (i32, usize) {
    let (ql, qh) = (&b[..128], &b[128..192]);
    let (n, r) = (i / 128, i % 128);
    let (k, l) = (r / 32, r % 32);
    let lo = match k {
        0 => ql[64 * n + l] & 0xf,
        1 => ql[64 * n + 32 + l] & 0xf,
        2 => ql[64 * n + l] >> 4,
        _ => ql[64 * n + 32 + l] >> 4,
    };
    let hi = (qh[32 * n + l] >> (2 * k)) & 3;
    ((lo | (hi << 4)) as i32, 8 * n + 2 * k + l / 16)
}

/// `ggml_vec_dot_q6_K_q8_K` (arch/x86/quants.c, AVX2): 8 integer lanes per super-block (lane `L` sums positions
/// `4L..4L + 4` of each 32-value group, unsigned 6-bit values times scale, less `32 * (bsum_{2L} scale_{2L} +
/// bsum_{2L+1} scale_{2L+1})`), `acc = fma(d8 * d, (float) lane, acc)`, result `hsum_float_8(acc)`.
pub fn dot_q6_k_q8_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (b, y) in w.chunks_exact(Q6_K_BYTES).zip(a) {
        let sc = |j: usize| b[192 + j] as i8 as i32;
        let d = y.d * f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
        let mut lanes = [0i32; 8];
        for i in 0..QK_K {
            let (q, s) = q6_k_value(b, i);
            lanes[(i % 32) / 4] += sc(s) * q * y.qs[i] as i32;
        }
        for (lane, v) in lanes.iter_mut().enumerate() {
            *v -= 32 * (y.bsums[2 * lane] as i32 * sc(2 * lane) + y.bsums[2 * lane + 1] as i32 * sc(2 * lane + 1));
        }
        for (a, &v) in acc.iter_mut().zip(&lanes) {
            *a = d.mul_add(v as f32, *a);
        }
    }
    hsum_8(&acc)
}

/// One output of ggml-cpu's tiled Q6_K matmul (ggml-cpu/tiled/, `tiled_run_micro_vnni_8x16<16, false, 32, 1>`
/// on AVX-512 VNNI; `mul_mat` of 8 or more tokens): per 256-value block the exact integer
/// `s1 = sum_s scale_s (sum(q6 * q8) - 32 bsum_s)` over its 16 sub-blocks, `res = (float) s1 * d`, and
/// `acc = fma(res, d8, acc)` (GCC contracts the `_mm512_add_ps(buf, _mm512_mul_ps(res, d1))`).
pub fn dot_q6_k_q8_k_tiled(w: &[u8], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (b, y) in w.chunks_exact(Q6_K_BYTES).zip(a) {
        let mut raw = [0i32; 16];
        for i in 0..QK_K {
            let (q, _) = q6_k_value(b, i);
            raw[i / 16] += q * y.qs[i] as i32;
        }
        // Sub-block `i / 16` of the natural order has scale index `i / 16` too (see `q6_k_value`).
        let s1: i32 = (0..16).map(|s| (b[192 + s] as i8 as i32) * (raw[s] - 32 * y.bsums[s] as i32)).sum();
        let res = s1 as f32 * f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
        acc = res.mul_add(y.d, acc);
    }
    acc
}

/// `dequantize_row_q4_K` (get_rows of a Q4_K embedding; ggml-base, no FMA): `(d * scale) * q - dmin * min`.
pub fn dequantize_q4_k(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q4_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let dmin = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
        for (j, o) in o.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(j, &b[4..16]);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            let qs = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
            for (o, &q) in o.iter_mut().zip(qs) {
                let q = if j % 2 == 1 { q >> 4 } else { q & 0xf };
                *o = d1 * q as f32 - m1;
            }
        }
    }
}

/// `dequantize_row_q6_K` (get_rows of a Q6_K embedding; ggml-base, no FMA): `(d * scale) * (q - 32)`.
pub fn dequantize_q6_k(w: &[u8], out: &mut [f32]) {
    for (b, o) in w.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
        for (i, o) in o.iter_mut().enumerate() {
            let (q, s) = q6_k_value(b, i);
            *o = d * (b[192 + s] as i8 as f32) * ((q - 32) as f32);
        }
    }
}

/// `ggml_vec_dot_q5_0_q8_0` (AVX2 path): the Q8_0 dot on the 5-bit values `(nibble | fifth bit << 4) - 16`.
pub fn dot_q5_0_q8_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (b, y) in w.chunks_exact(Q5_0_BYTES).zip(a) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * f16_to_f32(y.d);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let mut qx = [0i32; QK];
        for i in 0..16 {
            qx[i] = (b[6 + i] & 0xf) as i32 | (((qh >> i) & 1) << 4) as i32;
            qx[i + 16] = (b[6 + i] >> 4) as i32 | (((qh >> (i + 16)) & 1) << 4) as i32;
        }
        for q in qx.iter_mut() {
            *q -= 16;
        }
        let xy = lane_sums(&qx, &y.qs);
        for j in 0..8 {
            acc[j] = d.mul_add(xy[j], acc[j]);
        }
    }
    hsum_8(&acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_follow_the_documented_trees() {
        // 1 + 2^-24 + ... : the grouping decides which tiny terms survive.
        let e = f32::EPSILON / 2.0;
        let mut v = [0.0f32; 16];
        v[0] = 1.0;
        v[8] = e; // joins lane 0 first: 1 + e rounds to 1
        v[1] = e;
        v[9] = e; // lanes 1 and 9 sum to 2e before meeting 1: survives
        assert_eq!(reduce_add_16(&v), 1.0 + 2.0 * e);
        let w = [1.0, e, 0.0, 0.0, 0.0, e, 0.0, 0.0];
        assert_eq!(hsum_8(&w), 1.0 + 2.0 * e);
    }

    #[test]
    fn expf_is_close_and_saturates() {
        for &x in &[-10.0f32, -1.0, -0.5, 0.0, 0.3, 1.0, 5.0, 20.0] {
            let (a, b) = (expf(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "{x}: {a} vs {b}");
        }
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-200.0), 0.0);
        assert_eq!(expf(200.0), f32::INFINITY);
    }

    #[test]
    fn quantize_rounds_half_to_even_and_sums() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5; // id = 1: 2.5 rounds to 2
        x[2] = -3.5; // -4
        let b = quantize_q8_1(&x);
        assert_eq!((b[0].qs[0], b[0].qs[1], b[0].qs[2]), (127, 2, -4));
        assert_eq!(f16_to_f32(b[0].d), 1.0);
        assert_eq!(f16_to_f32(b[0].s), 125.0);
    }

    #[test]
    fn dots_match_plain_arithmetic_on_small_integers() {
        // Small integers: every rounding is exact, so any order gives the same answer.
        let x: Vec<f32> = (0..128).map(|i| (i % 7) as f32 - 3.0).collect();
        let y: Vec<f32> = (0..128).map(|i| (i % 5) as f32 - 2.0).collect();
        let want: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert_eq!(dot_f32(&x, &y), want);
        assert_eq!(dot_f32_tinyblas(&x, &y), want);
    }

    #[test]
    fn soft_max_sums_to_one_and_masks() {
        let mut r: Vec<f32> = (0..32).map(|i| i as f32 * 0.1).collect();
        soft_max(&mut r, 5, 0.5);
        assert!(r[5..].iter().all(|&p| p == 0.0));
        let s: f32 = r.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
    }

    /// Every kernel against ggml-cpu itself: tests/fixtures/ggml_exact/ops.bin holds pseudo-random inputs and
    /// the outputs of single ggml ops (tools/ggml_exact/ggml_ops.c, llama.cpp b11434 on an AVX-512 Zen4).
    mod against_ggml {
        use super::super::*;
        use std::collections::HashMap;

        fn records() -> HashMap<String, Vec<u8>> {
            let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/ggml_exact/ops.bin");
            let b = std::fs::read(p).expect("tests/fixtures/ggml_exact/ops.bin");
            let (mut m, mut i) = (HashMap::new(), 0);
            let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
            while i < b.len() {
                let l = u32_at(i);
                let name = String::from_utf8(b[i + 4..i + 4 + l].to_vec()).expect("name");
                let n = u32_at(i + 4 + l);
                m.insert(name, b[i + 8 + l..i + 8 + l + n].to_vec());
                i += 8 + l + n;
            }
            m
        }

        fn f32s(r: &HashMap<String, Vec<u8>>, name: &str) -> Vec<f32> {
            r[name].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }

        /// Bit-identical, element by element.
        fn same(got: &[f32], want: &[f32], what: &str) {
            assert_eq!(got.len(), want.len(), "{what}: length");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g} vs ggml's {w}");
            }
        }

        #[test]
        fn soft_max_is_bit_exact() {
            let r = records();
            let mut x = f32s(&r, "softmax.x");
            for (row, n_valid) in x.chunks_exact_mut(256).zip([1, 100, 256]) {
                soft_max(row, n_valid, 0.125);
            }
            same(&x, &f32s(&r, "softmax.out"), "soft_max");
        }

        #[test]
        fn swiglu_is_bit_exact() {
            let r = records();
            let mut g = f32s(&r, "swiglu.gate");
            swiglu(&mut g, &f32s(&r, "swiglu.up"));
            same(&g, &f32s(&r, "swiglu.out"), "swiglu");
        }

        #[test]
        fn rms_norm_mul_is_bit_exact() {
            let r = records();
            let x = f32s(&r, "rms.x");
            let mut out = vec![0.0; x.len()];
            rms_norm_mul(&x, &f32s(&r, "rms.w"), 1e-5, &mut out);
            same(&out, &f32s(&r, "rms.out"), "rms_norm * w");
            let x = f32s(&r, "rms.xd");
            let mut out = vec![0.0; x.len()];
            rms_norm_mul(&x, &f32s(&r, "rms.w"), 1e-5, &mut out);
            same(&out, &f32s(&r, "rms.outd"), "rms_norm * w, rows with one large value");
        }

        #[test]
        fn rope_is_bit_exact() {
            let r = records();
            let mut x = f32s(&r, "rope.x");
            for (tok, pos) in x.chunks_exact_mut(64 * 3).zip([0, 1, 37, 255]) {
                let rc = RopeCache::new(pos, 64, 100_000.0);
                for head in tok.chunks_exact_mut(64) {
                    rope_pairs(head, &rc);
                }
            }
            same(&x, &f32s(&r, "rope.out"), "rope");
        }

        #[test]
        fn rope_neox_is_bit_exact() {
            let r = records();
            let mut x = f32s(&r, "ropex.x");
            for (tok, pos) in x.chunks_exact_mut(64 * 4).zip([0, 1, 2, 37, 255]) {
                let rc = RopeCache::new(pos, 64, 10_000.0);
                for head in tok.chunks_exact_mut(64) {
                    rope_neox(head, &rc);
                }
            }
            same(&x, &f32s(&r, "ropex.out"), "rope NeoX");
        }

        #[test]
        fn moe_router_is_bit_exact() {
            let r = records();
            let mut p = f32s(&r, "moe.logits");
            for row in p.chunks_exact_mut(32) {
                soft_max(row, 32, 1.0);
            }
            same(&p, &f32s(&r, "moe.probs"), "soft_max over 32 experts");
            let want_ids: Vec<u32> =
                r["moe.ids"].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let (mut ids, mut w, mut all_w) = (vec![], vec![], vec![]);
            for (t, row) in p.chunks_exact(32).enumerate() {
                top_k_weights(row, 4, true, &mut ids, &mut w);
                assert_eq!(ids, want_ids[4 * t..4 * t + 4], "argsort_top_k of token {t}");
                all_w.extend_from_slice(&w);
            }
            same(&all_w, &f32s(&r, "moe.weights"), "top-k weights / their sum");
            // An odd expert count exercises the scalar tail (libm expf), not checked against ggml.
            let mut odd = f32s(&r, "moe.logits")[..20].to_vec();
            soft_max(&mut odd, 20, 1.0);
            assert!((odd.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }

        #[test]
        fn mul_mat_id_q8_0_is_bit_exact() {
            // Q8_0 mul_mat_id: each (token, slot) row of src1 quantized by quantize_row_q8_0, then one
            // ggml_vec_dot_q8_0_q8_0 per output, whatever the number of rows per expert.
            let r = records();
            let (up, down) = (&r["mmid.up"], &r["mmid.down"]);
            let ids: Vec<usize> =
                r["mmid.ids"].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
            let x = f32s(&r, "mmid.x");
            let (up_bytes, down_bytes) = (32 * 8 * Q8_0_BYTES, 256 * Q8_0_BYTES);
            let mut h = vec![];
            for (t, xr) in x.chunks_exact(256).enumerate() {
                let a = quantize_q8_0(xr);
                for &e in &ids[2 * t..2 * t + 2] {
                    let w = &up[e * up_bytes..(e + 1) * up_bytes];
                    h.extend(w.chunks_exact(8 * Q8_0_BYTES).map(|row| dot_q8_0_q8_0(row, &a)));
                }
            }
            same(&h, &f32s(&r, "mmid.out_up"), "mul_mat_id up");
            let mut o = vec![];
            for (j, hr) in h.chunks_exact(32).enumerate() {
                let a = quantize_q8_0(hr);
                let e = ids[j];
                let w = &down[e * down_bytes..(e + 1) * down_bytes];
                o.extend(w.chunks_exact(Q8_0_BYTES).map(|row| dot_q8_0_q8_0(row, &a)));
            }
            same(&o, &f32s(&r, "mmid.out_down"), "mul_mat_id down (one block per row)");
        }

        #[test]
        fn q6_k_matmuls_are_bit_exact() {
            let r = records();
            let w = &r["q6_k.w"];
            let row_bytes = 2 * Q6_K_BYTES;
            let run = |x: &[f32], tiled: bool| -> Vec<f32> {
                let mut out = vec![];
                for xr in x.chunks_exact(512) {
                    let a = quantize_q8_k(xr);
                    for wr in w.chunks_exact(row_bytes) {
                        out.push(if tiled { dot_q6_k_q8_k_tiled(wr, &a) } else { dot_q6_k_q8_k(wr, &a) });
                    }
                }
                out
            };
            same(&run(&f32s(&r, "q6_k.x1"), false), &f32s(&r, "q6_k.out1"), "Q6_K x Q8_K vec_dot");
            same(&run(&f32s(&r, "q6_k.x9"), true), &f32s(&r, "q6_k.out9"), "Q6_K x Q8_K tiled, 9 tokens, K = 512");
            // The two paths round differently: the fixture tells them apart.
            let vec_dot_9 = run(&f32s(&r, "q6_k.x9"), false);
            assert!(vec_dot_9.iter().zip(&f32s(&r, "q6_k.out9")).any(|(a, b)| a.to_bits() != b.to_bits()));
        }

        #[test]
        fn q5_0_mul_mat_id_is_bit_exact() {
            let r = records();
            let w = &r["q5_0.w"];
            let ids: Vec<usize> =
                r["q5_0.ids"].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
            let expert_bytes = 64 * 2 * Q5_0_BYTES;
            let mut out = vec![];
            for (t, xr) in f32s(&r, "q5_0.x").chunks_exact(64).enumerate() {
                let a = quantize_q8_0(xr);
                for &e in &ids[2 * t..2 * t + 2] {
                    let we = &w[e * expert_bytes..(e + 1) * expert_bytes];
                    out.extend(we.chunks_exact(2 * Q5_0_BYTES).map(|row| dot_q5_0_q8_0(row, &a)));
                }
            }
            same(&out, &f32s(&r, "q5_0.out"), "Q5_0 mul_mat_id");
        }

        /// `[n_tok, rows]` outputs of a quantized matmul.
        fn qmatmul(w: &[u8], block_bytes: usize, x: &[f32], q8_1: bool) -> Vec<f32> {
            let row_bytes = 576 / QK * block_bytes;
            let mut out = vec![];
            for xr in x.chunks_exact(576) {
                let a = if q8_1 { quantize_q8_1(xr) } else { quantize_q8_0(xr) };
                for wr in w.chunks_exact(row_bytes) {
                    out.push(if q8_1 { dot_q4_1_q8_1(wr, &a) } else { dot_q8_0_q8_0(wr, &a) });
                }
            }
            out
        }

        #[test]
        fn q4_1_and_q8_0_matmuls_are_bit_exact() {
            let r = records();
            for (x, out) in [("mm.x1", "1"), ("mm.x3", "3"), ("mm.xt", "t")] {
                let x = f32s(&r, x);
                same(&qmatmul(&r["q4_1.w"], 20, &x, true), &f32s(&r, &format!("q4_1.out{out}")), "Q4_1 x Q8_1");
                same(&qmatmul(&r["q8_0.w"], 34, &x, false), &f32s(&r, &format!("q8_0.out{out}")), "Q8_0 x Q8_0");
            }
        }

        #[test]
        fn f32_dots_are_bit_exact() {
            let r = records();
            let (a64, b64) = (f32s(&r, "f32.a64"), f32s(&r, "f32.b64"));
            let got: Vec<f32> = a64.chunks_exact(64).map(|row| dot_f32(row, &b64)).collect();
            same(&got, &f32s(&r, "f32.out64"), "vec_dot_f32 n=64");
            let (a, b1, b3) = (f32s(&r, "f32.a256"), f32s(&r, "f32.b1"), f32s(&r, "f32.b3"));
            let got: Vec<f32> = a.chunks_exact(256).map(|row| dot_f32(row, &b1)).collect();
            same(&got, &f32s(&r, "f32.out1"), "vec_dot_f32 n=256");
            let got: Vec<f32> = b3
                .chunks_exact(256)
                .flat_map(|col| a.chunks_exact(256).map(|row| dot_f32_tinyblas(row, col)))
                .collect();
            same(&got, &f32s(&r, "f32.out3"), "tinyBLAS f32");
            let (a80, b80) = (f32s(&r, "f32.a80"), f32s(&r, "f32.b80"));
            let got: Vec<f32> = a80.chunks_exact(80).map(|row| dot_f32(row, &b80)).collect();
            same(&got, &f32s(&r, "f32.out80"), "vec_dot_f32 n=80 (scalar tail)");
        }
    }
}
