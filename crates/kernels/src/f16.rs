//! Half-precision floats: IEEE f16 and bfloat16 conversions (bit-exact with F16C and ggml), and the scalar
//! references for F32, F16 and BF16 weight rows (`dot_f32_ref`, `dot_f16_f32_ref`, `dot_bf16_f32_ref`).
//!
//! Unlike ggml, F16 and BF16 weight rows are dotted with F32 activation rows (not activations rounded to 16
//! bits, which costs ~4e-3 relative on a bf16 model against transformers' f32 logits): each weight widens
//! exactly to f32. The references form each product exactly and sum in f64; the SIMD versions multiply-add in
//! f32 lanes with several independent accumulators. `quantize_f16_ref`/`quantize_bf16_ref` still make F16/BF16
//! rows (for weights and other users).

/// IEEE binary16 bits to f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if mant == 0 => sign,
        // Subnormal: mant * 2^-24, exact in f32.
        0 => sign | (mant as f32 * (1.0 / 16_777_216.0)).to_bits(),
        31 => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE binary16 bits, rounding to nearest even; overflow gives infinity, NaN stays a (quiet) NaN with
/// its top payload bits, as the F16C instruction `vcvtps2ph` does.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    if abs >= 0x7f80_0000 {
        let nan = if abs > 0x7f80_0000 { 0x200 | ((abs >> 13) & 0x3ff) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    if abs >= 0x477f_f000 {
        // >= 65520: rounds to infinity.
        return sign | 0x7c00;
    }
    if abs < 0x3880_0000 {
        // Below 2^-14 the result is subnormal (or zero): adding 0.5 makes the f32 ulp 2^-24 (the f16 subnormal
        // step), so the FPU's own round-to-nearest-even does the rounding.
        let v = f32::from_bits(abs) + 0.5;
        return sign | (v.to_bits() - 0x3f00_0000) as u16;
    }
    // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
    let mant_odd = (abs >> 13) & 1;
    let rounded = abs.wrapping_add(0xc800_0fff).wrapping_add(mant_odd);
    sign | (rounded >> 13) as u16
}

/// bfloat16 bits to f32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 to bfloat16 bits as ggml does: round to nearest even, NaN kept (and made quiet).
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

pub(crate) fn read_u16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}

pub(crate) fn read_f32(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// `sum(w[i] * x[i])` over f32 rows, summed in f64.
pub fn dot_f32_ref(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n).map(|i| read_f32(w, i) as f64 * read_f32(x, i) as f64).sum::<f64>() as f32
}

/// `sum(w[i] * x[i])` of an f16 weight row and an f32 activation row: each product exact in f64 (11 + 24
/// significant bits), summed in f64.
pub fn dot_f16_f32_ref(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n).map(|i| f16_to_f32(read_u16(w, i)) as f64 * read_f32(x, i) as f64).sum::<f64>() as f32
}

/// `sum(w[i] * x[i])` of a bf16 weight row and an f32 activation row: each product exact in f64 (8 + 24
/// significant bits), summed in f64.
pub fn dot_bf16_f32_ref(n: usize, w: &[u8], x: &[u8]) -> f32 {
    (0..n).map(|i| bf16_to_f32(read_u16(w, i)) as f64 * read_f32(x, i) as f64).sum::<f64>() as f32
}

pub fn quantize_f32_ref(x: &[f32], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(4).zip(x) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

pub fn quantize_f16_ref(x: &[f32], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(2).zip(x) {
        d.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
    }
}

pub fn quantize_bf16_ref(x: &[f32], dst: &mut [u8]) {
    for (d, v) in dst.chunks_exact_mut(2).zip(x) {
        d.copy_from_slice(&f32_to_bf16(*v).to_le_bytes());
    }
}

pub fn dequant_f32_ref(src: &[u8], y: &mut [f32]) {
    for (i, v) in y.iter_mut().enumerate() {
        *v = read_f32(src, i);
    }
}

pub fn dequant_f16_ref(src: &[u8], y: &mut [f32]) {
    for (i, v) in y.iter_mut().enumerate() {
        *v = f16_to_f32(read_u16(src, i));
    }
}

pub fn dequant_bf16_ref(src: &[u8], y: &mut [f32]) {
    for (i, v) in y.iter_mut().enumerate() {
        *v = bf16_to_f32(read_u16(src, i));
    }
}
