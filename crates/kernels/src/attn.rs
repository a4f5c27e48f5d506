//! The f32 core of attention: scores of query rows against cached keys, their softmax, and the
//! probability-weighted sum of cached values, with one arithmetic on every instruction set (so a token's attention
//! is the same bits in a batch as alone, and the SIMD versions equal these references bit for bit). The arithmetic
//! is chosen so that SIMD lanes run over positions (scores) and over head elements (values), as a GEMM's do:
//!
//! - A score is `dot_fma(q, k) * scale`: one accumulator, `acc = fma(q[d], k[d], acc)` for `d` in order from 0,
//!   starting at 0 (each step rounded once).
//! - The softmax of a row: `m` its maximum, `e[j] = exp_fixed(x[j] - m)` ([`exp_ref`]: a fixed range reduction and
//!   polynomial of `fma`s), summed in f64 in eight lanes (lane `i` adds the `e[j]` with `j % 8 == i` in order)
//!   combined as `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`, then `x[j] = e[j] * (1 / sum as f32)`.
//! - A value sum: output element `e` of row `r` is `out = fma(p[r][j], v[j][e], out)` for the positions `j` in
//!   order.
//!
//! Keys and values are passed as [`KvRows`]: `n` positions of `head_dim` values, position `j` at `j * stride`.

/// `n` cached positions of one KV head: position `j` is `data[j * stride..j * stride + head_dim]`.
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub n: usize,
    pub head_dim: usize,
}

impl<'a> KvRows<'a> {
    /// Position `j`.
    pub fn row(&self, j: usize) -> &'a [f32] {
        &self.data[j * self.stride..j * self.stride + self.head_dim]
    }

    /// Panics unless every position lies inside `data`.
    pub(crate) fn check(&self) {
        assert!(self.head_dim <= self.stride || self.n <= 1, "KvRows: positions overlap");
        assert!(self.n == 0 || (self.n - 1) * self.stride + self.head_dim <= self.data.len(), "KvRows: out of bounds");
    }
}

/// Scores of the `q.len() / head_dim` query rows against every position of `keys`: `scores[r * ld + j]`.
pub type AttnScoresFn = fn(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize);
/// Adds `p[r * ld + j] * values[j]` to the row `r` of `out` (`[rows, head_dim]`) for every position `j`.
pub type AttnValuesFn = fn(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]);
/// The softmax of one row of scores, in place.
pub type AttnSoftmaxFn = fn(x: &mut [f32]);

/// The number of rows of `q_or_out` and checks of the slices every attention kernel runs first.
pub(crate) fn check_attn(head_dim_values: usize, kv: &KvRows<'_>, other: &[f32], ld: usize) -> usize {
    kv.check();
    assert!(kv.head_dim > 0 && head_dim_values.is_multiple_of(kv.head_dim), "attention: rows of head_dim values");
    let rows = head_dim_values / kv.head_dim;
    assert!(kv.n <= ld || rows <= 1, "attention: ld shorter than a row of scores");
    assert!(rows == 0 || kv.n == 0 || (rows - 1) * ld + kv.n <= other.len(), "attention: scores out of bounds");
    rows
}

/// `dot_fma(a, b)` (see the module doc).
#[inline]
pub fn dot_fma_ref(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |acc, (&x, &y)| x.mul_add(y, acc))
}

/// Below this, [`exp_ref`] is 0 (`e^-87` is 1.6e-38, nothing next to the row's largest term, 1).
pub const EXP_MIN: f32 = -87.0;
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// `e^r` on `[-ln 2 / 2, ln 2 / 2]`, highest power first (Cephes' `expf`), then `+ 1` twice in Horner form.
pub(crate) const EXP_POLY: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// `e^x` for `x <= 0` (a softmax's `x - max`) within 2 ulp, the same bits on every instruction set: `n =
/// round_ties_even(x * log2 e)`, `r = fma(n, -LN2_LO, fma(n, -LN2_HI, x))`, a Horner polynomial of `fma`s in `r`,
/// times `2^n` (exact); 0 below [`EXP_MIN`]; NaN stays NaN.
#[inline]
pub fn exp_ref(x: f32) -> f32 {
    if x < EXP_MIN {
        return 0.0;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // n is in [-126, 0] for x in [EXP_MIN, 0] (and saturates for the inputs this is not meant for).
    let n = n as i32;
    p * f32::from_bits(((n.clamp(-126, 127) + 127) as u32) << 23)
}

/// The f64 lanes of a softmax's sum, combined (see the module doc).
#[inline]
pub(crate) fn lanes_total(l: &[f64; 8]) -> f64 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// The maximum of a row: a larger value replaces the running one (NaN never does), from `-inf`.
#[inline]
pub(crate) fn row_max(x: &[f32]) -> f32 {
    x.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

pub fn attn_softmax_ref(x: &mut [f32]) {
    let m = row_max(x);
    let mut lanes = [0.0f64; 8];
    for (j, v) in x.iter_mut().enumerate() {
        *v = exp_ref(*v - m);
        lanes[j % 8] += *v as f64;
    }
    let inv = (1.0 / lanes_total(&lanes)) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn attn_scores_ref(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
    check_attn(q.len(), &keys, scores, ld);
    for j in 0..keys.n {
        let k = keys.row(j);
        for (r, qr) in q.chunks_exact(keys.head_dim).enumerate() {
            scores[r * ld + j] = dot_fma_ref(qr, k) * scale;
        }
    }
}

pub fn attn_values_ref(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
    check_attn(out.len(), &values, p, ld);
    for j in 0..values.n {
        let v = values.row(j);
        for (r, o) in out.chunks_exact_mut(values.head_dim).enumerate() {
            let pj = p[r * ld + j];
            for (a, &b) in o.iter_mut().zip(v) {
                *a = pj.mul_add(b, *a);
            }
        }
    }
}
