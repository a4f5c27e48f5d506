//! The dense SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use crate::backend::{Exec, FfnScratch, MatKind};
use crate::tensor::QMat;

#[derive(Debug)]
pub struct FfnWeights {
    pub gate: QMat, // [n_ff, n_embd]
    pub up: QMat,   // [n_ff, n_embd]
    pub down: QMat, // [n_embd, n_ff]
}

/// `out = down(silu(gate(x)) * up(x))` for `x` of `[n, n_embd]`; `out` is `[n, n_embd]`.
pub fn ffn(exec: &Exec<'_>, w: &FfnWeights, x: &[f32], s: &mut FfnScratch, out: &mut [f32], layer: usize) {
    exec.swiglu_ffn((w.gate.as_ref(), w.up.as_ref(), w.down.as_ref()), x, s, out, MatKind::Dense, Some(layer));
}
