//! The f32 core of attention: scores of query heads against cached keys, and the probability-weighted sum of
//! cached values, with one arithmetic on every instruction set (so a token's attention is the same bits in a
//! batch as alone, and the SIMD versions equal these references bit for bit).
//!
//! - A score is `dot8(q, k) * scale`: eight partial sums, lane `i` adding `q[8c + i] * k[8c + i]` (each product
//!   rounded, then added) over the chunks `c` in order, combined as `((l0 + l4) + (l1 + l5)) + ((l2 + l6) +
//!   (l3 + l7))`, plus the sum of the `head_dim % 8` last products (in order, from 0).
//! - A value sum adds `p[j] * v[j][e]` (rounded product) to output element `e` for the positions `j` in order.
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

/// Scores of `q.len() / head_dim` query heads against every position of `keys`: `scores[g * ld + j]`.
pub type AttnScoresFn = fn(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize);
/// Adds `p[g * ld + j] * values[j]` to the head `g` of `out` (`[group, head_dim]`) for every position `j`.
pub type AttnValuesFn = fn(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]);

/// The number of heads of `q_or_out` and checks of the slices every attention kernel runs first.
pub(crate) fn check_attn(head_dim_values: usize, kv: &KvRows<'_>, other: &[f32], ld: usize) -> usize {
    kv.check();
    assert!(kv.head_dim > 0 && head_dim_values.is_multiple_of(kv.head_dim), "attention: heads of head_dim values");
    let group = head_dim_values / kv.head_dim;
    assert!(kv.n <= ld || group <= 1, "attention: ld shorter than a row of scores");
    assert!(group == 0 || kv.n == 0 || (group - 1) * ld + kv.n <= other.len(), "attention: scores out of bounds");
    group
}

/// `dot8(a, b)` (see the module doc).
pub fn dot8_ref(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

pub fn attn_scores_ref(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
    check_attn(q.len(), &keys, scores, ld);
    for j in 0..keys.n {
        let k = keys.row(j);
        for (g, qh) in q.chunks_exact(keys.head_dim).enumerate() {
            scores[g * ld + j] = dot8_ref(qh, k) * scale;
        }
    }
}

pub fn attn_values_ref(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
    check_attn(out.len(), &values, p, ld);
    for j in 0..values.n {
        let v = values.row(j);
        for (g, o) in out.chunks_exact_mut(values.head_dim).enumerate() {
            let pj = p[g * ld + j];
            for (a, &b) in o.iter_mut().zip(v) {
                *a += pj * b;
            }
        }
    }
}
