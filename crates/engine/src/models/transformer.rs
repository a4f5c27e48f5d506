//! The pre-norm transformer stack of the Llama and Qwen3 families (dense, Qwen3-MoE, Mixtral):
//!
//! ```text
//! x = embed(tokens)
//! for each layer:  x = x + attention(rms_norm(x))
//!                  x = x + ffn_or_moe(rms_norm(x))
//! logits = output(rms_norm(x))
//! ```
//!
//! The family files decide the options (q/k norms, biases, RoPE style, which layers are MoE) and the names; this
//! file reads the layers and runs them.

use crate::backend::ggml::Coverage;
use crate::backend::{Exec, MatKind};
use crate::experts::cache::Prefetch;
use crate::experts::ExpertLayout;
use crate::layers::attention::{self, AttentionShape, AttentionWeights};
use crate::layers::ffn::{self, FfnWeights};
use crate::layers::moe::{self, MoeRouting, MoeWeights};
use crate::models::decoder::{self, Decoder, Parts};
use crate::models::loader::Loader;
use crate::models::{Logits, ModelInfo, SeqRows};
use crate::ops;
use crate::session::{LayerStateKind, Scratch};
use crate::Result;

/// The numbers that shape a transformer stack.
#[derive(Clone, Debug)]
pub struct TransformerConfig {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub attn: AttentionShape,
    /// Intermediate size of dense feed-forward layers.
    pub n_ff: usize,
    /// Routing of the MoE layers, if any.
    pub moe: Option<MoeRouting>,
    /// Intermediate size of one expert.
    pub n_ff_exp: usize,
    /// Per layer: whether it is a MoE layer.
    pub moe_layers: Vec<bool>,
    /// q/k/v biases (Qwen2-style).
    pub attn_bias: bool,
    /// Per-head RMSNorm of q and k (Qwen3).
    pub qk_norm: bool,
    /// The output projection is the token embedding.
    pub tied_embeddings: bool,
}

impl TransformerConfig {
    /// What `inspect` says of the model: its layers, attention and feed-forward blocks.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let a = &self.attn;
        let n_moe = self.moe_layers.iter().filter(|&&m| m).count();
        let mut lines = vec![
            ("layers", format!("{} layers, all attention (pre-norm transformer)", self.n_layer)),
            ("attention", describe_attention(a, self.qk_norm, self.attn_bias)),
        ];
        lines.push(match &self.moe {
            Some(m) => (
                "feed-forward",
                format!(
                    "{n_moe} MoE layers (routed experts: {} per layer, top-{}, softmax{}, expert FFN {}){}",
                    m.n_expert,
                    m.n_expert_used,
                    if m.norm_topk_prob { ", top-k weights renormalised" } else { "" },
                    self.n_ff_exp,
                    if n_moe < self.n_layer {
                        format!(", {} dense (FFN {})", self.n_layer - n_moe, self.n_ff)
                    } else {
                        String::new()
                    }
                ),
            ),
            None => ("feed-forward", format!("dense SwiGLU, FFN {}", self.n_ff)),
        });
        lines.push(("state", format!("KV cache {} bytes per token (f32)", self.n_layer * a.kv_dim() * 8)));
        lines
    }
}

/// One line on an attention block: heads, head size, norms, RoPE.
pub fn describe_attention(a: &AttentionShape, qk_norm: bool, bias: bool) -> String {
    let rope = match a.rope.style {
        crate::layers::rope::RopeStyle::Neox => "NeoX",
        crate::layers::rope::RopeStyle::Interleaved => "adjacent pairs",
    };
    format!(
        "{} query heads, {} KV heads of {}{}{}{}, RoPE ({rope}) on {} of {} dims, theta {}",
        a.n_head,
        a.n_head_kv,
        a.head_dim,
        if qk_norm { ", q/k RMSNorm" } else { "" },
        if bias { ", q/k/v biases" } else { "" },
        if a.gated { ", sigmoid output gate" } else { "" },
        a.rope.n_dims,
        a.head_dim,
        a.rope.theta
    )
}

#[derive(Debug)]
pub(crate) enum FeedForward {
    Dense(FfnWeights),
    Moe(MoeWeights),
}

#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>, // [n_embd]
    pub(crate) attn: AttentionWeights,
    pub(crate) ffn_norm: Vec<f32>, // [n_embd]
    pub(crate) ffn: FeedForward,
}

/// The layers of a transformer stack.
pub struct Transformer {
    pub cfg: TransformerConfig,
    pub(crate) layers: Vec<Layer>,
}

impl Transformer {
    /// Per layer: a KV cache.
    pub fn state_kinds(cfg: &TransformerConfig) -> Vec<LayerStateKind> {
        vec![LayerStateKind::Kv { kv_dim: cfg.attn.kv_dim(), head_dim: cfg.attn.head_dim }; cfg.n_layer]
    }

    /// Reads every weight named by the family's table; experts are described by an [`ExpertLayout`].
    pub fn load(mut ld: Loader<'_>, cfg: TransformerConfig, info: ModelInfo) -> Result<(Decoder, Transformer)> {
        let (e, a) = (cfg.n_embd, &cfg.attn);
        let (q_dim, kv_dim) = (a.q_dim(), a.kv_dim());
        let token_embd = ld.mat("token_embd", None, cfg.n_vocab, e)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut expert_layout = ExpertLayout { n_expert: cfg.moe.as_ref().map_or(0, |m| m.n_expert), layers: vec![] };
        for l in 0..cfg.n_layer {
            let l_ = Some(l);
            let bias = |ld: &mut Loader<'_>, slot: &str, n: usize| -> Result<Option<Vec<f32>>> {
                if cfg.attn_bias {
                    Ok(Some(ld.vec(slot, l_, "bias", n)?))
                } else {
                    ld.vec_opt(slot, l_, "bias", n)
                }
            };
            let attn = AttentionWeights {
                wq: ld.mat("attn_q", l_, q_dim, e)?,
                wk: ld.mat("attn_k", l_, kv_dim, e)?,
                wv: ld.mat("attn_v", l_, kv_dim, e)?,
                wo: ld.mat("attn_output", l_, e, q_dim)?,
                bq: bias(&mut ld, "attn_q", q_dim)?,
                bk: bias(&mut ld, "attn_k", kv_dim)?,
                bv: bias(&mut ld, "attn_v", kv_dim)?,
                q_norm: if cfg.qk_norm { Some(ld.vec("attn_q_norm", l_, "weight", a.head_dim)?) } else { None },
                k_norm: if cfg.qk_norm { Some(ld.vec("attn_k_norm", l_, "weight", a.head_dim)?) } else { None },
            };
            let (ffn, experts) = match (&cfg.moe, cfg.moe_layers[l]) {
                (Some(m), true) => {
                    let router = ld.mat("ffn_gate_inp", l_, m.n_expert, e)?;
                    let layout = decoder::expert_layer_layout(&ld, l, m.n_expert, cfg.n_ff_exp, e)?;
                    (FeedForward::Moe(MoeWeights { router, shared: None }), Some(layout))
                }
                _ => {
                    let w = FfnWeights {
                        gate: ld.mat("ffn_gate", l_, cfg.n_ff, e)?,
                        up: ld.mat("ffn_up", l_, cfg.n_ff, e)?,
                        down: ld.mat("ffn_down", l_, e, cfg.n_ff)?,
                    };
                    (FeedForward::Dense(w), None)
                }
            };
            expert_layout.layers.push(experts);
            layers.push(Layer {
                attn_norm: ld.vec("attn_norm", l_, "weight", e)?,
                attn,
                ffn_norm: ld.vec("ffn_norm", l_, "weight", e)?,
                ffn,
            });
        }
        let output_norm = ld.vec("output_norm", None, "weight", e)?;
        let output = if cfg.tied_embeddings || !ld.has("output", None) {
            None
        } else {
            Some(ld.mat("output", None, cfg.n_vocab, e)?)
        };
        let (n_ctx, n_threads) = match &ld.opts.experts {
            crate::models::loader::ExpertResidency::Stream(so) => (so.n_ctx, so.n_threads),
            crate::models::loader::ExpertResidency::AllInRam => (0, 1),
        };
        let parts = Parts {
            token_embd,
            output_norm,
            output,
            rms_eps: cfg.rms_eps,
            expert_layout,
            scratch_bytes: scratch_bytes(&cfg, n_ctx, n_threads),
            n_expert_used: cfg.moe.as_ref().map_or(1, |m| m.n_expert_used),
        };
        let decoder = Decoder::load(ld, parts, info)?;
        Ok((decoder, Transformer { cfg, layers }))
    }

    /// What `--numerics ggml` must cover for this model.
    pub fn coverage<'a>(&'a self, d: &'a Decoder) -> Coverage<'a> {
        let cfg = &self.cfg;
        let mm = |name: &'static str, m: &crate::tensor::QMat| (name, m.dtype, m.rows, MatKind::Dense);
        let mut mats = vec![mm("output", d.output.as_ref().unwrap_or(&d.token_embd))];
        let mut routers = vec![];
        for layer in &self.layers {
            let w = &layer.attn;
            mats.extend([mm("attn_q", &w.wq), mm("attn_k", &w.wk), mm("attn_v", &w.wv), mm("attn_output", &w.wo)]);
            match &layer.ffn {
                FeedForward::Dense(f) => {
                    mats.extend([mm("ffn_gate", &f.gate), mm("ffn_up", &f.up), mm("ffn_down", &f.down)])
                }
                FeedForward::Moe(m) => routers.push(m.router.dtype),
            }
        }
        for le in d.expert_layout.layers.iter().flatten() {
            for (name, p) in [("ffn_gate_exps", &le.gate), ("ffn_up_exps", &le.up), ("ffn_down_exps", &le.down)] {
                mats.push((name, p.dtype, p.rows, MatKind::Expert));
            }
        }
        Coverage {
            arch: &d.info.arch,
            attn_bias: cfg.attn_bias,
            qk_norm: cfg.qk_norm,
            rope: &cfg.attn.rope,
            head_dim: cfg.attn.head_dim,
            n_embd: cfg.n_embd,
            moe: cfg.moe.as_ref(),
            token_embd: d.token_embd.dtype,
            mats,
            routers,
            uncovered: None,
        }
    }

    /// Runs the layers over the embedded rows in `s.x` (`[n, n_embd]`): the rows of one sequence, or of several
    /// (`seqs`: each sequence's rows, position and per-layer states), which share every matrix product and each
    /// expert's read while attention runs per sequence. `want` lets ggml numerics trim the last layer (one
    /// sequence only).
    pub(crate) fn forward_layers(
        &self,
        d: &Decoder,
        exec: &Exec<'_>,
        seqs: &mut [SeqRows<'_>],
        s: &mut Scratch,
        want: Logits,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let e = cfg.n_embd;
        let n = s.x.len() / e;
        let pos0 = seqs.first().map_or(0, |q| q.pos0);
        s.xn.resize(n * e, 0.0);
        s.y.resize(n * e, 0.0);
        let n_layer = self.layers.len();
        for (l, layer) in self.layers.iter().enumerate() {
            let ld = Some(l);
            exec.rms_norm(&s.x, &layer.attn_norm, cfg.rms_eps, &mut s.xn);
            exec.tap("attn_norm", ld, &s.xn);
            attention::project(exec, &layer.attn, &cfg.attn, &s.xn, l, &mut s.attn);
            for q in seqs.iter_mut() {
                attention::attend(exec, &cfg.attn, q.layers[l].kv(), q.rows.clone(), (q.pos0, l), &mut s.attn);
            }
            attention::output(exec, &layer.attn, &cfg.attn, &mut s.attn, &mut s.y);
            exec.tap("attn_out", ld, &s.y);
            if l + 1 == n_layer && exec.trims_last_layer() && want != Logits::All {
                // llama.cpp's last layer keeps only the rows whose logits were asked for (get_rows of out_ids after
                // the attention), so the rest of the graph runs on them alone: a batch of one takes the one-token
                // kernels (vec_dot instead of tinyBLAS, gemv instead of gemm) as llama.cpp does.
                assert_eq!(seqs.len(), 1, "ggml numerics run one sequence at a time");
                if want == Logits::None {
                    break;
                }
                s.x.drain(..(n - 1) * e);
                s.y.drain(..(n - 1) * e);
                s.xn.truncate(e);
            }
            ops::add(&mut s.x, &s.y);
            exec.tap("ffn_inp", ld, &s.x);

            exec.rms_norm(&s.x, &layer.ffn_norm, cfg.rms_eps, &mut s.xn);
            exec.tap("ffn_norm", ld, &s.xn);
            match &layer.ffn {
                FeedForward::Dense(w) => ffn::ffn(exec, w, &s.xn, &mut s.ffn, &mut s.y, l),
                FeedForward::Moe(w) => {
                    let routing = cfg.moe.as_ref().expect("MoE layer has routing");
                    let next = if d.prefetch == Prefetch::Router && s.x.len() == e {
                        self.predict_next(d, exec, l, routing, s)
                    } else {
                        None
                    };
                    moe::moe(
                        exec,
                        w,
                        routing,
                        &*d.experts,
                        (l, pos0),
                        d.overrides(),
                        next.map(|l2| (l2, &s.pred_ids[..])),
                        &s.xn,
                        &mut s.moe,
                        &mut s.y,
                    )?;
                    exec.tap("ffn_moe_out", ld, &s.y);
                }
            }
            exec.tap("ffn_out", ld, &s.y);
            ops::add(&mut s.x, &s.y);
            exec.tap("l_out", ld, &s.x);
        }
        Ok(())
    }

    /// Predicts the next MoE layer's experts (see [`Decoder::predict_experts`]) and returns that layer.
    fn predict_next(
        &self,
        d: &Decoder,
        exec: &Exec<'_>,
        l: usize,
        routing: &MoeRouting,
        s: &mut Scratch,
    ) -> Option<usize> {
        let (l2, w2) = self.layers.iter().enumerate().skip(l + 1).find_map(|(i, x)| match &x.ffn {
            FeedForward::Moe(w) => Some((i, w)),
            FeedForward::Dense(_) => None,
        })?;
        d.predict_experts(exec, &self.layers[l2].ffn_norm, &w2.router, routing, s);
        Some(l2)
    }
}

/// Bytes of the forward pass's scratch buffers for a batch of [`crate::backend::native::N_BATCH`] tokens, logits
/// for [`crate::backend::native::N_BATCH_ALL_LOGITS`] rows (an upper estimate).
/// Floats of attention scores one thread holds (`backend::native::attention`): a block of tokens' rows, at most
/// [`crate::backend::native::ATTN_SCORES_MAX_FLOATS`] unless one token's (`group` heads x the context) is more.
pub(crate) fn attn_scores_floats(group: usize, n_ctx: usize) -> u128 {
    (group.max(1) as u128 * n_ctx as u128).max(crate::backend::native::ATTN_SCORES_MAX_FLOATS as u128)
}

pub fn scratch_bytes(cfg: &TransformerConfig, n_ctx: usize, n_threads: usize) -> u64 {
    let w = |x: usize| x as u128;
    let (b, b_logits) = (w(crate::backend::native::N_BATCH), w(crate::backend::native::N_BATCH_ALL_LOGITS));
    let a = &cfg.attn;
    let (q_dim, kv_dim) = (w(a.q_dim()), w(a.kv_dim()));
    let (n_expert, k) = cfg.moe.as_ref().map_or((0, 0), |m| (w(m.n_expert), w(m.n_expert_used)));
    let n_ff = w(cfg.n_ff.max(cfg.n_ff_exp));
    // In u128: an absurd context (`-c 18446744073709551615`) gives a huge number, not an overflow.
    let floats = b * w(cfg.n_embd) * 6      // residual, normed input, block output, gathered rows, expert output
        + b * (2 * q_dim + 2 * kv_dim)      // q, k, v, attention output
        + w(n_threads) * attn_scores_floats(a.n_head / a.n_head_kv.max(1), n_ctx) // attention scores
        + b * (n_expert + k * w(cfg.n_embd)) // router logits, per-slot expert outputs
        + b * 2 * n_ff                      // gate and up
        + b_logits * w(cfg.n_vocab); // logits
                                     // Quantized copies of activations are at most as large again as the f32 rows they come from.
    u64::try_from(floats * 4 * 2).unwrap_or(u64::MAX)
}
