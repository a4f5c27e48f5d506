//! The Llama family (GGUF `llama`, HF `LlamaForCausalLM`; SmolLM2 is one). Reference: transformers'
//! `models/llama/modeling_llama.py`.
//!
//! The plain pre-norm decoder: GQA attention without q/k norms, SwiGLU MLP. llama.cpp's converter permutes the
//! q and k weights of Llama so that RoPE rotates adjacent pairs; from safetensors the weights are unpermuted
//! and RoPE rotates halves (transformers' `rotate_half`). A GGUF `llama` file with `expert_count`, or
//! `MixtralForCausalLM` safetensors, is a Mixtral MoE: every layer's FFN is routed experts (softmax top-k,
//! renormalised); llama.cpp's converter stores the expert FFN size as `feed_forward_length`.

use crate::formats::WeightIndex;
use crate::layers::attention::AttentionShape;
use crate::layers::moe::MoeRouting;
use crate::layers::rope::{Rope, RopeStyle};
use crate::models::loader::{Hparams, LoadOptions, Loader};
use crate::models::transformer::{Transformer, TransformerConfig};
use crate::models::{Model, ModelInfo};
use crate::Result;

/// GGUF slot -> safetensors name (`{}` = layer).
pub const HF_NAMES: &[(&str, &str)] = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
    ("attn_norm", "model.layers.{}.input_layernorm"),
    ("attn_q", "model.layers.{}.self_attn.q_proj"),
    ("attn_k", "model.layers.{}.self_attn.k_proj"),
    ("attn_v", "model.layers.{}.self_attn.v_proj"),
    ("attn_output", "model.layers.{}.self_attn.o_proj"),
    ("ffn_norm", "model.layers.{}.post_attention_layernorm"),
    ("ffn_gate", "model.layers.{}.mlp.gate_proj"),
    ("ffn_up", "model.layers.{}.mlp.up_proj"),
    ("ffn_down", "model.layers.{}.mlp.down_proj"),
    // Mixtral (`MixtralForCausalLM`): w1 = gate, w3 = up, w2 = down.
    ("ffn_gate_inp", "model.layers.{}.block_sparse_moe.gate"),
    ("ffn_gate.{e}", "model.layers.{}.block_sparse_moe.experts.{e}.w1"),
    ("ffn_up.{e}", "model.layers.{}.block_sparse_moe.experts.{e}.w3"),
    ("ffn_down.{e}", "model.layers.{}.block_sparse_moe.experts.{e}.w2"),
    // mlx-lm's Mixtral: the experts stacked.
    ("ffn_gate_exps", "model.layers.{}.block_sparse_moe.switch_mlp.gate_proj"),
    ("ffn_up_exps", "model.layers.{}.block_sparse_moe.switch_mlp.up_proj"),
    ("ffn_down_exps", "model.layers.{}.block_sparse_moe.switch_mlp.down_proj"),
];

pub fn load(index: &WeightIndex, arch: &str, opts: &LoadOptions) -> Result<Model> {
    let cfg = config(index, arch)?;
    let info = ModelInfo {
        arch: arch.to_string(),
        family: "llama",
        n_vocab: cfg.n_vocab,
        n_embd: cfg.n_embd,
        n_layer: cfg.n_layer,
        n_ctx_train: cfg.n_ctx_train,
        state: Transformer::state_kinds(&cfg),
        kv: Default::default(),
        n_expert: cfg.moe.as_ref().map_or(0, |m| m.n_expert),
        n_expert_used: cfg.moe.as_ref().map_or(0, |m| m.n_expert_used),
        resident_bytes: 0,
        notes: vec![],
    };
    Model::transformer(Loader::new(index, HF_NAMES, opts), cfg, info)
}

/// The configuration of a Llama (or Mixtral) file, from its metadata.
pub fn config(index: &WeightIndex, arch: &str) -> Result<TransformerConfig> {
    let hp = Hparams::new(index, arch);
    let ld = Loader::new(index, HF_NAMES, &LoadOptions::default());
    let n_embd = hp.usize("embedding_length", "hidden_size")?;
    let n_layer = hp.usize("block_count", "num_hidden_layers")?;
    let n_head = hp.usize("attention.head_count", "num_attention_heads")?;
    let n_head_kv = hp.usize_opt("attention.head_count_kv", "num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = hp.usize_opt("attention.key_length", "head_dim")?.unwrap_or(n_embd / n_head.max(1));
    check_shape(&hp, n_embd, n_layer, n_head, n_head_kv, head_dim)?;
    refuse_rope_scaling(&hp)?;
    if ld.has("rope_freqs", None) {
        return Err(hp.error("rope_freqs (Llama 3.1 RoPE scaling) is not supported yet"));
    }
    let n_vocab = match hp.usize_opt("vocab_size", "vocab_size")? {
        Some(v) => v,
        None => ld.tensor("token_embd", None, "weight")?.shape[0],
    };
    let rms_eps = hp.rms_eps(1e-5)?;
    let n_expert = hp.usize_opt("expert_count", "num_local_experts")?.unwrap_or(0);
    let moe = if n_expert > 0 {
        let n_expert_used = hp.usize("expert_used_count", "num_experts_per_tok")?;
        Some(MoeRouting { n_expert, n_expert_used, norm_topk_prob: true })
    } else {
        None
    };
    let style = if hp.is_gguf() { RopeStyle::Interleaved } else { RopeStyle::Neox };
    let cfg = TransformerConfig {
        n_vocab,
        n_embd,
        n_layer,
        n_ctx_train: hp.usize_opt("context_length", "max_position_embeddings")?.unwrap_or(4096),
        rms_eps,
        attn: AttentionShape {
            n_head,
            n_head_kv,
            head_dim,
            norm_eps: rms_eps,
            gated: false,
            rope: Rope::new(style, head_dim, hp.f32_opt("rope.freq_base", "rope_theta")?.unwrap_or(10_000.0)),
        },
        n_ff: if moe.is_some() { 0 } else { hp.usize("feed_forward_length", "intermediate_size")? },
        // llama.cpp's converter writes Mixtral's expert size as feed_forward_length.
        n_ff_exp: match moe {
            Some(_) => match hp.usize_opt("expert_feed_forward_length", "")? {
                Some(n) => n,
                None => hp.usize("feed_forward_length", "intermediate_size")?,
            },
            None => 0,
        },
        moe_layers: vec![moe.is_some(); n_layer],
        moe,
        attn_bias: hp.hf_bool("attention_bias").unwrap_or(false),
        qk_norm: false,
        tied_embeddings: hp.hf_bool("tie_word_embeddings").unwrap_or(false),
    };
    Ok(cfg)
}

/// Rejects head counts and sizes that cannot form a model.
pub(crate) fn check_shape(
    hp: &Hparams<'_>,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) -> Result<()> {
    if n_embd == 0 || n_layer == 0 || n_head == 0 || n_head_kv == 0 || head_dim == 0 {
        return Err(hp.error(format!(
            "impossible shape: n_embd {n_embd}, n_layer {n_layer}, n_head {n_head}, n_head_kv {n_head_kv}, \
             head_dim {head_dim}"
        )));
    }
    if !n_head.is_multiple_of(n_head_kv) || !head_dim.is_multiple_of(2) {
        return Err(
            hp.error(format!("{n_head} heads cannot share {n_head_kv} KV heads, or head size {head_dim} is odd"))
        );
    }
    if n_layer > 4096 || n_head > 4096 || head_dim > 4096 {
        return Err(hp.error(format!(
            "implausibly large model shape: n_layer {n_layer}, n_head {n_head}, head_dim {head_dim} (at most 4096 each)"
        )));
    }
    // Attention here uses one head size for keys and values.
    if let Some(v_dim) = hp.usize_opt("attention.value_length", "")?.filter(|&v| v != head_dim) {
        return Err(hp.error(format!(
            "value head size {v_dim} differs from key head size {head_dim}, which flash-moe does not support"
        )));
    }
    Ok(())
}

/// RoPE scaling (linear, YaRN, Llama 3) is not implemented: refuse rather than compute something else. Also
/// refuses a base frequency that is not a positive number.
pub(crate) fn refuse_rope_scaling(hp: &Hparams<'_>) -> Result<()> {
    if let Some(theta) = hp.f32_opt("rope.freq_base", "rope_theta")?.filter(|t| !(t.is_finite() && *t > 0.0)) {
        return Err(hp.error(format!("RoPE base frequency {theta} must be a positive number")));
    }
    if let Some(v) = hp.hf_value("rope_scaling") {
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
        if !v.is_null() && kind != "default" {
            return Err(hp.error(format!("rope_scaling {v} is not supported yet")));
        }
    }
    if let Some(v) = hp.hf_value("rope_type") {
        if v.as_str().is_some_and(|k| k != "default") {
            return Err(hp.error(format!("rope_type {v} is not supported yet")));
        }
    }
    Ok(())
}
