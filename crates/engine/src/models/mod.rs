//! Model families and the registry that picks one from a file's architecture.
//!
//! Each family file (`llama.rs`, `qwen3.rs`) reads its configuration from GGUF metadata or `config.json`, maps
//! its checkpoint names to GGUF-style slots in one table, and builds a [`decoder::Decoder`]. The registry is the
//! one `match` in [`Model::load`].

pub mod decoder;
mod ggml_forward;
pub mod llama;
pub mod loader;
pub mod qwen3;

use crate::experts::{ExpertLayout, ExpertProvider};
use crate::formats::{Metadata, WeightIndex};
use crate::ops::Cpu;
use crate::session::Session;
use crate::{Error, Result};

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
    pub kv_dim: usize,
    /// Routed experts per MoE layer (0 for a dense model) and experts used per token.
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Bytes of the weights kept in RAM (everything but the experts).
    pub resident_bytes: u64,
    /// Notes on defaults the file did not state (e.g. a GGUF never says `norm_topk_prob`).
    pub notes: Vec<String>,
}

/// Which positions of a forward pass need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
    /// None (a prompt chunk before the last).
    None,
}

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

/// A loaded model: weights, expert source and configuration.
pub struct Model {
    pub info: ModelInfo,
    decoder: Decoder,
}

const SUPPORTED: &str = "GGUF: llama, qwen3, qwen3moe; safetensors: LlamaForCausalLM, Qwen3ForCausalLM, \
                         Qwen3MoeForCausalLM";

impl Model {
    /// Loads the model of `index`, choosing the family from its architecture.
    pub fn load(index: &WeightIndex, opts: &LoadOptions) -> Result<Model> {
        let arch = architecture(index)?;
        let decoder = match arch.as_str() {
            "llama" | "LlamaForCausalLM" => llama::load(index, &arch, opts)?,
            "qwen3" | "qwen3moe" | "Qwen3ForCausalLM" | "Qwen3MoeForCausalLM" => qwen3::load(index, &arch, opts)?,
            _ => {
                return Err(Error::UnknownArchitecture {
                    path: index.path.clone(),
                    arch,
                    supported: SUPPORTED.to_string(),
                })
            }
        };
        let info = decoder.info.clone();
        Ok(Model { info, decoder })
    }

    pub fn new_session(&self, n_ctx: usize) -> Session {
        Session::new(self.info.n_layer, n_ctx, self.info.kv_dim)
    }

    /// Like [`Model::new_session`], but an error where the KV cache of `n_ctx` tokens cannot be allocated.
    pub fn try_new_session(&self, n_ctx: usize) -> Result<Session> {
        Session::try_new(self.info.n_layer, n_ctx, self.info.kv_dim)
    }

    /// Runs `tokens` through the model at the session's position and returns the logits (`[n_vocab]` for
    /// `Logits::Last`, `[tokens.len(), n_vocab]` for `Logits::All`).
    pub fn forward<'s>(&self, cpu: &Cpu, session: &'s mut Session, tokens: &[u32], want: Logits) -> Result<&'s [f32]> {
        self.decoder.forward(cpu, session, tokens, want)
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
        if numerics == Numerics::Ggml {
            ggml_forward::check_supported(&self.decoder)?;
        }
        self.decoder.numerics = numerics;
        Ok(())
    }

    /// Replaces the source of expert weights (e.g. by a streaming cache over the same layout).
    pub fn set_experts(&mut self, experts: Box<dyn ExpertProvider + Send>) {
        self.decoder.experts = experts;
    }
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
