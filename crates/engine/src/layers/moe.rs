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
    routes: Vec<Route>,         // [n]
    used: Vec<u32>,             // distinct experts of the batch, ascending
    at: Vec<usize>,             // where each expert of `used` starts in `pairs`, and the end
    fill: Vec<usize>,           // [used.len()], while `pairs` is filled
    pairs: Vec<(usize, usize)>, // (token, top-k slot) of each expert's rows, expert by expert
    toks: Vec<usize>,           // the token of each row of `y`
    offs: Vec<usize>,           // each expert's first row in the current group, and the end
    row_of: Vec<usize>,         // [n, n_expert_used]: the row of `y` holding (token, slot)'s output
    y: Vec<f32>,                // [n x experts per token, n_embd]: every expert output, in the order computed
    shared_out: Vec<f32>,       // [n, n_embd]
    shared_gate: Vec<f32>,      // [n]
    ffn: FfnScratch,
    group: GroupFfnScratch,
    approx: ApproxScratch,
    touched: Vec<u64>, // [layer]: distinct experts its calls used, summed over the calls
}

/// Token rows (token x selected expert) a group of experts takes at most, unless one expert alone has more: a
/// batch's worth, the scratch the memory plan counts for gathered rows, gate and up.
const GROUP_ROWS: usize = crate::backend::native::N_BATCH;

impl MoeScratch {
    /// The routes of the last call, per token.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// For each layer, the distinct experts of every call so far, summed: the experts whose weights the calls
    /// touched (a batch touches each of its experts once, whatever number of its tokens chose it).
    pub fn experts_touched(&self) -> &[u64] {
        &self.touched
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
    let logits = &s.logits;
    crate::ops::for_each_on(
        exec.cpu,
        &mut s.routes[..n],
        n >= crate::ops::PAR_ROWS_MIN,
        &|| (Vec::new(), Vec::new()),
        &|t, route, (probs, order)| {
            exec.softmax_top_k(&logits[t * r.n_expert..(t + 1) * r.n_expert], r, probs, order, route)
        },
    );
    if let Some(h) = ov.hook {
        for (t, route) in s.routes[..n].iter_mut().enumerate() {
            h.route(layer, pos0 + t, n, route)?;
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
    if s.touched.len() <= layer {
        s.touched.resize(layer + 1, 0);
    }
    s.touched[layer] += s.used.len() as u64;

    let mut set = experts.acquire(layer, &s.used)?;
    if let Some(a) = ov.approx {
        a.fetch_dropped(experts, layer, &s.approx);
    }
    if let Some((next, ids)) = prefetch {
        experts.prefetch(next, ids);
    }
    // Each expert's (token, top-k slot) pairs, token by token: expert `used[i]` has `pairs[at[i]..at[i + 1]]`.
    s.at.clear();
    s.at.resize(s.used.len() + 1, 0);
    for route in &s.routes[..n] {
        for e in &route.experts {
            if let Ok(i) = s.used.binary_search(e) {
                s.at[i + 1] += 1;
            }
        }
    }
    for i in 0..s.used.len() {
        s.at[i + 1] += s.at[i];
    }
    s.pairs.clear();
    s.pairs.resize(s.at[s.used.len()], (0, 0));
    s.fill.clear();
    s.fill.extend_from_slice(&s.at[..s.used.len()]);
    for (t, route) in s.routes[..n].iter().enumerate() {
        for (slot, e) in route.experts.iter().enumerate() {
            if let Ok(i) = s.used.binary_search(e) {
                s.pairs[s.fill[i]] = (t, slot);
                s.fill[i] += 1;
            }
        }
    }
    // The experts already in memory run together (one pass over the threads for their gates and ups, one for
    // their downs), up to GROUP_ROWS token rows a group; those still being read follow as they arrive. Rows of
    // `y` are taken in the order the groups come; `row_of[t * k + slot]` says where each (token, slot) went.
    s.row_of.clear();
    s.row_of.resize(n * k, usize::MAX);
    s.toks.clear();
    s.y.resize(s.pairs.len() * n_embd, 0.0);
    s.group.new_input();
    loop {
        let mut group_rows = 0;
        let at = &s.at;
        let mut admit = |i: usize| {
            group_rows += at[i + 1] - at[i];
            group_rows <= GROUP_ROWS
        };
        let Some(group) = set.next_group(&mut admit) else { break };
        let group = group?;
        let g0 = s.toks.len();
        s.offs.clear();
        s.offs.push(0);
        let mut ffns = Vec::with_capacity(group.len());
        for &(i, ew) in &group {
            for &(t, slot) in &s.pairs[s.at[i]..s.at[i + 1]] {
                s.row_of[t * k + slot] = s.toks.len();
                s.toks.push(t);
            }
            s.offs.push(s.toks.len() - g0);
            ffns.push((ew.gate, ew.up, ew.down));
        }
        let g1 = s.toks.len();
        let y = &mut s.y[g0 * n_embd..g1 * n_embd];
        exec.swiglu_ffn_group(&ffns, x, &s.toks[g0..g1], &s.offs, &mut s.group, y, l);
    }
    drop(set);

    // The weighted sum in top-k order: `w_0 y_0 + w_1 y_1 + ...`, each product rounded before it is added (as
    // ggml's mul then chain of adds).
    let (routes, row_of, y) = (&s.routes[..n], &s.row_of, &s.y);
    crate::ops::for_row_chunks_on(exec.cpu, &mut out[..n * n_embd], n_embd, &|tokens, o| {
        for (t, o) in tokens.zip(o.chunks_exact_mut(n_embd)) {
            let route = &routes[t];
            for slot in 0..route.experts.len() {
                let j = row_of[t * k + slot];
                let y = &y[j * n_embd..(j + 1) * n_embd];
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
    });
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
