//! All SIMD and `unsafe` of flash-moe lives here: the block quantization formats of GGUF, with a plain scalar
//! reference (`*_ref`) for every operation and faster versions for the instruction sets of the running CPU.
//!
//! # Main types
//! - [`DType`]: a tensor element type (F32, F16, BF16 and the GGUF block formats), with its block geometry.
//! - [`Kernels`]: the table of row kernels chosen once at start-up from the CPU's features (or forced with the
//!   environment variable `FLASH_MOE_ISA=scalar|avx2|avx512|neon`).
//!
//! # Layout
//! One file per block format (its block struct with a size assertion, `dequant_*_ref`, `dot_*_ref`, and the
//! activation quantizer when the format is a `vec_dot_type`); `x86/` and `aarch64/` hold the SIMD versions.
//!
//! # Rules
//! Kernels work on single rows, are single-threaded and never allocate: the engine splits rows across threads.
//! Every SIMD version is tested against its scalar twin.

mod dtype;

pub use dtype::DType;
mod dispatch;
pub use dispatch::{Isa, Kernels, VecDotFn};
