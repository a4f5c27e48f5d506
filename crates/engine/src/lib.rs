//! The flash-moe engine: everything between a model file and the next token, on the CPU.
//!
//! # Data flow
//! file -> [`formats::WeightIndex`] (every tensor's type, shape, file, offset and length) -> resident weights +
//! [`experts::ExpertLayout`] -> an [`experts::ExpertProvider`] (all in RAM, or the streaming cache) ->
//! [`layers`] -> [`models::Model`] -> logits -> sampler -> tokens.
//!
//! # Layout
//! - `formats/`: GGUF and safetensors readers that build the weight index; they never read a whole file.
//! - `experts/`: where each expert's bytes are (layout, store), the providers that hand them to the MoE block
//!   (resident, cache), the read engines (io), the memory budget plan (budget), routing profiles (profile) and
//!   hot files for the warm start (warm).
//! - `approx`: the opt-in approximate expert selection (`--approx`), never on by default.
//! - `routes`: route traces (record; replay as a benchmark mode). `synth`: random-weight GGUFs of real shapes.
//! - `layers/`: attention, feed-forward, MoE, RoPE: stateless functions over weights and a session's state.
//! - `models/`: one file per family, the shared decoder, and the registry (one `match` on the architecture).
//! - `session`: the per-sequence state (KV cache, scratch); weights never hold state.
//! - `chat`: conversations through chat templates (tools, reasoning) and the model's output taken apart (tool
//!   calls in each family's syntax, forced tool calls).
//! - `batch`: continuous batching (several sequences per forward step) and the prefix cache for multi-turn reuse.
//! - `ops`, `pool`, `tensor`: the compute context (kernels + threads), the thread pool, aligned buffers.
//! - `fuzz`: entry points for the fuzz targets of `fuzz/` (any bytes in, no panic out).
//!
//! # Rules
//! Operating errors (bad files, bad input) return [`Error`]; programmer errors assert.

pub mod approx;
pub mod backend;
pub mod batch;
pub mod chat;
pub mod error;
pub mod experts;
pub mod formats;
pub mod fuzz;
pub mod generate;
pub mod ggml_exact;
pub mod kv_cache;
pub mod layers;
pub mod models;
pub mod ops;
pub mod perplexity;
pub mod pool;
pub mod routes;
pub mod runtime;
pub mod sample;
pub mod sample_defaults;
pub mod session;
pub mod synth;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
