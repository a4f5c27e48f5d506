//! MLX affine kernels on every instruction set this CPU has, against the scalar references: every bit width,
//! group size and scale type; rows of one group and of odd group counts (the packed row's last chunk is read
//! through the short-tail path); zero, tiny and huge scales.
//!
//! Tolerance of a SIMD dot against the reference (which forms each product exactly and sums in f64): the SIMD
//! sum is f32, each of 8 lanes x 4 accumulators adds `n / 32` products, then 5 more additions combine them, so
//! its rounding error is at most `(n / 32 + 6) * 2^-24 * sum(|w_i x_i|)` (the standard bound for recursive
//! summation), plus half an ulp for the reference's own rounding to f32. Dequantization is one FMA in both, so
//! it must match bit for bit, and the four-row dots must equal four single dots of the same table bit for bit.

use kernels::affine::{
    dequant_affine_ref, dot_affine_f32_ref, dot_affine_q8_ref, q8_a_planes, quantize_affine_ref, quantize_q8_a_ref,
    unpack_ref, QK8_A,
};
use kernels::{AffineFormat, AffineRow, DType, Isa, Kernels};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];
const GROUPS: [usize; 3] = [32, 64, 128];
const PARAMS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
const N_GROUPS: [usize; 4] = [1, 2, 3, 7];

fn tables() -> Vec<Kernels> {
    Kernels::available_isas().into_iter().filter_map(Kernels::with_isa).collect()
}

/// A row's three planes, owned.
struct Row {
    q: Vec<u8>,
    s: Vec<u8>,
    b: Vec<u8>,
}

impl Row {
    fn view(&self) -> AffineRow<'_> {
        AffineRow { q: &self.q, scales: &self.s, biases: &self.b }
    }
}

/// Random codes and parameters; `scale_mag` sets the magnitude of scales and biases.
fn random_row(rng: &mut SmallRng, f: AffineFormat, n: usize, scale_mag: f32) -> Row {
    let q: Vec<u8> = (0..f.q_bytes(n)).map(|_| rng.gen()).collect();
    let mut s = vec![0u8; f.param_bytes(n)];
    let mut b = vec![0u8; f.param_bytes(n)];
    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale_mag).collect();
    // Use the quantizer only for valid scale/bias planes of the right magnitude, keep random codes.
    let mut scratch = vec![0u8; f.q_bytes(n)];
    quantize_affine_ref(f, &x, &mut scratch, &mut s, &mut b);
    Row { q, s, b }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn formats() -> impl Iterator<Item = AffineFormat> {
    BITS.into_iter().flat_map(|bits| {
        GROUPS.into_iter().flat_map(move |group| {
            PARAMS.into_iter().map(move |param| AffineFormat::new(bits, group, param).expect("valid format"))
        })
    })
}

#[test]
fn unpack_matches_mlx_uint32_words() {
    // For 2, 4 and 8 bits mlx documents the layout as uint32 words holding 32 / bits values, lowest bits first.
    let mut rng = SmallRng::seed_from_u64(1);
    for bits in [2u32, 4, 8] {
        let words: Vec<u32> = (0..16).map(|_| rng.gen()).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let per = 32 / bits as usize;
        for i in 0..16 * per {
            let want = (words[i / per] >> (bits as usize * (i % per))) & ((1 << bits) - 1);
            assert_eq!(unpack_ref(&bytes, bits, i), want, "bits {bits} value {i}");
        }
    }
}

#[test]
fn simd_dequantize_is_exact() {
    let mut rng = SmallRng::seed_from_u64(2);
    for k in tables() {
        for f in formats() {
            for ng in N_GROUPS {
                let n = ng * f.group;
                let row = random_row(&mut rng, f, n, 3.0);
                let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
                k.affine_dequantize(f)(f, row.view(), &mut a);
                dequant_affine_ref(f, row.view(), &mut b);
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{} {f:?} n={n}", k.isa().name());
            }
        }
    }
}

#[test]
fn dots_match_the_reference_within_the_summation_bound() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut worst = 0.0f64;
    for k in tables() {
        for f in formats() {
            for ng in N_GROUPS {
                let n = ng * f.group;
                // f16 scales overflow past 65504: its huge case is 1e4.
                let huge = if f.param == DType::F16 { 1e4 } else { 1e20 };
                for (case, mag) in [1.0f32, 1e-20, huge, 0.0].into_iter().enumerate() {
                    let row = random_row(&mut rng, f, n, mag.max(f32::MIN_POSITIVE));
                    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
                    let xb = f32_bytes(&x);
                    let mut w = vec![0.0; n];
                    dequant_affine_ref(f, row.view(), &mut w);
                    let abs_sum: f64 = w.iter().zip(&x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let want = dot_affine_f32_ref(f, n, row.view(), &xb);
                    let exact: f64 = w.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                    assert_eq!(want, exact as f32, "reference = dequantize then f64 dot");
                    let got = k.affine_dot(f)(f, n, row.view(), &xb);
                    let bound = (n / 32 + 6) as f64 * 2f64.powi(-24) * abs_sum + (want.abs() as f64) * 2f64.powi(-24);
                    let err = (got as f64 - want as f64).abs();
                    assert!(
                        err <= bound,
                        "{} {f:?} n={n} case {case}: {got} vs {want} (bound {bound})",
                        k.isa().name()
                    );
                    if abs_sum > 0.0 {
                        worst = worst.max(err / abs_sum);
                    }
                }
            }
        }
    }
    println!("worst |simd - ref| / sum|w x|: {worst:e}");
}

#[test]
fn four_row_dots_equal_four_single_dots() {
    let mut rng = SmallRng::seed_from_u64(4);
    for k in tables() {
        for f in formats() {
            let n = 3 * f.group;
            let rows: Vec<Row> = (0..4).map(|_| random_row(&mut rng, f, n, 1.0)).collect();
            let xs: Vec<Vec<u8>> =
                (0..4).map(|_| f32_bytes(&(0..n).map(|_| rng.gen_range(-1.0..1.0)).collect::<Vec<f32>>())).collect();
            let dot = k.affine_dot(f);
            let views = [rows[0].view(), rows[1].view(), rows[2].view(), rows[3].view()];
            let mut r4 = [0.0; 4];
            k.affine_dot_r4(f)(f, n, views, &xs[0], &mut r4);
            let mut x4 = [0.0; 4];
            k.affine_dot_x4(f)(f, n, views[1], [&xs[0], &xs[1], &xs[2], &xs[3]], &mut x4);
            for i in 0..4 {
                assert_eq!(
                    r4[i].to_bits(),
                    dot(f, n, views[i], &xs[0]).to_bits(),
                    "{} {f:?} r4 row {i}",
                    k.isa().name()
                );
                assert_eq!(
                    x4[i].to_bits(),
                    dot(f, n, views[1], &xs[i]).to_bits(),
                    "{} {f:?} x4 row {i}",
                    k.isa().name()
                );
            }
        }
    }
}

/// On aarch64 the NEON table is among those the tests here run, so its affine kernels were compared.
#[test]
#[cfg(target_arch = "aarch64")]
fn neon_affine_kernels_are_among_those_tested() {
    assert!(tables().iter().any(|k| k.isa() == Isa::Neon), "NEON is not available: its affine kernels went untested");
}

#[test]
fn formats_outside_mlx_are_refused() {
    assert!(AffineFormat::new(4, 64, DType::BF16).is_some());
    assert!(AffineFormat::new(7, 64, DType::BF16).is_none());
    assert!(AffineFormat::new(4, 16, DType::BF16).is_none());
    assert!(AffineFormat::new(4, 64, DType::Q8_0).is_none());
    assert_eq!(
        AffineFormat::new(3, 64, DType::F16).map(|f| (f.dtype(), f.q_bytes(64), f.param_bytes(128))),
        Some((DType::MLX_Q3, 24, 4))
    );
}

#[test]
#[should_panic(expected = "packed bytes")]
fn a_short_row_panics() {
    let f = AffineFormat::new(4, 32, DType::F32).expect("format");
    let row = AffineRow { q: &[0; 15], scales: &[0; 4], biases: &[0; 4] };
    let isa = *Kernels::available_isas().last().unwrap_or(&Isa::Scalar);
    let k = Kernels::with_isa(isa).expect("available");
    k.affine_dot(f)(f, 32, row, &[0; 128]);
}

/// A Q8_A activation row of `x`.
fn q8_a(x: &[f32]) -> Vec<u8> {
    let mut xq = vec![0u8; DType::Q8_A.row_bytes(x.len()).expect("whole blocks")];
    quantize_q8_a_ref(x, &mut xq);
    xq
}

/// Activations of several shapes: uniform, one block all zeros, one huge outlier per row (as real hidden states
/// have), and the extremes +-amax (q = +-127) that meet 8-bit codes 0 and 255.
fn activations(rng: &mut SmallRng, n: usize, case: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
    match case % 4 {
        1 => x[..QK8_A].fill(0.0),
        2 => x[rng.gen_range(0..n)] = 300.0,
        3 => {
            for (i, v) in x.iter_mut().enumerate() {
                *v = if i % 3 == 0 { -1.5 } else { 1.5 };
            }
        }
        _ => {}
    }
    x
}

#[test]
fn q8_a_quantizer_round_trips_within_half_a_step() {
    let mut rng = SmallRng::seed_from_u64(10);
    let x: Vec<f32> = (0..4 * QK8_A).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let xq = q8_a(&x);
    let (qs, d, sums) = q8_a_planes(x.len(), &xq);
    let mut y = vec![0.0; x.len()];
    Kernels::with_isa(Isa::Scalar).expect("scalar").dequantize_row(DType::Q8_A, &xq, &mut y);
    for b in 0..4 {
        let db = f32::from_le_bytes(d[4 * b..4 * b + 4].try_into().expect("4 bytes"));
        let sum: i32 = qs[b * QK8_A..(b + 1) * QK8_A].iter().map(|&q| q as i8 as i32).sum();
        assert_eq!(i32::from_le_bytes(sums[4 * b..4 * b + 4].try_into().expect("4 bytes")), sum);
        for i in b * QK8_A..(b + 1) * QK8_A {
            assert!((x[i] - y[i]).abs() <= db * (0.5 + 2f32.powi(-14)), "{i}: {} vs {}", x[i], y[i]);
        }
    }
}

#[test]
fn simd_q8_dots_equal_the_reference_bit_for_bit() {
    let mut rng = SmallRng::seed_from_u64(11);
    for k in tables() {
        for f in formats() {
            for ng in [1, 2, 3, 5, 7] {
                let n = ng * f.group;
                let huge = if f.param == DType::F16 { 1e4 } else { 1e20 };
                for (case, mag) in [1.0f32, 1e-20, huge, 0.0, 1.0].into_iter().enumerate() {
                    let rows: Vec<Row> =
                        (0..4).map(|_| random_row(&mut rng, f, n, mag.max(f32::MIN_POSITIVE))).collect();
                    let xs: Vec<Vec<u8>> = (0..4).map(|t| q8_a(&activations(&mut rng, n, case + t))).collect();
                    let views = [rows[0].view(), rows[1].view(), rows[2].view(), rows[3].view()];
                    let dot = k.affine_dot_q8(f);
                    let mut r4 = [0.0; 4];
                    k.affine_dot_q8_r4(f)(f, n, views, &xs[0], &mut r4);
                    let mut x4 = [0.0; 4];
                    k.affine_dot_q8_x4(f)(f, n, views[1], [&xs[0], &xs[1], &xs[2], &xs[3]], &mut x4);
                    for i in 0..4 {
                        let want = dot_affine_q8_ref(f, n, views[i], &xs[0]);
                        let got = dot(f, n, views[i], &xs[0]);
                        let what = format!("{} {f:?} n={n} case {case} row {i}", k.isa().name());
                        assert_eq!(got.to_bits(), want.to_bits(), "{what}: {got} vs {want}");
                        assert_eq!(r4[i].to_bits(), want.to_bits(), "{what}: r4");
                        let want_x = dot_affine_q8_ref(f, n, views[1], &xs[i]);
                        assert_eq!(x4[i].to_bits(), want_x.to_bits(), "{what}: x4");
                    }
                }
            }
        }
    }
}

/// The bound on `|dot_q8(w, Q8_A(x)) - dot_f32(w, x)|`, where `dot_f32` is the F32 reference (dequantize, exact
/// products, f64 sum, one rounding to f32). With `x^_i = d_b q_i` the int8 activations of block `b`, `w_i` the
/// dequantized weights and `u = 2^-24`:
///
/// 1. activation rounding: `q_i = round(x_i * 127 / amax)` so `|x_i - x^_i| <= d_b (1/2 + 2^-14)` (the
///    `2^-14` covers the f32 rounding of `127 / amax`, of the product and of `d_b`: `<= 3 * 127 u`), hence
///    `|sum w_i (x_i - x^_i)| <= sum_b d_b (1/2 + 2^-14) sum_{i in b} |w_i|`;
/// 2. the reference rounds each `w_i = fma(q, scale, bias)` to f32, the q8 kernel uses `scale q + bias`
///    exactly: `<= u sum |w_i x^_i|`, and `sum |w_i x^_i| <= 2 sum |w_i x_i| + (1.)` (blocks where `x^` is
///    larger than `x` are bounded by term 1), so `2 u sum |w_i x_i| + u * (1.)`;
/// 3. the q8 kernel's own f32 arithmetic: per block two terms `isum (d_b scale_g)` and `sum(q) (d_b bias_g)`
///    (each product rounded once, the integers exact), accumulated by FMA into lane `b % 4`: the longest chain
///    has `2 ceil(nb / 4)` additions, then 2 more; the recursive summation bound gives
///    `(2 ceil(nb / 4) + 4) u T` with `T = sum_b d_b sum_{i in b} (|scale_g| q_w,i + |bias_g|) |q_i|`;
/// 4. the reference's own rounding to f32: `u |ref|`.
fn q8_bound(f: AffineFormat, n: usize, row: &Row, x: &[f32], xq: &[u8]) -> (f64, f64) {
    let u = 2f64.powi(-24);
    let mut w = vec![0.0f32; n];
    dequant_affine_ref(f, row.view(), &mut w);
    let (qs, d, _) = q8_a_planes(n, xq);
    let (mut act, mut wx, mut t) = (0.0f64, 0.0f64, 0.0f64);
    for b in 0..n / QK8_A {
        let db = f32::from_le_bytes(d[4 * b..4 * b + 4].try_into().expect("4 bytes")) as f64;
        let g = b * QK8_A / f.group;
        let (s, bias) = (f.param_at(&row.s, g) as f64, f.param_at(&row.b, g) as f64);
        for i in b * QK8_A..(b + 1) * QK8_A {
            act += db * (0.5 + 2f64.powi(-14)) * (w[i] as f64).abs();
            wx += (w[i] as f64 * x[i] as f64).abs();
            let qw = unpack_ref(&row.q, f.bits, i) as f64;
            t += db * (s.abs() * qw + bias.abs()) * (qs[i] as i8 as f64).abs();
        }
    }
    let chain = (2 * (n / QK8_A).div_ceil(4) + 4) as f64;
    (act * (1.0 + u) + 2.0 * u * wx + chain * u * t, wx)
}

#[test]
fn q8_dots_are_within_the_int8_rounding_bound_of_f32_dots() {
    let mut rng = SmallRng::seed_from_u64(12);
    let (mut worst_of_bound, mut worst_rel) = (0.0f64, 0.0f64);
    let k = Kernels::detect();
    for f in formats() {
        for ng in [1, 3, 8, 32] {
            let n = ng * f.group;
            for case in 0..8 {
                let row = random_row(&mut rng, f, n, if case < 4 { 1.0 } else { 0.05 });
                let x = activations(&mut rng, n, case);
                let xq = q8_a(&x);
                let want = dot_affine_f32_ref(f, n, row.view(), &f32_bytes(&x)) as f64;
                let got = k.affine_dot_q8(f)(f, n, row.view(), &xq) as f64;
                let (bound, wx) = q8_bound(f, n, &row, &x, &xq);
                let bound = bound + want.abs() * 2f64.powi(-24);
                let err = (got - want).abs();
                assert!(err <= bound, "{f:?} n={n} case {case}: {got} vs {want} (bound {bound})");
                if bound > 0.0 {
                    worst_of_bound = worst_of_bound.max(err / bound);
                }
                if wx > 0.0 {
                    worst_rel = worst_rel.max(err / wx);
                }
            }
        }
    }
    println!("worst |q8 - f32| / bound: {worst_of_bound:.3e}; / sum|w x|: {worst_rel:.3e}");
}
