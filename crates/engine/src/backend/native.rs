//! flash-moe's own arithmetic: quantized matrix products through the run-time kernel table (`ops`), f64 sums in
//! norms and softmax, and an attention core that computes each (token, head) pair by the same loop whether it comes
//! in a batch or alone. Every result is independent of the batch size and the thread count.

use crate::kv_cache::LayerKv;
use crate::layers::rope::Rope;
use crate::layers::routing::{MoeRouting, Route};
use crate::ops::{self, Cpu, QuantActs, SharedOut};
use crate::tensor::QMatRef;
use kernels::KvRows;

use super::{AttnScratch, FfnScratch, GroupFfnScratch, SwigluMats};

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
    xq.quantize_on(cpu, wq.dtype, x, wq.cols);
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
    s.xq.quantize_on(cpu, gate.dtype, x, gate.cols);
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

/// [`swiglu_ffn`] for several experts at once (see `Exec::swiglu_ffn_group`): the layer's tokens quantized once
/// for the experts' type (the first group of the layer does it) and each expert's rows gathered from them, every
/// gate and up in one [`ops::matmul_jobs`] pass, every down in another. Experts whose gate and up types differ
/// take [`swiglu_ffn`] one by one on gathered f32 rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn swiglu_ffn_group(
    cpu: &Cpu,
    ffns: &[SwigluMats<'_>],
    x: &[f32],
    toks: &[usize],
    offs: &[usize],
    s: &mut GroupFfnScratch,
    out: &mut [f32],
) {
    assert_eq!(offs.len(), ffns.len() + 1, "swiglu_ffn_group: one row range per expert");
    let Some(&(first, _, _)) = ffns.first() else { return };
    let n_embd = first.cols;
    if ffns.iter().any(|(g, u, _)| g.dtype != first.dtype || u.dtype != first.dtype || g.cols != n_embd) {
        for (j, &mats) in ffns.iter().enumerate() {
            let e_out = mats.2.rows;
            let (r0, r1) = (offs[j], offs[j + 1]);
            super::gather_rows(x, n_embd, &toks[r0..r1], &mut s.rows);
            swiglu_ffn(cpu, mats, &s.rows, &mut s.one, &mut out[r0 * e_out..r1 * e_out]);
        }
        return;
    }
    if !s.x_ready || !s.x_all.is_for(&cpu.kernels, first.dtype, n_embd) {
        s.x_all.quantize_on(cpu, first.dtype, x, n_embd);
        s.x_ready = true;
    }
    let n = x.len() / n_embd;
    // An expert that takes every token in order (every expert, when decoding) reads them where they are.
    let all_tokens =
        |j: usize| offs[j + 1] - offs[j] == n && toks[offs[j]..offs[j + 1]].iter().enumerate().all(|(i, &t)| i == t);
    let m = ffns.len();
    s.xq.resize_with(m, QuantActs::default);
    // Row by row the same bytes however the experts are spread: one pass over the threads for a prompt's rows.
    let many = toks.len() >= ops::PAR_ROWS_MIN;
    let x_all = &s.x_all;
    ops::for_each_on(cpu, &mut s.xq[..m], many, &|| (), &|j, xq, _| {
        if !all_tokens(j) {
            xq.gather(x_all, &toks[offs[j]..offs[j + 1]]);
        }
    });

    s.hq.resize_with(m, QuantActs::default);
    // Where each expert's gate/up outputs start: rows x n_ff of each.
    let ff_off = |j: usize| -> usize { (0..j).map(|i| (offs[i + 1] - offs[i]) * ffns[i].0.rows).sum() };
    let total_ff = ff_off(m);
    s.gate.resize(total_ff, 0.0);
    s.up.resize(total_ff, 0.0);
    {
        let mut jobs = Vec::with_capacity(2 * m);
        let (mut gate_rest, mut up_rest) = (&mut s.gate[..], &mut s.up[..]);
        for (j, &(g, u, _)) in ffns.iter().enumerate() {
            let len = (offs[j + 1] - offs[j]) * g.rows;
            let (go, gr) = std::mem::take(&mut gate_rest).split_at_mut(len);
            let (uo, ur) = std::mem::take(&mut up_rest).split_at_mut(len);
            (gate_rest, up_rest) = (gr, ur);
            let xq = if all_tokens(j) { &s.x_all } else { &s.xq[j] };
            jobs.push((g, xq, go));
            jobs.push((u, xq, uo));
        }
        ops::matmul_jobs(cpu, &mut jobs);
    }
    // Expert j's gate/up (and then hidden) outputs.
    let hidden = |j: usize| ff_off(j)..ff_off(j) + (offs[j + 1] - offs[j]) * ffns[j].0.rows;
    for j in 0..m {
        ops::tap("ffn_gate", None, &s.gate[hidden(j)]);
        ops::tap("ffn_up", None, &s.up[hidden(j)]);
    }
    ops::swiglu(&mut s.gate, &s.up);
    for j in 0..m {
        ops::tap("ffn_swiglu", None, &s.gate[hidden(j)]);
    }
    if m < cpu.pool.n_threads() {
        // Fewer experts than threads (one expert arriving alone from the disk): each one's rows over the threads.
        for (j, hq) in s.hq[..m].iter_mut().enumerate() {
            hq.quantize_on(cpu, ffns[j].2.dtype, &s.gate[hidden(j)], ffns[j].2.cols);
        }
    } else {
        let gate = &s.gate;
        ops::for_each_on(cpu, &mut s.hq[..m], many, &|| (), &|j, hq, _| {
            hq.quantize(&cpu.kernels, ffns[j].2.dtype, &gate[hidden(j)], ffns[j].2.cols);
        });
    }
    let mut jobs = Vec::with_capacity(m);
    let mut out_rest = &mut out[..];
    for (j, &(_, _, d)) in ffns.iter().enumerate() {
        let (o, rest) = std::mem::take(&mut out_rest).split_at_mut((offs[j + 1] - offs[j]) * d.rows);
        out_rest = rest;
        jobs.push((d, &s.hq[j], o));
    }
    ops::matmul_jobs(cpu, &mut jobs);
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
/// Query tokens of one work item: each tile of keys and values is read from L1 by all of them and their query
/// heads (a prompt's tokens would otherwise each stream the whole cache from L2/L3).
const TOKENS_PER_ITEM: usize = 8;
/// Scores a thread may hold for one work item beyond one token's (`group x` the context): 8 MiB of f32. At long
/// contexts the blocks get fewer tokens so that the scratch stays within this (counted in the memory plan).
pub const ATTN_SCORES_MAX_FLOATS: usize = 2 << 20;
/// Floats of one tile of an f32 cache's keys (or values) of one KV head: 16 KiB, within L1.
const TILE_FLOATS: usize = 4096;

/// Scores, softmax and the weighted sum of values. Work items are (block of up to [`TOKENS_PER_ITEM`] tokens, KV
/// head) pairs spread over the pool; in each, the block's query rows (its tokens x the query heads that share the
/// KV head) are gathered, and the cache is walked in tiles of positions (converted to f32 once per tile, for an
/// f16 or Q8_0 cache), each tile used by every row through the kernel table's attention core (`kernels::attn`:
/// one arithmetic on every instruction set, SIMD lanes over positions and head elements). A row meets only the
/// positions its token sees. Each (token, head) output is the same arithmetic whatever the batch, the blocks, the
/// tiles or the threads: each score one `fma` chain, a fixed softmax, values accumulated in position order.
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
    let n_threads = cpu.pool.n_threads();
    let group = n_head / n_head_kv;
    // One row of scores per (token of a block, query head), as long as the longest row of this call.
    let ld = pos0 + n;
    let tb = TOKENS_PER_ITEM.min(n).min(ATTN_SCORES_MAX_FLOATS / (group * ld).max(1)).max(1);
    let rows_max = tb * group;
    let per_thread = rows_max * ld;
    let tmp_len = if kv.is_f32() { 0 } else { KV_CHUNK * hd };
    let tile = if kv.is_f32() { (TILE_FLOATS / hd.max(1)).max(16) / 16 * 16 } else { KV_CHUNK };
    s.scores.resize(n_threads * per_thread, 0.0);
    s.kv_tmp.resize(n_threads * tmp_len, 0.0);
    s.q_rows.resize(n_threads * rows_max * hd, 0.0);
    s.o_rows.resize(n_threads * rows_max * hd, 0.0);
    let scale = 1.0 / (hd as f32).sqrt();
    let scores_ptr = SharedOut(s.scores.as_mut_ptr());
    let tmp_ptr = SharedOut(s.kv_tmp.as_mut_ptr());
    let q_ptr = SharedOut(s.q_rows.as_mut_ptr());
    let o_ptr = SharedOut(s.o_rows.as_mut_ptr());
    let att_ptr = SharedOut(out.as_mut_ptr());
    assert_eq!(out.len(), n * q_dim, "attention: output size");
    let k = &cpu.kernels;
    let n_blocks = n.div_ceil(tb);
    cpu.pool.for_chunks_indexed(n_blocks * n_head_kv, 1, &|thread, items| {
        // SAFETY: each thread index owns its own part of every scratch buffer (thread < n_threads); every buffer
        // outlives the pool call.
        let (scores, tmp, qb, ob) = unsafe {
            (
                std::slice::from_raw_parts_mut(scores_ptr.get().add(thread * per_thread), per_thread),
                std::slice::from_raw_parts_mut(tmp_ptr.get().add(thread * tmp_len), tmp_len),
                std::slice::from_raw_parts_mut(q_ptr.get().add(thread * rows_max * hd), rows_max * hd),
                std::slice::from_raw_parts_mut(o_ptr.get().add(thread * rows_max * hd), rows_max * hd),
            )
        };
        for item in items {
            let (b, kvh) = (item / n_head_kv, item % n_head_kv);
            let ts = b * tb..n.min((b + 1) * tb);
            let rows = ts.len() * group;
            let n_kv_max = pos0 + ts.end;
            // Row (t - ts.start) * group + g: token t's query head kvh * group + g.
            for (i, t) in ts.clone().enumerate() {
                let at = t * q_dim + kvh * group * hd;
                qb[i * group * hd..(i + 1) * group * hd].copy_from_slice(&q[at..at + group * hd]);
            }
            let (qb, ob) = (&qb[..rows * hd], &mut ob[..rows * hd]);
            ob.fill(0.0);
            // The tokens from `first_full(j1)` on see every position below j1; the earlier ones fewer.
            let first_full = |j1: usize| ts.start.max(j1.saturating_sub(pos0 + 1)).min(ts.end);
            for j0 in (0..n_kv_max).step_by(tile) {
                kv.prefetch(false, kvh, j0 + tile..n_kv_max.min(j0 + 2 * tile));
                let keys = kv.k_rows(kvh, j0..n_kv_max.min(j0 + tile), tmp);
                let full = first_full(j0 + keys.n);
                let r0 = (full - ts.start) * group;
                if full < ts.end {
                    k.attn_scores(&qb[r0 * hd..], keys, scale, &mut scores[r0 * ld + j0..], ld);
                }
                for t in ts.start..full {
                    let (n_kv, r) = (pos0 + t + 1, (t - ts.start) * group);
                    if j0 < n_kv {
                        let part = KvRows { n: n_kv - j0, ..keys };
                        k.attn_scores(&qb[r * hd..(r + group) * hd], part, scale, &mut scores[r * ld + j0..], ld);
                    }
                }
            }
            for (i, t) in ts.clone().enumerate() {
                for g in 0..group {
                    let at = (i * group + g) * ld;
                    k.attn_softmax(&mut scores[at..at + pos0 + t + 1]);
                }
            }
            for j0 in (0..n_kv_max).step_by(tile) {
                kv.prefetch(true, kvh, j0 + tile..n_kv_max.min(j0 + 2 * tile));
                let values = kv.v_rows(kvh, j0..n_kv_max.min(j0 + tile), tmp);
                let full = first_full(j0 + values.n);
                let r0 = (full - ts.start) * group;
                if full < ts.end {
                    k.attn_values(&scores[r0 * ld + j0..], ld, values, &mut ob[r0 * hd..]);
                }
                for t in ts.start..full {
                    let (n_kv, r) = (pos0 + t + 1, (t - ts.start) * group);
                    if j0 < n_kv {
                        let part = KvRows { n: n_kv - j0, ..values };
                        k.attn_values(&scores[r * ld + j0..], ld, part, &mut ob[r * hd..(r + group) * hd]);
                    }
                }
            }
            for (i, t) in ts.clone().enumerate() {
                // SAFETY: each (t, kvh) pair owns the head_dim-long outputs of its `group` heads, which are
                // contiguous, and each item its own tokens; `out` outlives the pool call.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(att_ptr.get().add(t * q_dim + kvh * group * hd), group * hd)
                };
                o.copy_from_slice(&ob[i * group * hd..(i + 1) * group * hd]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::{KvType, KvTypes};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// Straightforward attention of one token over `n_kv` positions, through the scalar references.
    fn reference(kv: &LayerKv, (n_head, n_head_kv, hd): (usize, usize, usize), q: &[f32], n_kv: usize) -> Vec<f32> {
        let group = n_head / n_head_kv;
        let mut out = vec![0.0f32; n_head * hd];
        let mut tmp = vec![0.0f32; n_kv * hd];
        for kvh in 0..n_head_kv {
            let mut scores = vec![0.0f32; group * n_kv];
            let keys = kv.k_rows(kvh, 0..n_kv, &mut tmp);
            let qs = &q[kvh * group * hd..(kvh + 1) * group * hd];
            kernels::attn::attn_scores_ref(qs, keys, 1.0 / (hd as f32).sqrt(), &mut scores, n_kv);
            for g in 0..group {
                kernels::attn::attn_softmax_ref(&mut scores[g * n_kv..(g + 1) * n_kv]);
            }
            let values = kv.v_rows(kvh, 0..n_kv, &mut tmp);
            kernels::attn::attn_values_ref(&scores, n_kv, values, &mut out[kvh * group * hd..(kvh + 1) * group * hd]);
        }
        out
    }

    /// A prompt's attention (token blocks, tiles of positions, threads) gives every token the bits it gets alone,
    /// and those of the plain reference, for every cache type, head size and batch that crosses tile and block
    /// edges.
    #[test]
    fn blocked_attention_equals_one_token_at_a_time_and_the_reference() {
        for (hd, n_head, n_head_kv) in [(64, 8, 2), (48, 6, 3), (128, 4, 1), (40, 4, 4)] {
            for t in [KvType::F32, KvType::F16, KvType::Q8_0] {
                if !t.fits(hd) {
                    continue;
                }
                let types = KvTypes { k: t, v: t };
                let (pos0, n) = (77, 150);
                let kv_dim = n_head_kv * hd;
                let mut kv = LayerKv::try_new(pos0 + n, kv_dim, hd, types).expect("alloc");
                kv.write(0, &values((pos0 + n) * kv_dim, 1), &values((pos0 + n) * kv_dim, 2));
                let q = values(n * n_head * hd, 3);
                for threads in [1, 3] {
                    let cpu = Cpu::new(threads);
                    let mut s = AttnScratch::default();
                    let mut batch = vec![0.0f32; n * n_head * hd];
                    attention(&cpu, &kv, (n_head, n_head_kv, hd), &q, pos0, &mut s, &mut batch);
                    for tok in 0..n {
                        let qt = &q[tok * n_head * hd..(tok + 1) * n_head * hd];
                        let mut one = vec![0.0f32; n_head * hd];
                        attention(&cpu, &kv, (n_head, n_head_kv, hd), qt, pos0 + tok, &mut s, &mut one);
                        let got = &batch[tok * n_head * hd..(tok + 1) * n_head * hd];
                        let ctx = format!("hd {hd} heads {n_head}/{n_head_kv} {t:?} threads {threads} token {tok}");
                        assert!(got.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "batch vs alone: {ctx}");
                        let want = reference(&kv, (n_head, n_head_kv, hd), qt, pos0 + tok + 1);
                        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "vs reference: {ctx}");
                    }
                }
            }
        }
    }
}
