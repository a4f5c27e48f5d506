//! flash-moe's kernels against golden vectors written by llama.cpp's own ggml code (see
//! `fixtures/ggml_vectors.c`): bit-exact weight quantizers, dequantizers and activation quantizers, and the
//! dot products of every format against ggml's x86 AVX2 `vec_dot` within f32 summation-order error.

use kernels::{DType, Kernels};
use std::collections::HashMap;

const N: usize = 1024;
const FORMATS: [&str; 8] = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"];

fn dtype(name: &str) -> DType {
    DType::ALL.into_iter().find(|t| t.name() == name).expect("known format name")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// `(tag, name) -> bytes` from the fixture.
fn vectors() -> HashMap<(String, String), Vec<u8>> {
    let text = include_str!("fixtures/ggml_vectors.txt");
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let (tag, name, data) = (parts.next(), parts.next(), parts.next());
            ((tag.expect("tag").to_string(), name.expect("name").to_string()), unhex(data.expect("data")))
        })
        .collect()
}

fn get<'a>(v: &'a HashMap<(String, String), Vec<u8>>, tag: &str, name: &str) -> &'a [u8] {
    v.get(&(tag.to_string(), name.to_string())).unwrap_or_else(|| panic!("fixture has no {tag} {name}"))
}

#[test]
fn quantizers_and_dequantizers_match_ggml_bit_for_bit() {
    let v = vectors();
    let (x, a) = (floats(get(&v, "input", "x")), floats(get(&v, "input", "a")));
    assert_eq!((x.len(), a.len()), (N, N));
    for isa in Kernels::available_isas() {
        let k = Kernels::with_isa(isa).expect("available");
        for act in ["Q8_0", "Q8_1", "Q8_K"] {
            let t = dtype(act);
            let mut q = vec![0u8; t.row_bytes(N).expect("whole blocks")];
            k.quantize_row(t, &a, &mut q);
            assert!(q == get(&v, "act", act), "{} activation quantizer {act} differs from ggml", isa.name());
        }
        for name in FORMATS {
            let t = dtype(name);
            let mut q = vec![0u8; t.row_bytes(N).expect("whole blocks")];
            k.quantize_row(t, &x, &mut q);
            let want = get(&v, "quant", name);
            let first = q.iter().zip(want).position(|(a, b)| a != b);
            assert!(first.is_none(), "{} quantize {name}: first differing byte {first:?}", isa.name());
            let mut y = vec![0f32; N];
            k.dequantize_row(t, want, &mut y);
            let want_y = floats(get(&v, "dequant", name));
            assert!(y.iter().zip(&want_y).all(|(a, b)| a.to_bits() == b.to_bits()), "{} dequantize {name}", isa.name());
        }
    }
}

/// Dots against ggml's AVX2 results: the integer parts are exact in both, only the f32 summation order differs,
/// so 1e-5 of the magnitude `sum |w_i x_i|` bounds the difference (Q4_1/Q5_1: `m * s` terms included).
#[test]
fn dots_match_ggml() {
    let v = vectors();
    for isa in Kernels::available_isas() {
        let k = Kernels::with_isa(isa).expect("available");
        for name in FORMATS {
            let t = dtype(name);
            let (w, xq) = (get(&v, "quant", name), get(&v, "act", t.vec_dot_type().name()));
            let want = floats(get(&v, "dot", name))[0];
            let got = k.vec_dot(t)(N, w, xq);
            let (mut wd, mut xd) = (vec![0f32; N], vec![0f32; N]);
            k.dequantize_row(t, w, &mut wd);
            k.dequantize_row(t.vec_dot_type(), xq, &mut xd);
            let mag: f32 = wd.iter().zip(&xd).map(|(a, b)| (a * b).abs()).sum();
            assert!((got - want).abs() <= 1e-5 * mag, "{} {name}: {got} vs ggml {want} (magnitude {mag})", isa.name());
        }
    }
}
