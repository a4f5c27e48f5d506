//! llama.cpp's arithmetic ([`Numerics::Ggml`](super::Numerics)): the ops of the graphs `llm_build_llama` and
//! `llama_model_qwen3moe::graph` build (b11434, flash attention off, f32 KV cache), each through
//! [`crate::ggml_exact`] (scalar emulations of the exact ggml-cpu code paths).
//!
//! llama.cpp's KV length `n_kv` is the used cells rounded up to 256; the cells past the sequence are zero and
//! masked, and here they are zeros too, so sums see the same lanes. A batch is one ubatch as llama.cpp ran it
//! (the prompt in one `llama_decode`): the batch size picks kernels (tinyBLAS for 2 or more tokens, where
//! `ggml_vec_dot_f32` runs for one; the repacked Q4_K gemm for groups of 4 tokens; the tiled Q6_K kernels from 8
//! tokens), and so does the number of logits asked for (the last layer's feed-forward part runs only on the rows
//! whose logits are wanted; see [`super::Exec::trims_last_layer`]).
//!
//! `FLASH_MOE_GGML_DUMP=DIR` writes every intermediate tensor as `s{call}_{name}-{layer}.f32` in llama.cpp's
//! layout (for comparing with tensors dumped from llama.cpp; see tools/ggml_exact/README.md).

use kernels::DType;

use crate::ggml_exact as gx;
use crate::kv_cache::LayerKv;
use crate::layers::rope::{Rope, RopeStyle};
use crate::layers::routing::{MoeRouting, Route};
use crate::ops::{Cpu, SharedOut};
use crate::tensor::{QMat, QMatRef};
use crate::{Error, Result};

use super::{Exec, MatKind};

/// llama.cpp's KV padding (`llama_kv_cache::get_n_kv`: at least 256, a multiple of 256).
const N_KV_PAD: usize = 256;

/// What a model asks of this mode, for [`check_supported`].
pub struct Coverage<'a> {
    /// GGUF architecture (or HF class).
    pub arch: &'a str,
    pub attn_bias: bool,
    pub qk_norm: bool,
    pub rope: &'a Rope,
    pub head_dim: usize,
    pub n_embd: usize,
    pub moe: Option<&'a MoeRouting>,
    pub token_embd: DType,
    /// Every weight matrix: (slot name, type, rows, product).
    pub mats: Vec<(&'static str, DType, usize, MatKind)>,
    /// The routers' types.
    pub routers: Vec<DType>,
    /// A part of the model this mode does not emulate at all (e.g. a DeltaNet layer).
    pub uncovered: Option<String>,
}

/// Refuses a model this mode does not cover. Covered: Llama (no q/k norms, llama.cpp's normal RoPE) and Qwen3
/// (q/k norms, NeoX RoPE), dense or, for GGUF `qwen3moe`, MoE with a softmax router whose top-k weights are
/// renormalised; no biases, no partial RoPE; the weight types of [`check_weight`], an F32 router.
pub fn check_supported(c: &Coverage<'_>) -> Result<()> {
    let refuse = |why: String| Err(Error::Invalid(format!("--numerics ggml: {why}")));
    if let Some(what) = &c.uncovered {
        return refuse(format!("{what} is not covered"));
    }
    if c.attn_bias {
        return refuse("q/k/v biases are not covered".into());
    }
    match (c.qk_norm, c.rope.style) {
        (false, RopeStyle::Interleaved) | (true, RopeStyle::Neox) => {}
        _ => return refuse("only Llama (normal RoPE) and Qwen3 (q/k norms, NeoX RoPE) attention is covered".into()),
    }
    if let Some(r) = c.moe {
        if c.arch != "qwen3moe" || !r.norm_topk_prob {
            return refuse(format!(
                "only Qwen3-MoE's router (GGUF qwen3moe, softmax, top-k renormalised) is covered, not {}",
                c.arch
            ));
        }
        if !c.n_embd.is_multiple_of(16) {
            return refuse(format!("a router over n_embd = {} (not a multiple of 16) is not covered", c.n_embd));
        }
    }
    if c.rope.n_dims != c.head_dim {
        return refuse(format!("partial RoPE ({} of {} dimensions) is not covered", c.rope.n_dims, c.head_dim));
    }
    if !matches!(c.token_embd, DType::Q4_1 | DType::Q8_0 | DType::Q4_K | DType::Q6_K) {
        return refuse(format!(
            "token_embd is {:?}; only Q4_1, Q8_0, Q4_K and Q6_K embeddings are covered",
            c.token_embd
        ));
    }
    if let Some(d) = c.routers.iter().find(|&&d| d != DType::F32) {
        return refuse(format!("ffn_gate_inp is {d:?}; only an F32 router is covered"));
    }
    for &(name, dtype, rows, kind) in &c.mats {
        check_weight(name, dtype, rows, kind)?;
    }
    Ok(())
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
pub fn check_weight(name: &str, dtype: DType, rows: usize, kind: MatKind) -> Result<()> {
    let ok = match dtype {
        DType::Q4_1 | DType::Q8_0 | DType::Q6_K => true,
        DType::Q5_0 => kind == MatKind::Expert,
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
pub(crate) fn matmul(cpu: &Cpu, w: QMatRef<'_>, x: &[f32], out: &mut [f32], kind: MatKind) {
    let (rows, cols) = (w.rows, w.cols);
    let n = x.len() / cols;
    assert_eq!(out.len(), n * rows, "ggml matmul: output size");
    let n_gemm = if kind == MatKind::Dense && repacked(&w) && n > 3 { n - n % 4 } else { 0 };
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
}

/// Row `id` of an embedding table (`get_rows`): ggml's own dequantizers where they differ from ours.
pub(crate) fn embed(cpu: &Cpu, table: &QMat, id: u32, out: &mut [f32]) {
    let row = table.as_ref().row(id as usize);
    match table.dtype {
        DType::Q8_0 => gx::dequantize_q8_0(row, out),
        DType::Q6_K => gx::dequantize_q6_k(row, out),
        DType::Q4_K => gx::dequantize_q4_k(row, out),
        dt => cpu.kernels.dequantize_row(dt, row, out),
    }
}

/// The router as ggml's f32 `mul_mat`: tinyBLAS for 2 or more tokens when its kernel takes the expert count (a
/// multiple of 4), `ggml_vec_dot_f32` otherwise.
pub(crate) fn router(w: QMatRef<'_>, x: &[f32], out: &mut [f32]) {
    let e = w.cols;
    let ne = w.rows;
    let n = x.len() / e;
    let router: Vec<f32> = w.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let tinyblas = n >= 2 && ne.is_multiple_of(4);
    for (t, p) in out.chunks_exact_mut(ne).enumerate() {
        let ht = &x[t * e..(t + 1) * e];
        for (o, wr) in p.iter_mut().zip(router.chunks_exact(e)) {
            *o = if tinyblas { gx::dot_f32_tinyblas(wr, ht) } else { gx::dot_f32(wr, ht) };
        }
    }
}

/// `ggml_soft_max` over the router logits, then `argsort_top_k`, `get_rows` and (`norm_w`) the division by the
/// clamped sum ([`gx::top_k_weights`]).
pub(crate) fn softmax_top_k(logits: &[f32], r: &MoeRouting, out: &mut Route) {
    let mut p = logits.to_vec();
    gx::soft_max(&mut p, r.n_expert, 1.0);
    gx::top_k_weights(&p, r.n_expert_used, r.norm_topk_prob, &mut out.experts, &mut out.weights);
}

/// gate and up (`mul_mat` or `mul_mat_id`), `ggml_swiglu_split` row by row, then down.
pub(crate) fn swiglu_ffn(
    exec: &Exec<'_>,
    (gate, up, down): (QMatRef<'_>, QMatRef<'_>, QMatRef<'_>),
    x: &[f32],
    out: &mut [f32],
    kind: MatKind,
    layer: Option<usize>,
) {
    let n = x.len() / gate.cols;
    let n_ff = gate.rows;
    let (mut g, mut u) = (vec![0.0f32; n * n_ff], vec![0.0f32; n * n_ff]);
    matmul(exec.cpu, gate, x, &mut g, kind);
    matmul(exec.cpu, up, x, &mut u, kind);
    if kind == MatKind::Dense {
        exec.tap("ffn_gate", layer, &g);
        exec.tap("ffn_up", layer, &u);
    }
    for (gr, ur) in g.chunks_exact_mut(n_ff).zip(u.chunks_exact(n_ff)) {
        gx::swiglu(gr, ur);
    }
    if kind == MatKind::Dense {
        exec.tap("ffn_swiglu", layer, &g);
    }
    matmul(exec.cpu, down, &g, out, kind);
}

/// ggml's RoPE (its theta cache and FMA contractions): llama.cpp's normal mode rotates adjacent pairs, NeoX halves.
pub(crate) fn rope(rope: &Rope, head_dim: usize, pos0: usize, n: usize, q: &mut [f32], k: &mut [f32]) {
    let f = match rope.style {
        RopeStyle::Neox => gx::rope_neox,
        RopeStyle::Interleaved => gx::rope_pairs,
    };
    let (q_dim, kv_dim) = (q.len() / n.max(1), k.len() / n.max(1));
    for t in 0..n {
        let rc = gx::RopeCache::new(pos0 + t, rope.n_dims, rope.theta);
        for head in q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(head_dim) {
            f(head, &rc);
        }
        for head in k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(head_dim) {
            f(head, &rc);
        }
    }
}

/// Attention without flash attention: `kq = mul_mat(k, q)` (`ggml_vec_dot_f32` per cell, token and head) over
/// `n_kv` cells (the used ones rounded up to 256, the rest zero), `soft_max_ext` with the causal mask and
/// `1/sqrt(head_dim)`, then `kqv = mul_mat(v^T, kq)` (tinyBLAS for a batch when head_dim is a multiple of 4,
/// `ggml_vec_dot_f32` otherwise) with the values transposed per KV head, as llama.cpp's V cache is.
pub(crate) fn attention(
    exec: &Exec<'_>,
    kv: &LayerKv,
    (n_head, n_head_kv, hd): (usize, usize, usize),
    q: &[f32],
    pos0: usize,
    o: &mut [f32],
    layer: usize,
) {
    let q_dim = n_head * hd;
    let kv_dim = n_head_kv * hd;
    let n = q.len() / q_dim;
    let n_kv = (pos0 + n).div_ceil(N_KV_PAD) * N_KV_PAD;
    let group = n_head / n_head_kv;
    let kq_scale = 1.0f32 / (hd as f32).sqrt();
    let tinyblas = n >= 2 && hd.is_multiple_of(4);
    let n_cells = pos0 + n; // cells holding keys; the rest of the n_kv are 0 in llama.cpp's cache
    let mut vt = vec![0.0f32; kv_dim * n_kv];
    let mut tmp = vec![0.0f32; hd];
    for kvh in 0..n_head_kv {
        for dd in 0..hd {
            let col = &mut vt[(kvh * hd + dd) * n_kv..(kvh * hd + dd + 1) * n_kv];
            for (j, c) in col.iter_mut().enumerate() {
                *c = if j < n_cells { kv.v_head(j, kvh, &mut tmp)[dd] } else { 0.0 };
            }
        }
    }
    // Whole kq / kq_soft_max tensors ([head][token][cell], llama.cpp's layout) only when dumping.
    let dumping = dump_dir().is_some();
    let (mut kq_all, mut sm_all) = (vec![], vec![]);
    let mut p = vec![0.0f32; n_kv];
    for hh in 0..n_head {
        let kvh = hh / group;
        for t in 0..n {
            let qh = &q[t * q_dim + hh * hd..t * q_dim + (hh + 1) * hd];
            for (j, s) in p.iter_mut().enumerate() {
                *s = if j < n_cells { gx::dot_f32(kv.k_head(j, kvh, &mut tmp), qh) } else { 0.0 };
            }
            if dumping {
                kq_all.extend_from_slice(&p);
            }
            gx::soft_max(&mut p, pos0 + t + 1, kq_scale);
            if dumping {
                sm_all.extend_from_slice(&p);
            }
            for dd in 0..hd {
                let col = &vt[(kvh * hd + dd) * n_kv..(kvh * hd + dd + 1) * n_kv];
                o[t * q_dim + hh * hd + dd] =
                    if tinyblas { gx::dot_f32_tinyblas(col, &p) } else { gx::dot_f32(col, &p) };
            }
        }
    }
    if dumping {
        dump(exec.call, "kq", Some(layer), &kq_all);
        dump(exec.call, "kq_soft_max", Some(layer), &sm_all);
    }
}

fn dump_dir() -> Option<&'static std::path::PathBuf> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("FLASH_MOE_GGML_DUMP").map(Into::into)).as_ref()
}

/// Writes `x` to `FLASH_MOE_GGML_DUMP/s{call}_{name}[-{layer}].f32` when that variable is set.
pub(crate) fn dump(call: usize, name: &str, layer: Option<usize>, x: &[f32]) {
    let Some(dir) = dump_dir() else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_outside_the_emulated_paths_are_refused() {
        for (dtype, rows, kind) in [
            (DType::Q8_0, 7, MatKind::Dense),
            (DType::Q4_1, 7, MatKind::Expert),
            (DType::Q4_K, 32, MatKind::Dense),
            (DType::Q4_K, 32, MatKind::Expert),
            (DType::Q6_K, 7, MatKind::Dense),
            (DType::Q6_K, 7, MatKind::Expert),
            (DType::Q5_0, 256, MatKind::Expert),
        ] {
            assert!(check_weight("w", dtype, rows, kind).is_ok(), "{dtype:?} {rows} rows");
        }
        for (dtype, rows, kind) in [
            (DType::F16, 8, MatKind::Dense),
            (DType::F32, 8, MatKind::Expert),
            (DType::Q4_K, 12, MatKind::Dense), // not repacked: ggml's tiled kernels or vec_dot_q4_K, not emulated
            (DType::Q5_0, 8, MatKind::Dense),  // tinyBLAS for a batch, not checked
            (DType::Q4_0, 8, MatKind::Dense),  // repacked q4_0_8x8, not emulated
        ] {
            let e = check_weight("w", dtype, rows, kind).expect_err("refused").to_string();
            assert!(e.contains("--numerics ggml: w is"), "{e}");
        }
    }
}
