//! What the kernel benchmarks share.

use kernels::{Isa, Kernels};

/// Every SIMD table of this CPU by name; NEON twice where the CPU has dotprod: base NEON (`neon`) and with its
/// `sdot` integer dots (`neon+sdot`), which give the same bits, so that their speeds can be compared.
pub fn simd_tables() -> Vec<(&'static str, Kernels)> {
    let mut tables = Vec::new();
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
        let Some(k) = Kernels::with_isa(isa) else { continue };
        if k.uses_sdot() {
            tables.push((isa.name(), k.without_sdot()));
            tables.push(("neon+sdot", k));
        } else {
            tables.push((isa.name(), k));
        }
    }
    tables
}
