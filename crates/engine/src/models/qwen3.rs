//! The Qwen3 family: dense Qwen3 and Qwen3-MoE (GGUF `qwen3`, `qwen3moe`; HF `Qwen3ForCausalLM`,
//! `Qwen3MoeForCausalLM`). Reference: transformers' `models/qwen3_moe/modeling_qwen3_moe.py`.
//!
//! How it differs from Llama: per-head RMSNorm of q and k before RoPE, NeoX RoPE in every format, and (MoE)
//! a softmax router with top-k whose weights are renormalised when `norm_topk_prob`; layers listed in
//! `mlp_only_layers` (or off the `decoder_sparse_step` grid) keep a dense MLP.

use crate::formats::WeightIndex;
use crate::layers::attention::AttentionShape;
use crate::layers::moe::MoeRouting;
use crate::layers::rope::{Rope, RopeStyle};
use crate::models::loader::{Hparams, LoadOptions, Loader};
use crate::models::transformer::{Transformer, TransformerConfig};
use crate::models::{Model, ModelInfo};
use crate::Result;

/// GGUF slot -> safetensors name (`{}` = layer, `{e}` = expert).
pub const HF_NAMES: &[(&str, &str)] = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
    ("attn_norm", "model.layers.{}.input_layernorm"),
    ("attn_q", "model.layers.{}.self_attn.q_proj"),
    ("attn_k", "model.layers.{}.self_attn.k_proj"),
    ("attn_v", "model.layers.{}.self_attn.v_proj"),
    ("attn_output", "model.layers.{}.self_attn.o_proj"),
    ("attn_q_norm", "model.layers.{}.self_attn.q_norm"),
    ("attn_k_norm", "model.layers.{}.self_attn.k_norm"),
    ("ffn_norm", "model.layers.{}.post_attention_layernorm"),
    ("ffn_gate", "model.layers.{}.mlp.gate_proj"),
    ("ffn_up", "model.layers.{}.mlp.up_proj"),
    ("ffn_down", "model.layers.{}.mlp.down_proj"),
    ("ffn_gate_inp", "model.layers.{}.mlp.gate"),
    ("ffn_gate_exps", "model.layers.{}.mlp.switch_mlp.gate_proj"),
    ("ffn_up_exps", "model.layers.{}.mlp.switch_mlp.up_proj"),
    ("ffn_down_exps", "model.layers.{}.mlp.switch_mlp.down_proj"),
    ("ffn_gate.{e}", "model.layers.{}.mlp.experts.{e}.gate_proj"),
    ("ffn_up.{e}", "model.layers.{}.mlp.experts.{e}.up_proj"),
    ("ffn_down.{e}", "model.layers.{}.mlp.experts.{e}.down_proj"),
];

pub fn load(index: &WeightIndex, arch: &str, opts: &LoadOptions) -> Result<Model> {
    let hp = Hparams::new(index, arch);
    let ld = Loader::new(index, HF_NAMES, opts);
    let mut notes = Vec::new();
    let cfg = config_from(&hp, &ld, &mut notes)?;
    let info = ModelInfo {
        arch: arch.to_string(),
        family: "qwen3",
        n_vocab: cfg.n_vocab,
        n_embd: cfg.n_embd,
        n_layer: cfg.n_layer,
        n_ctx_train: cfg.n_ctx_train,
        state: Transformer::state_kinds(&cfg),
        kv: Default::default(),
        n_expert: cfg.moe.as_ref().map_or(0, |m| m.n_expert),
        n_expert_used: cfg.moe.as_ref().map_or(0, |m| m.n_expert_used),
        resident_bytes: 0,
        notes,
    };
    Model::transformer(ld, cfg, info)
}

/// The configuration of a Qwen3 or Qwen3-MoE file, from its metadata, with notes on the defaults it assumed.
pub fn config(index: &WeightIndex, arch: &str) -> Result<(TransformerConfig, Vec<String>)> {
    let mut notes = Vec::new();
    let ld = Loader::new(index, HF_NAMES, &LoadOptions::default());
    let cfg = config_from(&Hparams::new(index, arch), &ld, &mut notes)?;
    Ok((cfg, notes))
}

fn config_from(hp: &Hparams<'_>, ld: &Loader<'_>, notes: &mut Vec<String>) -> Result<TransformerConfig> {
    let n_embd = hp.usize("embedding_length", "hidden_size")?;
    let n_layer = hp.usize("block_count", "num_hidden_layers")?;
    let n_head = hp.usize("attention.head_count", "num_attention_heads")?;
    let n_head_kv = hp.usize_opt("attention.head_count_kv", "num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = hp.usize_opt("attention.key_length", "head_dim")?.unwrap_or(n_embd / n_head.max(1));
    let n_vocab = match hp.usize_opt("vocab_size", "vocab_size")? {
        Some(v) => v,
        None => ld.tensor("token_embd", None, "weight")?.shape[0],
    };
    super::llama::check_shape(hp, n_embd, n_layer, n_head, n_head_kv, head_dim)?;
    super::llama::refuse_rope_scaling(hp)?;
    let rope_theta = hp.f32_opt("rope.freq_base", "rope_theta")?.unwrap_or(1_000_000.0);
    // transformers 5 writes num_local_experts; the released Qwen3 configs say num_experts.
    let n_expert = hp
        .usize_opt("expert_count", "num_experts")?
        .or(hp.usize_opt("expert_count", "num_local_experts")?)
        .unwrap_or(0);
    let moe = if n_expert > 0 {
        let n_expert_used = hp.usize("expert_used_count", "num_experts_per_tok")?;
        if n_expert_used == 0 || n_expert_used > n_expert {
            return Err(hp.error(format!("{n_expert_used} experts per token out of {n_expert}")));
        }
        let norm_topk_prob = match hp.hf_bool("norm_topk_prob") {
            Some(b) => b,
            None if hp.is_gguf() => {
                notes.push("norm_topk_prob: GGUF does not say; using true (Qwen3-MoE's value, as llama.cpp)".into());
                true
            }
            None => false, // transformers' default for Qwen3MoeConfig
        };
        Some(MoeRouting { n_expert, n_expert_used, norm_topk_prob })
    } else {
        None
    };
    let moe_layers = (0..n_layer)
        .map(|l| -> Result<bool> {
            if moe.is_none() {
                return Ok(false);
            }
            if hp.is_gguf() {
                return Ok(ld.has("ffn_gate_inp", Some(l)));
            }
            let dense: Vec<u64> = hp
                .hf_value("mlp_only_layers")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default();
            let step = hp.usize_opt("", "decoder_sparse_step")?.unwrap_or(1).max(1);
            Ok(!dense.contains(&(l as u64)) && (l + 1) % step == 0)
        })
        .collect::<Result<Vec<_>>>()?;
    let any_dense = moe_layers.iter().any(|m| !m);
    let rms_eps = hp.rms_eps(1e-6)?;
    Ok(TransformerConfig {
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
            rope: Rope::new(RopeStyle::Neox, head_dim, rope_theta),
        },
        n_ff: if any_dense { hp.usize("feed_forward_length", "intermediate_size")? } else { 0 },
        n_ff_exp: if moe.is_some() { hp.usize("expert_feed_forward_length", "moe_intermediate_size")? } else { 0 },
        moe,
        moe_layers,
        attn_bias: hp.hf_bool("attention_bias").unwrap_or(false),
        qk_norm: true,
        tied_embeddings: hp.hf_bool("tie_word_embeddings").unwrap_or(false),
    })
}
