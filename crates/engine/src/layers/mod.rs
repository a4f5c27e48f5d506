//! The building blocks of a decoder layer, as stateless functions over weights and a session's state.
//!
//! - [`attention`]: grouped-query self-attention with optional per-head q/k RMSNorm and biases, RoPE and a KV
//!   cache passed in by the caller.
//! - [`ffn`]: the dense SwiGLU feed-forward block.
//! - [`moe`]: the routed mixture of experts (router, top-k, expert SwiGLUs whose weights come from an
//!   [`crate::experts::ExpertProvider`]).
//! - [`rope`]: rotary position embeddings.

pub mod attention;
pub mod ffn;
pub mod moe;
pub mod rope;
