//! The gated DeltaNet mixer of Qwen3-Next and Qwen3.5 (linear attention with a delta-rule recurrent state).
//! Reference: transformers' `Qwen3NextGatedDeltaNet` (`torch_recurrent_gated_delta_rule`), llama.cpp's
//! `build_layer_attn_linear` (src/models/qwen3next.cpp).
//!
//! For each token, from the normed input `x`:
//! ```text
//! q, k, v, z = W_qkv x (q, k: [n_k_heads, d_k]; v: [n_v_heads, d_v]), W_z x (z: [n_v_heads, d_v])
//! b, a       = W_ba x  ([n_v_heads] each)
//! q, k, v    = silu(causal_conv1d([q, k, v]))        (depthwise, kernel K; the state keeps the last K - 1 inputs)
//! q, k       = l2norm(q), l2norm(k) per head;  q *= 1 / sqrt(d_k); each k-head serves n_v_heads / n_k_heads v-heads
//! beta       = sigmoid(b);  g = -exp(A_log) * softplus(a + dt_bias)   (per v-head; the GGUF stores -exp(A_log))
//! per v-head h, with S_h the [d_k, d_v] state:
//!     S_h  = exp(g_h) S_h
//!     d_h  = beta_h (v_h - S_h^T k_h)
//!     S_h += k_h d_h^T
//!     o_h  = S_h^T q_h
//! o_h        = rms_norm(o_h) * norm_w * silu(z_h)        (the gated RMSNorm, per v-head)
//! out        = W_out o
//! ```
//! Tokens are processed one after another in a prompt as in decoding (the recurrent form), so a prompt gives
//! bit-identical results to single steps.

use crate::backend::{Exec, MatKind};
use crate::ops::QuantActs;
use crate::tensor::QMat;

/// The sizes of a DeltaNet layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaNetStateShape {
    pub n_k_heads: usize,
    pub n_v_heads: usize,
    pub d_k: usize,
    pub d_v: usize,
    /// The convolution's kernel size (4 in the released models).
    pub conv_kernel: usize,
}

impl DeltaNetStateShape {
    pub fn key_dim(&self) -> usize {
        self.n_k_heads * self.d_k
    }

    pub fn value_dim(&self) -> usize {
        self.n_v_heads * self.d_v
    }

    /// Channels of the convolution: q, k and v.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }

    pub fn bytes(&self) -> u64 {
        ((self.conv_kernel.saturating_sub(1) * self.conv_dim() + self.n_v_heads * self.d_k * self.d_v) * 4) as u64
    }
}

/// One sequence's state of one DeltaNet layer.
#[derive(Clone, Debug)]
pub struct DeltaNetState {
    shape: DeltaNetStateShape,
    conv: Vec<f32>, // [conv_kernel - 1, conv_dim], oldest input first
    s: Vec<f32>,    // [n_v_heads, d_k, d_v]
}

impl DeltaNetState {
    pub fn new(shape: DeltaNetStateShape) -> DeltaNetState {
        DeltaNetState {
            shape,
            conv: vec![0.0; shape.conv_kernel.saturating_sub(1) * shape.conv_dim()],
            s: vec![0.0; shape.n_v_heads * shape.d_k * shape.d_v],
        }
    }

    /// Back to the state before the first token.
    pub fn clear(&mut self) {
        self.conv.fill(0.0);
        self.s.fill(0.0);
    }

    pub fn bytes(&self) -> usize {
        (self.conv.len() + self.s.len()) * 4
    }
}

/// Which key head value head `h` reads: files order value heads either grouped by key head (Qwen3-Next, and
/// Qwen3.5 safetensors: `h / (n_v_heads / n_k_heads)`) or tiled (Qwen3.5 GGUF, whose converter reorders them:
/// `h % n_k_heads`). Both compute the same model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadPairing {
    Grouped,
    Tiled,
}

/// The weights of one DeltaNet layer, in the canonical layout above (a family file reorders its format's rows).
#[derive(Debug)]
pub struct DeltaNetWeights {
    pub pairing: HeadPairing,
    pub qkv: QMat,           // [2 * key_dim + value_dim, n_embd]: all q heads, all k heads, all v heads
    pub z: QMat,             // [value_dim, n_embd]
    pub ba: QMat,            // [2 * n_v_heads, n_embd]: b of every v-head, then a of every v-head
    pub conv: Vec<f32>,      // [conv_dim, conv_kernel]: channel c's taps, oldest input first
    pub a_neg_exp: Vec<f32>, // [n_v_heads] = -exp(A_log)
    pub dt_bias: Vec<f32>,   // [n_v_heads]
    pub norm: Vec<f32>,      // [d_v] the gated RMSNorm's weight
    pub out: QMat,           // [n_embd, value_dim]
}

/// Buffers reused across calls.
#[derive(Default)]
pub struct DeltaNetScratch {
    xq: QuantActs,
    qkv: Vec<f32>,   // [n, conv_dim]
    z: Vec<f32>,     // [n, value_dim]
    ba: Vec<f32>,    // [n, 2 * n_v_heads]
    mixed: Vec<f32>, // [conv_dim] one token after the convolution
    o: Vec<f32>,     // [n, value_dim]
    oq: QuantActs,
    kv_mem: Vec<f32>, // [d_v]
}

/// Runs the layer for the `n` tokens of `x` (`[n, n_embd]`, normed), advancing `state`, into `out`
/// (`[n, n_embd]`): [`project`], [`recur`] and [`output`] over one sequence.
#[allow(clippy::too_many_arguments)]
pub fn delta_net(
    exec: &Exec<'_>,
    w: &DeltaNetWeights,
    eps: f32,
    state: &mut DeltaNetState,
    x: &[f32],
    s: &mut DeltaNetScratch,
    out: &mut [f32],
    layer: usize,
) {
    let n = x.len() / w.qkv.cols;
    project(exec, w, &state.shape, x, s, layer);
    recur(exec, w, eps, state, 0..n, s);
    output(exec, w, s, out, layer);
}

/// The input projections (q, k, v; z; b, a) of every row of `x` (`[n, n_embd]`, normed; rows of one or several
/// sequences) into the scratch. Each row's result does not depend on the other rows.
pub fn project(
    exec: &Exec<'_>,
    w: &DeltaNetWeights,
    sh: &DeltaNetStateShape,
    x: &[f32],
    s: &mut DeltaNetScratch,
    layer: usize,
) {
    let n = x.len() / w.qkv.cols;
    let (conv_dim, value_dim, nv) = (sh.conv_dim(), sh.value_dim(), sh.n_v_heads);
    s.qkv.resize(n * conv_dim, 0.0);
    s.z.resize(n * value_dim, 0.0);
    s.ba.resize(n * 2 * nv, 0.0);
    exec.matmul(w.qkv.as_ref(), x, &mut s.xq, &mut s.qkv, MatKind::Dense);
    exec.matmul(w.z.as_ref(), x, &mut s.xq, &mut s.z, MatKind::Dense);
    exec.matmul(w.ba.as_ref(), x, &mut s.xq, &mut s.ba, MatKind::Dense);
    exec.tap("linear_attn_qkv", Some(layer), &s.qkv);
    s.o.resize(n * value_dim, 0.0);
    s.mixed.resize(conv_dim, 0.0);
    s.kv_mem.resize(sh.d_v, 0.0);
}

/// One sequence's part of a [`project`]ed batch: its `rows`, one token after another, through the convolution,
/// the delta rule (advancing `state`) and the gated norm, into the scratch's output rows.
pub fn recur(
    exec: &Exec<'_>,
    w: &DeltaNetWeights,
    eps: f32,
    state: &mut DeltaNetState,
    rows: std::ops::Range<usize>,
    s: &mut DeltaNetScratch,
) {
    let sh = state.shape;
    let (conv_dim, value_dim, nv) = (sh.conv_dim(), sh.value_dim(), sh.n_v_heads);
    for t in rows {
        conv_step(w, &sh, &mut state.conv, &s.qkv[t * conv_dim..(t + 1) * conv_dim], &mut s.mixed);
        let o = &mut s.o[t * value_dim..(t + 1) * value_dim];
        let ba = &s.ba[t * 2 * nv..(t + 1) * 2 * nv];
        recurrent_step(exec, (w, eps), &sh, &mut state.s, &mut s.mixed, ba, &mut s.kv_mem, o);
        gated_norm(exec, &w.norm, eps, o, &s.z[t * value_dim..(t + 1) * value_dim]);
    }
}

/// The output projection of every [`recur`]red row, into `out` (`[n, n_embd]`).
pub fn output(exec: &Exec<'_>, w: &DeltaNetWeights, s: &mut DeltaNetScratch, out: &mut [f32], layer: usize) {
    exec.tap("linear_attn_out", Some(layer), &s.o);
    exec.matmul(w.out.as_ref(), &s.o, &mut s.oq, out, MatKind::Dense);
}

/// The causal depthwise convolution of one token's `input` (`[conv_dim]`) with the window kept in `conv`, then
/// SiLU, into `mixed`; the window advances by one.
fn conv_step(w: &DeltaNetWeights, sh: &DeltaNetStateShape, conv: &mut [f32], input: &[f32], mixed: &mut [f32]) {
    let (kk, cd) = (sh.conv_kernel, sh.conv_dim());
    for c in 0..cd {
        let taps = &w.conv[c * kk..(c + 1) * kk];
        let mut acc = 0.0f32;
        for j in 0..kk - 1 {
            acc += conv[j * cd + c] * taps[j];
        }
        acc += input[c] * taps[kk - 1];
        mixed[c] = crate::ops::silu(acc);
    }
    if kk > 1 {
        conv.copy_within(cd.., 0);
        conv[(kk - 2) * cd..].copy_from_slice(input);
    }
}

/// One token of the gated delta rule over every v-head; `mixed` holds the convolved q, k, v (q and k are
/// normalised in place).
#[allow(clippy::too_many_arguments)]
fn recurrent_step(
    exec: &Exec<'_>,
    (w, eps): (&DeltaNetWeights, f32),
    sh: &DeltaNetStateShape,
    state: &mut [f32],
    mixed: &mut [f32],
    ba: &[f32],
    kv_mem: &mut [f32],
    o: &mut [f32],
) {
    let (dk, dv, nv, nk) = (sh.d_k, sh.d_v, sh.n_v_heads, sh.n_k_heads);
    let key_dim = sh.key_dim();
    let scale = 1.0 / (dk as f32).sqrt();
    for head in mixed[..2 * key_dim].chunks_exact_mut(dk) {
        l2norm(head, eps);
    }
    for qv in mixed[..key_dim].iter_mut() {
        *qv *= scale;
    }
    let (qk, v) = mixed.split_at(2 * key_dim);
    let (q, k) = qk.split_at(key_dim);
    let per_k = nv / nk;
    for h in 0..nv {
        let kh = match w.pairing {
            HeadPairing::Grouped => h / per_k,
            HeadPairing::Tiled => h % nk,
        };
        let (qh, khv) = (&q[kh * dk..(kh + 1) * dk], &k[kh * dk..(kh + 1) * dk]);
        let vh = &v[h * dv..(h + 1) * dv];
        let beta = exec.sigmoid(ba[h]);
        let g = w.a_neg_exp[h] * softplus(ba[nv + h] + w.dt_bias[h]);
        let decay = g.exp();
        let st = &mut state[h * dk * dv..(h + 1) * dk * dv];
        for x in st.iter_mut() {
            *x *= decay;
        }
        kv_mem.fill(0.0);
        for (i, &ki) in khv.iter().enumerate() {
            for (m, &sv) in kv_mem.iter_mut().zip(&st[i * dv..(i + 1) * dv]) {
                *m += sv * ki;
            }
        }
        for (m, &vv) in kv_mem.iter_mut().zip(vh) {
            *m = (vv - *m) * beta;
        }
        for (i, &ki) in khv.iter().enumerate() {
            for (sv, &d) in st[i * dv..(i + 1) * dv].iter_mut().zip(kv_mem.iter()) {
                *sv += ki * d;
            }
        }
        let oh = &mut o[h * dv..(h + 1) * dv];
        oh.fill(0.0);
        for (i, &qi) in qh.iter().enumerate() {
            for (ov, &sv) in oh.iter_mut().zip(&st[i * dv..(i + 1) * dv]) {
                *ov += sv * qi;
            }
        }
    }
}

/// `x / sqrt(sum(x^2) + eps)` (transformers' `l2norm` with eps 1e-6, llama.cpp's with the RMS epsilon: the same
/// in every released model).
fn l2norm(x: &mut [f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (ss + eps).sqrt();
    for v in x {
        *v *= inv;
    }
}

/// `ln(1 + e^x)`, as torch computes it (linear above 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// The gated RMSNorm of each v-head of `o` (rows of `w.len()` = d_v): `rms_norm(o_h) * w * silu(z_h)`.
fn gated_norm(exec: &Exec<'_>, w: &[f32], eps: f32, o: &mut [f32], z: &[f32]) {
    exec.rms_norm_in_place(o, w, eps);
    for (ov, &zv) in o.iter_mut().zip(z) {
        *ov *= crate::ops::silu(zv);
    }
}
