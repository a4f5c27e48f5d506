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
use crate::session::{LayerState, LayerStateKind, Scratch, Session};
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
        self.state.iter().fold(0u64, |acc, k| acc.saturating_add(k.bytes(n_ctx, self.kv)))
    }
}

/// One sequence's part of a forward pass over one or several: its per-layer states, the position of its first
/// token and its rows among the pass's tokens.
pub(crate) struct SeqRows<'a> {
    pub(crate) layers: &'a mut [LayerState],
    pub(crate) pos0: usize,
    pub(crate) rows: std::ops::Range<usize>,
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
                         Qwen3NextForCausalLM, Qwen3_5MoeForCausalLM (and ForConditionalGeneration, text only)";

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

    /// Like [`Model::new_session`], but an error where the KV cache of `n_ctx` tokens cannot be allocated.
    pub fn try_new_session(&self, n_ctx: usize) -> Result<Session> {
        Session::try_new(&self.info.state, n_ctx, self.info.kv)
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
        sess.check_room(tokens.len())?;
        sess.check_whole()?;
        let Session { layers, pos, scratch: s, .. } = &mut *sess;
        self.decoder.embed(exec, tokens, &mut s.x)?;
        let mut seqs = [SeqRows { layers, pos0: *pos, rows: 0..tokens.len() }];
        if let Err(e) = self.forward_layers(exec, &mut seqs, s, want) {
            // Recurrent layers before the failure have stepped: the session cannot simply go on.
            sess.tear();
            return Err(e);
        }
        sess.pos += tokens.len();
        let s = &mut sess.scratch;
        self.decoder.logits(exec, &s.x, want, (&mut s.xn, &mut s.head_q), &mut s.logits)
    }

    /// One forward step of several sequences together (continuous batching): `batch` pairs each session with the
    /// tokens to run at its position (a prompt chunk or one decoded token). Every matrix product runs once over
    /// all the tokens and every expert any of them chose is acquired (read) once for all of them, while
    /// attention and recurrent layers run per sequence on its own state. Returns the logits of each sequence's
    /// last token, `[batch.len(), n_vocab]`, in `scratch`.
    ///
    /// Under the native numerics every output element is one kernel call on the same bytes whatever the batch,
    /// so each sequence's logits are bit-identical to [`Model::forward`] of it alone. Refused under ggml numerics
    /// (batch-dependent), with a route hook or an approximate mode (per-sequence features), for an empty token
    /// list, and for a session without room.
    pub fn forward_multi<'s>(
        &self,
        cpu: &Cpu,
        batch: &mut [(&mut Session, &[u32])],
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        let exec = Exec::new(cpu, self.decoder.numerics);
        if batch.is_empty() {
            return Ok(&[]);
        }
        if exec.numerics != Numerics::Native {
            return Err(Error::Invalid("several sequences at once need the native numerics".into()));
        }
        if batch.len() > 1 && (self.decoder.route_hook.is_some() || self.decoder.approx.is_some()) {
            return Err(Error::Invalid("route hooks and approximate modes run one sequence at a time".into()));
        }
        let mut tokens = Vec::with_capacity(batch.iter().map(|(_, t)| t.len()).sum());
        let mut seqs = Vec::with_capacity(batch.len());
        for (sess, toks) in batch.iter_mut() {
            if toks.is_empty() {
                return Err(Error::EmptyPrompt);
            }
            sess.check_room(toks.len())?;
            sess.check_whole()?;
            let rows = tokens.len()..tokens.len() + toks.len();
            tokens.extend_from_slice(toks);
            seqs.push(SeqRows { layers: &mut sess.layers, pos0: sess.pos, rows });
        }
        let s = scratch;
        self.decoder.embed(&exec, &tokens, &mut s.x)?;
        if let Err(e) = self.forward_layers(&exec, &mut seqs, s, Logits::All) {
            drop(seqs);
            batch.iter_mut().for_each(|(sess, _)| sess.tear());
            return Err(e);
        }
        let e = self.info.n_embd;
        // The last row of each sequence, for the output head (each row's logits do not depend on the others).
        s.y.clear();
        for q in &seqs {
            s.y.extend_from_slice(&s.x[(q.rows.end - 1) * e..q.rows.end * e]);
        }
        drop(seqs);
        for (sess, toks) in batch.iter_mut() {
            sess.pos += toks.len();
        }
        self.decoder.logits(&exec, &s.y, Logits::All, (&mut s.xn, &mut s.head_q), &mut s.logits)
    }

    fn forward_layers(&self, exec: &Exec<'_>, seqs: &mut [SeqRows<'_>], s: &mut Scratch, want: Logits) -> Result<()> {
        match &self.stack {
            Stack::Transformer(t) => t.forward_layers(&self.decoder, exec, seqs, s, want),
            Stack::Hybrid(h) => h.forward_layers(&self.decoder, exec, seqs, s),
        }
    }

    pub fn expert_layout(&self) -> &ExpertLayout {
        &self.decoder.expert_layout
    }

    /// The resident bytes a decode step reads: all of them, less the embedding table's other rows where the output
    /// head is a matrix of its own (a step reads one row of the table per token; a tied head reads it whole).
    pub fn resident_bytes_read(&self) -> u64 {
        let d = &self.decoder;
        let unread = match &d.output {
            Some(_) if d.token_embd.rows > 0 => {
                let table = d.token_embd.as_ref().n_bytes() as u64;
                table - table / d.token_embd.rows as u64
            }
            _ => 0,
        };
        self.info.resident_bytes.saturating_sub(unread)
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
            "qwen3next"
            | "qwen35moe"
            | "Qwen3NextForCausalLM"
            | "Qwen3_5MoeForCausalLM"
            | "Qwen3_5MoeForConditionalGeneration" => Family::Qwen3Next,
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

/// What each layer of `index`'s model keeps per sequence, from its metadata alone (no weights read): what a
/// server needs to budget its sessions before loading.
pub fn state_kinds(index: &WeightIndex) -> Result<Vec<LayerStateKind>> {
    let arch = architecture(index)?;
    Ok(match Family::of(index, &arch)? {
        Family::Llama => transformer::Transformer::state_kinds(&llama::config(index, &arch)?),
        Family::Qwen3 => transformer::Transformer::state_kinds(&qwen3::config(index, &arch)?.0),
        Family::Qwen3Next => qwen3next::Hybrid::state_kinds(&qwen3next::config_of(index, &arch)?),
    })
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
