//! aarch64 NEON kernels and their table. NEON is part of the aarch64 baseline, so the base kernels run on every
//! aarch64 CPU. `neon.rs` holds the single-row dots and the quantizers; `neon_tile.rs` the Q4_K, Q6_K and Q8_0
//! dots that share work between rows (`vec_dot_x4`: each weight block decoded once for four tokens;
//! `vec_dot_r4`: each activation block loaded once for four rows; `vec_dot_tile`: four rows by one to four
//! tokens), each bit-identical to its single-row dot. The other formats' four-row dots are four single-row
//! calls and they have no tile. Formats without a NEON kernel (F16, whose vector conversions need Rust's
//! unstable `f16`) keep the scalar entries. The MLX affine kernels (`affine_neon.rs`) are chosen by
//! `Kernels::affine_dot_q8*` from the table's instruction set.
//!
//! The integer dots (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K in every shape, and the affine ones) come in
//! two variants from one body generic over `SDOT`: base NEON (`smull`, `sadalp`) and `sdot` (the dotprod
//! extension, ARMv8.2, optional before ARMv8.4). The table is built once with one or the other: `sdot` where
//! [`has_dotprod`] says the CPU has it (run-time detection, never a compile-time flag), recorded in the table
//! (`Kernels::uses_dot_ext`). The two variants return the same bits: only the exact integer sums are formed
//! differently, never the f32 arithmetic, so every shape stays bit-identical to `vec_dot` whichever variant the
//! table holds (`tests/kernels.rs`, `neon_sdot_kernels_are_bit_identical_to_base_neon`).

pub(crate) mod affine_neon;
mod neon;
mod neon_tile;

use crate::dispatch::{
    check_dot, check_dot_r4, check_dot_tile, check_dot_x4, r4_by_single, x4_by_single, Isa, Kernels,
};
use crate::dtype::DType;
use std::arch::aarch64::{int32x4_t, int8x16_t};

pub(crate) fn has_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// Whether this CPU has the dotprod extension (ARMv8.2's `sdot`, optional until ARMv8.4), which the `sdot`
/// variants of the integer dots need.
pub(crate) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `acc +` the four dot products of the 4-byte groups of `a` and `b`: lane `j` gains
/// `sum(a[4j + i] * b[4j + i], i < 4)`, exact (four products of at most 2^14 each). `sdot` of the dotprod
/// extension; its intrinsic is unstable in Rust, hence inline assembly, which enables the extension for its one
/// instruction (`.arch_extension`, scoped to the `asm!` block). So the helper inlines into any function, also one
/// compiled for base NEON alone (a generic body's `SDOT` instance that LLVM keeps out of line, as the four-row
/// shape shares one with a tile; a helper that enabled `dotprod` as a target feature could not inline there and
/// became a call per instruction), and it assembles in any build (an unoptimized one included).
///
/// # Safety
/// The CPU must have dotprod ([`has_dotprod`]).
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: one register-to-register instruction, which the caller guarantees this CPU has; touches no memory.
    unsafe {
        std::arch::asm!(".arch_extension dotprod", "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc,
            a = in(vreg) a, b = in(vreg) b, options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// `$m::dotprod::$f(..)` (`sdot`) when `$sdot`, else `$m::base::$f(..)`, for the entry points below.
macro_rules! variant {
    ($sdot:ident, $m:ident::$f:ident($($arg:expr),*)) => {
        if $sdot {
            // SAFETY: only reachable through a table built when has_neon() and has_dotprod() held (`table`);
            // lengths checked by the caller.
            unsafe { $m::dotprod::$f($($arg),*) }
        } else {
            // SAFETY: only reachable through a table built when has_neon() held; lengths checked by the caller.
            unsafe { $m::base::$f($($arg),*) }
        }
    };
}

/// Safe, length-checked entry points for `neon::$f` (`dot`, `quant`), only stored in tables built after
/// `has_neon()`, and for the integer dots (`int_dot`: `neon.rs`; `dot_x4`, `dot_r4`, `dot_tile`: `neon_tile.rs`),
/// generic over `SDOT`: their `sdot` variants where it is true.
macro_rules! neon_entry {
    (int_dot $name:ident, $w:expr, $f:ident) => {
        fn $name<const SDOT: bool>(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_dot($w, n, w, x);
            variant!(SDOT, neon::$f(n, w, x))
        }
    };
    (dot $name:ident, $w:expr, $f:ident) => {
        fn $name(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_dot($w, n, w, x);
            // SAFETY: only reachable through a table built when has_neon() held; lengths checked above.
            unsafe { neon::$f(n, w, x) }
        }
    };
    (dot_x4 $name:ident, $w:expr, $f:ident) => {
        fn $name<const SDOT: bool>(n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
            check_dot_x4($w, n, w, xs);
            variant!(SDOT, neon_tile::$f(n, w, xs, out))
        }
    };
    (dot_r4 $name:ident, $w:expr, $f:ident) => {
        fn $name<const SDOT: bool>(n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
            check_dot_r4($w, n, ws, x);
            variant!(SDOT, neon_tile::$f(n, ws, x, out))
        }
    };
    (dot_tile $name:ident, $w:expr, $f:ident) => {
        fn $name<const SDOT: bool>(n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
            check_dot_tile($w, n, ws, xs);
            variant!(SDOT, neon_tile::$f(n, ws, xs, out))
        }
    };
    (quant $name:ident, $f:ident) => {
        fn $name(x: &[f32], dst: &mut [u8]) {
            // SAFETY: only reachable through a table built when has_neon() held; lengths are checked by the
            // caller (Kernels::quantize_row), and the kernel only indexes within the slices.
            unsafe { neon::$f(x, dst) }
        }
    };
}

neon_entry!(dot dot_f32, DType::F32, dot_f32);
neon_entry!(dot dot_bf16, DType::BF16, dot_bf16_f32);
neon_entry!(int_dot dot_q4_0, DType::Q4_0, dot_q4_0_q8_0);
neon_entry!(int_dot dot_q4_1, DType::Q4_1, dot_q4_1_q8_1);
neon_entry!(int_dot dot_q8_0, DType::Q8_0, dot_q8_0_q8_0);
neon_entry!(int_dot dot_q5_0, DType::Q5_0, dot_q5_0_q8_0);
neon_entry!(int_dot dot_q5_1, DType::Q5_1, dot_q5_1_q8_1);
neon_entry!(int_dot dot_q5_k, DType::Q5_K, dot_q5_k_q8_k);
neon_entry!(int_dot dot_q4_k, DType::Q4_K, dot_q4_k_q8_k);
neon_entry!(int_dot dot_q6_k, DType::Q6_K, dot_q6_k_q8_k);
x4_by_single!(dot_f32_x4, dot_f32);
x4_by_single!(dot_bf16_x4, dot_bf16);
x4_by_single!(dot_q4_0_x4<const SDOT: bool>, dot_q4_0::<SDOT>);
x4_by_single!(dot_q4_1_x4<const SDOT: bool>, dot_q4_1::<SDOT>);
x4_by_single!(dot_q5_0_x4<const SDOT: bool>, dot_q5_0::<SDOT>);
x4_by_single!(dot_q5_1_x4<const SDOT: bool>, dot_q5_1::<SDOT>);
x4_by_single!(dot_q5_k_x4<const SDOT: bool>, dot_q5_k::<SDOT>);
r4_by_single!(dot_f32_r4, dot_f32);
r4_by_single!(dot_bf16_r4, dot_bf16);
r4_by_single!(dot_q4_0_r4<const SDOT: bool>, dot_q4_0::<SDOT>);
r4_by_single!(dot_q4_1_r4<const SDOT: bool>, dot_q4_1::<SDOT>);
r4_by_single!(dot_q5_0_r4<const SDOT: bool>, dot_q5_0::<SDOT>);
r4_by_single!(dot_q5_1_r4<const SDOT: bool>, dot_q5_1::<SDOT>);
r4_by_single!(dot_q5_k_r4<const SDOT: bool>, dot_q5_k::<SDOT>);
neon_entry!(dot_x4 dot_q8_0_x4, DType::Q8_0, dot_q8_0_q8_0_x4);
neon_entry!(dot_x4 dot_q4_k_x4, DType::Q4_K, dot_q4_k_q8_k_x4);
neon_entry!(dot_x4 dot_q6_k_x4, DType::Q6_K, dot_q6_k_q8_k_x4);
neon_entry!(dot_r4 dot_q8_0_r4, DType::Q8_0, dot_q8_0_q8_0_r4);
neon_entry!(dot_r4 dot_q4_k_r4, DType::Q4_K, dot_q4_k_q8_k_r4);
neon_entry!(dot_r4 dot_q6_k_r4, DType::Q6_K, dot_q6_k_q8_k_r4);
neon_entry!(dot_tile dot_q8_0_tile, DType::Q8_0, dot_q8_0_q8_0_tile);
neon_entry!(dot_tile dot_q4_k_tile, DType::Q4_K, dot_q4_k_q8_k_tile);
neon_entry!(dot_tile dot_q6_k_tile, DType::Q6_K, dot_q6_k_q8_k_tile);
neon_entry!(quant quantize_q8_0, quantize_q8_0);
neon_entry!(quant quantize_q8_1, quantize_q8_1);
neon_entry!(quant quantize_q8_k, quantize_q8_k);

/// The NEON table, starting from the scalar one; with the `sdot` variants of the integer dots when `sdot` (which
/// needs a CPU with dotprod).
pub(crate) fn table(scalar: Kernels, sdot: bool) -> Kernels {
    assert!(has_neon(), "NEON table requested on a CPU without NEON");
    if sdot {
        assert!(has_dotprod(), "NEON sdot table requested on a CPU without dotprod");
        table_of::<true>(scalar)
    } else {
        table_of::<false>(scalar)
    }
}

/// [`table`] with `SDOT` fixed: one list of entries for both variants.
fn table_of<const SDOT: bool>(scalar: Kernels) -> Kernels {
    let mut k = scalar.with_isa_tag(Isa::Neon).with_dot_ext(SDOT);
    // Each single-row dot with its four-row twins: they must come from the same instruction set (Q8_0, Q4_K,
    // Q6_K: the shared kernels of neon_tile.rs; the others: four single calls).
    let dots: [(DType, crate::VecDotFn, crate::VecDotX4Fn, crate::VecDotR4Fn); 10] = [
        (DType::Q5_0, dot_q5_0::<SDOT>, dot_q5_0_x4::<SDOT>, dot_q5_0_r4::<SDOT>),
        (DType::Q5_1, dot_q5_1::<SDOT>, dot_q5_1_x4::<SDOT>, dot_q5_1_r4::<SDOT>),
        (DType::Q5_K, dot_q5_k::<SDOT>, dot_q5_k_x4::<SDOT>, dot_q5_k_r4::<SDOT>),
        (DType::F32, dot_f32, dot_f32_x4, dot_f32_r4),
        (DType::BF16, dot_bf16, dot_bf16_x4, dot_bf16_r4),
        (DType::Q4_0, dot_q4_0::<SDOT>, dot_q4_0_x4::<SDOT>, dot_q4_0_r4::<SDOT>),
        (DType::Q4_1, dot_q4_1::<SDOT>, dot_q4_1_x4::<SDOT>, dot_q4_1_r4::<SDOT>),
        (DType::Q8_0, dot_q8_0::<SDOT>, dot_q8_0_x4::<SDOT>, dot_q8_0_r4::<SDOT>),
        (DType::Q4_K, dot_q4_k::<SDOT>, dot_q4_k_x4::<SDOT>, dot_q4_k_r4::<SDOT>),
        (DType::Q6_K, dot_q6_k::<SDOT>, dot_q6_k_x4::<SDOT>, dot_q6_k_r4::<SDOT>),
    ];
    for (t, f, f4, r4) in dots {
        k.dot[t.index()] = Some(f);
        k.dot_x4[t.index()] = Some(f4);
        k.dot_r4[t.index()] = Some(r4);
    }
    // The tiles repeat the single-row kernels' arithmetic (neon_tile.rs), so they too are bit-identical.
    let tiles: [(DType, crate::VecDotTileFn); 3] = [
        (DType::Q8_0, dot_q8_0_tile::<SDOT>),
        (DType::Q4_K, dot_q4_k_tile::<SDOT>),
        (DType::Q6_K, dot_q6_k_tile::<SDOT>),
    ];
    for (t, f) in tiles {
        k.dot_tile[t.index()] = Some(f);
    }
    let quants: [(DType, crate::dispatch::QuantizeFn); 3] =
        [(DType::Q8_0, quantize_q8_0), (DType::Q8_1, quantize_q8_1), (DType::Q8_K, quantize_q8_k)];
    for (t, f) in quants {
        k.quantize[t.index()] = f;
    }
    k
}
