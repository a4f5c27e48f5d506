//! All SIMD and `unsafe` of flash-moe lives here: the block quantization formats of GGUF, with a plain scalar
//! reference (`*_ref`) for every operation and faster versions for the instruction sets of the running CPU.
//!
//! # Main types
//! - [`DType`]: a tensor element type (F32, F16, BF16 and the GGUF block formats), with its block geometry.
//! - [`Kernels`]: the table of row kernels chosen once at start-up from the CPU's features (or forced with the
//!   environment variable `FLASH_MOE_ISA=scalar|avx2|avx512|neon`): [`Kernels::vec_dot`],
//!   [`Kernels::vec_dot_x4`] (one weight row against four activation rows, bit-identical to four
//!   `vec_dot` calls), [`Kernels::vec_dot_r4`] (four weight rows against one activation row, for single-token
//!   decode; bit-identical to four `vec_dot` calls), [`Kernels::vec_dot_tile`] (four weight rows against one to
//!   four activation rows, where a format has it; bit-identical likewise), [`Kernels::dot_f32`] (the F32 dot
//!   on `f32` slices), [`Kernels::attn_scores`] and [`Kernels::attn_values`] (the f32 attention core, one
//!   arithmetic on every instruction set), [`Kernels::quantize_row`], [`Kernels::dequantize_row`].
//! - [`Isa`]: an instruction set a table can be built for.
//! - [`affine`]: MLX affine quantization (three planes: packed values, per-group scales and biases), its
//!   [`AffineFormat`] and the table's `affine_*` kernels: int8 [`DType::Q8_A`] activations by default
//!   (`affine_dot_q8*`), F32 activations on request (`affine_dot*`).
//!
//! # Semantics
//! As llama.cpp's CPU backend: a weight row of type `w` is dotted with an activation row quantized to
//! `w.vec_dot_type()` (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the k-quants), except that the
//! float weights F32, F16 and BF16 all take F32 activations (llama.cpp rounds them to F16/BF16, which costs
//! ~4e-3 relative on a bf16 model). Integer products are accumulated exactly; SIMD and scalar differ only in
//! f32 summation order.
//! The activation quantizers round half to even (as llama.cpp's AVX path, `_MM_ROUND_NEAREST`), and every SIMD
//! quantizer is bit-identical to its scalar twin. The weight quantizers are llama.cpp's `quantize_row_*_ref`
//! (bit-exact, including the k-quant scale searches), except Q8_0, which shares the activation quantizer.
//!
//! # Instruction-set coverage
//! | format | scalar | avx2 | avx512 | neon |
//! |---|---|---|---|---|
//! | Q4_K dot | ref | AVX2, block-total form (`avx2_kq.rs`) | VNNI, block-total form (`avx512_kq.rs`) | NEON, `sdot`* |
//! | Q6_K dot | ref | AVX2 | VNNI, block-total form (`avx512_kq.rs`) | NEON, `sdot`* |
//! | Q8_0, Q4_0 dot | ref | AVX2; Q8_0 with AVX-VNNI** | 256-bit VNNI | NEON, `sdot`* |
//! | Q4_1 dot | ref | AVX2 | = AVX2 | NEON, `sdot`* |
//! | Q5_0, Q5_1, Q5_K dot | ref | AVX2 | = AVX2 | NEON, `sdot`* |
//! | F32 dot | ref | AVX2 | = AVX2 | NEON |
//! | F16 x F32 dot | ref | AVX2 (F16C) | 512-bit (masked tail) | = scalar |
//! | BF16 x F32 dot | ref | AVX2 (shift) | 512-bit (masked tail) | NEON (shift) |
//! | Q4_K, Q6_K, Q8_0 four-row dot (`vec_dot_x4`) | 4 x ref | shared decode | shared decode (VNNI) | shared decode (`neon_tile.rs`), `sdot`* |
//! | Q4_1 four-row dot (`vec_dot_x4`) | 4 x ref | shared nibble expansion | = AVX2 | 4 x NEON |
//! | Q4_K, Q6_K, Q8_0 `vec_dot_r4` | 4 x ref | 4 rows a call, 4-way hsum | same (VNNI) | 4 rows a call, shared activation loads, `sdot`* |
//! | Q4_K tile (`vec_dot_tile`: 4 rows x 1-4 tokens) | - | four rows interleaved on the fly, block-total | VNNI, one body with the three above | one body with the two above, `sdot`* |
//! | Q6_K tile | - | - | VNNI, one body with the three above | one body with the two above, `sdot`* |
//! | Q8_0, Q5_0, Q4_1 tile (4 rows x 1-4 tokens) | - | Q8_0 with AVX-VNNI**: even blocks, then odd, one accumulator a pair, = the single-row dot | VNNI, two tokens per register, = the single-row dot (Q5_0, Q4_1: = AVX2's) | Q8_0: one body with the two above; Q5_0, Q4_1: - |
//! | other four-row and four-weight-row dots | 4 x ref | 4 x AVX2 | 4 x its single-row dot | 4 x NEON or scalar |
//! | attention core (`attn_scores`, `attn_values`, `attn_softmax`) | ref | AVX2 (= ref) | AVX-512 (= ref) | = ref |
//! | Q8_0, Q8_1, Q8_K quantize | ref | AVX2 | = AVX2 | NEON |
//! | F16, BF16 convert | ref | AVX2 | = AVX2 | = scalar |
//! | dequantize F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K | ref | AVX2 | = AVX2 | = scalar |
//! | weight quantizers, other dequantizers | ref | = scalar | = scalar | = scalar |
//!
//! \* Where the CPU has dotprod (detected when the table is built), the NEON integer dots form their exact sums
//! with `sdot`; otherwise, or in the table of the hidden `Kernels::without_dot_ext`, with `smull`/`sadalp`. Both
//! return the same bits (`aarch64/mod.rs`).
//!
//! \*\* Where the CPU has AVX-VNNI (Intel since Alder Lake, AMD since Zen 5; detected when the table is built), the
//! AVX2 table's Q8_0 kernels form their integer sums with `vpdpbusd` and add a tile (`x86/avx2_vnni.rs`); otherwise,
//! or in the table of `Kernels::without_dot_ext`, the plain AVX2 ones. Both return the same bits.
//!
//! The AVX-512 Q4_K and Q6_K family, and the AVX2 Q4_K one, sum each super-block's integer dot product exactly
//! and only then apply the f32 scales, one fused multiply-add per block (`q4_k::dot_q4_k_q8_k_blocks_ref` is
//! their scalar twin, so the two tables give Q4_K the same bits); every other family repeats its single-row
//! kernel's f32 operations lane for lane.
//!
//! # Layout
//! One file per block format (its block struct with a size assertion, `dequant_*_ref`, `dot_*_ref`, and the
//! quantizer); `f16.rs` for the float types; `attn.rs` for the attention core; `x86/` holds the AVX2 and AVX-512
//! versions (`avx2_x4.rs`, `avx512_x4.rs`: the four-row dots; `avx2_r4.rs`, `avx512_r4.rs`: the
//! four-weight-row dots; `avx512_kq.rs`: every shape of the AVX-512 Q4_K and Q6_K family; `attn_avx2.rs`),
//! `aarch64/` the NEON ones (`neon_tile.rs`: the four-row, four-weight-row and tile dots of Q4_K, Q6_K and Q8_0);
//! `shape.rs` the (row, token) lane layout both families of shared-work K-quant kernels use; `dispatch.rs` builds the
//! table.
//! `tests/kernels.rs` checks every path against the references, `tests/ggml_vectors.rs` the references against
//! golden vectors written by llama.cpp's own ggml code, and `examples/kernel_bench.rs` measures GB/s (gemv,
//! the four-row and four-weight-row dots against four single calls).
//!
//! # Rules
//! Kernels work on single rows, are single-threaded and never allocate: the engine splits rows across threads.
//! Every public kernel asserts its slice lengths before touching memory. Every SIMD version is tested against
//! its scalar twin; every four-row and four-weight-row dot is tested bit for bit against four single-row dots of
//! its table.

// Kernels index several arrays in lockstep with the indices of the format's spec (`qs[32 k + l]`, `y[64 k + l]`);
// iterator chains would hide that correspondence.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod affine;
pub mod attn;
mod dispatch;
mod dtype;
pub mod f16;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
mod shape;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use affine::{AffineFormat, AffineRow};
pub use attn::KvRows;
pub use dispatch::{f32_bytes, DequantizeFn, Isa, Kernels, QuantizeFn, VecDotFn, VecDotR4Fn, VecDotTileFn, VecDotX4Fn};
pub use dtype::DType;
pub use f16::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

/// A block struct that may be viewed in place inside a byte slice.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1 (only `u8`/`i8` arrays as fields) and accept every bit
/// pattern.
pub(crate) unsafe trait Block: Sized {}

/// Views `bytes` as a slice of blocks; panics unless `bytes` is a whole number of blocks.
pub(crate) fn blocks<B: Block>(bytes: &[u8]) -> &[B] {
    assert_eq!(std::mem::align_of::<B>(), 1);
    assert_eq!(bytes.len() % std::mem::size_of::<B>(), 0, "not a whole number of blocks");
    // SAFETY: B has alignment 1, accepts every bit pattern (Block's contract), and the slice covers exactly
    // bytes.len() bytes of the borrowed input.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / std::mem::size_of::<B>()) }
}

/// Views `bytes` as a mutable slice of blocks; panics unless `bytes` is a whole number of blocks.
pub(crate) fn blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    assert_eq!(std::mem::align_of::<B>(), 1);
    assert_eq!(bytes.len() % std::mem::size_of::<B>(), 0, "not a whole number of blocks");
    let n = bytes.len() / std::mem::size_of::<B>();
    // SAFETY: as in `blocks`; the exclusive borrow of `bytes` is moved into the returned slice.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), n) }
}

/// ggml's `nearest_int`: round to nearest, ties to even (for |x| < 2^22).
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Asks the CPU to bring `bytes` into its caches ahead of use: a hint (a prefetch never faults), with no effect on
/// any result. Matrix products call it for the weight rows they will need next, whose short per-row streams the
/// hardware prefetchers do not pick up in time (an expert's rows are a few blocks each).
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < bytes.len() {
            // SAFETY: `off` is inside `bytes`; a prefetch reads nothing architecturally and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(bytes.as_ptr().add(off).cast())
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
