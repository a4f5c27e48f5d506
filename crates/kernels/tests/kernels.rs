//! Every kernel on every instruction set this CPU has, against the scalar references and against an f64 dot of
//! dequantized rows; exhaustive f16/bf16 conversion checks; quantizer round trips.

use kernels::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, DType, Isa, Kernels};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const WEIGHT_TYPES: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// Block counts: odd and even, single block, more than one SIMD unroll.
const N_BLOCKS: [usize; 5] = [1, 2, 3, 7, 16];

fn scalar() -> Kernels {
    Kernels::with_isa(Isa::Scalar).expect("scalar is always available")
}

fn simd_tables() -> Vec<Kernels> {
    Kernels::available_isas().into_iter().filter(|&i| i != Isa::Scalar).filter_map(Kernels::with_isa).collect()
}

/// Values per row for `n_blocks` blocks (float types get longer rows so SIMD tails are exercised).
fn row_len(t: DType, n_blocks: usize) -> usize {
    if t.block_elems() == 1 {
        n_blocks * 37
    } else {
        n_blocks * t.block_elems()
    }
}

/// Byte offsets of the f16 scale/min fields inside one block of `t`.
fn f16_fields(t: DType) -> &'static [usize] {
    match t {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => &[],
    }
}

fn random_f16(rng: &mut SmallRng) -> u16 {
    // Finite: any exponent but 31; scales in ggml files are positive or negative alike.
    loop {
        let h: u16 = rng.gen();
        if (h >> 10) & 0x1f != 31 {
            return h;
        }
    }
}

fn small_f16(rng: &mut SmallRng) -> u16 {
    f32_to_f16(rng.gen_range(-2.0f32..2.0) * 10f32.powi(rng.gen_range(-4..1)))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pattern {
    /// Random quants, realistic scales.
    Random,
    /// Random quants, random finite f16 scales over the whole f16 range (subnormals to 65504).
    WideScales,
    /// Zero scales.
    ZeroScales,
    /// Every quant byte set to one value (0x00, 0xff: extreme nibbles; 0x80/0x7f: extreme i8).
    Fill(u8),
}
const PATTERNS: [Pattern; 7] = [
    Pattern::Random,
    Pattern::WideScales,
    Pattern::ZeroScales,
    Pattern::Fill(0x00),
    Pattern::Fill(0xff),
    Pattern::Fill(0x80),
    Pattern::Fill(0x7f),
];

/// A weight row of `n` values of type `t`.
fn weight_row(rng: &mut SmallRng, t: DType, n: usize, pattern: Pattern) -> Vec<u8> {
    let bytes = t.row_bytes(n).expect("whole blocks");
    let mut row: Vec<u8> = (0..bytes).map(|_| rng.gen()).collect();
    match t {
        DType::F32 => {
            for c in row.chunks_exact_mut(4) {
                let v = match pattern {
                    Pattern::ZeroScales => 0.0,
                    Pattern::Fill(b) => b as f32 - 100.0,
                    Pattern::WideScales => rng.gen_range(-1e4f32..1e4),
                    Pattern::Random => rng.gen_range(-1.0f32..1.0),
                };
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 | DType::BF16 => {
            for c in row.chunks_exact_mut(2) {
                let h = match pattern {
                    Pattern::ZeroScales => 0,
                    Pattern::Fill(b) => u16::from_le_bytes([b, b & 0x3f]),
                    Pattern::WideScales if t == DType::F16 => random_f16(rng),
                    _ if t == DType::F16 => small_f16(rng),
                    _ => f32_to_bf16(rng.gen_range(-1e3f32..1e3)),
                };
                c.copy_from_slice(&h.to_le_bytes());
            }
        }
        _ => {
            let block_bytes = t.block_bytes();
            for block in row.chunks_exact_mut(block_bytes) {
                if let Pattern::Fill(b) = pattern {
                    block.fill(b);
                }
                for &off in f16_fields(t) {
                    let h = match pattern {
                        Pattern::ZeroScales => 0,
                        Pattern::WideScales => random_f16(rng),
                        _ => small_f16(rng),
                    };
                    block[off..off + 2].copy_from_slice(&h.to_le_bytes());
                }
            }
        }
    }
    row
}

/// An f32 activation row: random, or one of the edge cases (zeros, all equal, huge, mixed signs of equal size).
fn activations(rng: &mut SmallRng, n: usize, case: usize) -> Vec<f32> {
    match case {
        0 => (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect(),
        1 => vec![0.0; n],
        2 => vec![0.75; n],
        3 => (0..n).map(|i| if i % 3 == 0 { -3.5 } else { 3.5 }).collect(),
        // Large, but small enough that a Q8_1 block sum `s` (f16) cannot overflow, as in llama.cpp.
        4 => (0..n).map(|_| rng.gen_range(-1.0f32..1.0) * 1e3).collect(),
        _ => (0..n).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect(),
    }
}
const N_ACT_CASES: usize = 6;

fn dequant(k: &Kernels, t: DType, row: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    k.dequantize_row(t, row, &mut out);
    out
}

fn quant(k: &Kernels, t: DType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; t.row_bytes(x.len()).expect("whole blocks")];
    k.quantize_row(t, x, &mut out);
    out
}

/// Sum of the magnitudes of every partial product the kernels add up: `sum_i |x_i| * sum_parts |part_i|`, where
/// the parts of a weight are its scale term and (Q4_1/Q5_1/k-quants) its min term, dequantized separately by
/// zeroing the other field. Summation-order error of a correct kernel is a small multiple of f32 epsilon times
/// this (cancellation can make the result itself arbitrarily small, so it cannot be the yardstick).
fn magnitude(t: DType, w: &[u8], xd: &[f32]) -> f64 {
    let k = scalar();
    let n = xd.len();
    let fields = f16_fields(t);
    let parts: Vec<Vec<f32>> = if fields.len() < 2 {
        vec![dequant(&k, t, w, n)]
    } else {
        fields
            .iter()
            .map(|&keep| {
                let mut w = w.to_vec();
                for block in w.chunks_exact_mut(t.block_bytes()) {
                    for &off in fields.iter().filter(|&&o| o != keep) {
                        block[off..off + 2].fill(0);
                    }
                }
                dequant(&k, t, &w, n)
            })
            .collect()
    };
    (0..n).map(|i| xd[i].abs() as f64 * parts.iter().map(|p| p[i].abs() as f64).sum::<f64>()).sum()
}

/// (a) SIMD dot == scalar dot up to f32 summation order: |simd - ref| <= 1e-5 * magnitude. Integer sums are
/// exact in both; each kernel adds at most a few dozen f32 terms per lane chain, each rounding by 2^-24, so
/// 1e-5 (~170 ulps of the magnitude) is a generous bound that still catches any wrong quant or scale.
#[test]
fn simd_dot_matches_scalar() {
    let mut rng = SmallRng::seed_from_u64(1);
    let s = scalar();
    for k in simd_tables() {
        for t in WEIGHT_TYPES {
            for nb in N_BLOCKS {
                let n = row_len(t, nb);
                for pattern in PATTERNS {
                    for case in 0..N_ACT_CASES {
                        let w = weight_row(&mut rng, t, n, pattern);
                        let x = activations(&mut rng, n, case);
                        let xq = quant(&s, t.vec_dot_type(), &x);
                        let want = s.vec_dot(t)(n, &w, &xq);
                        let got = k.vec_dot(t)(n, &w, &xq);
                        let xd = dequant(&s, t.vec_dot_type(), &xq, n);
                        let tol = 1e-5 * magnitude(t, &w, &xd);
                        assert!(
                            ((got - want) as f64).abs() <= tol,
                            "{} {t:?} n={n} {pattern:?} case {case}: simd {got} scalar {want} tol {tol}",
                            k.isa().name()
                        );
                    }
                }
            }
        }
    }
}

/// Error budget of the scalar dot against the f64 dot of dequantized rows, as a fraction of the magnitude:
/// the references round each block's f32 product and sum (~1e-6). Q4_1/Q5_1 add the f16 rounding of the
/// activation block sum `s` (relative 2^-11) times the min term, bounded by 2^-11 of the magnitude.
fn dot_budget(t: DType) -> f64 {
    match t {
        DType::Q4_1 | DType::Q5_1 => 1e-5 + 1.0 / 2048.0,
        _ => 1e-5,
    }
}

/// (b) scalar dot vs an f64 dot of the dequantized weight and the dequantized activation.
#[test]
fn scalar_dot_matches_dequantized_f64_dot() {
    let mut rng = SmallRng::seed_from_u64(2);
    let s = scalar();
    for t in WEIGHT_TYPES {
        for nb in N_BLOCKS {
            let n = row_len(t, nb);
            for pattern in PATTERNS {
                for case in 0..N_ACT_CASES {
                    let w = weight_row(&mut rng, t, n, pattern);
                    let x = activations(&mut rng, n, case);
                    let xq = quant(&s, t.vec_dot_type(), &x);
                    let wd = dequant(&s, t, &w, n);
                    let xd = dequant(&s, t.vec_dot_type(), &xq, n);
                    let want: f64 = wd.iter().zip(&xd).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let got = s.vec_dot(t)(n, &w, &xq) as f64;
                    let tol = dot_budget(t) * magnitude(t, &w, &xd) + 1e-30;
                    assert!(
                        (got - want).abs() <= tol,
                        "{t:?} n={n} {pattern:?} case {case}: {got} vs {want} tol {tol}"
                    );
                }
            }
        }
    }
}

/// (c) Every quantizer of every table is bit-identical to the scalar one (the activation quantizers Q8_0, Q8_1,
/// Q8_K, F16, BF16 have SIMD versions; the weight quantizers are scalar everywhere).
#[test]
fn simd_quantize_is_bit_identical() {
    let mut rng = SmallRng::seed_from_u64(3);
    let s = scalar();
    for k in simd_tables() {
        for t in DType::ALL {
            for nb in N_BLOCKS {
                let n = row_len(t, nb);
                for case in 0..N_ACT_CASES {
                    let mut x = activations(&mut rng, n, case);
                    if case == 0 && n > 4 {
                        // A tie for the largest magnitude with opposite signs (Q8_K keeps the first).
                        x[n - 1] = 2.0;
                        x[1] = -2.0;
                    }
                    assert_eq!(quant(&k, t, &x), quant(&s, t, &x), "{} {t:?} n={n} case {case}", k.isa().name());
                }
            }
        }
    }
}

/// (d) SIMD dequantization equals the scalar one exactly.
#[test]
fn simd_dequantize_is_exact() {
    let mut rng = SmallRng::seed_from_u64(4);
    let s = scalar();
    for k in simd_tables() {
        for t in DType::ALL {
            for nb in N_BLOCKS {
                let n = row_len(t, nb);
                let row = if t.is_activation_only() {
                    quant(&s, t, &activations(&mut rng, n, 0))
                } else {
                    weight_row(&mut rng, t, n, Pattern::WideScales)
                };
                let (a, b) = (dequant(&k, t, &row, n), dequant(&s, t, &row, n));
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{} {t:?} n={n}", k.isa().name());
            }
        }
    }
}

/// A test that forces the scalar path and compares it with whatever `detect()` picks.
#[test]
fn detect_agrees_with_forced_scalar() {
    let mut rng = SmallRng::seed_from_u64(5);
    let (s, d) = (scalar(), Kernels::detect());
    assert_eq!(s.isa(), Isa::Scalar);
    assert!(Kernels::available_isas().contains(&d.isa()));
    assert_eq!(Kernels::available_isas()[0], Isa::Scalar);
    for t in WEIGHT_TYPES {
        let n = row_len(t, 16);
        let w = weight_row(&mut rng, t, n, Pattern::Random);
        let x = activations(&mut rng, n, 0);
        let (xs, xd) = (quant(&s, t.vec_dot_type(), &x), quant(&d, t.vec_dot_type(), &x));
        assert_eq!(xs, xd);
        let (a, b) = (s.vec_dot(t)(n, &w, &xs), d.vec_dot(t)(n, &w, &xd));
        let tol = 1e-5 * magnitude(t, &w, &dequant(&s, t.vec_dot_type(), &xs, n));
        assert!(((a - b) as f64).abs() <= tol, "{t:?}: scalar {a} detect {b}");
    }
}

/// F16 and BF16 weights against F32 activations at lengths around every SIMD step (1, 7, 8, 16, 32, 64 and
/// their tails): SIMD vs scalar within f32 summation error (1e-5 of the magnitude), and the scalar reference,
/// which forms each product exactly and sums in f64, within one f32 rounding of the exact f64 dot.
#[test]
fn half_float_dots_take_f32_activations() {
    let mut rng = SmallRng::seed_from_u64(9);
    let s = scalar();
    for t in [DType::F16, DType::BF16] {
        assert_eq!(t.vec_dot_type(), DType::F32);
        for n in [1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 257, 1000, 4099] {
            for pattern in [Pattern::Random, Pattern::WideScales, Pattern::ZeroScales] {
                let w = weight_row(&mut rng, t, n, pattern);
                let x = activations(&mut rng, n, if pattern == Pattern::ZeroScales { 0 } else { n % N_ACT_CASES });
                let xq = quant(&s, DType::F32, &x);
                let wd = dequant(&s, t, &w, n);
                let exact: f64 = wd.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = wd.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let want = s.vec_dot(t)(n, &w, &xq);
                assert!(
                    (want as f64 - exact).abs() <= 1e-7 * mag + 1e-37,
                    "{t:?} n={n} {pattern:?}: scalar {want} vs f64 {exact}"
                );
                for k in simd_tables() {
                    let got = k.vec_dot(t)(n, &w, &xq);
                    assert!(
                        ((got - want) as f64).abs() <= 1e-5 * mag,
                        "{} {t:?} n={n} {pattern:?}: simd {got} scalar {want} magnitude {mag}",
                        k.isa().name()
                    );
                }
            }
        }
    }
}

/// (g) The four-row dot of every table is BIT-IDENTICAL to four single-row dots of the same table (the engine's
/// batch == token-by-token invariant rests on it): every weight type, many block counts (odd ones exercise the
/// unpaired last block of the Q8_0 fold), every weight pattern, activation rows of different kinds.
#[test]
fn vec_dot_x4_is_bit_identical_to_four_single_dots() {
    let mut rng = SmallRng::seed_from_u64(10);
    let s = scalar();
    for k in Kernels::available_isas().into_iter().filter_map(Kernels::with_isa) {
        for t in WEIGHT_TYPES {
            for nb in [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 33] {
                let n = row_len(t, nb);
                for (p, pattern) in PATTERNS.into_iter().enumerate() {
                    for rep in 0..2 {
                        let w = weight_row(&mut rng, t, n, pattern);
                        let cases = if rep == 0 { [0, 4, 0, 4] } else { [0, 1, 2, 3].map(|i| (i + p) % N_ACT_CASES) };
                        let xs = cases.map(|c| quant(&s, t.vec_dot_type(), &activations(&mut rng, n, c)));
                        let rows = [&xs[0][..], &xs[1][..], &xs[2][..], &xs[3][..]];
                        let mut out = [f32::NAN; 4];
                        k.vec_dot_x4(t)(n, &w, rows, &mut out);
                        for (i, row) in rows.into_iter().enumerate() {
                            let want = k.vec_dot(t)(n, &w, row);
                            assert_eq!(
                                out[i].to_bits(),
                                want.to_bits(),
                                "{} {t:?} n={n} {pattern:?} row {i}: x4 {} single {want}",
                                k.isa().name(),
                                out[i]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
#[should_panic(expected = "needs")]
fn dot_x4_rejects_a_short_activation_row() {
    let k = Kernels::detect();
    let w = vec![0u8; DType::Q4_K.block_bytes()];
    let (x, short) = (vec![0u8; DType::Q8_K.block_bytes()], vec![0u8; DType::Q8_K.block_bytes() - 1]);
    k.vec_dot_x4(DType::Q4_K)(256, &w, [&x, &x, &short, &x], &mut [0.0; 4]);
}

/// `vec_dot_r4` (four weight rows, one activation row) must equal four `vec_dot` calls of the same table BIT
/// FOR BIT: every weight type, many block counts, rows of mixed weight patterns, activations of every kind.
#[test]
fn vec_dot_r4_is_bit_identical_to_four_single_dots() {
    let mut rng = SmallRng::seed_from_u64(11);
    let s = scalar();
    for k in Kernels::available_isas().into_iter().filter_map(Kernels::with_isa) {
        for t in WEIGHT_TYPES {
            for nb in [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 33] {
                let n = row_len(t, nb);
                for p in 0..PATTERNS.len() {
                    for rep in 0..2 {
                        // Rep 0: four rows of one pattern; rep 1: four different patterns side by side.
                        let pats = [0, 1, 2, 3].map(|i| PATTERNS[if rep == 0 { p } else { (p + i) % PATTERNS.len() }]);
                        let ws = pats.map(|pattern| weight_row(&mut rng, t, n, pattern));
                        let case = if rep == 0 { [0, 4][p % 2] } else { p % N_ACT_CASES };
                        let x = quant(&s, t.vec_dot_type(), &activations(&mut rng, n, case));
                        let rows = [&ws[0][..], &ws[1][..], &ws[2][..], &ws[3][..]];
                        let mut out = [f32::NAN; 4];
                        k.vec_dot_r4(t)(n, rows, &x, &mut out);
                        for (i, row) in rows.into_iter().enumerate() {
                            let want = k.vec_dot(t)(n, row, &x);
                            assert_eq!(
                                out[i].to_bits(),
                                want.to_bits(),
                                "{} {t:?} n={n} {:?} row {i}: r4 {} single {want}",
                                k.isa().name(),
                                pats[i],
                                out[i]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The formats with a tile kernel on each instruction set (a table that loses one fails the tile test instead
/// of skipping it).
fn tiled_formats(k: &Kernels) -> &'static [DType] {
    match k.isa() {
        Isa::Avx512 => &[DType::Q4_1, DType::Q5_0, DType::Q8_0, DType::Q4_K, DType::Q6_K],
        Isa::Neon => &[DType::Q8_0, DType::Q4_K, DType::Q6_K],
        // The AVX-VNNI Q8_0 family has a tile; the plain AVX2 one does not.
        Isa::Avx2 if k.uses_dot_ext() => &[DType::Q8_0, DType::Q4_K],
        Isa::Avx2 => &[DType::Q4_K],
        Isa::Scalar => &[],
    }
}

/// `vec_dot_tile` (four weight rows, one to four activation rows), where a table has it, must equal the
/// `vec_dot` calls of the same table BIT FOR BIT; every table has exactly the tiles of [`tiled_formats`].
#[test]
fn vec_dot_tile_is_bit_identical_to_single_dots() {
    let mut rng = SmallRng::seed_from_u64(12);
    let s = scalar();
    for k in Kernels::available_isas().into_iter().filter_map(Kernels::with_isa) {
        let tiled: Vec<DType> = WEIGHT_TYPES.into_iter().filter(|&t| k.vec_dot_tile(t).is_some()).collect();
        assert_eq!(tiled, tiled_formats(&k), "{}: formats with a tile", k.isa().name());
        for t in WEIGHT_TYPES {
            let Some(tile) = k.vec_dot_tile(t) else { continue };
            for nb in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33] {
                let n = row_len(t, nb);
                for p in 0..PATTERNS.len() {
                    let pats = [0, 1, 2, 3].map(|i| PATTERNS[(p + i) % PATTERNS.len()]);
                    let ws = pats.map(|pattern| weight_row(&mut rng, t, n, pattern));
                    let xs = [0, 1, 2, 3].map(|i| quant(&s, t.vec_dot_type(), &activations(&mut rng, n, (p + i) % 6)));
                    let (w_rows, x_rows) = ([0, 1, 2, 3].map(|i| &ws[i][..]), [0, 1, 2, 3].map(|i| &xs[i][..]));
                    let n_x = 1 + (nb + p) % 4;
                    let mut out = [[f32::NAN; 4]; 4];
                    tile(n, w_rows, &x_rows[..n_x], &mut out);
                    assert!(out[n_x..].iter().flatten().all(|v| v.is_nan()), "rows past the tokens untouched");
                    for (tk, x) in x_rows.into_iter().take(n_x).enumerate() {
                        for (r, w) in w_rows.into_iter().enumerate() {
                            let want = k.vec_dot(t)(n, w, x);
                            assert_eq!(
                                out[tk][r].to_bits(),
                                want.to_bits(),
                                "{} {t:?} n={n} {:?} row {r} token {tk}/{n_x}: tile {} single {want}",
                                k.isa().name(),
                                pats[r],
                                out[tk][r]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Every tile panics (before touching memory) on a short weight row in any position, a short activation row in
/// any position, or a count of activation rows outside 1..=4.
#[test]
fn dot_tile_rejects_bad_lengths() {
    for k in Kernels::available_isas().into_iter().filter_map(Kernels::with_isa) {
        for t in WEIGHT_TYPES {
            let Some(tile) = k.vec_dot_tile(t) else { continue };
            let n = 2 * t.block_elems();
            let w = vec![0u8; t.row_bytes(n).expect("whole blocks")];
            let x = vec![0u8; t.vec_dot_type().row_bytes(n).expect("whole blocks")];
            for bad in 0..4 {
                let mut rows = [&w[..]; 4];
                rows[bad] = &w[..w.len() - 1];
                let short_w = std::panic::catch_unwind(|| tile(n, rows, &[&x[..], &x[..]], &mut [[0.0; 4]; 4]));
                assert!(short_w.is_err(), "{} {t:?}: short weight row {bad} accepted", k.isa().name());
                let mut xs = [&x[..]; 4];
                xs[bad] = &x[..x.len() - 1];
                let short_x = std::panic::catch_unwind(|| tile(n, [&w[..]; 4], &xs, &mut [[0.0; 4]; 4]));
                assert!(short_x.is_err(), "{} {t:?}: short activation row {bad} accepted", k.isa().name());
            }
            for n_x in [0, 5] {
                let xs = vec![&x[..]; n_x];
                let bad = std::panic::catch_unwind(|| tile(n, [&w[..]; 4], &xs, &mut [[0.0; 4]; 4]));
                assert!(bad.is_err(), "{} {t:?}: a tile of {n_x} activation rows accepted", k.isa().name());
            }
            let mut out = [[f32::NAN; 4]; 4];
            tile(n, [&w[..]; 4], &[&x[..]; 4], &mut out);
            assert_eq!(out, [[0.0; 4]; 4]);
        }
    }
}

/// The AVX-512 table's Q4_K and Q6_K kernels, and the AVX2 table's Q4_K ones, compute the block-total form:
/// exactly the bits of its scalar twin (`dot_*_blocks_ref`), for every weight pattern and activation kind.
#[test]
fn k_quants_in_block_total_form_are_exactly_their_twin() {
    let s = scalar();
    let mut rng = SmallRng::seed_from_u64(13);
    let q4k: (DType, kernels::VecDotFn) = (DType::Q4_K, kernels::q4_k::dot_q4_k_q8_k_blocks_ref);
    let q6k: (DType, kernels::VecDotFn) = (DType::Q6_K, kernels::q6_k::dot_q6_k_q8_k_blocks_ref);
    let cases = [(Isa::Avx512, vec![q4k, q6k]), (Isa::Avx2, vec![q4k])];
    for (k, refs) in cases.into_iter().filter_map(|(isa, refs)| Some((Kernels::with_isa(isa)?, refs))) {
        block_total_case(&k, &s, &mut rng, &refs);
    }
}

fn block_total_case(k: &Kernels, s: &Kernels, rng: &mut SmallRng, refs: &[(DType, kernels::VecDotFn)]) {
    for &(t, reference) in refs {
        for nb in [1, 2, 3, 7, 16] {
            let n = row_len(t, nb);
            for pattern in PATTERNS {
                for case in 0..N_ACT_CASES {
                    let w = weight_row(rng, t, n, pattern);
                    let x = quant(s, t.vec_dot_type(), &activations(rng, n, case));
                    let (got, want) = (k.vec_dot(t)(n, &w, &x), reference(n, &w, &x));
                    let isa = k.isa().name();
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{isa} {t:?} n={n} {pattern:?} case {case}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Every table's `vec_dot_r4` panics (before touching memory) on a short weight row in any position, a short
/// activation row, or a partial block.
#[test]
fn dot_r4_rejects_bad_lengths() {
    for k in Kernels::available_isas().into_iter().filter_map(Kernels::with_isa) {
        for t in [DType::Q4_K, DType::Q6_K, DType::Q8_0, DType::Q5_K, DType::F32] {
            let n = 2 * t.block_elems().max(32);
            let w = vec![0u8; t.row_bytes(n).expect("whole blocks")];
            let x = vec![0u8; t.vec_dot_type().row_bytes(n).expect("whole blocks")];
            let r4 = k.vec_dot_r4(t);
            for bad in 0..4 {
                let mut rows = [&w[..]; 4];
                rows[bad] = &w[..w.len() - 1];
                let short_w = std::panic::catch_unwind(|| r4(n, rows, &x, &mut [0.0; 4]));
                assert!(short_w.is_err(), "{} {t:?}: short weight row {bad} accepted", k.isa().name());
            }
            let short_x = std::panic::catch_unwind(|| r4(n, [&w[..]; 4], &x[..x.len() - 1], &mut [0.0; 4]));
            assert!(short_x.is_err(), "{} {t:?}: short activation row accepted", k.isa().name());
            if t.block_elems() > 1 {
                let partial = std::panic::catch_unwind(|| r4(n - 1, [&w[..]; 4], &x, &mut [0.0; 4]));
                assert!(partial.is_err(), "{} {t:?}: partial block accepted", k.isa().name());
            }
            let mut out = [f32::NAN; 4];
            r4(n, [&w[..]; 4], &x, &mut out);
            assert_eq!(out, [0.0; 4]);
        }
    }
}

#[test]
#[should_panic(expected = "activation-only")]
fn no_r4_dot_for_activation_types() {
    Kernels::detect().vec_dot_r4(DType::Q8_1);
}

/// `dot_f32` on f32 slices is the F32 `vec_dot` on the same values as bytes, on every table and length.
#[test]
fn dot_f32_is_the_f32_vec_dot() {
    let mut rng = SmallRng::seed_from_u64(12);
    for k in Kernels::available_isas().into_iter().filter_map(Kernels::with_isa) {
        for n in [0, 1, 7, 8, 31, 32, 33, 64, 127, 128, 129, 200] {
            let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1e3f32..1e3)).collect();
            let bytes = |v: &[f32]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
            let want = k.vec_dot(DType::F32)(n, &bytes(&a), &bytes(&b));
            assert_eq!(k.dot_f32(&a, &b).to_bits(), want.to_bits(), "{} n={n}", k.isa().name());
        }
    }
}

#[test]
#[should_panic(expected = "different lengths")]
fn dot_f32_rejects_different_lengths() {
    Kernels::detect().dot_f32(&[1.0; 8], &[1.0; 7]);
}

#[test]
fn gemv_is_vec_dot_per_row() {
    let mut rng = SmallRng::seed_from_u64(8);
    let k = Kernels::detect();
    for t in WEIGHT_TYPES {
        let (n, n_rows) = (row_len(t, 3), 5);
        let w = weight_row(&mut rng, t, n * n_rows, Pattern::Random);
        let xq = quant(&k, t.vec_dot_type(), &activations(&mut rng, n, 0));
        let mut out = vec![0f32; n_rows];
        k.gemv(t, n, &w, &xq, &mut out);
        let row_bytes = t.row_bytes(n).expect("whole blocks");
        for (r, o) in out.iter().enumerate() {
            assert_eq!(*o, k.vec_dot(t)(n, &w[r * row_bytes..(r + 1) * row_bytes], &xq), "{t:?} row {r}");
        }
    }
}

#[test]
#[should_panic(expected = "rows of")]
fn gemv_rejects_a_partial_row() {
    let k = Kernels::detect();
    k.gemv(DType::Q8_0, 32, &[0u8; 34 * 2 + 1], &[0u8; 34], &mut [0.0; 2]);
}

#[test]
#[should_panic(expected = "needs")]
fn dot_rejects_short_rows() {
    let k = Kernels::detect();
    let w = vec![0u8; DType::Q4_K.block_bytes() - 1];
    let x = vec![0u8; DType::Q8_K.block_bytes()];
    k.vec_dot(DType::Q4_K)(256, &w, &x);
}

#[test]
#[should_panic(expected = "whole number")]
fn dot_rejects_partial_blocks() {
    let k = Kernels::detect();
    k.vec_dot(DType::Q8_0)(16, &[0u8; 17], &[0u8; 17]);
}

#[test]
#[should_panic(expected = "activation-only")]
fn no_dot_for_activation_types() {
    Kernels::detect().vec_dot(DType::Q8_K);
}

#[test]
fn isa_names_and_forcing() {
    for isa in Kernels::available_isas() {
        let k = Kernels::with_isa(isa).expect("listed as available");
        assert_eq!(k.isa(), isa);
        assert!(!isa.name().is_empty());
    }
    #[cfg(target_arch = "x86_64")]
    assert!(Kernels::with_isa(Isa::Neon).is_none());
}

/// (e) f16 -> f32 over all 65536 values: exact against F16C where the CPU has it, and f32 -> f16 -> f32 is
/// the identity on every non-NaN f16 (NaN stays NaN).
#[test]
fn f16_conversion_exhaustive() {
    for h in 0..=u16::MAX {
        let f = f16_to_f32(h);
        if f.is_nan() {
            assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            assert_eq!((h >> 10) & 0x1f, 31);
            continue;
        }
        assert_eq!(f32_to_f16(f), h, "{h:#06x} -> {f}");
        // Independent value check: sign * 2^(e-15) * (1 + m/1024), or 2^-14 * m/1024 for subnormals.
        let (e, m) = (((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f64);
        let mag = match e {
            0 => m / 1024.0 * 2f64.powi(-14),
            31 => f64::INFINITY,
            _ => (1.0 + m / 1024.0) * 2f64.powi(e - 15),
        };
        let want = if h & 0x8000 != 0 { -mag } else { mag };
        assert_eq!(f as f64, want, "{h:#06x}");
    }
    #[cfg(target_arch = "x86_64")]
    f16_hardware::check();
}

/// f32 -> f16 rounding against the F16C instruction: every f16 value, the midpoints between neighbours (ties
/// to even) and one f32 ulp either side of them, plus a million random f32 bit patterns.
#[cfg(target_arch = "x86_64")]
mod f16_hardware {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "f16c")]
    fn hw_to_f16(x: f32) -> u16 {
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set1_ps(x))) as u16
    }

    #[target_feature(enable = "f16c")]
    fn hw_to_f32(h: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h as i16)))
    }

    pub fn check() {
        if !is_x86_feature_detected!("f16c") {
            return;
        }
        // SAFETY: f16c was detected just above.
        let (to_f16, to_f32) = unsafe { (|x| hw_to_f16(x), |h| hw_to_f32(h)) };
        let same = |x: f32| {
            let (a, b) = (f32_to_f16(x), to_f16(x));
            assert_eq!(a, b, "f32 {x:e} ({:#010x}): {a:#06x} vs hardware {b:#06x}", x.to_bits());
        };
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            let hw = to_f32(h);
            assert!(f.to_bits() == hw.to_bits() || (f.is_nan() && hw.is_nan()), "{h:#06x}");
            if f.is_nan() {
                continue;
            }
            same(f);
            let next = f16_to_f32(h.wrapping_add(1));
            if next.is_finite() && (h & 0x7fff) != 0x7bff && h != 0x7fff && h != 0xffff {
                let mid = ((f as f64 + next as f64) / 2.0) as f32;
                for x in [mid, f32::from_bits(mid.to_bits() + 1), f32::from_bits(mid.to_bits() - 1)] {
                    same(x);
                }
            }
        }
        for x in [65504.0f32, 65519.99, 65520.0, 1e9, f32::INFINITY, -f32::INFINITY, f32::MIN_POSITIVE, 1e-10] {
            same(x);
        }
        let mut rng = SmallRng::seed_from_u64(6);
        // Random bit patterns, NaNs included (quiet NaN, top payload bits kept, as vcvtps2ph).
        for _ in 0..1_000_000 {
            same(f32::from_bits(rng.gen()));
        }
        for nan in [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffbf_ffff)] {
            same(nan);
        }
    }
}

/// Reference f32 -> bf16: keep the top 16 bits, round up when the dropped half is above 0x8000, or equal to it
/// with an odd kept part; NaN becomes a quiet NaN.
fn bf16_reference(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u >> 16) | 0x40) as u16;
    }
    let (hi, lo) = (u >> 16, u & 0xffff);
    let up = lo > 0x8000 || (lo == 0x8000 && hi & 1 == 1);
    (hi + up as u32) as u16
}

/// (e) bf16 conversions over all 65536 upper halves, each with the critical lower halves.
#[test]
fn bf16_conversion_exhaustive() {
    for h in 0..=u16::MAX {
        let f = bf16_to_f32(h);
        assert_eq!(f.to_bits(), (h as u32) << 16);
        for lo in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
            let x = f32::from_bits(((h as u32) << 16) | lo);
            assert_eq!(f32_to_bf16(x), bf16_reference(x), "{:#010x}", x.to_bits());
        }
        if !f.is_nan() {
            assert_eq!(f32_to_bf16(f), h);
        }
    }
}

/// (f) quantize -> dequantize error bounds of the weight quantizers on random rows. The simple formats get a
/// per-value bound from their rounding rule (step `d`, plus the f16 rounding of `d` and `m`, relative 2^-11,
/// times the largest quant); the k-quants, whose scales come from a search, get an RMS bound relative to the
/// block RMS (4-bit ~ 1/15 of the range / sqrt 12, measured with margin).
#[test]
fn weight_quantizers_round_trip() {
    let mut rng = SmallRng::seed_from_u64(7);
    let s = scalar();
    let eps = 1.0 / 2048.0;
    for t in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K] {
        for case in [0, 1, 2, 4, 5] {
            let n = 4 * 256;
            let x = activations(&mut rng, n, case);
            let y = dequant(&s, t, &quant(&s, t, &x), n);
            let be = t.block_elems();
            let (mut err2, mut x2) = (0f64, 0f64);
            for (xb, yb) in x.chunks_exact(be).zip(y.chunks_exact(be)) {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let min = xb.iter().fold(f32::MAX, |a, &v| a.min(v));
                let max = xb.iter().fold(f32::MIN, |a, &v| a.max(v));
                let bound = match t {
                    DType::Q8_0 => amax / 127.0 * (0.5 + 127.0 * eps),
                    DType::Q4_0 => amax / 8.0 * (1.0 + 16.0 * eps),
                    DType::Q5_0 => amax / 16.0 * (1.0 + 32.0 * eps),
                    DType::Q4_1 => (max - min) / 15.0 * (0.5 + 16.0 * eps) + min.abs() * eps,
                    DType::Q5_1 => (max - min) / 31.0 * (0.5 + 32.0 * eps) + min.abs() * eps,
                    _ => f32::INFINITY,
                } * 1.0001
                    + 1e-30;
                for (a, b) in xb.iter().zip(yb) {
                    assert!((a - b).abs() <= bound, "{t:?} case {case}: {a} -> {b}, bound {bound}");
                    err2 += ((a - b) as f64).powi(2);
                    x2 += (*a as f64).powi(2);
                }
            }
            let rms_budget = match t {
                DType::Q4_K => 0.12,
                DType::Q5_K => 0.06,
                DType::Q6_K => 0.03,
                _ => 1.0,
            };
            assert!(err2 <= rms_budget * rms_budget * x2 + 1e-30, "{t:?} case {case}: rel rms {}", (err2 / x2).sqrt());
        }
    }
}

/// On aarch64 (natively or under qemu-user: tools/test_aarch64.sh) the SIMD tests above must have run NEON.
#[test]
#[cfg(target_arch = "aarch64")]
fn neon_kernels_are_among_those_tested() {
    assert!(
        simd_tables().iter().any(|k| k.isa() == Isa::Neon),
        "NEON is not available: the NEON kernels went untested"
    );
}

/// An activation row of `n` values of type `t` (Q8_0, Q8_1, Q8_K) with random quant bytes over the whole i8 range
/// (-128 included, which the quantizers never write) and small scales; Q8_K's block sums random too (the
/// kernels take them as given).
fn raw_activations(rng: &mut SmallRng, t: DType, n: usize) -> Vec<u8> {
    let mut row: Vec<u8> = (0..t.row_bytes(n).expect("whole blocks")).map(|_| rng.gen()).collect();
    for block in row.chunks_exact_mut(t.block_bytes()) {
        if t == DType::Q8_K {
            block[..4].copy_from_slice(&rng.gen_range(-1e-2f32..1e-2).to_le_bytes());
        } else {
            let fields = if t == DType::Q8_1 { 2 } else { 1 };
            for off in (0..2 * fields).step_by(2) {
                block[off..off + 2].copy_from_slice(&small_f16(rng).to_le_bytes());
            }
        }
    }
    row
}

/// The dot-extension kernels (NEON's `sdot` where the CPU has dotprod, AVX2's AVX-VNNI where the CPU has it)
/// return the same bits as the base kernels of their table, in every shape (`vec_dot`, `vec_dot_x4`,
/// `vec_dot_r4`, `vec_dot_tile` with 1 to 4 tokens) of every format: they differ only in how the exact integer
/// sums are formed. Rows of one to 17 blocks (K-quants: super-blocks; odd counts included), every weight
/// pattern, activations quantized and raw. Without the extension only the base table runs (its shapes against
/// its `vec_dot`), and the test says so on stderr (uncaptured).
fn dot_ext_kernels_are_bit_identical_to_base(isa: Isa, ext: &str, has_ext: bool) {
    let plus = Kernels::with_isa(isa).expect("the instruction set of this test's target");
    assert_eq!(plus.uses_dot_ext(), has_ext, "the {} table uses {ext} exactly where the CPU has it", isa.name());
    let base = plus.without_dot_ext();
    assert!(base.isa() == isa && !base.uses_dot_ext(), "without_dot_ext gives the base table");
    let tables = if has_ext {
        vec![base, plus]
    } else {
        // Straight to stderr: the harness captures `eprintln!` of a passing test, and this must be seen.
        let note = format!("note: this CPU lacks {ext}: those kernels were NOT tested here, only the base ones\n");
        std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes()).expect("stderr");
        vec![base]
    };
    let mut rng = SmallRng::seed_from_u64(15);
    let s = scalar();
    let int_types =
        [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K];
    for t in int_types {
        for nb in [1, 2, 3, 5, 8, 17] {
            let n = row_len(t, nb);
            for (p, pattern) in PATTERNS.into_iter().enumerate() {
                let ws: [Vec<u8>; 4] = std::array::from_fn(|_| weight_row(&mut rng, t, n, pattern));
                let xs: [Vec<u8>; 4] = std::array::from_fn(|i| match i {
                    0 | 1 => quant(&s, t.vec_dot_type(), &activations(&mut rng, n, (p + 4 * i) % N_ACT_CASES)),
                    _ => raw_activations(&mut rng, t.vec_dot_type(), n),
                });
                let (w_rows, x_rows) = ([0, 1, 2, 3].map(|i| &ws[i][..]), [0, 1, 2, 3].map(|i| &xs[i][..]));
                // want[tk][r]: the base table's single-row dot.
                let want: [[u32; 4]; 4] = x_rows.map(|x| w_rows.map(|w| base.vec_dot(t)(n, w, x).to_bits()));
                for k in &tables {
                    let what = |shape: &str| format!("{ext} {} {t:?} n={n} {pattern:?} {shape}", k.uses_dot_ext());
                    let mut got = [[0u32; 4]; 4];
                    for (tk, x) in x_rows.into_iter().enumerate() {
                        got[tk] = w_rows.map(|w| k.vec_dot(t)(n, w, x).to_bits());
                    }
                    assert_eq!(got, want, "{}", what("vec_dot"));
                    for (r, w) in w_rows.into_iter().enumerate() {
                        let mut out = [f32::NAN; 4];
                        k.vec_dot_x4(t)(n, w, x_rows, &mut out);
                        assert_eq!(out.map(f32::to_bits), want.map(|row| row[r]), "{} row {r}", what("x4"));
                    }
                    for (tk, x) in x_rows.into_iter().enumerate() {
                        let mut out = [f32::NAN; 4];
                        k.vec_dot_r4(t)(n, w_rows, x, &mut out);
                        assert_eq!(out.map(f32::to_bits), want[tk], "{} token {tk}", what("r4"));
                    }
                    let has_tile = tiled_formats(k).contains(&t);
                    assert_eq!(k.vec_dot_tile(t).is_some(), has_tile, "{}", what("tile present"));
                    let Some(tile) = k.vec_dot_tile(t) else { continue };
                    for n_x in 1..=4 {
                        let mut out = [[f32::NAN; 4]; 4];
                        tile(n, w_rows, &x_rows[..n_x], &mut out);
                        let got: Vec<[u32; 4]> = out[..n_x].iter().map(|row| row.map(f32::to_bits)).collect();
                        assert_eq!(got, want[..n_x], "{} of {n_x} tokens", what("tile"));
                    }
                }
            }
        }
    }
}

#[test]
#[cfg(target_arch = "aarch64")]
fn neon_sdot_kernels_are_bit_identical_to_base_neon() {
    dot_ext_kernels_are_bit_identical_to_base(Isa::Neon, "sdot", std::arch::is_aarch64_feature_detected!("dotprod"));
}

#[test]
#[cfg(target_arch = "x86_64")]
fn avx_vnni_kernels_are_bit_identical_to_plain_avx2() {
    let has = is_x86_feature_detected!("avxvnni") && std::env::var_os("FLASH_MOE_NO_DOT_EXT").is_none();
    dot_ext_kernels_are_bit_identical_to_base(Isa::Avx2, "AVX-VNNI", has);
}

/// The attention core of every table equals the scalar references bit for bit: head sizes with and without a
/// tail of `head_dim % 8` or `% 16`, one to nineteen query rows (every register-tile shape and its remainders),
/// position counts around the 8- and 16-wide blocks, strided and packed positions, values of mixed magnitudes
/// and signs (so that summation order would show); softmax rows of every length to 70 and long ones.
#[test]
fn attention_core_is_bit_identical_to_the_reference() {
    let mut rng = SmallRng::seed_from_u64(14);
    let s = scalar();
    for k in simd_tables() {
        for head_dim in [8, 13, 32, 40, 64, 72, 128, 256] {
            for (rows, n, stride) in [
                (1, 1, head_dim),
                (4, 37, 3 * head_dim + 5),
                (8, 9, head_dim),
                (2, 64, 2 * head_dim),
                (3, 16, head_dim),
                (19, 33, head_dim + 1),
                (12, 100, 4 * head_dim),
                (5, 15, head_dim),
            ] {
                let mut val = || rng.gen_range(-1.0f32..1.0) * 10f32.powi(rng.gen_range(-3..3));
                let q: Vec<f32> = (0..rows * head_dim).map(|_| val()).collect();
                let kv: Vec<f32> = (0..(n - 1) * stride + head_dim).map(|_| val()).collect();
                let kvr = kernels::KvRows { data: &kv, stride, n, head_dim };
                let ld = n + 3;
                let (mut want, mut got) = (vec![f32::NAN; rows * ld], vec![f32::NAN; rows * ld]);
                s.attn_scores(&q, kvr, 0.125, &mut want, ld);
                k.attn_scores(&q, kvr, 0.125, &mut got, ld);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let what = format!("hd {head_dim} rows {rows} n {n}");
                assert_eq!(bits(&got), bits(&want), "{} scores {what}", k.isa().name());
                let p: Vec<f32> = (0..rows * ld).map(|_| val()).collect();
                let init: Vec<f32> = (0..rows * head_dim).map(|_| val()).collect();
                let (mut want, mut got) = (init.clone(), init);
                s.attn_values(&p, ld, kvr, &mut want);
                k.attn_values(&p, ld, kvr, &mut got);
                assert_eq!(bits(&got), bits(&want), "{} values {what}", k.isa().name());
            }
        }
        for n in (0..70).chain([255, 1000, 4097]) {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-30.0f32..30.0)).collect();
            let (mut want, mut got) = (x.clone(), x);
            s.attn_softmax(&mut want);
            k.attn_softmax(&mut got);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} softmax n {n}", k.isa().name());
        }
    }
}

/// The attention softmax's `exp` is within 2 ulp of the true value over the range a softmax feeds it, and its
/// rows sum to 1 within float rounding.
#[test]
fn attention_exp_and_softmax_are_accurate() {
    let mut worst = 0u32;
    let mut x = -87.0f32;
    while x <= 0.0 {
        let got = kernels::attn::exp_ref(x);
        let want = (x as f64).exp() as f32;
        worst = worst.max(got.to_bits().abs_diff(want.to_bits()));
        x += 0.000_731;
    }
    assert!(worst <= 2, "exp: {worst} ulp");
    assert_eq!(kernels::attn::exp_ref(-87.5), 0.0);
    assert_eq!(kernels::attn::exp_ref(0.0), 1.0);
    assert!(kernels::attn::exp_ref(f32::NAN).is_nan());
    let mut rng = SmallRng::seed_from_u64(3);
    for n in [1, 7, 100, 5000] {
        let mut row: Vec<f32> = (0..n).map(|_| rng.gen_range(-20.0f32..20.0)).collect();
        let exact: Vec<f64> = {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.iter().map(|v| v / sum).collect()
        };
        scalar().attn_softmax(&mut row);
        for (g, w) in row.iter().zip(&exact) {
            assert!((*g as f64 - w).abs() <= 4e-7 * w.max(1e-30) + 1e-12, "softmax n {n}: {g} vs {w}");
        }
    }
}
