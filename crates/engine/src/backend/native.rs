//! flash-moe's own arithmetic: quantized matrix products through the run-time kernel table (`ops`), f64 sums in
//! norms and softmax, and an attention core that computes each (token, head) pair by the same loop whether it comes
//! in a batch or alone. Every result is independent of the batch size and the thread count.

use crate::kv_cache::LayerKv;
use crate::layers::rope::Rope;
use crate::layers::routing::{MoeRouting, Route};
use crate::ops::{self, Cpu, QuantActs, SharedOut};
use crate::tensor::QMatRef;

use super::{AttnScratch, FfnScratch};

/// Prompt tokens run through the layers at once; longer prompts are split (results do not depend on it). A
/// batch reads every expert its tokens route to once, so fewer, larger batches read the weights fewer times
/// (pp512 of the 431 MiB `small` model: +8% at 512 against 64).
pub const N_BATCH: usize = 512;

/// The batch when every position's logits are wanted: `[batch, n_vocab]` of them are computed at once, and a
/// vocabulary of 150k makes that 0.6 GB at 512 rows.
pub const N_BATCH_ALL_LOGITS: usize = 64;

/// q, k and v projections sharing one quantization of `x` when their types agree.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_qkv(
    cpu: &Cpu,
    (wq, wk, wv): (QMatRef<'_>, QMatRef<'_>, QMatRef<'_>),
    x: &[f32],
    xq: &mut QuantActs,
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
) {
    xq.quantize(&cpu.kernels, wq.dtype, x, wq.cols);
    if wk.dtype == wq.dtype && wv.dtype == wq.dtype {
        ops::matmul_many(cpu, &mut [(wq, q), (wk, k), (wv, v)], xq);
    } else {
        ops::matmul(cpu, wq, xq, q);
        ops::matmul_reuse(cpu, wk, x, xq, k);
        ops::matmul_reuse(cpu, wv, x, xq, v);
    }
}

/// `out = down(silu(gate(x)) * up(x))`; gate and up share one quantization of `x` when their types agree.
pub(crate) fn swiglu_ffn(
    cpu: &Cpu,
    (gate, up, down): (QMatRef<'_>, QMatRef<'_>, QMatRef<'_>),
    x: &[f32],
    s: &mut FfnScratch,
    out: &mut [f32],
) {
    let n = x.len() / gate.cols;
    s.gate.resize(n * gate.rows, 0.0);
    s.up.resize(n * up.rows, 0.0);
    s.xq.quantize(&cpu.kernels, gate.dtype, x, gate.cols);
    if up.dtype == gate.dtype {
        ops::matmul_many(cpu, &mut [(gate, &mut s.gate[..]), (up, &mut s.up[..])], &s.xq);
    } else {
        ops::matmul(cpu, gate, &s.xq, &mut s.gate);
        ops::matmul_reuse(cpu, up, x, &mut s.xq, &mut s.up);
    }
    ops::tap("ffn_gate", None, &s.gate);
    ops::tap("ffn_up", None, &s.up);
    ops::swiglu(&mut s.gate, &s.up);
    ops::tap("ffn_swiglu", None, &s.gate);
    ops::matmul_f32(cpu, down, &s.gate, &mut s.hq, out);
}

/// RoPE of every head of q and k (`n` tokens each), one table of cos/sin per token.
pub(crate) fn rope(
    rope: &Rope,
    head_dim: usize,
    pos0: usize,
    n: usize,
    q: &mut [f32],
    k: &mut [f32],
    s: &mut AttnScratch,
) {
    let half = rope.n_dims / 2;
    s.cos.resize(n * half, 0.0);
    s.sin.resize(n * half, 0.0);
    let (q_dim, kv_dim) = (q.len() / n.max(1), k.len() / n.max(1));
    for t in 0..n {
        let (c, si) = (&mut s.cos[t * half..(t + 1) * half], &mut s.sin[t * half..(t + 1) * half]);
        rope.cos_sin(pos0 + t, c, si);
        for head in q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(head_dim) {
            rope.apply(head, c, si);
        }
        for head in k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(head_dim) {
            rope.apply(head, c, si);
        }
    }
}

/// Positions converted at a time from an f16 or Q8_0 cache (an f32 cache is read in place).
const KV_CHUNK: usize = 64;

/// Scores, softmax and the weighted sum of values. Work items are (token, KV head) pairs spread over the pool; in
/// each, every key and value is read once (converted to f32 once, for an f16 or Q8_0 cache) for all the query heads
/// that share the KV head, through the kernel table's attention core (`kernels::attn`: one arithmetic on every
/// instruction set). Each (token, head) output is the same arithmetic whatever the batch or the threads: scores in
/// position order, an f64-summed softmax, values accumulated in position order.
pub(crate) fn attention(
    cpu: &Cpu,
    kv: &LayerKv,
    (n_head, n_head_kv, hd): (usize, usize, usize),
    q: &[f32],
    pos0: usize,
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    let q_dim = n_head * hd;
    let n = q.len() / q_dim;
    let n_ctx = kv.n_ctx();
    let n_threads = cpu.pool.n_threads();
    let group = n_head / n_head_kv;
    let tmp_len = if kv.is_f32() { 0 } else { KV_CHUNK * hd };
    s.scores.resize(n_threads * group * n_ctx, 0.0);
    s.kv_tmp.resize(n_threads * tmp_len, 0.0);
    let scale = 1.0 / (hd as f32).sqrt();
    let scores_ptr = SharedOut(s.scores.as_mut_ptr());
    let tmp_ptr = SharedOut(s.kv_tmp.as_mut_ptr());
    let att_ptr = SharedOut(out.as_mut_ptr());
    assert_eq!(out.len(), n * q_dim, "attention: output size");
    let k = &cpu.kernels;
    cpu.pool.for_chunks_indexed(n * n_head_kv, 1, &|thread, pairs| {
        for pair in pairs {
            let (t, kvh) = (pair / n_head_kv, pair % n_head_kv);
            let n_kv = pos0 + t + 1;
            // SAFETY: each thread index owns its own group * n_ctx scores and conversion buffer (thread <
            // n_threads), and each (t, kvh) pair the head_dim-long outputs of its `group` heads, which are
            // contiguous; every buffer outlives the pool call.
            let (scores, tmp, o) = unsafe {
                (
                    std::slice::from_raw_parts_mut(scores_ptr.get().add(thread * group * n_ctx), group * n_ctx),
                    std::slice::from_raw_parts_mut(tmp_ptr.get().add(thread * tmp_len), tmp_len),
                    std::slice::from_raw_parts_mut(att_ptr.get().add(t * q_dim + kvh * group * hd), group * hd),
                )
            };
            let qs = &q[t * q_dim + kvh * group * hd..t * q_dim + (kvh + 1) * group * hd];
            let chunk = if kv.is_f32() { n_kv } else { KV_CHUNK };
            for j0 in (0..n_kv).step_by(chunk) {
                let keys = kv.k_rows(kvh, j0..n_kv.min(j0 + chunk), tmp);
                k.attn_scores(qs, keys, scale, &mut scores[j0..], n_ctx);
            }
            for g in 0..group {
                ops::softmax(&mut scores[g * n_ctx..g * n_ctx + n_kv]);
            }
            o.fill(0.0);
            for j0 in (0..n_kv).step_by(chunk) {
                let values = kv.v_rows(kvh, j0..n_kv.min(j0 + chunk), tmp);
                k.attn_values(&scores[j0..], n_ctx, values, o);
            }
        }
    });
}

/// Softmax over the router logits, the top-k by probability (ties to the lower id), weights renormalised to
/// sum to one when `norm_topk_prob`.
pub(crate) fn softmax_top_k(
    logits: &[f32],
    r: &MoeRouting,
    probs: &mut Vec<f32>,
    order: &mut Vec<u32>,
    out: &mut Route,
) {
    probs.clear();
    probs.extend_from_slice(logits);
    ops::softmax(probs);
    order.clear();
    order.extend(0..r.n_expert as u32);
    order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]).then(a.cmp(&b)));
    out.experts.clear();
    out.experts.extend_from_slice(&order[..r.n_expert_used]);
    out.weights.clear();
    out.weights.extend(out.experts.iter().map(|&e| probs[e as usize]));
    if r.norm_topk_prob {
        let sum: f32 = out.weights.iter().sum();
        for w in out.weights.iter_mut() {
            *w /= sum;
        }
    }
}
