//! Per-sequence state: one state per layer (a KV cache for attention layers, a convolution and recurrent state
//! for DeltaNet layers), the position, checkpoints of the states that cannot be rewound, and the scratch
//! buffers of the forward pass.
//!
//! Weights are immutable and shared; everything that changes while a sequence is decoded lives here, so one
//! model can serve several sessions. [`Session::truncate`] rewinds a sequence to a shorter prefix (multi-turn reuse):
//! a KV cache rewinds to any length; a recurrent state only to a position where it was checkpointed
//! ([`Session::checkpoint`]), so `truncate` says how far it got and the caller feeds the tokens from there.

use crate::layers::attention::AttentionScratch;
use crate::layers::delta_net::{DeltaNetScratch, DeltaNetState, DeltaNetStateShape};
use crate::layers::moe::MoeScratch;
use crate::{Error, Result};

pub use crate::kv_cache::{KvTypes, LayerKv};

/// What state one layer keeps per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerStateKind {
    /// Keys and values of every position (`kv_dim` values each, in heads of `head_dim`).
    Kv { kv_dim: usize, head_dim: usize },
    /// A DeltaNet layer's convolution window and recurrent matrix (constant size).
    DeltaNet(DeltaNetStateShape),
}

impl LayerStateKind {
    /// Bytes of one sequence's state for a context of `n_ctx` tokens with KV caches of `types`.
    pub fn bytes(&self, n_ctx: usize, types: KvTypes) -> u64 {
        match self {
            LayerStateKind::Kv { kv_dim, .. } => {
                (n_ctx as u64).saturating_mul(types.bytes_per_position(*kv_dim) as u64)
            }
            LayerStateKind::DeltaNet(s) => s.bytes(),
        }
    }
}

/// Bytes a session of these layer kinds can hold at most: its states for `n_ctx` tokens and
/// [`CHECKPOINTS_MAX`] copies of its recurrent states.
pub fn session_bytes_max(kinds: &[LayerStateKind], n_ctx: usize, types: KvTypes) -> u64 {
    kinds
        .iter()
        .map(|k| match k {
            LayerStateKind::Kv { .. } => k.bytes(n_ctx, types),
            LayerStateKind::DeltaNet(s) => s.bytes().saturating_mul(1 + CHECKPOINTS_MAX as u64),
        })
        .fold(0, u64::saturating_add) // (`-c` near u64::MAX: too big either way, never an overflow)
}

/// One layer's state.
pub enum LayerState {
    Kv(LayerKv),
    DeltaNet(DeltaNetState),
}

impl LayerState {
    fn try_new(kind: LayerStateKind, n_ctx: usize, types: KvTypes) -> Option<LayerState> {
        Some(match kind {
            LayerStateKind::Kv { kv_dim, head_dim } => {
                LayerState::Kv(LayerKv::try_new(n_ctx, kv_dim, head_dim, types)?)
            }
            LayerStateKind::DeltaNet(shape) => LayerState::DeltaNet(DeltaNetState::new(shape)),
        })
    }

    pub fn bytes(&self) -> usize {
        match self {
            LayerState::Kv(kv) => kv.bytes(),
            LayerState::DeltaNet(s) => s.bytes(),
        }
    }

    /// The KV cache of an attention layer (the model's layer list says which layers have one).
    pub fn kv(&mut self) -> &mut LayerKv {
        match self {
            LayerState::Kv(kv) => kv,
            LayerState::DeltaNet(_) => panic!("an attention layer was given a DeltaNet state"),
        }
    }

    pub fn delta_net(&mut self) -> &mut DeltaNetState {
        match self {
            LayerState::DeltaNet(s) => s,
            LayerState::Kv(_) => panic!("a DeltaNet layer was given a KV cache"),
        }
    }
}

/// Buffers of the forward pass, grown on first use and then reused.
#[derive(Default)]
pub struct Scratch {
    pub x: Vec<f32>,      // [n, n_embd] the residual stream
    pub xn: Vec<f32>,     // [n, n_embd] normed input of a block
    pub y: Vec<f32>,      // [n, n_embd] output of a block
    pub logits: Vec<f32>, // [n_out, n_vocab]
    pub attn: AttentionScratch,
    pub delta: DeltaNetScratch,
    pub ffn: crate::backend::FfnScratch,
    pub moe: MoeScratch,
    pub head_q: crate::ops::QuantActs,
    /// Next-layer prediction (router-based prefetch).
    pub pred_x: Vec<f32>, // [n_embd] the next layer's normed input, estimated
    pub pred_logits: Vec<f32>, // [n_expert]
    pub pred_q: crate::ops::QuantActs,
    pub pred_ids: Vec<u32>,   // predicted experts, best first
    pub pred_order: Vec<u32>, // [n_expert]
}

/// The recurrent states of a session at one position (KV caches need no copy: they rewind by position).
struct Checkpoint {
    pos: usize,
    states: Vec<Option<DeltaNetState>>, // [n_layer]; None for KV layers
}

/// Checkpoints kept per session: each holds every recurrent state (e.g. 36 DeltaNet layers of 2 MiB for
/// Qwen3-Coder-Next), so only a few.
pub const CHECKPOINTS_MAX: usize = 4;

/// One sequence being decoded.
pub struct Session {
    pub layers: Vec<LayerState>,
    /// Tokens processed so far (the next token's position).
    pub pos: usize,
    pub n_ctx: usize,
    pub scratch: Scratch,
    /// Logits of every position of a prompt run in chunks.
    pub all_logits: Vec<f32>,
    checkpoints: Vec<Checkpoint>,
    /// A step failed (an expert read error) after it had updated some recurrent states: they no longer match
    /// `pos`, and the session refuses to go on until [`Session::truncate`] or [`Session::reset`] rewinds it.
    torn: bool,
}

impl Session {
    /// A session with room for `n_ctx` tokens, one state per layer of the given kinds, KV caches of `types`; an
    /// error where the memory cannot be allocated (`-c 100000000000`) instead of an abort in the allocator.
    pub fn try_new(kinds: &[LayerStateKind], n_ctx: usize, types: KvTypes) -> Result<Session> {
        let mut layers = Vec::with_capacity(kinds.len());
        for &k in kinds {
            layers.push(LayerState::try_new(k, n_ctx, types).ok_or_else(|| {
                let bytes: u128 = kinds.iter().map(|k| k.bytes(n_ctx, types) as u128).sum();
                Error::Invalid(format!(
                    "a KV cache of {n_ctx} tokens needs {:.1} GiB, which cannot be allocated: lower --ctx-size",
                    bytes as f64 / (1u64 << 30) as f64
                ))
            })?);
        }
        Ok(Session {
            layers,
            pos: 0,
            n_ctx,
            scratch: Scratch::default(),
            all_logits: Vec::new(),
            checkpoints: Vec::new(),
            torn: false,
        })
    }

    /// [`Session::try_new`] for sizes known to fit (tests, small contexts); panics where the memory cannot be had.
    pub fn new(kinds: &[LayerStateKind], n_ctx: usize, types: KvTypes) -> Session {
        Session::try_new(kinds, n_ctx, types).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Fails unless `n` more tokens fit.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if self.pos + n > self.n_ctx {
            if self.pos == 0 {
                return Err(Error::PromptTooLong { n_tokens: n, n_ctx: self.n_ctx });
            }
            return Err(Error::ContextFull { n_ctx: self.n_ctx });
        }
        Ok(())
    }

    /// Forgets every token (keeps the buffers and drops the checkpoints).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.torn = false;
        self.checkpoints.clear();
        for l in &mut self.layers {
            if let LayerState::DeltaNet(s) = l {
                s.clear();
            }
        }
    }

    /// Whether every layer's state can be rewound to any position (no recurrent layers).
    pub fn rewinds_anywhere(&self) -> bool {
        self.layers.iter().all(|l| matches!(l, LayerState::Kv(_)))
    }

    /// Remembers the recurrent states at the current position, so that [`Session::truncate`] can come back to
    /// it; the oldest checkpoint goes beyond [`CHECKPOINTS_MAX`]. Does nothing for a model without recurrent
    /// layers.
    pub fn checkpoint(&mut self) {
        if self.rewinds_anywhere() || self.checkpoints.iter().any(|c| c.pos == self.pos) {
            return;
        }
        let states = self
            .layers
            .iter()
            .map(|l| match l {
                LayerState::DeltaNet(s) => Some(s.clone()),
                LayerState::Kv(_) => None,
            })
            .collect();
        if self.checkpoints.len() == CHECKPOINTS_MAX {
            self.checkpoints.remove(0);
        }
        self.checkpoints.push(Checkpoint { pos: self.pos, states });
    }

    /// Rewinds to the first `n` tokens, or as close below `n` as the states allow, and returns the position
    /// reached: `n` itself when every layer is a KV cache; otherwise the latest checkpoint at or before `n`
    /// (0, an empty sequence, when there is none). The caller feeds the tokens from there to `n` again.
    pub fn truncate(&mut self, n: usize) -> usize {
        let n = n.min(self.pos);
        if self.rewinds_anywhere() || (n == self.pos && !self.torn) {
            self.pos = n;
            return n;
        }
        self.checkpoints.retain(|c| c.pos <= n);
        let Some(c) = self.checkpoints.last() else {
            self.reset();
            return 0;
        };
        for (l, saved) in self.layers.iter_mut().zip(&c.states) {
            if let (LayerState::DeltaNet(s), Some(saved)) = (l, saved) {
                s.clone_from(saved);
            }
        }
        self.pos = c.pos;
        self.torn = false;
        self.pos
    }

    /// Marks the recurrent states as part-updated by a failed step (see [`Session::check_whole`]).
    pub(crate) fn tear(&mut self) {
        if !self.rewinds_anywhere() {
            self.torn = true;
        }
    }

    /// Fails when a failed step left the recurrent states part-updated: a step from there would compute with a
    /// state that matches no sequence (a KV cache has no such problem: a step rewrites its position).
    pub fn check_whole(&self) -> Result<()> {
        if self.torn {
            return Err(Error::Invalid(format!(
                "a failed step left this session's recurrent state part-updated at position {}: truncate it to a \
                 checkpoint or reset it before going on",
                self.pos
            )));
        }
        Ok(())
    }

    /// Bytes of the per-layer states (KV caches and recurrent states), without checkpoints.
    pub fn kv_bytes(&self) -> usize {
        self.layers.iter().map(LayerState::bytes).sum()
    }
}
