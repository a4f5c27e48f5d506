//! What the kernel benchmarks share.

use kernels::{Isa, Kernels};

/// Every SIMD table of this CPU by name; twice where the CPU has an integer dot-product extension: NEON base and
/// with `sdot` (`neon+sdot`), AVX2 plain and with AVX-VNNI (`avx2+vnni`), which give the same bits, so that their
/// speeds can be compared.
pub fn simd_tables() -> Vec<(&'static str, Kernels)> {
    let mut tables = Vec::new();
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
        let Some(k) = Kernels::with_isa(isa) else { continue };
        if k.uses_dot_ext() {
            tables.push((isa.name(), k.without_dot_ext()));
            tables.push((k.name(), k));
        } else {
            tables.push((isa.name(), k));
        }
    }
    tables
}
