//! Where the shared-work K-quant kernels (`x86/avx512_kq.rs`, `aarch64/neon_tile.rs`) keep their (row, token)
//! pairs: a shape of `R` weight rows (1 or 4) by `T` activation rows (1 to 4) works on groups of four lanes.

/// The `(row, token)` pair of lane `i` of group `g`: with four rows, group `g` is token `g` and lane `i` row `i`;
/// with one row, group 0 holds the tokens (lanes from `T` on unused: `None`).
#[inline(always)]
pub(crate) fn lane<const R: usize, const T: usize>(g: usize, i: usize) -> Option<(usize, usize)> {
    const { assert!((R == 1 || R == 4) && 1 <= T && T <= 4, "tiles of 1 or 4 rows by 1 to 4 tokens") };
    if R == 4 {
        Some((i, g))
    } else if i < T {
        Some((0, i))
    } else {
        None
    }
}

/// The groups of a shape (see [`lane`]).
#[inline(always)]
pub(crate) fn n_groups<const R: usize, const T: usize>() -> usize {
    if R == 4 {
        T
    } else {
        1
    }
}
