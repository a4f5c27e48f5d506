//! The hybrid Qwen3-Next family: Qwen3-Next (GGUF `qwen3next`, HF `Qwen3NextForCausalLM`; Qwen3-Coder-Next is
//! one) and Qwen3.5 / Qwen3.6 MoE (GGUF `qwen35moe`, HF `Qwen3_5MoeForCausalLM`, text model). References:
//! transformers' `models/qwen3_next/modeling_qwen3_next.py` and `models/qwen3_5_moe/modeling_qwen3_5_moe.py`,
//! llama.cpp's `src/models/qwen3next.cpp` and `qwen35moe.cpp`.
//!
//! ```text
//! x = embed(tokens)
//! for each layer:  x = x + mixer(rms_norm(x))      mixer: gated DeltaNet (3 layers of 4) or gated attention
//!                  x = x + moe(rms_norm(x))        routed experts (softmax top-k, renormalised) + shared expert
//! logits = output(rms_norm(x))
//! ```
//! How it differs from Qwen3-MoE: linear-attention (DeltaNet) layers with a recurrent state, attention whose q
//! projection also carries a sigmoid output gate, RoPE on a quarter of each head (NeoX pairs), zero-centred
//! RMSNorms (`(1 + w)`: safetensors store `w`, llama.cpp's converter stores `1 + w`, except the DeltaNet's gated
//! norm), and a shared expert with a sigmoid gate beside the routed ones.
//!
//! Qwen3.5 differs from Qwen3-Next in the file layout only, for text: separate q/k/v, z, b and a projections
//! (Qwen3-Next fuses q, k, v, z per key head, and b, a per key head), value heads tiled in the GGUF
//! ([`HeadPairing`]), and interleaved multimodal RoPE whose sections, for text positions, rotate the same pairs
//! as NeoX partial RoPE (pairs outside every section keep position 0).

use crate::backend::ggml::Coverage;
use crate::backend::Exec;
use crate::experts::cache::Prefetch;
use crate::experts::ExpertLayout;
use crate::formats::gguf::{GgufArray, GgufValue};
use crate::formats::WeightIndex;
use crate::layers::attention::{self, AttentionShape, AttentionWeights};
use crate::layers::delta_net::{self, DeltaNetStateShape, DeltaNetWeights, HeadPairing};
use crate::layers::ffn::{self, FfnWeights};
use crate::layers::moe::{self, MoeRouting, MoeWeights, SharedExpert};
use crate::layers::rope::{Rope, RopeStyle};
use crate::models::decoder::{self, Decoder, Parts};
use crate::models::loader::{ExpertResidency, Hparams, LoadOptions, Loader};
use crate::models::transformer::FeedForward;
use crate::models::{Model, ModelInfo, SeqRows};
use crate::ops;
use crate::session::{LayerStateKind, Scratch};
use crate::tensor::QMat;
use crate::Result;

/// GGUF slot -> safetensors name (`{}` = layer, `{e}` = expert).
pub const HF_NAMES: &[(&str, &str)] = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
    ("attn_norm", "model.layers.{}.input_layernorm"),
    ("post_attention_norm", "model.layers.{}.post_attention_layernorm"),
    ("attn_q", "model.layers.{}.self_attn.q_proj"),
    ("attn_k", "model.layers.{}.self_attn.k_proj"),
    ("attn_v", "model.layers.{}.self_attn.v_proj"),
    ("attn_output", "model.layers.{}.self_attn.o_proj"),
    ("attn_q_norm", "model.layers.{}.self_attn.q_norm"),
    ("attn_k_norm", "model.layers.{}.self_attn.k_norm"),
    ("attn_qkvz", "model.layers.{}.linear_attn.in_proj_qkvz"),
    ("attn_qkv", "model.layers.{}.linear_attn.in_proj_qkv"),
    ("attn_gate", "model.layers.{}.linear_attn.in_proj_z"),
    ("ssm_ba", "model.layers.{}.linear_attn.in_proj_ba"),
    ("ssm_beta", "model.layers.{}.linear_attn.in_proj_b"),
    ("ssm_alpha", "model.layers.{}.linear_attn.in_proj_a"),
    ("ssm_conv1d", "model.layers.{}.linear_attn.conv1d"),
    ("ssm_a", "model.layers.{}.linear_attn.A_log"),
    ("ssm_dt", "model.layers.{}.linear_attn.dt_bias"),
    ("ssm_norm", "model.layers.{}.linear_attn.norm"),
    ("ssm_out", "model.layers.{}.linear_attn.out_proj"),
    ("ffn_gate", "model.layers.{}.mlp.gate_proj"),
    ("ffn_up", "model.layers.{}.mlp.up_proj"),
    ("ffn_down", "model.layers.{}.mlp.down_proj"),
    ("ffn_gate_inp", "model.layers.{}.mlp.gate"),
    ("ffn_gate.{e}", "model.layers.{}.mlp.experts.{e}.gate_proj"),
    ("ffn_up.{e}", "model.layers.{}.mlp.experts.{e}.up_proj"),
    ("ffn_down.{e}", "model.layers.{}.mlp.experts.{e}.down_proj"),
    // mlx-lm: the experts stacked.
    ("ffn_gate_exps", "model.layers.{}.mlp.switch_mlp.gate_proj"),
    ("ffn_up_exps", "model.layers.{}.mlp.switch_mlp.up_proj"),
    ("ffn_down_exps", "model.layers.{}.mlp.switch_mlp.down_proj"),
    ("ffn_gate_shexp", "model.layers.{}.mlp.shared_expert.gate_proj"),
    ("ffn_up_shexp", "model.layers.{}.mlp.shared_expert.up_proj"),
    ("ffn_down_shexp", "model.layers.{}.mlp.shared_expert.down_proj"),
    ("ffn_gate_inp_shexp", "model.layers.{}.mlp.shared_expert_gate"),
];

/// Qwen3-Next or Qwen3.5: the same computation, different file layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Next,
    Qwen35,
}

/// The numbers that shape a hybrid model.
#[derive(Clone, Debug)]
pub struct HybridConfig {
    pub variant: Variant,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub attn: AttentionShape,
    pub delta: DeltaNetStateShape,
    pub moe: MoeRouting,
    pub n_ff_exp: usize,
    /// The shared expert's intermediate size (0: none).
    pub n_ff_shexp: usize,
    /// Dense MLP size of layers without experts (safetensors `mlp_only_layers`).
    pub n_ff: usize,
    /// Per layer: a DeltaNet layer (else full attention).
    pub recurrent: Vec<bool>,
    /// Per layer: routed experts (else a dense MLP).
    pub moe_layers: Vec<bool>,
    pub tied_embeddings: bool,
}

#[derive(Debug)]
enum Mixer {
    Attention(AttentionWeights),
    DeltaNet(DeltaNetWeights),
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>, // [n_embd] (1 + w)
    mixer: Mixer,
    post_norm: Vec<f32>, // [n_embd] (1 + w)
    ffn: FeedForward,
}

/// The layers of a hybrid model.
pub struct Hybrid {
    pub cfg: HybridConfig,
    layers: Vec<Layer>,
}

pub fn load(index: &WeightIndex, arch: &str, opts: &LoadOptions) -> Result<Model> {
    let hp = Hparams::new(index, arch);
    let ld = Loader::new(index, HF_NAMES, opts);
    let cfg = config(&hp, &ld, arch)?;
    let info = ModelInfo {
        arch: arch.to_string(),
        family: "qwen3next",
        n_vocab: cfg.n_vocab,
        n_embd: cfg.n_embd,
        n_layer: cfg.n_layer,
        n_ctx_train: cfg.n_ctx_train,
        state: Hybrid::state_kinds(&cfg),
        kv: Default::default(),
        n_expert: cfg.moe.n_expert,
        n_expert_used: cfg.moe.n_expert_used,
        resident_bytes: 0,
        notes: vec![],
    };
    let (decoder, hybrid) = Hybrid::load(ld, cfg, info)?;
    Ok(Model::hybrid(decoder, hybrid))
}

/// The configuration of a Qwen3-Next or Qwen3.5 file, from its metadata.
pub fn config_of(index: &WeightIndex, arch: &str) -> Result<HybridConfig> {
    let ld = Loader::new(index, HF_NAMES, &LoadOptions::default());
    config(&Hparams::new(index, arch), &ld, arch)
}

fn config(hp: &Hparams<'_>, ld: &Loader<'_>, arch: &str) -> Result<HybridConfig> {
    let variant = if arch.contains("35") || arch.contains("3_5") { Variant::Qwen35 } else { Variant::Next };
    let n_embd = hp.usize("embedding_length", "hidden_size")?;
    let n_layer = hp.usize("block_count", "num_hidden_layers")?;
    let n_head = hp.usize("attention.head_count", "num_attention_heads")?;
    let n_head_kv = hp.usize_opt("attention.head_count_kv", "num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = hp.usize_opt("attention.key_length", "head_dim")?.unwrap_or(n_embd / n_head.max(1));
    super::llama::check_shape(hp, n_embd, n_layer, n_head, n_head_kv, head_dim)?;
    let n_vocab = match hp.usize_opt("vocab_size", "vocab_size")? {
        Some(v) => v,
        None => ld.tensor("token_embd", None, "weight")?.shape[0],
    };
    let rms_eps = hp.rms_eps(1e-6)?;
    let theta = hp.f32_opt("rope.freq_base", "rope_theta")?.unwrap_or(10_000_000.0);
    let n_rot = match hp.usize_opt("rope.dimension_count", "")? {
        Some(n) => n,
        None => {
            let f = hp.f32_opt("", "partial_rotary_factor")?.unwrap_or(0.25);
            ((head_dim as f32) * f) as usize
        }
    };
    if n_rot == 0 || n_rot > head_dim || !n_rot.is_multiple_of(2) {
        return Err(hp.error(format!("RoPE on {n_rot} of {head_dim} dimensions per head is not possible")));
    }
    let mut rope = Rope::new(RopeStyle::Neox, n_rot, theta);
    if variant == Variant::Qwen35 {
        rope.keep_sections(&mrope_sections(hp)?);
    }
    let delta = DeltaNetStateShape {
        n_k_heads: hp.usize("ssm.group_count", "linear_num_key_heads")?,
        n_v_heads: hp.usize("ssm.time_step_rank", "linear_num_value_heads")?,
        d_k: hp.usize("ssm.state_size", "linear_key_head_dim")?,
        d_v: match hp.usize_opt("ssm.inner_size", "")? {
            Some(inner) => inner / hp.usize("ssm.time_step_rank", "")?.max(1),
            None => hp.usize("", "linear_value_head_dim")?,
        },
        conv_kernel: hp.usize("ssm.conv_kernel", "linear_conv_kernel_dim")?,
    };
    if delta.n_k_heads == 0 || delta.d_k == 0 || delta.d_v == 0 || delta.conv_kernel == 0 {
        return Err(hp.error(format!("impossible linear-attention shape {delta:?}")));
    }
    if !delta.n_v_heads.is_multiple_of(delta.n_k_heads) {
        return Err(hp.error(format!("{} value heads cannot share {} key heads", delta.n_v_heads, delta.n_k_heads)));
    }
    let n_expert = hp.usize("expert_count", "num_experts")?;
    let n_expert_used = hp.usize("expert_used_count", "num_experts_per_tok")?;
    if n_expert_used == 0 || n_expert_used > n_expert {
        return Err(hp.error(format!("{n_expert_used} experts per token out of {n_expert}")));
    }
    // llama.cpp always renormalises; Qwen3.5 has no such field and renormalises too.
    let norm_topk_prob = hp.hf_bool("norm_topk_prob").unwrap_or(true);
    let recurrent = recurrent_layers(hp, n_layer)?;
    let dense: Vec<u64> = hp
        .hf_value("mlp_only_layers")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default();
    let step = hp.usize_opt("", "decoder_sparse_step")?.unwrap_or(1).max(1);
    let moe_layers: Vec<bool> = (0..n_layer).map(|l| !dense.contains(&(l as u64)) && (l + 1) % step == 0).collect();
    Ok(HybridConfig {
        variant,
        n_vocab,
        n_embd,
        n_layer,
        n_ctx_train: hp.usize_opt("context_length", "max_position_embeddings")?.unwrap_or(4096),
        rms_eps,
        attn: AttentionShape { n_head, n_head_kv, head_dim, norm_eps: rms_eps, rope, gated: true },
        delta,
        moe: MoeRouting { n_expert, n_expert_used, norm_topk_prob },
        n_ff_exp: hp.usize("expert_feed_forward_length", "moe_intermediate_size")?,
        n_ff_shexp: hp.usize_opt("expert_shared_feed_forward_length", "shared_expert_intermediate_size")?.unwrap_or(0),
        n_ff: if moe_layers.iter().all(|&m| m) { 0 } else { hp.usize("feed_forward_length", "intermediate_size")? },
        recurrent,
        moe_layers,
        tied_embeddings: hp.hf_bool("tie_word_embeddings").unwrap_or(false),
    })
}

impl HybridConfig {
    /// What `inspect` says of the model: its layer kinds, mixers, routing and per-sequence state.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let n_rec = self.recurrent.iter().filter(|&&r| r).count();
        let d = &self.delta;
        let m = &self.moe;
        vec![
            (
                "layers",
                format!(
                    "{} layers: {n_rec} gated DeltaNet (linear attention) + {} gated attention",
                    self.n_layer,
                    self.n_layer - n_rec
                ),
            ),
            ("attention", super::transformer::describe_attention(&self.attn, true, false)),
            (
                "deltanet",
                format!(
                    "{} key heads x {}, {} value heads x {}, causal conv1d of {}, gated RMSNorm output",
                    d.n_k_heads, d.d_k, d.n_v_heads, d.d_v, d.conv_kernel
                ),
            ),
            (
                "feed-forward",
                format!(
                    "routed experts: {} per layer, top-{}, softmax{}, expert FFN {}{}",
                    m.n_expert,
                    m.n_expert_used,
                    if m.norm_topk_prob { ", top-k weights renormalised" } else { "" },
                    self.n_ff_exp,
                    if self.n_ff_shexp > 0 {
                        format!("; shared expert FFN {} with a sigmoid gate", self.n_ff_shexp)
                    } else {
                        String::new()
                    }
                ),
            ),
            (
                "state",
                format!(
                    "KV cache {} bytes per token (f32) in the attention layers; {} bytes of recurrent state per \
                     sequence",
                    (self.n_layer - n_rec) * self.attn.kv_dim() * 8,
                    n_rec as u64 * d.bytes()
                ),
            ),
        ]
    }
}

/// Which layers are DeltaNet layers: GGUF `attention.recurrent_layers` (what llama.cpp reads), else safetensors
/// `layer_types`, else every `full_attention_interval`-th layer (4 by default) is full attention.
fn recurrent_layers(hp: &Hparams<'_>, n_layer: usize) -> Result<Vec<bool>> {
    let listed: Option<Vec<bool>> = match hp.gguf_value("attention.recurrent_layers") {
        Some(GgufValue::Array(GgufArray::Bool(v))) => Some(v.clone()),
        Some(v) => match v {
            GgufValue::Array(a) => a.ints().map(|xs| xs.into_iter().map(|x| x != 0).collect()),
            _ => None,
        },
        None => hp
            .hf_value("layer_types")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|t| t.as_str() == Some("linear_attention")).collect()),
    };
    let layers = match listed {
        Some(v) => v,
        None => {
            let every = hp.usize_opt("full_attention_interval", "full_attention_interval")?.unwrap_or(4).max(1);
            (0..n_layer).map(|l| (l + 1) % every != 0).collect()
        }
    };
    if layers.len() != n_layer {
        return Err(hp.error(format!("the layer pattern lists {} layers of {n_layer}", layers.len())));
    }
    Ok(layers)
}

/// Qwen3.5's M-RoPE sections (GGUF `rope.dimension_sections`, safetensors `mrope_section`).
fn mrope_sections(hp: &Hparams<'_>) -> Result<Vec<usize>> {
    let from_gguf = match hp.gguf_value("rope.dimension_sections") {
        Some(GgufValue::Array(a)) => a.ints().map(|xs| xs.into_iter().map(|x| x.max(0) as usize).collect()),
        _ => None,
    };
    let from_hf = || {
        hp.hf_value("mrope_section")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect())
    };
    from_gguf
        .or_else(from_hf)
        .ok_or_else(|| hp.error("M-RoPE sections (rope.dimension_sections / mrope_section) missing"))
}

impl Hybrid {
    pub fn state_kinds(cfg: &HybridConfig) -> Vec<LayerStateKind> {
        cfg.recurrent
            .iter()
            .map(|&r| {
                if r {
                    LayerStateKind::DeltaNet(cfg.delta)
                } else {
                    LayerStateKind::Kv { kv_dim: cfg.attn.kv_dim(), head_dim: cfg.attn.head_dim }
                }
            })
            .collect()
    }

    fn load(mut ld: Loader<'_>, cfg: HybridConfig, info: ModelInfo) -> Result<(Decoder, Hybrid)> {
        let e = cfg.n_embd;
        let gguf = matches!(ld.index.metadata, crate::formats::Metadata::Gguf(_));
        // mlx-lm's converter stores the zero-centred norms as `1 + w`, as llama.cpp's does.
        let plus_one_stored = gguf || crate::formats::mlx::is_mlx_layout(ld.index);
        let token_embd = ld.mat("token_embd", None, cfg.n_vocab, e)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut expert_layout = ExpertLayout { n_expert: cfg.moe.n_expert, layers: vec![] };
        for l in 0..cfg.n_layer {
            let mixer = if cfg.recurrent[l] {
                Mixer::DeltaNet(delta_net_weights(&mut ld, &cfg, l, gguf)?)
            } else {
                Mixer::Attention(attention_weights(&mut ld, &cfg, l, plus_one_stored)?)
            };
            let (ffn, experts) = if cfg.moe_layers[l] {
                let router = ld.mat("ffn_gate_inp", Some(l), cfg.moe.n_expert, e)?;
                let shared = if cfg.n_ff_shexp > 0 {
                    Some(SharedExpert {
                        ffn: ffn_weights(
                            &mut ld,
                            l,
                            ("ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"),
                            cfg.n_ff_shexp,
                            e,
                        )?,
                        gate_inp: ld.mat_squeezed("ffn_gate_inp_shexp", Some(l), 1, e)?,
                    })
                } else {
                    None
                };
                let layout = decoder::expert_layer_layout(&ld, l, cfg.moe.n_expert, cfg.n_ff_exp, e)?;
                (FeedForward::Moe(MoeWeights { router, shared }), Some(layout))
            } else {
                (FeedForward::Dense(ffn_weights(&mut ld, l, ("ffn_gate", "ffn_up", "ffn_down"), cfg.n_ff, e)?), None)
            };
            expert_layout.layers.push(experts);
            layers.push(Layer {
                attn_norm: norm(&mut ld, "attn_norm", Some(l), e, plus_one_stored)?,
                mixer,
                post_norm: norm(&mut ld, "post_attention_norm", Some(l), e, plus_one_stored)?,
                ffn,
            });
        }
        let output_norm = norm(&mut ld, "output_norm", None, e, plus_one_stored)?;
        let output = if cfg.tied_embeddings || !ld.has("output", None) {
            None
        } else {
            Some(ld.mat("output", None, cfg.n_vocab, e)?)
        };
        let (n_ctx, n_threads) = match &ld.opts.experts {
            ExpertResidency::Stream(so) => (so.n_ctx, so.n_threads),
            ExpertResidency::AllInRam => (0, 1),
        };
        let parts = Parts {
            token_embd,
            output_norm,
            output,
            rms_eps: cfg.rms_eps,
            expert_layout,
            scratch_bytes: scratch_bytes(&cfg, n_ctx, n_threads),
            n_expert_used: cfg.moe.n_expert_used,
        };
        let decoder = Decoder::load(ld, parts, info)?;
        Ok((decoder, Hybrid { cfg, layers }))
    }

    /// `--numerics ggml` does not emulate this family.
    pub fn coverage<'a>(&'a self, d: &'a Decoder) -> Coverage<'a> {
        Coverage {
            arch: &d.info.arch,
            attn_bias: false,
            qk_norm: true,
            rope: &self.cfg.attn.rope,
            head_dim: self.cfg.attn.head_dim,
            n_embd: self.cfg.n_embd,
            moe: Some(&self.cfg.moe),
            token_embd: d.token_embd.dtype,
            mats: vec![],
            routers: vec![],
            uncovered: Some(format!("{} (gated DeltaNet layers, gated attention, a shared expert)", d.info.arch)),
        }
    }

    /// Runs the layers over the embedded rows in `s.x` (`[n, n_embd]`) of one sequence or several (`seqs`),
    /// as [`crate::models::transformer::Transformer::forward_layers`] does: matrix products and expert reads
    /// shared, attention and the DeltaNet recurrence per sequence.
    pub(crate) fn forward_layers(
        &self,
        d: &Decoder,
        exec: &Exec<'_>,
        seqs: &mut [SeqRows<'_>],
        s: &mut Scratch,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let e = cfg.n_embd;
        let n = s.x.len() / e;
        let pos0 = seqs.first().map_or(0, |q| q.pos0);
        s.xn.resize(n * e, 0.0);
        s.y.resize(n * e, 0.0);
        for (l, layer) in self.layers.iter().enumerate() {
            let ld = Some(l);
            exec.rms_norm(&s.x, &layer.attn_norm, cfg.rms_eps, &mut s.xn);
            exec.tap("attn_norm", ld, &s.xn);
            match &layer.mixer {
                Mixer::Attention(w) => {
                    attention::project(exec, w, &cfg.attn, &s.xn, l, &mut s.attn);
                    for q in seqs.iter_mut() {
                        let kv = q.layers[l].kv();
                        attention::attend(exec, &cfg.attn, kv, q.rows.clone(), (q.pos0, l), &mut s.attn);
                    }
                    attention::output(exec, w, &cfg.attn, &mut s.attn, &mut s.y);
                }
                Mixer::DeltaNet(w) => {
                    delta_net::project(exec, w, &cfg.delta, &s.xn, &mut s.delta, l);
                    for q in seqs.iter_mut() {
                        delta_net::recur(exec, w, cfg.rms_eps, q.layers[l].delta_net(), q.rows.clone(), &mut s.delta);
                    }
                    delta_net::output(exec, w, &mut s.delta, &mut s.y, l);
                }
            }
            exec.tap("attn_out", ld, &s.y);
            ops::add(&mut s.x, &s.y);
            exec.tap("ffn_inp", ld, &s.x);
            exec.rms_norm(&s.x, &layer.post_norm, cfg.rms_eps, &mut s.xn);
            exec.tap("attn_post_norm", ld, &s.xn);
            match &layer.ffn {
                FeedForward::Dense(w) => ffn::ffn(exec, w, &s.xn, &mut s.ffn, &mut s.y, l),
                FeedForward::Moe(w) => {
                    let next =
                        if d.prefetch == Prefetch::Router && n == 1 { self.predict_next(d, exec, l, s) } else { None };
                    moe::moe(
                        exec,
                        w,
                        &cfg.moe,
                        &*d.experts,
                        (l, pos0),
                        d.overrides(),
                        next.map(|l2| (l2, &s.pred_ids[..])),
                        &s.xn,
                        &mut s.moe,
                        &mut s.y,
                    )?;
                }
            }
            exec.tap("ffn_out", ld, &s.y);
            ops::add(&mut s.x, &s.y);
            exec.tap("l_out", ld, &s.x);
        }
        Ok(())
    }

    fn predict_next(&self, d: &Decoder, exec: &Exec<'_>, l: usize, s: &mut Scratch) -> Option<usize> {
        let (l2, w2) = self.layers.iter().enumerate().skip(l + 1).find_map(|(i, x)| match &x.ffn {
            FeedForward::Moe(w) => Some((i, w)),
            FeedForward::Dense(_) => None,
        })?;
        d.predict_experts(exec, &self.layers[l2].post_norm, &w2.router, &self.cfg.moe, s);
        Some(l2)
    }
}

/// A zero-centred RMSNorm weight as used: `1 + w` (transformers' safetensors store `w`; llama.cpp's and mlx-lm's
/// converters store `1 + w` (`plus_one_stored`), computed in f32 as transformers computes it at run time).
fn norm(ld: &mut Loader<'_>, slot: &str, layer: Option<usize>, n: usize, plus_one_stored: bool) -> Result<Vec<f32>> {
    let mut w = ld.vec(slot, layer, "weight", n)?;
    if !plus_one_stored {
        for v in &mut w {
            *v += 1.0;
        }
    }
    Ok(w)
}

fn ffn_weights(
    ld: &mut Loader<'_>,
    l: usize,
    (g, u, d): (&str, &str, &str),
    n_ff: usize,
    e: usize,
) -> Result<FfnWeights> {
    Ok(FfnWeights {
        gate: ld.mat(g, Some(l), n_ff, e)?,
        up: ld.mat(u, Some(l), n_ff, e)?,
        down: ld.mat(d, Some(l), e, n_ff)?,
    })
}

fn attention_weights(
    ld: &mut Loader<'_>,
    cfg: &HybridConfig,
    l: usize,
    plus_one_stored: bool,
) -> Result<AttentionWeights> {
    let (a, e) = (&cfg.attn, cfg.n_embd);
    let l_ = Some(l);
    Ok(AttentionWeights {
        wq: ld.mat("attn_q", l_, 2 * a.q_dim(), e)?,
        wk: ld.mat("attn_k", l_, a.kv_dim(), e)?,
        wv: ld.mat("attn_v", l_, a.kv_dim(), e)?,
        wo: ld.mat("attn_output", l_, e, a.q_dim())?,
        bq: None,
        bk: None,
        bv: None,
        q_norm: Some(norm(ld, "attn_q_norm", l_, a.head_dim, plus_one_stored)?),
        k_norm: Some(norm(ld, "attn_k_norm", l_, a.head_dim, plus_one_stored)?),
    })
}

/// A DeltaNet layer's weights in the canonical layout of [`DeltaNetWeights`].
fn delta_net_weights(ld: &mut Loader<'_>, cfg: &HybridConfig, l: usize, gguf: bool) -> Result<DeltaNetWeights> {
    let (sh, e, l_) = (&cfg.delta, cfg.n_embd, Some(l));
    let (nk, nv, dk, dv) = (sh.n_k_heads, sh.n_v_heads, sh.d_k, sh.d_v);
    let r = nv / nk;
    let (key_dim, value_dim) = (sh.key_dim(), sh.value_dim());
    let (qkv, z, ba) = match (cfg.variant, gguf) {
        (Variant::Next, true) => {
            let ba = ld.mat("ssm_ba", l_, 2 * nv, e)?;
            (ld.mat("attn_qkv", l_, sh.conv_dim(), e)?, ld.mat("attn_gate", l_, value_dim, e)?, regroup_ba(&ba, nk, r))
        }
        (Variant::Next, false) => {
            // Per key head i: q_i (dk), k_i (dk), v of its r value heads (r dv), z of them (r dv).
            let qkvz = ld.mat("attn_qkvz", l_, 2 * key_dim + 2 * value_dim, e)?;
            let group = 2 * dk + 2 * r * dv;
            let rows = |at: usize, len: usize| (0..nk).flat_map(move |i| (i * group + at)..(i * group + at + len));
            let order: Vec<usize> = rows(0, dk).chain(rows(dk, dk)).chain(rows(2 * dk, r * dv)).collect();
            let z_rows: Vec<usize> = rows(2 * dk + r * dv, r * dv).collect();
            let ba = ld.mat("ssm_ba", l_, 2 * nv, e)?;
            (qkvz.select_rows(&order), qkvz.select_rows(&z_rows), regroup_ba(&ba, nk, r))
        }
        (Variant::Qwen35, _) => {
            let b = ld.mat("ssm_beta", l_, nv, e)?;
            let a = ld.mat("ssm_alpha", l_, nv, e)?;
            (ld.mat("attn_qkv", l_, sh.conv_dim(), e)?, ld.mat("attn_gate", l_, value_dim, e)?, QMat::stack(&b, &a))
        }
    };
    let a_neg_exp = if gguf {
        ld.values("ssm_a", l_, "", nv)?
    } else {
        ld.values("ssm_a", l_, "", nv)?.into_iter().map(|a| -a.exp()).collect()
    };
    let dt_bias = if gguf { ld.values("ssm_dt", l_, "bias", nv)? } else { ld.values("ssm_dt", l_, "", nv)? };
    Ok(DeltaNetWeights {
        pairing: if gguf && cfg.variant == Variant::Qwen35 { HeadPairing::Tiled } else { HeadPairing::Grouped },
        qkv,
        z,
        ba,
        conv: ld.values("ssm_conv1d", l_, "weight", sh.conv_dim() * sh.conv_kernel)?,
        a_neg_exp,
        dt_bias,
        norm: ld.vec("ssm_norm", l_, "weight", dv)?,
        out: ld.mat("ssm_out", l_, e, value_dim)?,
    })
}

/// Qwen3-Next's `ba` rows come per key head (b of its r value heads, then a of them): reordered to every b,
/// then every a.
fn regroup_ba(ba: &QMat, nk: usize, r: usize) -> QMat {
    let b = (0..nk).flat_map(|i| (i * 2 * r)..(i * 2 * r + r));
    let a = (0..nk).flat_map(|i| (i * 2 * r + r)..(i * 2 * r + 2 * r));
    ba.select_rows(&b.chain(a).collect::<Vec<_>>())
}

/// Bytes of the forward pass's scratch buffers for a batch of [`crate::backend::native::N_BATCH`] tokens, logits
/// for [`crate::backend::native::N_BATCH_ALL_LOGITS`] rows (an upper estimate).
pub fn scratch_bytes(cfg: &HybridConfig, n_ctx: usize, n_threads: usize) -> u64 {
    let w = |x: usize| x as u128;
    let (b, b_logits) = (w(crate::backend::native::N_BATCH), w(crate::backend::native::N_BATCH_ALL_LOGITS));
    let a = &cfg.attn;
    let (q_dim, kv_dim) = (w(a.q_dim()), w(a.kv_dim()));
    let d = &cfg.delta;
    let n_ff = w(cfg.n_ff.max(cfg.n_ff_exp).max(cfg.n_ff_shexp));
    // In u128: an absurd context gives a huge number, not an overflow.
    let floats = b * w(cfg.n_embd) * 7
        + b * (4 * q_dim + 2 * kv_dim)
        + w(n_threads) * super::transformer::attn_scores_floats(a.n_head / a.n_head_kv.max(1), n_ctx)
        + b * w(d.conv_dim() + 2 * d.value_dim() + 2 * d.n_v_heads)
        + b * w(cfg.moe.n_expert + cfg.moe.n_expert_used * cfg.n_embd)
        + b * 2 * n_ff
        + b_logits * w(cfg.n_vocab);
    u64::try_from(floats * 4 * 2).unwrap_or(u64::MAX)
}
