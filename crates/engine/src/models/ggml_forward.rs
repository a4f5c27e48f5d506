//! The decoder's forward pass with llama.cpp's float arithmetic ([`Numerics::Ggml`](super::Numerics)): the graphs
//! `llm_build_llama` and `llama_model_qwen3moe::graph` build (b11434, flash attention off, f32 KV cache), each op
//! through [`crate::ggml_exact`].
//!
//! ```text
//! x = get_rows(token_embd)
//! per layer:  h = rms_norm(x) * attn_norm;  q, k, v = h @ wq, wk, wv
//!             (Qwen3: q, k = rms_norm(q) * q_norm, rms_norm(k) * k_norm, per head)
//!             q, k = rope(q), rope(k)   (Llama: adjacent pairs; Qwen3: NeoX)
//!             kq = k_cache . q;  p = soft_max_ext(kq, mask, 1/sqrt(head_dim));  o = v_cache^T p
//!             x = (o @ wo) + x;  h = rms_norm(x) * ffn_norm
//!             dense:  x = (swiglu(h @ gate, h @ up) @ down) + x
//!             MoE (build_moe_ffn, softmax gating, norm_w):  p = soft_max(h @ router);  ids = argsort_top_k(p, k)
//!                     w = get_rows(p, ids);  w = w / clamp(sum_rows(w));  e_i = mul_mat_id(down, swiglu(
//!                     mul_mat_id(gate, h, ids), mul_mat_id(up, h, ids)), ids) * w_i
//!                     x = (((e_0 + e_1) + e_2) + ...) + x   (slots best first)
//! logits = (rms_norm(x) * output_norm) @ output
//! ```
//!
//! Experts come from the model's [`ExpertProvider`](crate::experts::ExpertProvider) (resident or streamed through
//! the cache) in whatever order it hands them out: every output is one dot product of its own, so neither the
//! order nor the cache changes a bit.
//!
//! llama.cpp's KV length `n_kv` is the used cells rounded up to 256; the cells past the sequence are zero and
//! masked, and here they are zeros too, so sums see the same lanes. A batch is one ubatch as llama.cpp ran it
//! (the prompt in one `llama_decode`): the batch size picks kernels (tinyBLAS for 2 or more tokens, where
//! `ggml_vec_dot_f32` runs for one; the repacked Q4_K gemm for groups of 4 tokens; the tiled Q6_K kernels from 8
//! tokens), and so does the number of logits asked for: like llama.cpp, the last layer runs its feed-forward
//! part only on the rows whose logits are wanted ([`Logits::Last`]: one; [`Logits::All`]: all), so a prompt's
//! last logits equal those of llama.cpp asked for the last logits only (llama-completion), and [`Logits::All`]
//! those of llama.cpp asked for every position (tools/llama_logits.cpp).
//!
//! `FLASH_MOE_GGML_DUMP=DIR` writes every intermediate tensor as `s{call}_{name}-{layer}.f32` in llama.cpp's
//! layout (for comparing with tensors dumped from llama.cpp; see tools/ggml_exact/README.md).

use kernels::DType;

use crate::ggml_exact as gx;
use crate::layers::moe::{MoeRouting, MoeWeights, Route};
use crate::layers::rope::RopeStyle;
use crate::models::decoder::{Decoder, FeedForward};
use crate::models::Logits;
use crate::ops::{Cpu, SharedOut};
use crate::session::Session;
use crate::tensor::QMatRef;
use crate::{Error, Result};

/// llama.cpp's KV padding (`llama_kv_cache::get_n_kv`: at least 256, a multiple of 256).
const N_KV_PAD: usize = 256;

/// Refuses a model this mode does not cover. Covered: Llama (no q/k norms, llama.cpp's normal RoPE) and Qwen3
/// (q/k norms, NeoX RoPE), dense or, for GGUF `qwen3moe`, MoE with a softmax router whose top-k weights are
/// renormalised; no biases, no partial RoPE; Q4_1/Q8_0 matrices (experts included), an F32 router.
pub(crate) fn check_supported(d: &Decoder) -> Result<()> {
    use crate::layers::rope::RopeStyle;
    let cfg = &d.cfg;
    let a = &cfg.attn;
    let refuse = |why: String| Err(Error::Invalid(format!("--numerics ggml: {why}")));
    if cfg.attn_bias {
        return refuse("q/k/v biases are not covered".into());
    }
    match (cfg.qk_norm, a.rope.style) {
        (false, RopeStyle::Interleaved) | (true, RopeStyle::Neox) => {}
        _ => return refuse("only Llama (normal RoPE) and Qwen3 (q/k norms, NeoX RoPE) attention is covered".into()),
    }
    if let Some(r) = &cfg.moe {
        if d.info.arch != "qwen3moe" || !r.norm_topk_prob {
            return refuse(format!(
                "only Qwen3-MoE's router (GGUF qwen3moe, softmax, top-k renormalised) is covered, not {}",
                d.info.arch
            ));
        }
        if !cfg.n_embd.is_multiple_of(16) {
            return refuse(format!("a router over n_embd = {} (not a multiple of 16) is not covered", cfg.n_embd));
        }
    }
    if a.rope.n_dims != a.head_dim {
        return refuse(format!("partial RoPE ({} of {} dimensions) is not covered", a.rope.n_dims, a.head_dim));
    }
    if !matches!(d.token_embd.dtype, DType::Q4_1 | DType::Q8_0 | DType::Q4_K | DType::Q6_K) {
        return refuse(format!(
            "token_embd is {:?}; only Q4_1, Q8_0, Q4_K and Q6_K embeddings are covered",
            d.token_embd.dtype
        ));
    }
    let mm = |m: &crate::tensor::QMat| (m.dtype, m.rows, Op::MulMat);
    let mut mats = vec![("output", mm(d.output.as_ref().unwrap_or(&d.token_embd)))];
    for layer in &d.layers {
        let w = &layer.attn;
        mats.extend([("attn_q", mm(&w.wq)), ("attn_k", mm(&w.wk)), ("attn_v", mm(&w.wv)), ("attn_output", mm(&w.wo))]);
        match &layer.ffn {
            FeedForward::Dense(f) => {
                mats.extend([("ffn_gate", mm(&f.gate)), ("ffn_up", mm(&f.up)), ("ffn_down", mm(&f.down))])
            }
            FeedForward::Moe(m) => {
                if m.router.dtype != DType::F32 {
                    return refuse(format!("ffn_gate_inp is {:?}; only an F32 router is covered", m.router.dtype));
                }
            }
        }
    }
    for le in d.expert_layout.layers.iter().flatten() {
        for (name, p) in [("ffn_gate_exps", &le.gate), ("ffn_up_exps", &le.up), ("ffn_down_exps", &le.down)] {
            mats.push((name, (p.dtype, p.rows, Op::MulMatId)));
        }
    }
    for (name, (dtype, rows, op)) in mats {
        check_weight(name, dtype, rows, op)?;
    }
    Ok(())
}

/// Which ggml op a matrix product is: `mul_mat` (dense weights) or `mul_mat_id` (experts); they take different
/// kernels for some weight types.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    MulMat,
    MulMatId,
}

/// Activations quantized for one weight type's dot product.
enum Acts {
    Q8(Vec<Vec<gx::BlockQ8>>),
    Q8K(Vec<Vec<gx::BlockQ8K>>),
}

/// Whether ggml-cpu repacks a weight of this type and shape on this CPU (`ggml_repack_get_optimal_repack_type`,
/// AVX2: Q4_K with a multiple of 8 rows becomes `q4_K_8x8_q8_K`).
fn repacked(w: &QMatRef<'_>) -> bool {
    w.dtype == DType::Q4_K && w.rows.is_multiple_of(8)
}

/// Refuses a weight whose ggml-cpu path is not emulated here (see [`matmul`]).
fn check_weight(name: &str, dtype: DType, rows: usize, op: Op) -> Result<()> {
    let ok = match dtype {
        DType::Q4_1 | DType::Q8_0 | DType::Q6_K => true,
        DType::Q5_0 => op == Op::MulMatId,
        DType::Q4_K => rows.is_multiple_of(8),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "--numerics ggml: {name} is {dtype:?} ({rows} rows); only Q4_1 and Q8_0 weights, Q4_K with a multiple of 8 \
         rows, Q6_K, and Q5_0 experts are covered"
    )))
}

/// `out[t, r] = w[r] . x[t]` the way ggml-cpu's `mul_mat` / `mul_mat_id` computes it for this weight type (rows
/// over threads: each output is one call, so threading never changes a result):
/// - Q4_1, Q8_0, Q5_0: [`gx::quantize_q8_1`]/[`gx::quantize_q8_0`] per token and one `vec_dot` per output
///   (tinyBLAS computes Q8_0 the same way for a batch; Q5_0 is covered only as experts, where tinyBLAS never runs);
/// - Q4_K (repacked, rows a multiple of 8): `mul_mat` runs the first `n - n % 4` tokens through the repacked gemm
///   (activations by [`gx::quantize_q8_k_4x8`]) and the rest through the gemv ([`gx::quantize_q8_k`]),
///   `mul_mat_id` every token through the gemv;
/// - Q6_K (not repacked on x86): `ggml_vec_dot_q6_K_q8_K` below 8 tokens; from 8 tokens (per expert for
///   `mul_mat_id`) the tiled kernels (ggml-cpu/tiled/, [`gx::dot_q6_k_q8_k_tiled`]).
fn matmul(cpu: &Cpu, w: QMatRef<'_>, x: &[f32], out: &mut [f32], op: Op) -> Result<()> {
    let (rows, cols) = (w.rows, w.cols);
    let n = x.len() / cols;
    assert_eq!(out.len(), n * rows, "ggml matmul: output size");
    let n_gemm = if op == Op::MulMat && repacked(&w) && n > 3 { n - n % 4 } else { 0 };
    let acts = match w.dtype {
        DType::Q4_K | DType::Q6_K => Acts::Q8K(
            x.chunks_exact(cols)
                .enumerate()
                .map(|(t, r)| if t < n_gemm { gx::quantize_q8_k_4x8(r) } else { gx::quantize_q8_k(r) })
                .collect(),
        ),
        DType::Q4_1 => Acts::Q8(x.chunks_exact(cols).map(gx::quantize_q8_1).collect()),
        _ => Acts::Q8(x.chunks_exact(cols).map(gx::quantize_q8_0).collect()),
    };
    // ggml_compute_forward_mul_mat_tiled / _mul_mat_id_tiled: K-quant weights that are not repacked, 8 or more
    // tokens (per expert for mul_mat_id).
    let tiled = w.dtype == DType::Q6_K && n >= 8;
    let outp = SharedOut(out.as_mut_ptr());
    let chunk = cpu.pool.chunk_size(rows, 16);
    cpu.pool.for_chunks(rows, chunk, &|range| {
        for r in range {
            let wr = w.row(r);
            for t in 0..n {
                let v = match (&acts, w.dtype) {
                    (Acts::Q8(a), DType::Q4_1) => gx::dot_q4_1_q8_1(wr, &a[t]),
                    (Acts::Q8(a), DType::Q5_0) => gx::dot_q5_0_q8_0(wr, &a[t]),
                    (Acts::Q8(a), _) => gx::dot_q8_0_q8_0(wr, &a[t]),
                    (Acts::Q8K(a), DType::Q6_K) if tiled => gx::dot_q6_k_q8_k_tiled(wr, &a[t]),
                    (Acts::Q8K(a), DType::Q6_K) => gx::dot_q6_k_q8_k(wr, &a[t]),
                    (Acts::Q8K(a), _) if t < n_gemm => gx::dot_q4_k_q8_k_gemm(wr, &a[t]),
                    (Acts::Q8K(a), _) => gx::dot_q4_k_q8_k_gemv(wr, &a[t]),
                };
                // SAFETY: rows are partitioned between threads, so (t, r) is written once; t * rows + r is
                // within `out` (its length is checked above) and `out` outlives the pool call.
                unsafe { *outp.get().add(t * rows + r) = v };
            }
        }
    });
    Ok(())
}

/// `build_moe_ffn` (softmax gating, `norm_w`, SiLU, separate gate and up) for `h` (`[n, n_embd]`, normed) into
/// `out`: the router as ggml's f32 `mul_mat` (tinyBLAS for 2 or more tokens when its kernel takes the expert
/// count, a multiple of 4; `ggml_vec_dot_f32` otherwise), then per token [`gx::soft_max`] and
/// [`gx::top_k_weights`]; each `mul_mat_id` output is one quantized dot product (`ggml_compute_forward_mul_mat_id`:
/// src1 rows quantized once, `vec_dot` per row and expert: [`matmul`] on the expert's tokens gives the same
/// bits); the weighted expert outputs are summed with one `ggml_add` per slot, best slot first.
fn moe(
    d: &Decoder,
    cpu: &Cpu,
    (call, l, pos0): (usize, usize, usize),
    m: &MoeWeights,
    r: &MoeRouting,
    h: &[f32],
    out: &mut [f32],
) -> Result<()> {
    let e = d.cfg.n_embd;
    let n = h.len() / e;
    let ld = Some(l);
    let n_ff = d.cfg.n_ff_exp;
    let router: Vec<f32> =
        m.router.as_ref().data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let ne = r.n_expert;
    let tinyblas = n >= 2 && ne.is_multiple_of(4);
    let mut probs = vec![0.0f32; n * ne];
    for (t, p) in probs.chunks_exact_mut(ne).enumerate() {
        let ht = &h[t * e..(t + 1) * e];
        for (x, wr) in p.iter_mut().zip(router.chunks_exact(e)) {
            *x = if tinyblas { gx::dot_f32_tinyblas(wr, ht) } else { gx::dot_f32(wr, ht) };
        }
    }
    dump(call, "ffn_moe_logits", ld, &probs);
    for p in probs.chunks_exact_mut(ne) {
        gx::soft_max(p, ne, 1.0);
    }
    dump(call, "ffn_moe_probs", ld, &probs);
    let mut routes = Vec::with_capacity(n);
    for (t, p) in probs.chunks_exact(ne).enumerate() {
        let mut route = Route { experts: vec![], weights: vec![] };
        gx::top_k_weights(p, r.n_expert_used, true, &mut route.experts, &mut route.weights);
        if let Some(hook) = &d.route_hook {
            hook.route(l, pos0 + t, n, &mut route)?;
        }
        routes.push(route);
    }
    let w_norm: Vec<f32> = routes.iter().flat_map(|r| r.weights.iter().copied()).collect();
    dump(call, "ffn_moe_weights_norm", ld, &w_norm);

    // [token][slot][..] as llama.cpp lays out mul_mat_id results; k per token (a replayed route may differ).
    let k = routes.iter().map(|r| r.experts.len()).max().unwrap_or(0);
    let (mut gate, mut up) = (vec![0.0f32; n * k * n_ff], vec![0.0f32; n * k * n_ff]);
    let mut swiglu = vec![0.0f32; n * k * n_ff];
    let mut down = vec![0.0f32; n * k * e];
    let mut used: Vec<u32> = routes.iter().flat_map(|r| r.experts.iter().copied()).collect();
    used.sort_unstable();
    used.dedup();
    let mut set = d.experts.acquire(l, &used)?;
    let (mut rows, mut g, mut u, mut yd) = (vec![], vec![], vec![], vec![]);
    while let Some(next) = set.next() {
        let (i, ew) = next?;
        let id = used[i];
        let slots: Vec<(usize, usize)> = routes
            .iter()
            .enumerate()
            .filter_map(|(t, r)| r.experts.iter().position(|&x| x == id).map(|s| (t, s)))
            .collect();
        rows.clear();
        for &(t, _) in &slots {
            rows.extend_from_slice(&h[t * e..(t + 1) * e]);
        }
        g.resize(slots.len() * n_ff, 0.0);
        u.resize(slots.len() * n_ff, 0.0);
        matmul(cpu, ew.gate, &rows, &mut g, Op::MulMatId)?;
        matmul(cpu, ew.up, &rows, &mut u, Op::MulMatId)?;
        for (j, &(t, s)) in slots.iter().enumerate() {
            let dst = (t * k + s) * n_ff;
            gate[dst..dst + n_ff].copy_from_slice(&g[j * n_ff..(j + 1) * n_ff]);
            up[dst..dst + n_ff].copy_from_slice(&u[j * n_ff..(j + 1) * n_ff]);
            // ggml_swiglu_split, row by row
            gx::swiglu(&mut g[j * n_ff..(j + 1) * n_ff], &u[j * n_ff..(j + 1) * n_ff]);
            swiglu[dst..dst + n_ff].copy_from_slice(&g[j * n_ff..(j + 1) * n_ff]);
        }
        yd.resize(slots.len() * e, 0.0);
        matmul(cpu, ew.down, &g, &mut yd, Op::MulMatId)?;
        for (j, &(t, s)) in slots.iter().enumerate() {
            let dst = (t * k + s) * e;
            down[dst..dst + e].copy_from_slice(&yd[j * e..(j + 1) * e]);
        }
    }
    drop(set);
    dump(call, "ffn_moe_gate", ld, &gate);
    dump(call, "ffn_moe_up", ld, &up);
    dump(call, "ffn_moe_swiglu", ld, &swiglu);
    dump(call, "ffn_moe_down", ld, &down);
    // ggml_mul(experts, weights), then the chain of ggml_add over the slots.
    for (t, route) in routes.iter().enumerate() {
        for (s, &wt) in route.weights.iter().enumerate() {
            for v in &mut down[(t * k + s) * e..(t * k + s + 1) * e] {
                *v *= wt;
            }
        }
    }
    dump(call, "ffn_moe_weighted", ld, &down);
    for (t, route) in routes.iter().enumerate() {
        let o = &mut out[t * e..(t + 1) * e];
        o.copy_from_slice(&down[t * k * e..(t * k + 1) * e]);
        for s in 1..route.experts.len() {
            for (a, &b) in o.iter_mut().zip(&down[(t * k + s) * e..(t * k + s + 1) * e]) {
                *a += b;
            }
        }
    }
    Ok(())
}

fn dump(call: usize, name: &str, layer: Option<usize>, x: &[f32]) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("FLASH_MOE_GGML_DUMP").map(Into::into)) else {
        return;
    };
    let name = match layer {
        Some(l) => format!("s{call}_{name}-{l}.f32"),
        None => format!("s{call}_{name}.f32"),
    };
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    if let Err(e) = std::fs::write(dir.join(&name), bytes) {
        eprintln!("FLASH_MOE_GGML_DUMP: {name}: {e}");
    }
}

/// Runs `tokens` as one llama.cpp ubatch at the session's position.
pub(crate) fn forward<'s>(
    d: &Decoder,
    cpu: &Cpu,
    sess: &'s mut Session,
    tokens: &[u32],
    want: Logits,
) -> Result<&'s [f32]> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cfg = &d.cfg;
    let a = &cfg.attn;
    let (n, e, hd) = (tokens.len(), cfg.n_embd, a.head_dim);
    let (q_dim, kv_dim) = (a.n_head * hd, a.n_head_kv * hd);
    if n == 0 {
        return Err(Error::EmptyPrompt);
    }
    if d.approx.is_some() {
        return Err(Error::Invalid("--numerics ggml does not combine with an approximate expert mode".into()));
    }
    sess.check_room(n)?;
    let pos0 = sess.pos;
    let n_kv = (pos0 + n).div_ceil(N_KV_PAD) * N_KV_PAD;
    let group = a.n_head / a.n_head_kv;
    let kq_scale = 1.0f32 / (hd as f32).sqrt();
    let tinyblas = n >= 2 && hd.is_multiple_of(4);

    let mut x = vec![0.0f32; n * e];
    for (t, &id) in tokens.iter().enumerate() {
        if id as usize >= cfg.n_vocab {
            return Err(Error::TokenOutOfRange { id, n_vocab: cfg.n_vocab });
        }
        let row = d.token_embd.as_ref().row(id as usize);
        let out = &mut x[t * e..(t + 1) * e];
        match d.token_embd.dtype {
            DType::Q8_0 => gx::dequantize_q8_0(row, out),
            DType::Q6_K => gx::dequantize_q6_k(row, out),
            DType::Q4_K => gx::dequantize_q4_k(row, out),
            dt => cpu.kernels.dequantize_row(dt, row, out),
        }
    }
    dump(call, "embd", None, &x);
    let ropes: Vec<gx::RopeCache> = (0..n).map(|t| gx::RopeCache::new(pos0 + t, a.rope.n_dims, a.rope.theta)).collect();

    let mut h = vec![0.0f32; n * e];
    let (mut q, mut k, mut v) = (vec![0.0f32; n * q_dim], vec![0.0f32; n * kv_dim], vec![0.0f32; n * kv_dim]);
    let mut o = vec![0.0f32; n * q_dim];
    let mut y = vec![0.0f32; n * e];
    let (mut gate, mut up) = (vec![0.0f32; n * cfg.n_ff], vec![0.0f32; n * cfg.n_ff]);
    // One (head, token) row of scores, then probabilities, over the n_kv cells; the values transposed per KV
    // head, [n_head_kv][head_dim][n_kv] (llama.cpp's V cache layout without flash attention).
    let mut p = vec![0.0f32; n_kv];
    let mut vt = vec![0.0f32; kv_dim * n_kv];
    // Whole kq / kq_soft_max tensors ([head][token][cell], llama.cpp's layout) only when dumping.
    let dumping = std::env::var_os("FLASH_MOE_GGML_DUMP").is_some();
    let (mut kq_all, mut sm_all) = (vec![], vec![]);
    for (l, layer) in d.layers.iter().enumerate() {
        let w = &layer.attn;
        let ld = Some(l);
        gx::rms_norm_mul(&x, &layer.attn_norm, cfg.rms_eps, &mut h);
        dump(call, "attn_norm", ld, &h);
        matmul(cpu, w.wq.as_ref(), &h, &mut q, Op::MulMat)?;
        matmul(cpu, w.wk.as_ref(), &h, &mut k, Op::MulMat)?;
        matmul(cpu, w.wv.as_ref(), &h, &mut v, Op::MulMat)?;
        dump(call, "Vcur", ld, &v);
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            // build_norm per head: rms_norm over head_dim, then * weight (same arithmetic fused or not).
            let qc = q.clone();
            gx::rms_norm_mul(&qc, qn, cfg.rms_eps, &mut q);
            let kc = k.clone();
            gx::rms_norm_mul(&kc, kn, cfg.rms_eps, &mut k);
            dump(call, "Qcur_normed", ld, &q);
            dump(call, "Kcur_normed", ld, &k);
        }
        let rope = match a.rope.style {
            RopeStyle::Neox => gx::rope_neox,
            RopeStyle::Interleaved => gx::rope_pairs,
        };
        for (t, rc) in ropes.iter().enumerate() {
            for head in q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(hd) {
                rope(head, rc);
            }
            for head in k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
                rope(head, rc);
            }
        }
        dump(call, "Qcur", ld, &q);
        dump(call, "Kcur", ld, &k);
        let kv = &mut sess.kv[l];
        kv.write(pos0, &k, &v);
        let kv = &*kv;

        let n_cells = pos0 + n; // cells holding keys; the rest of the n_kv are 0 in llama.cpp's cache
        for kvh in 0..a.n_head_kv {
            for dd in 0..hd {
                let col = &mut vt[(kvh * hd + dd) * n_kv..(kvh * hd + dd + 1) * n_kv];
                for (j, c) in col.iter_mut().enumerate() {
                    *c = if j < n_cells { kv.v_head(j, kvh, hd)[dd] } else { 0.0 };
                }
            }
        }
        if dumping {
            kq_all.clear();
            sm_all.clear();
        }
        for hh in 0..a.n_head {
            let kvh = hh / group;
            for t in 0..n {
                // kq = mul_mat(k, q): ggml_vec_dot_f32 per (cell, token, head).
                let qh = &q[t * q_dim + hh * hd..t * q_dim + (hh + 1) * hd];
                for (j, s) in p.iter_mut().enumerate() {
                    *s = if j < n_cells { gx::dot_f32(kv.k_head(j, kvh, hd), qh) } else { 0.0 };
                }
                if dumping {
                    kq_all.extend_from_slice(&p);
                }
                gx::soft_max(&mut p, pos0 + t + 1, kq_scale);
                if dumping {
                    sm_all.extend_from_slice(&p);
                }
                // kqv = mul_mat(v^T, kq): tinyBLAS for a batch (its f32 kernel takes m = head_dim a multiple of 4),
                // ggml_vec_dot_f32 otherwise.
                for dd in 0..hd {
                    let col = &vt[(kvh * hd + dd) * n_kv..(kvh * hd + dd + 1) * n_kv];
                    o[t * q_dim + hh * hd + dd] =
                        if tinyblas { gx::dot_f32_tinyblas(col, &p) } else { gx::dot_f32(col, &p) };
                }
            }
        }
        dump(call, "kq", ld, &kq_all);
        dump(call, "kq_soft_max", ld, &sm_all);
        dump(call, "kqv_out", ld, &o);
        matmul(cpu, w.wo.as_ref(), &o, &mut y, Op::MulMat)?;
        dump(call, "attn_out", ld, &y);
        if l + 1 == d.layers.len() && want != Logits::All {
            // llama.cpp's last layer keeps only the rows whose logits were asked for (get_rows of out_ids after
            // the attention), so the rest of the graph runs on them alone: a batch of one takes the one-token
            // kernels (vec_dot instead of tinyBLAS, gemv instead of gemm) as llama.cpp does.
            if want == Logits::None {
                break;
            }
            x.drain(..(n - 1) * e);
            y.drain(..(n - 1) * e);
            h.truncate(e);
            gate.truncate(cfg.n_ff);
            up.truncate(cfg.n_ff);
        }
        for (xi, &yi) in x.iter_mut().zip(&y) {
            *xi += yi; // ggml_add(cur, residual): addition commutes
        }
        dump(call, "ffn_inp", ld, &x);

        gx::rms_norm_mul(&x, &layer.ffn_norm, cfg.rms_eps, &mut h);
        dump(call, "ffn_norm", ld, &h);
        match &layer.ffn {
            FeedForward::Dense(f) => {
                matmul(cpu, f.gate.as_ref(), &h, &mut gate, Op::MulMat)?;
                matmul(cpu, f.up.as_ref(), &h, &mut up, Op::MulMat)?;
                dump(call, "ffn_gate", ld, &gate);
                dump(call, "ffn_up", ld, &up);
                for (g, u) in gate.chunks_exact_mut(cfg.n_ff).zip(up.chunks_exact(cfg.n_ff)) {
                    gx::swiglu(g, u); // row by row, as ggml_swiglu_split
                }
                dump(call, "ffn_swiglu", ld, &gate);
                matmul(cpu, f.down.as_ref(), &gate, &mut y, Op::MulMat)?;
                dump(call, "ffn_out", ld, &y);
            }
            FeedForward::Moe(m) => {
                let r = cfg.moe.as_ref().ok_or_else(|| Error::Invalid("MoE layer without routing".into()))?;
                moe(d, cpu, (call, l, pos0), m, r, &h, &mut y)?;
                dump(call, "ffn_moe_out", ld, &y);
            }
        }
        for (xi, &yi) in x.iter_mut().zip(&y) {
            *xi += yi; // ggml_add(cur, residual): addition commutes
        }
        dump(call, "l_out", ld, &x);
    }
    sess.pos += n;

    let rows = match want {
        Logits::Last => &x[x.len() - e..],
        Logits::All => &x[..],
        Logits::None => return Ok(&[]),
    };
    let mut hn = vec![0.0f32; rows.len()];
    gx::rms_norm_mul(rows, &d.output_norm, cfg.rms_eps, &mut hn);
    dump(call, "result_norm", None, &hn);
    let out = d.output.as_ref().unwrap_or(&d.token_embd);
    let s = &mut sess.scratch;
    s.logits.resize(rows.len() / e * cfg.n_vocab, 0.0);
    matmul(cpu, out.as_ref(), &hn, &mut s.logits, Op::MulMat)?;
    dump(call, "result_output", None, &s.logits);
    Ok(&s.logits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_outside_the_emulated_paths_are_refused() {
        for (dtype, rows, op) in [
            (DType::Q8_0, 7, Op::MulMat),
            (DType::Q4_1, 7, Op::MulMatId),
            (DType::Q4_K, 32, Op::MulMat),
            (DType::Q4_K, 32, Op::MulMatId),
            (DType::Q6_K, 7, Op::MulMat),
            (DType::Q6_K, 7, Op::MulMatId),
            (DType::Q5_0, 256, Op::MulMatId),
        ] {
            assert!(check_weight("w", dtype, rows, op).is_ok(), "{dtype:?} {rows} rows");
        }
        for (dtype, rows, op) in [
            (DType::F16, 8, Op::MulMat),
            (DType::F32, 8, Op::MulMatId),
            (DType::Q4_K, 12, Op::MulMat), // not repacked: ggml's tiled kernels or vec_dot_q4_K, not emulated
            (DType::Q5_0, 8, Op::MulMat),  // tinyBLAS for a batch, not checked
            (DType::Q4_0, 8, Op::MulMat),  // repacked q4_0_8x8, not emulated
        ] {
            let e = check_weight("w", dtype, rows, op).expect_err("refused").to_string();
            assert!(e.contains("--numerics ggml: w is"), "{e}");
        }
    }
}
