//! The routed mixture-of-experts block (Qwen3-MoE, Mixtral, Qwen3-Next; the shape DeepSeek/GLM/gpt-oss extend):
//!
//! 1. router logits `r = W_router x` (`[n_expert]`), `p = softmax(r)`;
//! 2. the top-k experts by `p` (ties to the lower id), weights `p_i`, divided by their sum when
//!    `norm_topk_prob`;
//! 3. `out = sum_i w_i * down_i(silu(gate_i(x)) * up_i(x))`, summed in top-k order;
//! 4. with a shared expert (Qwen3-Next): `out += sigmoid(g . x) * shared(x)`, `shared` a dense SwiGLU.
//!
//! A batch of tokens is routed first; each expert used by any token is acquired once and run over all its
//! tokens (expert-major), and each token's sum is formed in its own top-k order, so the result is bit-identical
//! to running the tokens one at a time.
//!
//! Only when an approximate mode was asked for ([`crate::approx`], never by default) are routes thinned after
//! routing: fewer experts per token, or only those already in memory.

use crate::approx::{ApproxMode, ApproxScratch};
use crate::backend::{Exec, FfnScratch, GroupFfnScratch, MatKind};
use crate::experts::ExpertProvider;
use crate::ops::QuantActs;
use crate::tensor::QMat;
use crate::Result;

use super::ffn::FfnWeights;
pub use super::routing::{MoeRouting, Route, RouteHook};

/// A dense expert every token goes through, scaled by a sigmoid gate (Qwen3-Next).
#[derive(Debug)]
pub struct SharedExpert {
    pub ffn: FfnWeights,
    pub gate_inp: QMat, // [1, n_embd]
}

#[derive(Debug)]
pub struct MoeWeights {
    pub router: QMat, // [n_expert, n_embd]
    pub shared: Option<SharedExpert>,
}

#[derive(Default)]
pub struct MoeScratch {
    xq: QuantActs,
    logits: Vec<f32>,           // [n, n_expert]
    probs: Vec<f32>,            // [n_expert]
    order: Vec<u32>,            // [n_expert]
    routes: Vec<Route>,         // [n]
    used: Vec<u32>,             // distinct experts of the batch, ascending
    rows: Vec<f32>,             // [rows of a group of experts, n_embd]
    y: Vec<f32>,                // [rows of a group of experts, n_embd]
    slots: Vec<(usize, usize)>, // (token, top-k slot) of each row of a group of experts
    offs: Vec<usize>,           // each expert's first row in `rows`, and the end
    rows_of: Vec<usize>,        // token rows of each expert of `used`
    expert_out: Vec<f32>,       // [n, n_expert_used, n_embd]
    shared_out: Vec<f32>,       // [n, n_embd]
    shared_gate: Vec<f32>,      // [n]
    ffn: FfnScratch,
    group: GroupFfnScratch,
    approx: ApproxScratch,
}

/// Token rows (token x selected expert) a group of experts takes at most, unless one expert alone has more: a
/// batch's worth, the scratch the memory plan counts for gathered rows, gate and up.
const GROUP_ROWS: usize = crate::backend::native::N_BATCH;

impl MoeScratch {
    /// The routes of the last call, per token.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// What may change a layer's routing: a route hook, an approximate mode (both off by default).
#[derive(Clone, Copy, Default)]
pub struct RouteOverrides<'a> {
    pub hook: Option<&'a dyn RouteHook>,
    pub approx: Option<&'a ApproxMode>,
}

/// Runs the MoE block for `x` (`[n, n_embd]`, already normed, positions `pos0..`) into `out` (`[n, n_embd]`).
/// `prefetch`: experts predicted for a later layer, handed to the provider once this layer's experts are acquired
/// (so that prefetch never competes with them).
#[allow(clippy::too_many_arguments)]
pub fn moe(
    exec: &Exec<'_>,
    w: &MoeWeights,
    r: &MoeRouting,
    experts: &dyn ExpertProvider,
    (layer, pos0): (usize, usize),
    ov: RouteOverrides<'_>,
    prefetch: Option<(usize, &[u32])>,
    x: &[f32],
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<()> {
    let n_embd = w.router.cols;
    let n = x.len() / n_embd;
    let l = Some(layer);

    s.logits.resize(n * r.n_expert, 0.0);
    exec.router(w.router.as_ref(), x, &mut s.xq, &mut s.logits);
    exec.tap("ffn_moe_logits", l, &s.logits);
    s.routes.resize_with(n, || Route { experts: Vec::new(), weights: Vec::new() });
    for t in 0..n {
        let logits = &s.logits[t * r.n_expert..(t + 1) * r.n_expert];
        exec.softmax_top_k(logits, r, &mut s.probs, &mut s.order, &mut s.routes[t]);
        if let Some(h) = ov.hook {
            h.route(layer, pos0 + t, n, &mut s.routes[t])?;
        }
    }
    if let Some(a) = ov.approx {
        a.select(experts, layer, &mut s.routes[..n], &mut s.approx);
    }
    // Experts per token: the router's k, or what a replayed trace gives.
    let k = s.routes[..n].iter().map(|r| r.experts.len()).max().unwrap_or(0);
    s.used.clear();
    for route in &s.routes[..n] {
        s.used.extend_from_slice(&route.experts);
    }
    s.used.sort_unstable();
    s.used.dedup();

    let mut set = experts.acquire(layer, &s.used)?;
    if let Some(a) = ov.approx {
        a.fetch_dropped(experts, layer, &s.approx);
    }
    if let Some((next, ids)) = prefetch {
        experts.prefetch(next, ids);
    }
    s.expert_out.resize(n * k * n_embd, 0.0);
    // The experts already in memory run together (one pass over the threads for their gates and ups, one for
    // their downs), up to GROUP_ROWS token rows a group; those still being read follow as they arrive.
    s.rows_of.clear();
    s.rows_of.resize(s.used.len(), 0);
    for route in &s.routes[..n] {
        for e in &route.experts {
            if let Ok(i) = s.used.binary_search(e) {
                s.rows_of[i] += 1;
            }
        }
    }
    loop {
        let mut group_rows = 0;
        let rows_of = &s.rows_of;
        let mut admit = |i: usize| {
            group_rows += rows_of[i];
            group_rows <= GROUP_ROWS
        };
        let Some(group) = set.next_group(&mut admit) else { break };
        let group = group?;
        s.slots.clear();
        s.offs.clear();
        s.offs.push(0);
        s.rows.clear();
        let mut ffns = Vec::with_capacity(group.len());
        for &(i, ew) in &group {
            let e = s.used[i];
            for (t, route) in s.routes[..n].iter().enumerate() {
                if let Some(slot) = route.experts.iter().position(|&x| x == e) {
                    s.slots.push((t, slot));
                    s.rows.extend_from_slice(&x[t * n_embd..(t + 1) * n_embd]);
                }
            }
            s.offs.push(s.slots.len());
            ffns.push((ew.gate, ew.up, ew.down));
        }
        s.y.resize(s.slots.len() * n_embd, 0.0);
        exec.swiglu_ffn_group(&ffns, &s.rows, &s.offs, n == 1, &mut s.group, &mut s.y, l);
        for (j, &(t, slot)) in s.slots.iter().enumerate() {
            let dst = (t * k + slot) * n_embd;
            s.expert_out[dst..dst + n_embd].copy_from_slice(&s.y[j * n_embd..(j + 1) * n_embd]);
        }
    }
    drop(set);

    // The weighted sum in top-k order: `w_0 y_0 + w_1 y_1 + ...`, each product rounded before it is added (as
    // ggml's mul then chain of adds).
    for t in 0..n {
        let o = &mut out[t * n_embd..(t + 1) * n_embd];
        let route = &s.routes[t];
        for slot in 0..route.experts.len() {
            let y = &s.expert_out[(t * k + slot) * n_embd..(t * k + slot + 1) * n_embd];
            let wt = route.weights[slot];
            if slot == 0 {
                for (a, &b) in o.iter_mut().zip(y) {
                    *a = wt * b;
                }
            } else {
                for (a, &b) in o.iter_mut().zip(y) {
                    *a += wt * b;
                }
            }
        }
    }
    if let Some(sh) = &w.shared {
        shared_expert(exec, sh, x, s, out, layer);
    }
    Ok(())
}

/// `out += sigmoid(gate_inp . x) * swiglu(x)` per token.
fn shared_expert(exec: &Exec<'_>, sh: &SharedExpert, x: &[f32], s: &mut MoeScratch, out: &mut [f32], layer: usize) {
    let n_embd = sh.gate_inp.cols;
    let n = x.len() / n_embd;
    s.shared_out.resize(n * n_embd, 0.0);
    let f = &sh.ffn;
    exec.swiglu_ffn(
        (f.gate.as_ref(), f.up.as_ref(), f.down.as_ref()),
        x,
        &mut s.ffn,
        &mut s.shared_out,
        MatKind::Dense,
        Some(layer),
    );
    s.shared_gate.resize(n, 0.0);
    exec.router(sh.gate_inp.as_ref(), x, &mut s.xq, &mut s.shared_gate);
    exec.tap("ffn_shexp", Some(layer), &s.shared_out);
    for (t, o) in out.chunks_exact_mut(n_embd).enumerate() {
        let g = exec.sigmoid(s.shared_gate[t]);
        for (a, &b) in o.iter_mut().zip(&s.shared_out[t * n_embd..(t + 1) * n_embd]) {
            *a += g * b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Numerics;
    use crate::ops::Cpu;

    #[test]
    fn top_k_is_best_first_and_renormalised() {
        let r = MoeRouting { n_expert: 5, n_expert_used: 2, norm_topk_prob: true };
        let cpu = Cpu::new(1);
        let exec = Exec::new(&cpu, Numerics::Native);
        let mut route_out = Route { experts: vec![], weights: vec![] };
        exec.softmax_top_k(&[0.1, 2.0, -1.0, 1.5, 2.0], &r, &mut vec![], &mut vec![], &mut route_out);
        assert_eq!(route_out.experts, vec![1, 4], "ties go to the lower id");
        let sum: f32 = route_out.weights.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }
}
