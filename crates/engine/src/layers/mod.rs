//! The building blocks of a decoder layer, as stateless functions over weights and a session's state; their
//! arithmetic goes through [`crate::backend::Exec`].
//!
//! - [`attention`]: grouped-query self-attention with optional per-head q/k RMSNorm, biases, partial RoPE and an
//!   output gate, over a KV cache passed in by the caller.
//! - [`delta_net`]: the gated DeltaNet linear-attention mixer (Qwen3-Next), over a recurrent state passed in.
//! - [`ffn`]: the dense SwiGLU feed-forward block.
//! - [`moe`]: the routed mixture of experts (router, top-k, expert SwiGLUs whose weights come from an
//!   [`crate::experts::ExpertProvider`], an optional shared expert).
//! - [`rope`]: rotary position embeddings; [`routing`]: a router's parameters and decisions (plain data).

pub mod attention;
pub mod delta_net;
pub mod ffn;
pub mod moe;
pub mod rope;
pub mod routing;
