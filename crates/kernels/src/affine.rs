//! MLX affine quantization (`mx.quantize(w, group_size, bits, mode="affine")`, what mlx-lm's `convert -q` and
//! mlx-community's 2- to 8-bit files store): a matrix is three planes,
//! - the packed values: `bits` per value, value `i` of a row at bits `bits * i ..` of the row's little-endian
//!   bit stream (uint32 words for 2, 4 and 8 bits, 3- or 5-byte packs for 3, 5 and 6 bits: the same stream);
//! - `scales` and `biases`: one per group of `group` consecutive values of a row (32, 64 or 128), in the
//!   model's float type (F32, F16 or BF16),
//!
//! and a weight is `w = scale * q + bias` (one f32 multiply-add, exact widening of the scale and bias).
//!
//! Two dot products:
//! - **Int8 activations ([`DType::Q8_A`], the engine's default, `DType::vec_dot_type()` of the MLX types).**
//!   The activation row is quantized once per matmul to blocks of 32 values `x ~ d * q` (f32 `d = amax / 127`,
//!   i8 `q`, and the block's integer sum `sum(q)`), shared by every row and expert. Since a group (32, 64 or
//!   128 values) is a whole number of blocks and `w = scale * q_w + bias`, block `b` of group `g` contributes
//!   `d_b * scale_g * sum(q_w * q_x) + d_b * bias_g * sum(q_x)`: an exact integer dot (`maddubs` on AVX2,
//!   `smull` on NEON) and one multiply-add per block for the bias. See [`dot_affine_q8_ref`] for the exact
//!   float order that every instruction set reproduces bit for bit, and `tests/affine.rs` for the error bound
//!   against F32 activations.
//! - **F32 activations ([`dot_affine_f32_ref`], `Kernels::affine_dot`).** As mlx does (it multiplies in the
//!   activations' float type): a weight row is dequantized group by group and multiply-added in f32 lanes.
//!   Against a dequantize-then-f64 dot the error is f32 summation only (relative ~1e-6 for rows of a few
//!   thousand values). Kept as the accurate reference path (tests, tools); the engine no longer uses it.
//!
//! # Main types
//! - [`AffineFormat`]: bits, group size and scale/bias type of a matrix.
//! - [`AffineRow`]: one row's three planes, borrowed.
//! - The kernels, chosen per instruction set by [`Kernels::affine_dot`] (and `_r4`, `_x4`, `affine_dequantize`).
//!
//! # Kernels
//! | op | scalar | avx2 | avx512 | neon |
//! |---|---|---|---|---|
//! | dot (Q8_A activations), `_r4`, `_x4` | `dot_affine_q8_ref` | AVX2 for 4 and 8 bits (`maddubs`), scalar for 2, 3, 5, 6 | = AVX2 | NEON for every width (`sdot` where the CPU has dotprod, else `smull`/`sadalp`) |
//! | dot (F32 activations), `_r4`, `_x4` | `dot_affine_f32_ref` | AVX2 (shuffle-unpack of 8 values, FMA) | = AVX2 | = scalar |
//! | dequantize | `dequant_affine_ref` | AVX2 | = AVX2 | = scalar |
//!
//! Within one table, `_r4` and `_x4` are bit-identical to four single-row dots (the same per-row summation).

use crate::dispatch::{Isa, Kernels};
use crate::dtype::DType;
use crate::f16::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, read_f32, read_u16};
use crate::q8_0::quantize_block_q8;

/// Bits per value, values per group and the type of the scales and biases of an MLX affine matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffineFormat {
    /// 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// 32, 64 or 128.
    pub group: usize,
    /// F32, F16 or BF16.
    pub param: DType,
}

impl AffineFormat {
    /// The format, or `None` for bits, group sizes or scale types mlx does not write.
    pub fn new(bits: u32, group: usize, param: DType) -> Option<AffineFormat> {
        let ok = DType::mlx_affine(bits).is_some()
            && matches!(group, 32 | 64 | 128)
            && matches!(param, DType::F32 | DType::F16 | DType::BF16);
        ok.then_some(AffineFormat { bits, group, param })
    }

    /// The packed plane's type (`MLX_Q4` for 4 bits).
    pub fn dtype(self) -> DType {
        DType::mlx_affine(self.bits).expect("validated bits")
    }

    /// Bytes of the packed values of a row of `n` values.
    pub fn q_bytes(self, n: usize) -> usize {
        n * self.bits as usize / 8
    }

    /// Bytes of a row's scales (and of its biases) for a row of `n` values.
    pub fn param_bytes(self, n: usize) -> usize {
        n / self.group * self.param.block_bytes()
    }

    /// Panics unless `w` is a row of `n` values of this format.
    pub fn check_row(self, n: usize, w: AffineRow<'_>) {
        assert!(n.is_multiple_of(self.group), "a row of {n} values is not whole groups of {}", self.group);
        assert_eq!(w.q.len(), self.q_bytes(n), "{:?}: packed bytes of a row of {n}", self);
        assert_eq!(w.scales.len(), self.param_bytes(n), "{:?}: scale bytes of a row of {n}", self);
        assert_eq!(w.biases.len(), self.param_bytes(n), "{:?}: bias bytes of a row of {n}", self);
    }

    /// Scale (or bias) `g` of a plane, widened exactly to f32.
    #[inline]
    pub fn param_at(self, plane: &[u8], g: usize) -> f32 {
        match self.param {
            DType::BF16 => bf16_to_f32(read_u16(plane, g)),
            DType::F16 => f16_to_f32(read_u16(plane, g)),
            _ => read_f32(plane, g),
        }
    }
}

/// One row of an affine matrix: its packed values and its groups' scales and biases.
#[derive(Clone, Copy, Debug)]
pub struct AffineRow<'a> {
    pub q: &'a [u8],
    pub scales: &'a [u8],
    pub biases: &'a [u8],
}

/// Value `i` of a packed row (`bits` bits at bit `bits * i` of the little-endian stream).
#[inline]
pub fn unpack_ref(q: &[u8], bits: u32, i: usize) -> u32 {
    let bit = i * bits as usize;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = q[byte] as u32;
    let hi = q.get(byte + 1).copied().unwrap_or(0) as u32;
    ((lo | (hi << 8)) >> shift) & ((1 << bits) - 1)
}

/// `w[i] = scale * q[i] + bias` (one f32 fused multiply-add) for a row of `dst.len()` values.
pub fn dequant_affine_ref(f: AffineFormat, w: AffineRow<'_>, dst: &mut [f32]) {
    f.check_row(dst.len(), w);
    for (g, out) in dst.chunks_exact_mut(f.group).enumerate() {
        let (s, b) = (f.param_at(w.scales, g), f.param_at(w.biases, g));
        for (j, v) in out.iter_mut().enumerate() {
            *v = (unpack_ref(w.q, f.bits, g * f.group + j) as f32).mul_add(s, b);
        }
    }
}

/// `sum(w[i] * x[i])` of an affine weight row (dequantized as [`dequant_affine_ref`]) and an F32 activation row
/// (`x_row`: `n` little-endian f32): each product exact in f64, summed in f64.
pub fn dot_affine_f32_ref(f: AffineFormat, n: usize, w: AffineRow<'_>, x_row: &[u8]) -> f32 {
    f.check_row(n, w);
    assert_eq!(x_row.len(), 4 * n, "F32 activation row of {n} values");
    let mut sum = 0.0f64;
    for g in 0..n / f.group {
        let (s, b) = (f.param_at(w.scales, g), f.param_at(w.biases, g));
        for i in g * f.group..(g + 1) * f.group {
            let wi = (unpack_ref(w.q, f.bits, i) as f32).mul_add(s, b);
            sum += wi as f64 * read_f32(x_row, i) as f64;
        }
    }
    sum as f32
}

/// Quantizes `x` (a row of whole groups) into the three planes with a min-max rule: per group
/// `scale = (max - min) / (2^bits - 1)`, `bias = min` (both rounded to the scale type first), and
/// `q = round((x - bias) / scale)` clamped. Not mlx's exact rounding rule (that one anchors the larger-magnitude
/// edge); for tests and synthetic files, whose readers only need valid planes.
pub fn quantize_affine_ref(f: AffineFormat, x: &[f32], q: &mut [u8], scales: &mut [u8], biases: &mut [u8]) {
    f.check_row(x.len(), AffineRow { q, scales, biases });
    let max_q = ((1u32 << f.bits) - 1) as f32;
    q.fill(0);
    let psize = f.param.block_bytes();
    for (g, xs) in x.chunks_exact(f.group).enumerate() {
        let lo = xs.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let put = |plane: &mut [u8], v: f32| -> f32 {
            let dst = &mut plane[g * psize..(g + 1) * psize];
            match f.param {
                DType::BF16 => dst.copy_from_slice(&f32_to_bf16(v).to_le_bytes()),
                DType::F16 => dst.copy_from_slice(&f32_to_f16(v).to_le_bytes()),
                _ => dst.copy_from_slice(&v.to_le_bytes()),
            }
            f.param_at(plane, g)
        };
        let s = put(scales, (hi - lo) / max_q);
        let b = put(biases, lo);
        for (j, &v) in xs.iter().enumerate() {
            let code = if s > 0.0 { ((v - b) / s).round().clamp(0.0, max_q) as u32 } else { 0 };
            let bit = (g * f.group + j) * f.bits as usize;
            let word = (code << (bit % 8)) as u16;
            q[bit / 8] |= word as u8;
            if let Some(next) = q.get_mut(bit / 8 + 1) {
                *next |= (word >> 8) as u8;
            }
        }
    }
}

// ---- int8 activations (Q8_A) ----

/// Values per [`DType::Q8_A`] block.
pub const QK8_A: usize = 32;

/// The three planes of a [`DType::Q8_A`] row of `n` values (`40 n / 32` bytes): the i8 quants (`n` bytes), then
/// one f32 scale `d` per block, then one i32 `sum(q)` per block (all little-endian). Panics unless `x_row` is
/// exactly such a row.
pub fn q8_a_planes(n: usize, x_row: &[u8]) -> (&[u8], &[u8], &[u8]) {
    assert!(n.is_multiple_of(QK8_A), "a Q8_A row of {n} values is not whole blocks of {QK8_A}");
    assert_eq!(x_row.len(), n / QK8_A * 40, "Q8_A activation row of {n} values");
    let (qs, rest) = x_row.split_at(n);
    let (d, sums) = rest.split_at(n / QK8_A * 4);
    (qs, d, sums)
}

#[inline]
pub(crate) fn read_i32(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Quantizes the f32 row `x` into a [`DType::Q8_A`] row: per block of 32, `d = amax / 127` (kept in f32) and
/// `q = round_half_even(x * (127 / amax))` (Q8_0's rule, so `|x - d q| <= d / 2` up to f32 rounding), plus
/// `sum(q)`.
pub fn quantize_q8_a_ref(x: &[f32], dst: &mut [u8]) {
    let n = x.len();
    assert!(n.is_multiple_of(QK8_A), "a Q8_A row of {n} values is not whole blocks of {QK8_A}");
    assert_eq!(dst.len(), n / QK8_A * 40, "Q8_A activation row of {n} values");
    let (qs, rest) = dst.split_at_mut(n);
    let (d, sums) = rest.split_at_mut(n / QK8_A * 4);
    for (b, xs) in x.chunks_exact(QK8_A).enumerate() {
        let mut q = [0i8; QK8_A];
        let (db, sum) = quantize_block_q8(xs, &mut q);
        for (o, v) in qs[b * QK8_A..(b + 1) * QK8_A].iter_mut().zip(q) {
            *o = v as u8;
        }
        d[4 * b..4 * b + 4].copy_from_slice(&db.to_le_bytes());
        sums[4 * b..4 * b + 4].copy_from_slice(&sum.to_le_bytes());
    }
}

/// `y = d * q` of a [`DType::Q8_A`] row.
pub fn dequant_q8_a_ref(src: &[u8], y: &mut [f32]) {
    let (qs, d, _) = q8_a_planes(y.len(), src);
    for (i, v) in y.iter_mut().enumerate() {
        *v = qs[i] as i8 as f32 * read_f32(d, i / QK8_A);
    }
}

/// `dot(w, x)` of an affine weight row and a [`DType::Q8_A`] activation row, in this exact order (which the SIMD
/// kernels reproduce bit for bit): for each block `b` of 32 values (group `g = 32 b / group`), with the exact
/// integers `isum = sum(q_w * q_x)` and `sum(q_x)` (from the row),
///
/// `acc[b % 4] = fma(isum, d_b * scale_g, acc[b % 4])`, then `acc[b % 4] = fma(sum(q_x), d_b * bias_g, acc[b % 4])`
///
/// (f32, the products `d_b * scale_g` rounded once), and the result is `(acc0 + acc1) + (acc2 + acc3)`. Every
/// integer is exact in f32 (`|isum| <= 32 * 255 * 127 < 2^24`).
pub fn dot_affine_q8_ref(f: AffineFormat, n: usize, w: AffineRow<'_>, x_row: &[u8]) -> f32 {
    f.check_row(n, w);
    let (qs, d, sums) = q8_a_planes(n, x_row);
    let mut acc = [0.0f32; 4];
    for b in 0..n / QK8_A {
        let g = b * QK8_A / f.group;
        let (s, bias) = (f.param_at(w.scales, g), f.param_at(w.biases, g));
        let isum: i32 =
            (b * QK8_A..(b + 1) * QK8_A).map(|i| unpack_ref(w.q, f.bits, i) as i32 * qs[i] as i8 as i32).sum();
        let db = read_f32(d, b);
        let a = &mut acc[b % 4];
        *a = (isum as f32).mul_add(db * s, *a);
        *a = (read_i32(sums, b) as f32).mul_add(db * bias, *a);
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

fn dot_q8_r4_ref(f: AffineFormat, n: usize, w: [AffineRow<'_>; 4], x: &[u8], out: &mut [f32; 4]) {
    for (o, w) in out.iter_mut().zip(w) {
        *o = dot_affine_q8_ref(f, n, w, x);
    }
}

fn dot_q8_x4_ref(f: AffineFormat, n: usize, w: AffineRow<'_>, x: [&[u8]; 4], out: &mut [f32; 4]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o = dot_affine_q8_ref(f, n, w, x);
    }
}

// ---- dispatch ----

/// `dot(w, x)` of one affine row of `n` values and an activation row of `n` values (F32 for
/// [`Kernels::affine_dot`], [`DType::Q8_A`] for [`Kernels::affine_dot_q8`]). Panics unless the row fits `f`
/// ([`AffineFormat::check_row`]) and the activations are `n` values of the kernel's type.
pub type AffineDotFn = fn(f: AffineFormat, n: usize, w: AffineRow<'_>, x_row: &[u8]) -> f32;
/// Four weight rows against one activation row; `out[i]` is bit-identical to the same table's [`AffineDotFn`].
pub type AffineDotR4Fn = fn(f: AffineFormat, n: usize, w: [AffineRow<'_>; 4], x_row: &[u8], out: &mut [f32; 4]);
/// One weight row against four activation rows; `out[i]` is bit-identical to the same table's [`AffineDotFn`].
pub type AffineDotX4Fn = fn(f: AffineFormat, n: usize, w: AffineRow<'_>, x_rows: [&[u8]; 4], out: &mut [f32; 4]);
/// Dequantizes one row into `dst` (`dst.len()` values), exactly as [`dequant_affine_ref`].
pub type AffineDequantFn = fn(f: AffineFormat, w: AffineRow<'_>, dst: &mut [f32]);

fn dot_r4_ref(f: AffineFormat, n: usize, w: [AffineRow<'_>; 4], x: &[u8], out: &mut [f32; 4]) {
    for (o, w) in out.iter_mut().zip(w) {
        *o = dot_affine_f32_ref(f, n, w, x);
    }
}

fn dot_x4_ref(f: AffineFormat, n: usize, w: AffineRow<'_>, x: [&[u8]; 4], out: &mut [f32; 4]) {
    for (o, x) in out.iter_mut().zip(x) {
        *o = dot_affine_f32_ref(f, n, w, x);
    }
}

/// The instruction set whose affine kernels a table uses (AVX-512 tables use the AVX2 ones).
fn affine_isa(k: &Kernels) -> Isa {
    match k.isa() {
        Isa::Avx2 | Isa::Avx512 => Isa::Avx2,
        isa => isa,
    }
}

impl Kernels {
    /// The affine dot product of this table's instruction set.
    pub fn affine_dot(&self, _f: AffineFormat) -> AffineDotFn {
        match affine_isa(self) {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::affine_avx2::dot,
            _ => dot_affine_f32_ref,
        }
    }

    /// Four weight rows against one activation row (single-token decode), bit-identical to
    /// [`Kernels::affine_dot`] on each row.
    pub fn affine_dot_r4(&self, _f: AffineFormat) -> AffineDotR4Fn {
        match affine_isa(self) {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::affine_avx2::dot_r4,
            _ => dot_r4_ref,
        }
    }

    /// One weight row against four activation rows (prompts), bit-identical to [`Kernels::affine_dot`] on each.
    pub fn affine_dot_x4(&self, _f: AffineFormat) -> AffineDotX4Fn {
        match affine_isa(self) {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::affine_avx2::dot_x4,
            _ => dot_x4_ref,
        }
    }

    /// The affine dot product with [`DType::Q8_A`] activations (the engine's default): AVX2 for 4- and 8-bit
    /// weights, NEON for every bit width (`sdot` where the table has it: where the CPU has dotprod), the scalar
    /// reference otherwise; always bit-identical to [`dot_affine_q8_ref`].
    pub fn affine_dot_q8(&self, f: AffineFormat) -> AffineDotFn {
        match (affine_isa(self), f.bits) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 4 | 8) => crate::x86::affine_avx2::dot_q8,
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, _) if self.dot_ext => crate::aarch64::affine_neon::dot_q8::<true>,
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, _) => crate::aarch64::affine_neon::dot_q8::<false>,
            _ => dot_affine_q8_ref,
        }
    }

    /// Four weight rows against one [`DType::Q8_A`] row, bit-identical to [`Kernels::affine_dot_q8`] on each.
    pub fn affine_dot_q8_r4(&self, f: AffineFormat) -> AffineDotR4Fn {
        match (affine_isa(self), f.bits) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 4 | 8) => crate::x86::affine_avx2::dot_q8_r4,
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, _) if self.dot_ext => crate::aarch64::affine_neon::dot_q8_r4::<true>,
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, _) => crate::aarch64::affine_neon::dot_q8_r4::<false>,
            _ => dot_q8_r4_ref,
        }
    }

    /// One weight row against four [`DType::Q8_A`] rows, bit-identical to [`Kernels::affine_dot_q8`] on each.
    pub fn affine_dot_q8_x4(&self, f: AffineFormat) -> AffineDotX4Fn {
        match (affine_isa(self), f.bits) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 4 | 8) => crate::x86::affine_avx2::dot_q8_x4,
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, _) if self.dot_ext => crate::aarch64::affine_neon::dot_q8_x4::<true>,
            #[cfg(target_arch = "aarch64")]
            (Isa::Neon, _) => crate::aarch64::affine_neon::dot_q8_x4::<false>,
            _ => dot_q8_x4_ref,
        }
    }

    /// Dequantization of one affine row (embedding lookups), equal to [`dequant_affine_ref`] bit for bit.
    pub fn affine_dequantize(&self, _f: AffineFormat) -> AffineDequantFn {
        match affine_isa(self) {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => crate::x86::affine_avx2::dequant,
            _ => dequant_affine_ref,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_reads_the_little_endian_bit_stream() {
        // 3 bits: values 0..8 packed as mlx does (8 values in 3 bytes).
        let vals: Vec<u32> = (0..8).collect();
        let mut stream = 0u32;
        for (i, v) in vals.iter().enumerate() {
            stream |= v << (3 * i);
        }
        let q = stream.to_le_bytes();
        for (i, &v) in vals.iter().enumerate() {
            assert_eq!(unpack_ref(&q[..3], 3, i), v);
        }
        // 4 bits: uint32 word 0x76543210 holds 0, 1, ..., 7.
        let q = 0x7654_3210u32.to_le_bytes();
        assert_eq!((0..8).map(|i| unpack_ref(&q, 4, i)).collect::<Vec<_>>(), vals);
    }

    #[test]
    fn quantize_round_trips_within_half_a_step() {
        for bits in [2, 3, 4, 5, 6, 8] {
            let f = AffineFormat::new(bits, 32, DType::F32).expect("format");
            let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 20.0) * 0.1).collect();
            let (mut q, mut s, mut b) =
                (vec![0; f.q_bytes(64)], vec![0; f.param_bytes(64)], vec![0; f.param_bytes(64)]);
            quantize_affine_ref(f, &x, &mut q, &mut s, &mut b);
            let mut y = vec![0.0; 64];
            let row = AffineRow { q: &q, scales: &s, biases: &b };
            dequant_affine_ref(f, row, &mut y);
            for g in 0..2 {
                let step = f.param_at(&s, g);
                for i in g * 32..(g + 1) * 32 {
                    assert!((x[i] - y[i]).abs() <= 0.5 * step * 1.0001, "bits {bits} i {i}: {} vs {}", x[i], y[i]);
                }
            }
        }
    }
}
