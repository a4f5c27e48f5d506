//! Grouped-query self-attention with RoPE and a KV cache (Llama, Qwen3): optional biases on q/k/v (Qwen2) and
//! optional per-head RMSNorm of q and k before RoPE (Qwen3).
//!
//! For token `t` at position `p = pos0 + t` and head `h` (KV head `h / (n_head / n_head_kv)`):
//! `out[t, h] = sum_j softmax_j(q[t,h] . k[j] / sqrt(head_dim)) v[j]` over cached positions `j <= p`.
//! Each (token, head) pair is computed by the same loop whether it comes in a prefill batch or alone.

use crate::ops::{self, Cpu, QuantActs, SharedOut};
use crate::session::LayerKv;
use crate::tensor::QMat;

use super::rope::Rope;

/// The weights of one attention block.
#[derive(Debug)]
pub struct AttentionWeights {
    pub wq: QMat,                 // [n_head * head_dim, n_embd]
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
}

/// Buffers reused across calls.
#[derive(Default)]
pub struct AttentionScratch {
    xq: QuantActs,
    q: Vec<f32>,      // [n, n_head * head_dim]
    k: Vec<f32>,      // [n, n_head_kv * head_dim]
    v: Vec<f32>,      // [n, n_head_kv * head_dim]
    att: Vec<f32>,    // [n, n_head * head_dim]
    att_q: QuantActs, // att, quantized for wo
    scores: Vec<f32>, // [n_threads, n_ctx]
    cos: Vec<f32>,    // [n, head_dim / 2]
    sin: Vec<f32>,    // [n, head_dim / 2]
}

/// Runs attention for the `n` tokens of `x` (`[n, n_embd]`, already normed) at positions `pos0..pos0 + n`,
/// appending their keys and values to `kv`, and writes `[n, n_embd]` to `out`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    cpu: &Cpu,
    w: &AttentionWeights,
    shape: &AttentionShape,
    kv: &mut LayerKv,
    x: &[f32],
    pos0: usize,
    s: &mut AttentionScratch,
    out: &mut [f32],
) {
    let n_embd = w.wq.cols;
    let n = x.len() / n_embd;
    let hd = shape.head_dim;
    let q_dim = shape.n_head * hd;
    let kv_dim = shape.n_head_kv * hd;
    assert!(pos0 + n <= kv.n_ctx(), "attention: KV cache overflow (checked by the session)");

    // Projections; q, k and v share one quantization of x when their types agree.
    s.q.resize(n * q_dim, 0.0);
    s.k.resize(n * kv_dim, 0.0);
    s.v.resize(n * kv_dim, 0.0);
    s.xq.quantize(&cpu.kernels, w.wq.dtype, x, n_embd);
    if w.wk.dtype == w.wq.dtype && w.wv.dtype == w.wq.dtype {
        let mats = &mut [(w.wq.as_ref(), &mut s.q[..]), (w.wk.as_ref(), &mut s.k[..]), (w.wv.as_ref(), &mut s.v[..])];
        ops::matmul_many(cpu, mats, &s.xq);
    } else {
        ops::matmul(cpu, w.wq.as_ref(), &s.xq, &mut s.q);
        ops::matmul_reuse(cpu, w.wk.as_ref(), x, &mut s.xq, &mut s.k);
        ops::matmul_reuse(cpu, w.wv.as_ref(), x, &mut s.xq, &mut s.v);
    }
    for (buf, bias) in [(&mut s.q, &w.bq), (&mut s.k, &w.bk), (&mut s.v, &w.bv)] {
        if let Some(b) = bias {
            for row in buf.chunks_exact_mut(b.len()) {
                ops::add(row, b);
            }
        }
    }
    ops::tap("Qcur", None, &s.q);
    ops::tap("Kcur", None, &s.k);
    ops::tap("Vcur", None, &s.v);
    if let Some(g) = &w.q_norm {
        ops::rms_norm(&mut s.q, g, shape.norm_eps);
    }
    if let Some(g) = &w.k_norm {
        ops::rms_norm(&mut s.k, g, shape.norm_eps);
    }

    // RoPE, then append k and v to the cache.
    let half = shape.rope.n_dims / 2;
    s.cos.resize(n * half, 0.0);
    s.sin.resize(n * half, 0.0);
    for t in 0..n {
        let (c, si) = (&mut s.cos[t * half..(t + 1) * half], &mut s.sin[t * half..(t + 1) * half]);
        shape.rope.cos_sin(pos0 + t, c, si);
        for head in s.q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(hd) {
            shape.rope.apply(head, c, si);
        }
        for head in s.k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
            shape.rope.apply(head, c, si);
        }
    }
    kv.write(pos0, &s.k, &s.v);

    // Scores, softmax and the weighted sum of values, one (token, head) pair at a time.
    let n_ctx = kv.n_ctx();
    let n_threads = cpu.pool.n_threads();
    s.scores.resize(n_threads * n_ctx, 0.0);
    s.att.resize(n * q_dim, 0.0);
    let group = shape.n_head / shape.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let scores_ptr = SharedOut(s.scores.as_mut_ptr());
    let att_ptr = SharedOut(s.att.as_mut_ptr());
    let (q, kv_ref) = (&s.q, &*kv);
    cpu.pool.for_chunks_indexed(n * shape.n_head, 1, &|thread, pairs| {
        for pair in pairs {
            let (t, h) = (pair / shape.n_head, pair % shape.n_head);
            let n_kv = pos0 + t + 1;
            // SAFETY: each thread index owns its own n_ctx-long slice of `scores` (thread < n_threads), and each
            // (t, h) pair its own head_dim-long slice of `att`; both buffers outlive the pool call.
            let (scores, o) = unsafe {
                (
                    std::slice::from_raw_parts_mut(scores_ptr.get().add(thread * n_ctx), n_kv),
                    std::slice::from_raw_parts_mut(att_ptr.get().add(t * q_dim + h * hd), hd),
                )
            };
            let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
            let kvh = h / group;
            for (j, sc) in scores.iter_mut().enumerate() {
                *sc = dot(qh, kv_ref.k_head(j, kvh, hd)) * scale;
            }
            ops::softmax(scores);
            o.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                for (a, &b) in o.iter_mut().zip(kv_ref.v_head(j, kvh, hd)) {
                    *a += p * b;
                }
            }
        }
    });

    ops::tap("kqv_out", None, &s.att);
    ops::matmul_f32(cpu, w.wo.as_ref(), &s.att, &mut s.att_q, out);
}

/// q . k with eight independent partial sums (so the compiler vectorizes it), combined pairwise.
fn dot(a: &[f32], b: &[f32]) -> f32 {
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
