//! The ops boundary: every float operation a layer block performs goes through [`Exec`], which carries out
//! the operation the way the chosen [`Numerics`] says. The blocks (`layers/`) and the family files (`models/`)
//! hold the structure of the computation; this module holds the arithmetic.
//!
//! - [`Numerics::Native`] ([`native`]): flash-moe's kernels (SIMD, chosen at start-up), batch-invariant: every
//!   output is the same bits whether its token comes alone or in a batch.
//! - [`Numerics::Ggml`] ([`ggml`]): llama.cpp's ggml-cpu arithmetic, emulated op by op in scalar code
//!   ([`crate::ggml_exact`]), so logits are llama.cpp's bit for bit; like llama.cpp, some kernels depend on the
//!   batch size, so a prompt is one batch and the last layer runs its feed-forward part only on the rows whose
//!   logits are wanted.
//!
//! A CUDA backend is meant to be one more variant here. Nothing in this module holds state across calls: the
//! scratch buffers of the native path belong to the session and are passed in.

pub mod ggml;
pub mod native;

use crate::kv_cache::LayerKv;
use crate::layers::rope::Rope;
use crate::layers::routing::{MoeRouting, Route};
use crate::ops::{Cpu, QuantActs};
use crate::tensor::{QMat, QMatRef};
use crate::Result;

/// Whose float arithmetic the forward pass follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Numerics {
    /// flash-moe's own kernels (SIMD where the CPU has it): the default.
    #[default]
    Native,
    /// llama.cpp's (ggml-cpu b11434 on an AVX-512 x86 CPU, one thread), emulated op by op in scalar code so that
    /// logits are bit-identical to llama.cpp's: slow, for checking against llama.cpp. Llama and Qwen3 (dense or
    /// Qwen3-MoE) with Q4_1/Q8_0/Q4_K/Q6_K weights and Q5_0 experts, e.g. Q8_0 and Q4_K_M GGUFs (see
    /// [`crate::ggml_exact`]; anything else is refused).
    Ggml,
}

/// Which product a weight matrix takes part in: ggml runs dense weights (`mul_mat`) and experts (`mul_mat_id`)
/// through different kernels for some types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatKind {
    Dense,
    Expert,
}

/// What one forward call computes with: the CPU (kernels and threads), the numerics, and the call's number
/// (which names the tensors dumped for debugging).
pub struct Exec<'a> {
    pub cpu: &'a Cpu,
    pub numerics: Numerics,
    pub call: usize,
}

/// Buffers of a SwiGLU feed-forward (dense or one expert), reused across calls.
#[derive(Default)]
pub struct FfnScratch {
    pub(crate) xq: QuantActs,
    pub(crate) hq: QuantActs,
    pub(crate) gate: Vec<f32>, // [n, n_ff]
    pub(crate) up: Vec<f32>,   // [n, n_ff]
}

/// Buffers of several experts' SwiGLU run together ([`Exec::swiglu_ffn_group`]), reused across calls.
#[derive(Default)]
pub struct GroupFfnScratch {
    pub(crate) one: FfnScratch,
    pub(crate) x_all: QuantActs,   // the layer's tokens, converted for the experts' type
    pub(crate) x_ready: bool,      // whether `x_all` holds this layer's tokens
    pub(crate) rows: Vec<f32>,     // gathered f32 rows (mixed types, ggml numerics)
    pub(crate) xq: Vec<QuantActs>, // per expert
    pub(crate) hq: Vec<QuantActs>, // per expert
    pub(crate) gate: Vec<f32>,     // [rows of all experts, n_ff]
    pub(crate) up: Vec<f32>,       // [rows of all experts, n_ff]
}

/// Rows `toks` of `x` (`[n, dim]`), in that order, into `out`.
pub(crate) fn gather_rows(x: &[f32], dim: usize, toks: &[usize], out: &mut Vec<f32>) {
    out.clear();
    for &t in toks {
        out.extend_from_slice(&x[t * dim..(t + 1) * dim]);
    }
}

impl GroupFfnScratch {
    /// A new layer's tokens: the next group converts them again.
    pub fn new_input(&mut self) {
        self.x_ready = false;
    }
}

/// The three matrices of one SwiGLU block: gate, up, down.
pub type SwigluMats<'a> = (QMatRef<'a>, QMatRef<'a>, QMatRef<'a>);

/// Buffers of the attention core (scores, RoPE tables), reused across calls.
#[derive(Default)]
pub struct AttnScratch {
    pub(crate) scores: Vec<f32>, // [n_threads, tokens per item, group, longest row]
    pub(crate) kv_tmp: Vec<f32>, // [n_threads, tile, head_dim] keys or values converted from f16 / Q8_0
    pub(crate) q_rows: Vec<f32>, // [n_threads, tokens per item x group, head_dim] a work item's query rows
    pub(crate) o_rows: Vec<f32>, // [n_threads, tokens per item x group, head_dim] their outputs
    pub(crate) cos: Vec<f32>,    // [n, n_rot / 2]
    pub(crate) sin: Vec<f32>,    // [n, n_rot / 2]
}

impl<'a> Exec<'a> {
    pub fn new(cpu: &'a Cpu, numerics: Numerics) -> Exec<'a> {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Exec { cpu, numerics, call: CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) }
    }

    /// The longest batch a forward call runs at once (longer prompts are cut into batches of this size), when
    /// every position's logits are wanted (`all_logits`) or not.
    pub fn max_batch(&self, all_logits: bool) -> usize {
        match self.numerics {
            Numerics::Native if all_logits => native::N_BATCH_ALL_LOGITS,
            Numerics::Native => native::N_BATCH,
            // llama.cpp's reference ran the prompt as one ubatch, and its kernels depend on the batch size.
            Numerics::Ggml => usize::MAX,
        }
    }

    /// Whether the last layer's feed-forward part runs only on the rows whose logits are wanted (llama.cpp does;
    /// the native path computes every row, so that route traces and cache statistics see every token).
    pub fn trims_last_layer(&self) -> bool {
        self.numerics == Numerics::Ggml
    }

    /// Row `id` of an embedding table, as f32.
    pub fn embed(&self, table: &QMat, id: u32, out: &mut [f32]) {
        match self.numerics {
            Numerics::Native => crate::ops::dequantize_row(&self.cpu.kernels, table.as_ref(), id as usize, out),
            Numerics::Ggml => ggml::embed(self.cpu, table, id, out),
        }
    }

    /// `out = rms_norm(x) * w`, row by row (rows of `w.len()`).
    pub fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        match self.numerics {
            Numerics::Native => crate::ops::rms_norm_into_on(self.cpu, x, w, eps, out),
            Numerics::Ggml => crate::ggml_exact::rms_norm_mul(x, w, eps, out),
        }
    }

    /// `x = rms_norm(x) * w` in place, row by row (per-head q/k norms).
    pub fn rms_norm_in_place(&self, x: &mut [f32], w: &[f32], eps: f32) {
        match self.numerics {
            Numerics::Native => crate::ops::rms_norm_on(self.cpu, x, w, eps),
            Numerics::Ggml => {
                let src = x.to_vec();
                crate::ggml_exact::rms_norm_mul(&src, w, eps, x);
            }
        }
    }

    /// `out[t, r] = w[r] . x[t]` for `x` of `[n, w.cols]`.
    pub fn matmul(&self, w: QMatRef<'_>, x: &[f32], xq: &mut QuantActs, out: &mut [f32], kind: MatKind) {
        match self.numerics {
            Numerics::Native => crate::ops::matmul_f32(self.cpu, w, x, xq, out),
            Numerics::Ggml => ggml::matmul(self.cpu, w, x, out, kind),
        }
    }

    /// q, k and v projections of `x` (the native path shares one quantization of `x` when the types agree).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_qkv(
        &self,
        (wq, wk, wv): (QMatRef<'_>, QMatRef<'_>, QMatRef<'_>),
        x: &[f32],
        xq: &mut QuantActs,
        q: &mut [f32],
        k: &mut [f32],
        v: &mut [f32],
    ) {
        match self.numerics {
            Numerics::Native => native::matmul_qkv(self.cpu, (wq, wk, wv), x, xq, q, k, v),
            Numerics::Ggml => {
                for (w, out) in [(wq, q), (wk, k), (wv, v)] {
                    ggml::matmul(self.cpu, w, x, out, MatKind::Dense);
                }
            }
        }
    }

    /// Router logits `[n, n_expert]` of `x` (an F32 router in llama.cpp's files).
    pub fn router(&self, w: QMatRef<'_>, x: &[f32], xq: &mut QuantActs, out: &mut [f32]) {
        match self.numerics {
            Numerics::Native => crate::ops::matmul_f32(self.cpu, w, x, xq, out),
            Numerics::Ggml => ggml::router(w, x, out),
        }
    }

    /// `out = down(silu(gate(x)) * up(x))` for `x` of `[n, gate.cols]` (a dense block or one expert).
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_ffn(
        &self,
        (gate, up, down): (QMatRef<'_>, QMatRef<'_>, QMatRef<'_>),
        x: &[f32],
        s: &mut FfnScratch,
        out: &mut [f32],
        kind: MatKind,
        layer: Option<usize>,
    ) {
        match self.numerics {
            Numerics::Native => native::swiglu_ffn(self.cpu, (gate, up, down), x, s, out),
            Numerics::Ggml => ggml::swiglu_ffn(self, (gate, up, down), x, out, kind, layer),
        }
    }

    /// Several experts' `down(silu(gate(x)) * up(x))`, each on its own tokens: row `i` of the group is token
    /// `toks[i]` of `x` (`[n, n_embd]`, the layer's tokens), expert `j` takes rows `offs[j]..offs[j + 1]`, and
    /// row `i` of `out` is row `i`'s result. Call `s.new_input()` when `x` changes (a new layer). The native path
    /// converts `x` once for all groups of the layer, runs all gates and ups in one pass over the threads and all
    /// downs in another (two dispatches for the group instead of two per expert); each output is the same
    /// arithmetic as [`Exec::swiglu_ffn`] on that expert's rows alone.
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_ffn_group(
        &self,
        ffns: &[SwigluMats<'_>],
        x: &[f32],
        toks: &[usize],
        offs: &[usize],
        s: &mut GroupFfnScratch,
        out: &mut [f32],
        layer: Option<usize>,
    ) {
        match self.numerics {
            Numerics::Native => native::swiglu_ffn_group(self.cpu, ffns, x, toks, offs, s, out),
            Numerics::Ggml => {
                for (j, &mats) in ffns.iter().enumerate() {
                    let (e_in, e_out) = (mats.0.cols, mats.2.rows);
                    let (r0, r1) = (offs[j], offs[j + 1]);
                    gather_rows(x, e_in, &toks[r0..r1], &mut s.rows);
                    let o = &mut out[r0 * e_out..r1 * e_out];
                    ggml::swiglu_ffn(self, mats, &s.rows, o, MatKind::Expert, layer);
                }
            }
        }
    }

    /// RoPE on q (`[n, n_head * head_dim]`) and k (`[n, n_head_kv * head_dim]`) for positions `pos0..pos0 + n`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        rope: &Rope,
        head_dim: usize,
        (pos0, n): (usize, usize),
        q: &mut [f32],
        k: &mut [f32],
        s: &mut AttnScratch,
    ) {
        match self.numerics {
            Numerics::Native => native::rope(rope, head_dim, pos0, n, q, k, s),
            Numerics::Ggml => ggml::rope(rope, head_dim, pos0, n, q, k),
        }
    }

    /// `out[t, h] = sum_j softmax_j(q[t,h] . k[j] / sqrt(head_dim)) v[j]` over the cached positions `j <= pos0 + t`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        kv: &LayerKv,
        (n_head, n_head_kv, head_dim): (usize, usize, usize),
        q: &[f32],
        pos0: usize,
        s: &mut AttnScratch,
        out: &mut [f32],
        layer: usize,
    ) {
        match self.numerics {
            Numerics::Native => native::attention(self.cpu, kv, (n_head, n_head_kv, head_dim), q, pos0, s, out),
            Numerics::Ggml => ggml::attention(self, kv, (n_head, n_head_kv, head_dim), q, pos0, out, layer),
        }
    }

    /// One token's softmax routing: the top-k experts (best first, ties to the lower id) and their weights.
    pub fn softmax_top_k(
        &self,
        logits: &[f32],
        r: &MoeRouting,
        probs: &mut Vec<f32>,
        order: &mut Vec<u32>,
        out: &mut Route,
    ) {
        match self.numerics {
            Numerics::Native => native::softmax_top_k(logits, r, probs, order, out),
            Numerics::Ggml => ggml::softmax_top_k(logits, r, out),
        }
    }

    /// `1 / (1 + e^-x)` (output gates, the shared expert's gate).
    pub fn sigmoid(&self, x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    /// `gate = silu(gate) * up`.
    pub fn swiglu(&self, gate: &mut [f32], up: &[f32]) {
        match self.numerics {
            Numerics::Native => crate::ops::swiglu(gate, up),
            Numerics::Ggml => crate::ggml_exact::swiglu(gate, up),
        }
    }

    /// A named activation (llama.cpp's graph names, e.g. `attn_norm-3`): printed with `FLASH_MOE_TAPS=1`, and
    /// under ggml numerics written to `FLASH_MOE_GGML_DUMP=DIR` in llama.cpp's layout.
    pub fn tap(&self, name: &str, layer: Option<usize>, x: &[f32]) {
        crate::ops::tap(name, layer, x);
        if self.numerics == Numerics::Ggml {
            ggml::dump(self.call, name, layer, x);
        }
    }

    /// Refuses, for the numerics chosen, what it cannot compute; see [`ggml::check_weight`].
    pub fn check(numerics: Numerics, what: &ggml::Coverage<'_>) -> Result<()> {
        match numerics {
            Numerics::Native => Ok(()),
            Numerics::Ggml => ggml::check_supported(what),
        }
    }
}
