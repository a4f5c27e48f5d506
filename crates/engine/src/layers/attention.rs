//! Grouped-query self-attention with RoPE and a KV cache (Llama, Qwen3, Qwen3-Next): optional biases on q/k/v
//! (Qwen2), optional per-head RMSNorm of q and k before RoPE (Qwen3), partial RoPE (only the first `rope.n_dims`
//! dimensions of each head rotate), and an optional sigmoid output gate carried by the q projection (Qwen3-Next:
//! each head's query is followed by its gate).
//!
//! For token `t` at position `p = pos0 + t` and head `h` (KV head `h / (n_head / n_head_kv)`):
//! `out[t, h] = sum_j softmax_j(q[t,h] . k[j] / sqrt(head_dim)) v[j]` over cached positions `j <= p`, then
//! (gated) `out[t, h] *= sigmoid(gate[t, h])`, then the output projection.

use crate::backend::{AttnScratch, Exec, MatKind};
use crate::kv_cache::LayerKv;
use crate::ops::{self, QuantActs};
use crate::tensor::QMat;

use super::rope::Rope;

/// The weights of one attention block.
#[derive(Debug)]
pub struct AttentionWeights {
    pub wq: QMat,                 // [n_head * head_dim (* 2 when gated: query and gate per head), n_embd]
    pub wk: QMat,                 // [n_head_kv * head_dim, n_embd]
    pub wv: QMat,                 // [n_head_kv * head_dim, n_embd]
    pub wo: QMat,                 // [n_embd, n_head * head_dim]
    pub bq: Option<Vec<f32>>,     // [n_head * head_dim]
    pub bk: Option<Vec<f32>>,     // [n_head_kv * head_dim]
    pub bv: Option<Vec<f32>>,     // [n_head_kv * head_dim]
    pub q_norm: Option<Vec<f32>>, // [head_dim]
    pub k_norm: Option<Vec<f32>>, // [head_dim]
}

/// Shape and constants of the attention of one model.
#[derive(Clone, Debug)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Epsilon of the q/k RMSNorm.
    pub norm_eps: f32,
    pub rope: Rope,
    /// The q projection carries a per-head output gate (Qwen3-Next's gated attention).
    pub gated: bool,
}

impl AttentionShape {
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// Buffers reused across calls.
#[derive(Default)]
pub struct AttentionScratch {
    xq: QuantActs,
    qg: Vec<f32>,     // [n, 2 * n_head * head_dim] query and gate, interleaved per head (gated only)
    q: Vec<f32>,      // [n, n_head * head_dim]
    gate: Vec<f32>,   // [n, n_head * head_dim] (gated only)
    k: Vec<f32>,      // [n, n_head_kv * head_dim]
    v: Vec<f32>,      // [n, n_head_kv * head_dim]
    att: Vec<f32>,    // [n, n_head * head_dim]
    att_q: QuantActs, // att, quantized for wo
    core: AttnScratch,
}

/// Runs attention for the `n` tokens of `x` (`[n, n_embd]`, already normed) at positions `pos0..pos0 + n`,
/// appending their keys and values to `kv`, and writes `[n, n_embd]` to `out`: [`project`], [`attend`] and
/// [`output`] over one sequence.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    exec: &Exec<'_>,
    w: &AttentionWeights,
    shape: &AttentionShape,
    kv: &mut LayerKv,
    x: &[f32],
    (pos0, layer): (usize, usize),
    s: &mut AttentionScratch,
    out: &mut [f32],
) {
    let n = x.len() / w.wq.cols;
    project(exec, w, shape, x, layer, s);
    attend(exec, shape, kv, 0..n, (pos0, layer), s);
    output(exec, w, shape, s, out);
}

/// The projections of every row of `x` (`[n, n_embd]`, already normed; rows of one or several sequences): q
/// (with its gate split off), k and v into the scratch, with biases and q/k norms. Each row's result does not
/// depend on the other rows.
pub fn project(
    exec: &Exec<'_>,
    w: &AttentionWeights,
    shape: &AttentionShape,
    x: &[f32],
    layer: usize,
    s: &mut AttentionScratch,
) {
    let n_embd = w.wq.cols;
    let n = x.len() / n_embd;
    let hd = shape.head_dim;
    let (q_dim, kv_dim) = (shape.q_dim(), shape.kv_dim());
    let l = Some(layer);
    s.q.resize(n * q_dim, 0.0);
    s.k.resize(n * kv_dim, 0.0);
    s.v.resize(n * kv_dim, 0.0);
    if shape.gated {
        // One projection gives each head's query followed by its gate: split them.
        s.qg.resize(n * 2 * q_dim, 0.0);
        exec.matmul_qkv((w.wq.as_ref(), w.wk.as_ref(), w.wv.as_ref()), x, &mut s.xq, &mut s.qg, &mut s.k, &mut s.v);
        s.gate.resize(n * q_dim, 0.0);
        for (t, row) in s.qg.chunks_exact(2 * q_dim).enumerate() {
            for (h, pair) in row.chunks_exact(2 * hd).enumerate() {
                let at = t * q_dim + h * hd;
                s.q[at..at + hd].copy_from_slice(&pair[..hd]);
                s.gate[at..at + hd].copy_from_slice(&pair[hd..]);
            }
        }
    } else {
        exec.matmul_qkv((w.wq.as_ref(), w.wk.as_ref(), w.wv.as_ref()), x, &mut s.xq, &mut s.q, &mut s.k, &mut s.v);
    }
    for (buf, bias) in [(&mut s.q, &w.bq), (&mut s.k, &w.bk), (&mut s.v, &w.bv)] {
        if let Some(b) = bias {
            for row in buf.chunks_exact_mut(b.len()) {
                ops::add(row, b);
            }
        }
    }
    exec.tap("Vcur", l, &s.v);
    if let Some(g) = &w.q_norm {
        exec.rms_norm_in_place(&mut s.q, g, shape.norm_eps);
        exec.tap("Qcur_normed", l, &s.q);
    }
    if let Some(g) = &w.k_norm {
        exec.rms_norm_in_place(&mut s.k, g, shape.norm_eps);
        exec.tap("Kcur_normed", l, &s.k);
    }
    s.att.resize(n * q_dim, 0.0);
}

/// One sequence's part of a [`project`]ed batch: its `rows`, at positions `pos0..`, get RoPE, their keys and
/// values go into the sequence's `kv`, and their attention over it goes into the scratch's output rows.
pub fn attend(
    exec: &Exec<'_>,
    shape: &AttentionShape,
    kv: &mut LayerKv,
    rows: std::ops::Range<usize>,
    (pos0, layer): (usize, usize),
    s: &mut AttentionScratch,
) {
    let hd = shape.head_dim;
    let (q_dim, kv_dim) = (shape.q_dim(), shape.kv_dim());
    let l = Some(layer);
    let n = rows.len();
    assert!(pos0 + n <= kv.n_ctx(), "attention: KV cache overflow (checked by the session)");
    let (rq, rk) = (rows.start * q_dim..rows.end * q_dim, rows.start * kv_dim..rows.end * kv_dim);
    exec.rope(&shape.rope, hd, (pos0, n), &mut s.q[rq.clone()], &mut s.k[rk.clone()], &mut s.core);
    exec.tap("Qcur", l, &s.q[rq.clone()]);
    exec.tap("Kcur", l, &s.k[rk.clone()]);
    kv.write(pos0, &s.k[rk.clone()], &s.v[rk]);
    let att = &mut s.att[rq.clone()];
    exec.attention(kv, (shape.n_head, shape.n_head_kv, hd), &s.q[rq], pos0, &mut s.core, att, layer);
    exec.tap("kqv_out", l, att);
}

/// The output gate (gated attention) and projection of every [`attend`]ed row, into `out` (`[n, n_embd]`).
pub fn output(
    exec: &Exec<'_>,
    w: &AttentionWeights,
    shape: &AttentionShape,
    s: &mut AttentionScratch,
    out: &mut [f32],
) {
    if shape.gated {
        for (a, &g) in s.att.iter_mut().zip(&s.gate) {
            *a *= exec.sigmoid(g);
        }
    }
    exec.matmul(w.wo.as_ref(), &s.att, &mut s.att_q, out, MatKind::Dense);
}
