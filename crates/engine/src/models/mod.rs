//! Model families and the registry that picks one from a file's architecture.
//!
//! Each family file (`llama.rs`, `qwen3.rs`) reads its configuration from GGUF metadata or `config.json` and maps
//! its checkpoint names to GGUF-style slots in one table; the layer stack it builds ([`transformer`]: the
//! pre-norm attention + FFN/MoE stack) holds the layers and their forward pass, over the shared
//! [`decoder::Decoder`] (embeddings, output head, experts). The registry is the one `match` in [`Model::load`];
//! the layer stacks are the one `match` in [`Model::forward`].

pub mod decoder;
pub mod llama;
pub mod loader;
pub mod qwen3;
pub mod qwen3next;
pub mod transformer;

use crate::backend::Exec;
use crate::experts::{ExpertLayout, ExpertProvider};
use crate::formats::{Metadata, WeightIndex};
use crate::ops::Cpu;
use crate::session::{LayerStateKind, Session};
use crate::{Error, Result};

pub use crate::backend::Numerics;
pub use decoder::Decoder;
pub use loader::{ExpertResidency, Hparams, LoadOptions, StreamOptions};

/// What a caller needs to know about a loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// GGUF architecture name (`qwen3moe`) or HF class (`Qwen3MoeForCausalLM`).
    pub arch: String,
    pub family: &'static str,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ctx_train: usize,
    /// What each layer keeps per sequence (a KV cache, a recurrent state).
    pub state: Vec<LayerStateKind>,
    /// How sessions store keys and values (`LoadOptions::kv`).
    pub kv: crate::kv_cache::KvTypes,
    /// Routed experts per MoE layer (0 for a dense model) and experts used per token.
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Bytes of the weights kept in RAM (everything but the experts).
    pub resident_bytes: u64,
    /// Notes on defaults the file did not state (e.g. a GGUF never says `norm_topk_prob`).
    pub notes: Vec<String>,
}

impl ModelInfo {
    /// Bytes of a session's per-layer states for `n_ctx` tokens (f32 keys and values in attention layers, the
    /// constant-size recurrent states of DeltaNet layers).
    pub fn kv_cache_bytes(&self, n_ctx: usize) -> u64 {
        self.state.iter().map(|k| k.bytes(n_ctx, self.kv)).sum()
    }
}

/// Which positions of a forward pass need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
    /// None (a prompt chunk before the last).
    None,
}

/// A loaded model: weights, expert source and configuration.
pub struct Model {
    pub info: ModelInfo,
    decoder: Decoder,
    stack: Stack,
}

/// The layer stacks, one per kind of family.
enum Stack {
    Transformer(transformer::Transformer),
    Hybrid(qwen3next::Hybrid),
}

const SUPPORTED: &str = "GGUF: llama (incl. Mixtral), qwen3, qwen3moe, qwen3next, qwen35moe; safetensors: \
                         LlamaForCausalLM, MixtralForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, \
                         Qwen3NextForCausalLM, Qwen3_5MoeForCausalLM";

impl Model {
    /// Loads the model of `index`, choosing the family from its architecture.
    pub fn load(index: &WeightIndex, opts: &LoadOptions) -> Result<Model> {
        let arch = architecture(index)?;
        match Family::of(index, &arch)? {
            Family::Llama => llama::load(index, &arch, opts),
            Family::Qwen3 => qwen3::load(index, &arch, opts),
            Family::Qwen3Next => qwen3next::load(index, &arch, opts),
        }
    }

    /// A model of the transformer stack (for the family files).
    pub(crate) fn transformer(
        ld: loader::Loader<'_>,
        cfg: transformer::TransformerConfig,
        info: ModelInfo,
    ) -> Result<Model> {
        let (decoder, stack) = transformer::Transformer::load(ld, cfg, info)?;
        Ok(Model { info: decoder.info.clone(), decoder, stack: Stack::Transformer(stack) })
    }

    /// A model of the hybrid (DeltaNet + attention) stack.
    pub(crate) fn hybrid(decoder: Decoder, stack: qwen3next::Hybrid) -> Model {
        Model { info: decoder.info.clone(), decoder, stack: Stack::Hybrid(stack) }
    }

    pub fn new_session(&self, n_ctx: usize) -> Session {
        Session::new(&self.info.state, n_ctx, self.info.kv)
    }

    /// Runs `tokens` through the model at the session's position and returns the logits (`[n_vocab]` for
    /// `Logits::Last`, `[tokens.len(), n_vocab]` for `Logits::All`). A prompt longer than the numerics' batch is
    /// run in batches (the results do not depend on it).
    pub fn forward<'s>(&self, cpu: &Cpu, session: &'s mut Session, tokens: &[u32], want: Logits) -> Result<&'s [f32]> {
        let exec = Exec::new(cpu, self.decoder.numerics);
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let max_batch = exec.max_batch(want == Logits::All);
        if tokens.len() <= max_batch {
            return self.forward_batch(&exec, session, tokens, want);
        }
        session.check_room(tokens.len())?;
        let mut all = std::mem::take(&mut session.all_logits);
        all.clear();
        let n_chunks = tokens.len().div_ceil(max_batch);
        for (i, c) in tokens.chunks(max_batch).enumerate() {
            let w = match want {
                Logits::All => Logits::All,
                _ if i + 1 == n_chunks => Logits::Last,
                _ => Logits::None,
            };
            let out = self.forward_batch(&exec, session, c, w)?;
            if want == Logits::All {
                all.extend_from_slice(out);
            }
        }
        session.all_logits = all;
        Ok(if want == Logits::All { &session.all_logits } else { &session.scratch.logits })
    }

    fn forward_batch<'s>(
        &self,
        exec: &Exec<'_>,
        sess: &'s mut Session,
        tokens: &[u32],
        want: Logits,
    ) -> Result<&'s [f32]> {
        if exec.numerics == Numerics::Ggml && self.decoder.approx.is_some() {
            return Err(Error::Invalid("--numerics ggml does not combine with an approximate expert mode".into()));
        }
        match &self.stack {
            Stack::Transformer(t) => t.forward(&self.decoder, exec, sess, tokens, want),
            Stack::Hybrid(h) => h.forward(&self.decoder, exec, sess, tokens, want),
        }
    }

    pub fn expert_layout(&self) -> &ExpertLayout {
        &self.decoder.expert_layout
    }

    /// How the memory budget was split, when experts stream.
    pub fn memory_plan(&self) -> Option<&crate::experts::budget::MemoryPlan> {
        self.decoder.plan.as_ref()
    }

    /// Expert cache counters, when experts stream.
    pub fn cache_stats(&self) -> Option<crate::experts::cache::CacheStats> {
        self.decoder.experts.cache_stats()
    }

    /// The streaming expert cache, when experts stream.
    pub fn expert_cache(&self) -> Option<&crate::experts::cache::ExpertCache> {
        self.decoder.experts.as_cache()
    }

    /// Records or replays routing decisions (see [`crate::routes`]).
    pub fn set_route_hook(&mut self, hook: Option<std::sync::Arc<dyn crate::layers::moe::RouteHook>>) {
        self.decoder.route_hook = hook;
    }

    /// Turns an approximate expert selection on (`Some`) or off; see [`crate::approx`]. Off by default, and
    /// refused for a model without routed experts or a `top-k=N` with N not below the model's k.
    pub fn set_approx(&mut self, approx: Option<crate::approx::Approx>) -> Result<()> {
        if let Some(a) = &approx {
            a.check(self.info.n_expert_used)?;
        }
        self.decoder.approx = approx.map(crate::approx::ApproxMode::new);
        Ok(())
    }

    /// The approximate mode in force and its counters since it was set.
    pub fn approx_stats(&self) -> Option<(crate::approx::Approx, crate::approx::ApproxStats)> {
        self.decoder.approx.as_ref().map(|m| (m.approx, m.stats()))
    }

    /// Chooses whose float arithmetic the forward pass follows; [`Numerics::Ggml`] is refused for a model it does
    /// not cover.
    pub fn set_numerics(&mut self, numerics: Numerics) -> Result<()> {
        if numerics == Numerics::Ggml && self.info.kv != crate::kv_cache::KvTypes::default() {
            return Err(Error::Invalid("--numerics ggml covers an f32 KV cache only".into()));
        }
        let coverage = match &self.stack {
            Stack::Transformer(t) => t.coverage(&self.decoder),
            Stack::Hybrid(h) => h.coverage(&self.decoder),
        };
        Exec::check(numerics, &coverage)?;
        self.decoder.numerics = numerics;
        Ok(())
    }

    /// Replaces the source of expert weights (e.g. by a streaming cache over the same layout).
    pub fn set_experts(&mut self, experts: Box<dyn ExpertProvider + Send>) {
        self.decoder.experts = experts;
    }
}

/// The families, by architecture name: the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen3,
    Qwen3Next,
}

impl Family {
    fn of(index: &WeightIndex, arch: &str) -> Result<Family> {
        Ok(match arch {
            "llama" | "LlamaForCausalLM" | "MixtralForCausalLM" => Family::Llama,
            "qwen3" | "qwen3moe" | "Qwen3ForCausalLM" | "Qwen3MoeForCausalLM" => Family::Qwen3,
            "qwen3next" | "qwen35moe" | "Qwen3NextForCausalLM" | "Qwen3_5MoeForCausalLM" => Family::Qwen3Next,
            _ => {
                return Err(Error::UnknownArchitecture {
                    path: index.path.clone(),
                    arch: arch.to_string(),
                    supported: SUPPORTED.to_string(),
                })
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen3 => "qwen3",
            Family::Qwen3Next => "qwen3next",
        }
    }
}

/// What [`describe`] says of a file.
pub struct Description {
    pub family: Family,
    /// (label, text) lines on its layers, blocks, routing and state.
    pub lines: Vec<(&'static str, String)>,
    /// Defaults the file did not state.
    pub notes: Vec<String>,
}

/// What a model file describes, from its metadata alone (no weights read).
pub fn describe(index: &WeightIndex) -> Result<Description> {
    let arch = architecture(index)?;
    let family = Family::of(index, &arch)?;
    let (lines, notes) = match family {
        Family::Llama => (llama::config(index, &arch)?.describe(), vec![]),
        Family::Qwen3 => {
            let (cfg, notes) = qwen3::config(index, &arch)?;
            (cfg.describe(), notes)
        }
        Family::Qwen3Next => (qwen3next::config_of(index, &arch)?.describe(), vec![]),
    };
    Ok(Description { family, lines, notes })
}

/// The architecture name: GGUF `general.architecture` or the first of `config.json`'s `architectures`.
pub fn architecture(index: &WeightIndex) -> Result<String> {
    match &index.metadata {
        Metadata::Gguf(m) => m
            .get_str("general.architecture")
            .map(str::to_string)
            .ok_or_else(|| Error::config(&index.path, "GGUF metadata has no general.architecture")),
        Metadata::HfConfig { config, .. } => config
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::config(&index.path, "config.json has no \"architectures\" entry")),
    }
}

/// The training context length the file declares, without loading the model.
pub fn context_length(index: &WeightIndex) -> Option<usize> {
    let arch = architecture(index).ok()?;
    Hparams::new(index, &arch).usize_opt("context_length", "max_position_embeddings").ok().flatten()
}
