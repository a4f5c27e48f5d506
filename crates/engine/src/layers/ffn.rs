//! The dense SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use crate::ops::{self, Cpu, QuantActs};
use crate::tensor::{QMat, QMatRef};

#[derive(Debug)]
pub struct FfnWeights {
    pub gate: QMat, // [n_ff, n_embd]
    pub up: QMat,   // [n_ff, n_embd]
    pub down: QMat, // [n_embd, n_ff]
}

#[derive(Default)]
pub struct FfnScratch {
    xq: QuantActs,
    hq: QuantActs,
    gate: Vec<f32>, // [n, n_ff]
    up: Vec<f32>,   // [n, n_ff]
}

/// `out = down(silu(gate(x)) * up(x))` for `x` of `[n, n_embd]`; `out` is `[n, n_embd]`.
pub fn ffn(cpu: &Cpu, w: &FfnWeights, x: &[f32], s: &mut FfnScratch, out: &mut [f32]) {
    swiglu(cpu, w.gate.as_ref(), w.up.as_ref(), w.down.as_ref(), x, s, out);
}

/// The SwiGLU of any gate/up/down triple (a dense block, or one expert of a MoE block).
pub fn swiglu(
    cpu: &Cpu,
    gate: QMatRef<'_>,
    up: QMatRef<'_>,
    down: QMatRef<'_>,
    x: &[f32],
    s: &mut FfnScratch,
    out: &mut [f32],
) {
    let n = x.len() / gate.cols;
    s.gate.resize(n * gate.rows, 0.0);
    s.up.resize(n * up.rows, 0.0);
    s.xq.quantize(&cpu.kernels, gate.dtype, x, gate.cols);
    if up.dtype == gate.dtype {
        ops::matmul_many(cpu, &mut [(gate, &mut s.gate[..]), (up, &mut s.up[..])], &s.xq);
    } else {
        ops::matmul(cpu, gate, &s.xq, &mut s.gate);
        ops::matmul_reuse(cpu, up, x, &mut s.xq, &mut s.up);
    }
    ops::tap("ffn_gate", None, &s.gate);
    ops::tap("ffn_up", None, &s.up);
    ops::swiglu(&mut s.gate, &s.up);
    ops::tap("ffn_swiglu", None, &s.gate);
    ops::matmul_f32(cpu, down, &s.gate, &mut s.hq, out);
}
