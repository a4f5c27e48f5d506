//! The flash-moe engine: everything between a model file and the next token, on the CPU.
//!
//! # Data flow
//! file -> [`formats::WeightIndex`] (every tensor's type, shape, file, offset and length) -> resident weights +
//! expert store -> expert cache -> [`layers`] -> [`models`] -> logits -> [`sample::Sampler`] -> tokens.
//!
//! # Layout
//! - `formats/`: GGUF and safetensors readers that build the weight index; they never read a whole file.
//! - `tokenizer/`: Hugging Face `tokenizer.json` and the tokenizer embedded in GGUF metadata; chat templates.
//! - `layers/`: attention, feed-forward, MoE, norms: stateless functions over weights and a session's state.
//! - `models/`: one file per family and the registry (one `match` on the architecture).
//! - `session`: the per-sequence state (KV cache, scratch); weights never hold state.
//!
//! # Rules
//! Operating errors (bad files, bad input) return [`Error`]; programmer errors assert.

pub mod error;
pub mod formats;
pub mod sample;
pub mod tokenizer;

pub use error::{Error, Result};
