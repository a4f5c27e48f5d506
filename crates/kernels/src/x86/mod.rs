//! x86-64 SIMD kernels: CPU feature checks and the AVX2 / AVX-512 tables. Every table entry is a safe,
//! length-checked wrapper around a `#[target_feature]` kernel; a table is only built after its features were
//! detected, which is what makes the wrappers' `unsafe` calls sound.

pub(crate) mod affine_avx2;
mod attn_avx2;
mod attn_avx512;
mod avx2;
mod avx2_kq;
mod avx2_r4;
mod avx2_vnni;
mod avx2_x4;
mod avx512;
mod avx512_kq;
mod avx512_q4_1_tile;
mod avx512_q8_tile;
mod avx512_r4;
mod avx512_x4;

use crate::dispatch::{
    check_dot, check_dot_r4, check_dot_tile, check_dot_x4, r4_by_single, x4_by_single, Isa, Kernels,
};
use crate::dtype::DType;

pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// AVX-VNNI: `vpdpbusd` on 256-bit registers without AVX-512 (Intel since Alder Lake, AMD since Zen 5).
pub(crate) fn has_avx_vnni() -> bool {
    has_avx2() && is_x86_feature_detected!("avxvnni")
}

pub(crate) fn has_avx512() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Safe entry points for `avx2::$f`, only ever stored in tables built after `has_avx2()`.
macro_rules! avx2_entry {
    (dot $name:ident, $w:expr, $f:ident) => {
        pub(super) fn $name(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_dot($w, n, w, x);
            // SAFETY: only reachable through a table built when has_avx2() held; lengths checked above.
            unsafe { avx2::$f(n, w, x) }
        }
    };
    (quant $name:ident, $f:ident) => {
        pub(super) fn $name(x: &[f32], dst: &mut [u8]) {
            // SAFETY: only reachable through a table built when has_avx2() held; lengths are checked by the
            // caller (Kernels::quantize_row), and the kernel only indexes within the slices.
            unsafe { avx2::$f(x, dst) }
        }
    };
    (dot_x4 $name:ident, $w:expr, $f:ident) => {
        pub(super) fn $name(n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
            check_dot_x4($w, n, w, xs);
            // SAFETY: only reachable through a table built when has_avx2() held; lengths checked above.
            unsafe { avx2_x4::$f(n, w, xs, out) }
        }
    };
    (dot_r4 $name:ident, $w:expr, $f:ident) => {
        pub(super) fn $name(n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
            check_dot_r4($w, n, ws, x);
            // SAFETY: only reachable through a table built when has_avx2() held; lengths checked above.
            unsafe { avx2_r4::$f(n, ws, x, out) }
        }
    };
    // One family of kernels (a path) in every shape: single, x4, r4 and tile. Its module says which features its
    // table checked (has_avx2(); has_avx_vnni() for `vnni_entries`).
    (family $w:expr, $single:ident: $f:path, $x4:ident: $f4:path, $r4:ident: $fr4:path, $tile:ident: $ft:path) => {
        pub(super) fn $single(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_dot($w, n, w, x);
            // SAFETY: only reachable through a table built when the CPU had the kernels' features (the module's
            // check); lengths checked above.
            unsafe { $f(n, w, x) }
        }
        pub(super) fn $x4(n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
            check_dot_x4($w, n, w, xs);
            // SAFETY: as above.
            unsafe { $f4(n, w, xs, out) }
        }
        pub(super) fn $r4(n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
            check_dot_r4($w, n, ws, x);
            // SAFETY: as above.
            unsafe { $fr4(n, ws, x, out) }
        }
        pub(super) fn $tile(n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
            check_dot_tile($w, n, ws, xs);
            // SAFETY: as above.
            unsafe { $ft(n, ws, xs, out) }
        }
    };
}

/// Safe dequantizer entry points for `avx2::$f`.
macro_rules! avx2_dequant_entry {
    ($name:ident, $f:ident) => {
        pub(super) fn $name(src: &[u8], dst: &mut [f32]) {
            // SAFETY: only reachable through a table built when has_avx2() held; lengths are checked by the
            // caller (Kernels::dequantize_row), and the kernel only indexes within the slices.
            unsafe { avx2::$f(src, dst) }
        }
    };
}

/// Safe entry points for the AVX-512 kernel `$f` (a path), only ever stored in tables built after
/// `has_avx512()`.
macro_rules! avx512_entry {
    (dot $name:ident, $w:expr, $f:path) => {
        pub(super) fn $name(n: usize, w: &[u8], x: &[u8]) -> f32 {
            check_dot($w, n, w, x);
            // SAFETY: only reachable through a table built when has_avx512() held; lengths checked above.
            unsafe { $f(n, w, x) }
        }
    };
    (dot_x4 $name:ident, $w:expr, $f:path) => {
        pub(super) fn $name(n: usize, w: &[u8], xs: [&[u8]; 4], out: &mut [f32; 4]) {
            check_dot_x4($w, n, w, xs);
            // SAFETY: only reachable through a table built when has_avx512() held; lengths checked above.
            unsafe { $f(n, w, xs, out) }
        }
    };
    (dot_r4 $name:ident, $w:expr, $f:path) => {
        pub(super) fn $name(n: usize, ws: [&[u8]; 4], x: &[u8], out: &mut [f32; 4]) {
            check_dot_r4($w, n, ws, x);
            // SAFETY: only reachable through a table built when has_avx512() held; lengths checked above.
            unsafe { $f(n, ws, x, out) }
        }
    };
    (dot_tile $name:ident, $w:expr, $f:path) => {
        pub(super) fn $name(n: usize, ws: [&[u8]; 4], xs: &[&[u8]], out: &mut [[f32; 4]; 4]) {
            check_dot_tile($w, n, ws, xs);
            // SAFETY: only reachable through a table built when has_avx512() held; lengths checked above.
            unsafe { $f(n, ws, xs, out) }
        }
    };
}

mod avx2_entries {
    use super::*;
    avx2_entry!(family DType::Q4_K,
        dot_q4_k: avx2_kq::dot_q4_k_q8_k,
        dot_q4_k_x4: avx2_kq::dot_q4_k_q8_k_x4,
        dot_q4_k_r4: avx2_kq::dot_q4_k_q8_k_r4,
        dot_q4_k_tile: avx2_kq::dot_q4_k_q8_k_tile);
    avx2_entry!(dot dot_f32, DType::F32, dot_f32);
    avx2_entry!(dot dot_f16, DType::F16, dot_f16_f32);
    avx2_entry!(dot dot_bf16, DType::BF16, dot_bf16_f32);
    avx2_entry!(dot dot_q4_0, DType::Q4_0, dot_q4_0_q8_0);
    avx2_entry!(dot dot_q4_1, DType::Q4_1, dot_q4_1_q8_1);
    avx2_entry!(dot dot_q5_0, DType::Q5_0, dot_q5_0_q8_0);
    avx2_entry!(dot dot_q5_1, DType::Q5_1, dot_q5_1_q8_1);
    avx2_entry!(dot dot_q8_0, DType::Q8_0, dot_q8_0_q8_0);
    avx2_entry!(dot dot_q5_k, DType::Q5_K, dot_q5_k_q8_k);
    avx2_entry!(dot dot_q6_k, DType::Q6_K, dot_q6_k_q8_k);
    avx2_entry!(dot_x4 dot_q8_0_x4, DType::Q8_0, dot_q8_0_q8_0_x4);
    avx2_entry!(dot_x4 dot_q6_k_x4, DType::Q6_K, dot_q6_k_q8_k_x4);
    x4_by_single!(dot_f32_x4, dot_f32);
    x4_by_single!(dot_f16_x4, dot_f16);
    x4_by_single!(dot_bf16_x4, dot_bf16);
    x4_by_single!(dot_q4_0_x4, dot_q4_0);
    avx2_entry!(dot_x4 dot_q4_1_x4, DType::Q4_1, dot_q4_1_q8_1_x4);
    x4_by_single!(dot_q5_0_x4, dot_q5_0);
    x4_by_single!(dot_q5_1_x4, dot_q5_1);
    x4_by_single!(dot_q5_k_x4, dot_q5_k);
    avx2_entry!(dot_r4 dot_q8_0_r4, DType::Q8_0, dot_q8_0_q8_0_r4);
    avx2_entry!(dot_r4 dot_q6_k_r4, DType::Q6_K, dot_q6_k_q8_k_r4);
    r4_by_single!(dot_f32_r4, dot_f32);
    r4_by_single!(dot_f16_r4, dot_f16);
    r4_by_single!(dot_bf16_r4, dot_bf16);
    r4_by_single!(dot_q4_0_r4, dot_q4_0);
    r4_by_single!(dot_q4_1_r4, dot_q4_1);
    r4_by_single!(dot_q5_0_r4, dot_q5_0);
    r4_by_single!(dot_q5_1_r4, dot_q5_1);
    r4_by_single!(dot_q5_k_r4, dot_q5_k);
    avx2_entry!(quant quantize_f16, quantize_f16);
    avx2_entry!(quant quantize_bf16, quantize_bf16);
    avx2_entry!(quant quantize_q8_0, quantize_q8_0);
    avx2_entry!(quant quantize_q8_1, quantize_q8_1);
    avx2_entry!(quant quantize_q8_k, quantize_q8_k);
    avx2_dequant_entry!(dequant_f16, dequant_f16);
    avx2_dequant_entry!(dequant_bf16, dequant_bf16);
    avx2_dequant_entry!(dequant_q8_0, dequant_q8_0);
    avx2_dequant_entry!(dequant_q4_0, dequant_q4_0);
    avx2_dequant_entry!(dequant_q4_k, dequant_q4_k);
    avx2_dequant_entry!(dequant_q6_k, dequant_q6_k);
}

/// Safe entry points for the AVX-VNNI kernels: the `family` arm of `avx2_entry!`, only ever stored in tables built
/// after `has_avx_vnni()` (which implies `has_avx2()`).
mod vnni_entries {
    use super::*;
    avx2_entry!(family DType::Q8_0,
        dot_q8_0: avx2_vnni::dot_q8_0_q8_0,
        dot_q8_0_x4: avx2_vnni::dot_q8_0_q8_0_x4,
        dot_q8_0_r4: avx2_vnni::dot_q8_0_q8_0_r4,
        dot_q8_0_tile: avx2_vnni::dot_q8_0_q8_0_tile);
}

mod avx512_entries {
    use super::*;
    avx512_entry!(dot dot_f16, DType::F16, avx512::dot_f16_f32);
    avx512_entry!(dot dot_bf16, DType::BF16, avx512::dot_bf16_f32);
    avx512_entry!(dot dot_q8_0, DType::Q8_0, avx512::dot_q8_0_q8_0);
    avx512_entry!(dot dot_q4_0, DType::Q4_0, avx512::dot_q4_0_q8_0);
    avx512_entry!(dot dot_q4_k, DType::Q4_K, avx512_kq::dot_q4_k_q8_k);
    avx512_entry!(dot dot_q6_k, DType::Q6_K, avx512_kq::dot_q6_k_q8_k);
    avx512_entry!(dot_x4 dot_q8_0_x4, DType::Q8_0, avx512_x4::dot_q8_0_q8_0_x4);
    avx512_entry!(dot_x4 dot_q4_k_x4, DType::Q4_K, avx512_kq::dot_q4_k_q8_k_x4);
    avx512_entry!(dot_x4 dot_q6_k_x4, DType::Q6_K, avx512_kq::dot_q6_k_q8_k_x4);
    x4_by_single!(dot_f16_x4, dot_f16);
    x4_by_single!(dot_bf16_x4, dot_bf16);
    x4_by_single!(dot_q4_0_x4, dot_q4_0);
    avx512_entry!(dot_r4 dot_q8_0_r4, DType::Q8_0, avx512_r4::dot_q8_0_q8_0_r4);
    avx512_entry!(dot_r4 dot_q4_k_r4, DType::Q4_K, avx512_kq::dot_q4_k_q8_k_r4);
    avx512_entry!(dot_r4 dot_q6_k_r4, DType::Q6_K, avx512_kq::dot_q6_k_q8_k_r4);
    r4_by_single!(dot_f16_r4, dot_f16);
    r4_by_single!(dot_bf16_r4, dot_bf16);
    r4_by_single!(dot_q4_0_r4, dot_q4_0);
    avx512_entry!(dot_tile dot_q4_k_tile, DType::Q4_K, avx512_kq::dot_q4_k_q8_k_tile);
    avx512_entry!(dot_tile dot_q6_k_tile, DType::Q6_K, avx512_kq::dot_q6_k_q8_k_tile);
    avx512_entry!(dot_tile dot_q8_0_tile, DType::Q8_0, avx512_q8_tile::dot_q8_0_q8_0_tile);
    avx512_entry!(dot_tile dot_q4_1_tile, DType::Q4_1, avx512_q4_1_tile::dot_q4_1_q8_1_tile);
    avx512_entry!(dot_tile dot_q5_0_tile, DType::Q5_0, avx512_q8_tile::dot_q5_0_q8_0_tile);
}

/// Safe entry points for the attention core: AVX2 ones only stored in tables built after `has_avx2()`, AVX-512
/// ones after `has_avx512()`.
mod attn_entries {
    use super::{attn_avx2, attn_avx512};
    use crate::attn::KvRows;

    pub(super) fn attn_scores_512(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
        // SAFETY: only reachable through a table built when has_avx512() held; the kernel checks its slices.
        unsafe { attn_avx512::attn_scores(q, keys, scale, scores, ld) }
    }

    pub(super) fn attn_values_512(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { attn_avx512::attn_values(p, ld, values, out) }
    }

    pub(super) fn attn_softmax_512(x: &mut [f32]) {
        // SAFETY: as above.
        unsafe { attn_avx512::attn_softmax(x) }
    }

    pub(super) fn attn_softmax(x: &mut [f32]) {
        // SAFETY: only reachable through a table built when has_avx2() held.
        unsafe { attn_avx2::attn_softmax(x) }
    }

    pub(super) fn attn_scores(q: &[f32], keys: KvRows<'_>, scale: f32, scores: &mut [f32], ld: usize) {
        // SAFETY: only reachable through a table built when has_avx2() held; the kernel checks its slices.
        unsafe { attn_avx2::attn_scores(q, keys, scale, scores, ld) }
    }

    pub(super) fn attn_values(p: &[f32], ld: usize, values: KvRows<'_>, out: &mut [f32]) {
        // SAFETY: as above.
        unsafe { attn_avx2::attn_values(p, ld, values, out) }
    }
}

/// The table for `isa` (Avx2 or Avx512), starting from the scalar one for formats without a SIMD kernel; with
/// `vnni` (the CPU has AVX-VNNI), an AVX2 table's Q8_0 kernels form their integer sums with it (same bits).
pub(crate) fn table(isa: Isa, scalar: Kernels, vnni: bool) -> Kernels {
    use avx2_entries as a2;
    assert!(has_avx2(), "AVX2 table requested on a CPU without AVX2/FMA/F16C");
    let mut k = scalar.with_isa_tag(isa);
    // Each single-row dot with its four-row twins: they must come from the same instruction set.
    let dots: [(DType, crate::VecDotFn, crate::VecDotX4Fn, crate::VecDotR4Fn); 11] = [
        (DType::F32, a2::dot_f32, a2::dot_f32_x4, a2::dot_f32_r4),
        (DType::F16, a2::dot_f16, a2::dot_f16_x4, a2::dot_f16_r4),
        (DType::BF16, a2::dot_bf16, a2::dot_bf16_x4, a2::dot_bf16_r4),
        (DType::Q4_0, a2::dot_q4_0, a2::dot_q4_0_x4, a2::dot_q4_0_r4),
        (DType::Q4_1, a2::dot_q4_1, a2::dot_q4_1_x4, a2::dot_q4_1_r4),
        (DType::Q5_0, a2::dot_q5_0, a2::dot_q5_0_x4, a2::dot_q5_0_r4),
        (DType::Q5_1, a2::dot_q5_1, a2::dot_q5_1_x4, a2::dot_q5_1_r4),
        (DType::Q8_0, a2::dot_q8_0, a2::dot_q8_0_x4, a2::dot_q8_0_r4),
        (DType::Q4_K, a2::dot_q4_k, a2::dot_q4_k_x4, a2::dot_q4_k_r4),
        (DType::Q5_K, a2::dot_q5_k, a2::dot_q5_k_x4, a2::dot_q5_k_r4),
        (DType::Q6_K, a2::dot_q6_k, a2::dot_q6_k_x4, a2::dot_q6_k_r4),
    ];
    for (t, f, f4, r4) in dots {
        k.dot[t.index()] = Some(f);
        k.dot_x4[t.index()] = Some(f4);
        k.dot_r4[t.index()] = Some(r4);
    }
    let quants: [(DType, crate::dispatch::QuantizeFn); 5] = [
        (DType::F16, a2::quantize_f16),
        (DType::BF16, a2::quantize_bf16),
        (DType::Q8_0, a2::quantize_q8_0),
        (DType::Q8_1, a2::quantize_q8_1),
        (DType::Q8_K, a2::quantize_q8_k),
    ];
    for (t, f) in quants {
        k.quantize[t.index()] = f;
    }
    let dequants: [(DType, crate::dispatch::DequantizeFn); 6] = [
        (DType::F16, a2::dequant_f16),
        (DType::BF16, a2::dequant_bf16),
        (DType::Q8_0, a2::dequant_q8_0),
        (DType::Q4_0, a2::dequant_q4_0),
        (DType::Q4_K, a2::dequant_q4_k),
        (DType::Q6_K, a2::dequant_q6_k),
    ];
    for (t, f) in dequants {
        k.dequantize[t.index()] = f;
    }
    // Q4_K: the block-total family (avx2_kq.rs), with a four-by-four tile for prompt batches.
    k.dot_tile[DType::Q4_K.index()] = Some(a2::dot_q4_k_tile);
    // Q8_0 with AVX-VNNI: the same arithmetic with `vpdpbusd` forming the integer sums, and a tile (avx2_vnni.rs).
    let vnni = vnni && isa == Isa::Avx2;
    if vnni {
        assert!(has_avx_vnni(), "AVX-VNNI kernels requested on a CPU without AVX-VNNI");
        use vnni_entries as v;
        let q = DType::Q8_0.index();
        k.dot[q] = Some(v::dot_q8_0);
        k.dot_x4[q] = Some(v::dot_q8_0_x4);
        k.dot_r4[q] = Some(v::dot_q8_0_r4);
        k.dot_tile[q] = Some(v::dot_q8_0_tile);
    }
    let mut k = k.with_dot_ext(vnni);
    k.attn_scores = attn_entries::attn_scores;
    k.attn_values = attn_entries::attn_values;
    k.attn_softmax = attn_entries::attn_softmax;
    if isa == Isa::Avx512 {
        use avx512_entries as a5;
        assert!(has_avx512(), "AVX-512 table requested on a CPU without AVX-512 F/BW/VL/VNNI");
        // Q4_K and Q6_K: the VNNI kernels in block-total form (avx512_kq.rs), with a four-by-four tile for prompt
        // batches. The entries of a format must come from one family of kernels to stay bit-identical.
        let dots: [(DType, crate::VecDotFn, crate::VecDotX4Fn, crate::VecDotR4Fn); 6] = [
            (DType::F16, a5::dot_f16, a5::dot_f16_x4, a5::dot_f16_r4),
            (DType::BF16, a5::dot_bf16, a5::dot_bf16_x4, a5::dot_bf16_r4),
            (DType::Q4_0, a5::dot_q4_0, a5::dot_q4_0_x4, a5::dot_q4_0_r4),
            (DType::Q8_0, a5::dot_q8_0, a5::dot_q8_0_x4, a5::dot_q8_0_r4),
            (DType::Q4_K, a5::dot_q4_k, a5::dot_q4_k_x4, a5::dot_q4_k_r4),
            (DType::Q6_K, a5::dot_q6_k, a5::dot_q6_k_x4, a5::dot_q6_k_r4),
        ];
        for (t, f, f4, r4) in dots {
            k.dot[t.index()] = Some(f);
            k.dot_x4[t.index()] = Some(f4);
            k.dot_r4[t.index()] = Some(r4);
            k.dot_tile[t.index()] = None;
        }
        k.dot_tile[DType::Q4_K.index()] = Some(a5::dot_q4_k_tile);
        k.dot_tile[DType::Q6_K.index()] = Some(a5::dot_q6_k_tile);
        k.dot_tile[DType::Q8_0.index()] = Some(a5::dot_q8_0_tile);
        // Q4_1 and Q5_0 keep the AVX2 single-row kernels; their tiles repeat those kernels' arithmetic.
        k.dot_tile[DType::Q4_1.index()] = Some(a5::dot_q4_1_tile);
        k.dot_tile[DType::Q5_0.index()] = Some(a5::dot_q5_0_tile);
        k.attn_scores = attn_entries::attn_scores_512;
        k.attn_values = attn_entries::attn_values_512;
        k.attn_softmax = attn_entries::attn_softmax_512;
    }
    k
}
