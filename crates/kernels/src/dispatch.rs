//! TEMPORARY stand-in so the engine compiles while the real kernels are written on the `kernels` branch.
use crate::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}
impl Isa {
    pub fn name(self) -> &'static str {
        "scalar"
    }
}
pub type VecDotFn = fn(n: usize, w_row: &[u8], x_row: &[u8]) -> f32;
#[derive(Clone, Copy, Debug)]
pub struct Kernels {}
fn dot_f32(n: usize, w: &[u8], x: &[u8]) -> f32 {
    let mut s = 0.0f32;
    for i in 0..n {
        let a = f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
        let b = f32::from_le_bytes([x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]]);
        s += a * b;
    }
    s
}
impl Kernels {
    pub fn detect() -> Kernels {
        Kernels {}
    }
    pub fn with_isa(_isa: Isa) -> Option<Kernels> {
        Some(Kernels {})
    }
    pub fn available_isas() -> Vec<Isa> {
        vec![Isa::Scalar]
    }
    pub fn isa(&self) -> Isa {
        Isa::Scalar
    }
    pub fn vec_dot(&self, _w: DType) -> VecDotFn {
        dot_f32
    }
    pub fn quantize_row(&self, _dtype: DType, x: &[f32], dst: &mut [u8]) {
        for (i, v) in x.iter().enumerate() {
            dst[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    pub fn dequantize_row(&self, _dtype: DType, src: &[u8], dst: &mut [f32]) {
        for (i, v) in dst.iter_mut().enumerate() {
            *v = f32::from_le_bytes([src[4 * i], src[4 * i + 1], src[4 * i + 2], src[4 * i + 3]]);
        }
    }
}
