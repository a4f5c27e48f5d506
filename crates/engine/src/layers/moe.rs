//! The routed mixture-of-experts block (Qwen3-MoE; the shape DeepSeek/GLM/gpt-oss extend):
//!
//! 1. router logits `r = W_router x` (`[n_expert]`), `p = softmax(r)`;
//! 2. the top-k experts by `p` (ties to the lower id), weights `p_i`, divided by their sum when
//!    `norm_topk_prob`;
//! 3. `out = sum_i w_i * down_i(silu(gate_i(x)) * up_i(x))`, summed in top-k order.
//!
//! A batch of tokens is routed first; each expert used by any token is acquired once and run over all its
//! tokens (expert-major), and each token's sum is formed in its own top-k order, so the result is bit-identical
//! to running the tokens one at a time.
//!
//! Only when an approximate mode was asked for ([`crate::approx`], never by default) are routes thinned after
//! routing: fewer experts per token, or only those already in memory.

use crate::approx::{ApproxMode, ApproxScratch};
use crate::experts::ExpertProvider;
use crate::ops::{self, Cpu, QuantActs};
use crate::tensor::QMat;
use crate::Result;

use super::ffn::{self, FfnScratch};

/// How a MoE layer turns router logits into expert weights.
#[derive(Clone, Debug)]
pub struct MoeRouting {
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Renormalise the top-k weights to sum to one.
    pub norm_topk_prob: bool,
}

#[derive(Debug)]
pub struct MoeWeights {
    pub router: QMat, // [n_expert, n_embd]
}

/// One token's routing decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub experts: Vec<u32>, // [n_expert_used], best first
    pub weights: Vec<f32>, // [n_expert_used]
}

#[derive(Default)]
pub struct MoeScratch {
    xq: QuantActs,
    logits: Vec<f32>,           // [n, n_expert]
    probs: Vec<f32>,            // [n_expert]
    order: Vec<u32>,            // [n_expert]
    routes: Vec<Route>,         // [n]
    used: Vec<u32>,             // distinct experts of the batch, ascending
    rows: Vec<f32>,             // [tokens of one expert, n_embd]
    y: Vec<f32>,                // [tokens of one expert, n_embd]
    slots: Vec<(usize, usize)>, // (token, top-k slot) of one expert
    expert_out: Vec<f32>,       // [n, n_expert_used, n_embd]
    ffn: FfnScratch,
    approx: ApproxScratch,
}

impl MoeScratch {
    /// The routes of the last call, per token.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Picks the top-k experts of one token from its router logits.
pub fn route(logits: &[f32], r: &MoeRouting, probs: &mut Vec<f32>, order: &mut Vec<u32>, out: &mut Route) {
    probs.clear();
    probs.extend_from_slice(logits);
    ops::softmax(probs);
    order.clear();
    order.extend(0..r.n_expert as u32);
    order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]).then(a.cmp(&b)));
    out.experts.clear();
    out.experts.extend_from_slice(&order[..r.n_expert_used]);
    out.weights.clear();
    out.weights.extend(out.experts.iter().map(|&e| probs[e as usize]));
    if r.norm_topk_prob {
        let sum: f32 = out.weights.iter().sum();
        for w in out.weights.iter_mut() {
            *w /= sum;
        }
    }
}

/// Observes or replaces routing decisions: route traces, a benchmark and analysis mode that is never on by
/// default ([`crate::routes`]).
pub trait RouteHook: Send + Sync {
    /// Called with the router's choice for the token at position `pos` in MoE layer `layer` (`n_call` tokens in
    /// this forward call); may replace it.
    fn route(&self, layer: usize, pos: usize, n_call: usize, route: &mut Route) -> Result<()>;
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
    cpu: &Cpu,
    w: &MoeWeights,
    r: &MoeRouting,
    experts: &dyn ExpertProvider,
    layer: usize,
    (pos0, ov): (usize, RouteOverrides<'_>),
    prefetch: Option<(usize, &[u32])>,
    x: &[f32],
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<()> {
    let n_embd = w.router.cols;
    let n = x.len() / n_embd;

    s.logits.resize(n * r.n_expert, 0.0);
    ops::matmul_f32(cpu, w.router.as_ref(), x, &mut s.xq, &mut s.logits);
    s.routes.resize_with(n, || Route { experts: Vec::new(), weights: Vec::new() });
    for t in 0..n {
        let logits = &s.logits[t * r.n_expert..(t + 1) * r.n_expert];
        route(logits, r, &mut s.probs, &mut s.order, &mut s.routes[t]);
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
    while let Some(next) = set.next() {
        let (i, ew) = next?;
        let e = s.used[i];
        s.slots.clear();
        for (t, route) in s.routes[..n].iter().enumerate() {
            if let Some(slot) = route.experts.iter().position(|&x| x == e) {
                s.slots.push((t, slot));
            }
        }
        s.rows.clear();
        for &(t, _) in &s.slots {
            s.rows.extend_from_slice(&x[t * n_embd..(t + 1) * n_embd]);
        }
        s.y.resize(s.slots.len() * n_embd, 0.0);
        ffn::swiglu(cpu, ew.gate, ew.up, ew.down, &s.rows, &mut s.ffn, &mut s.y);
        for (j, &(t, slot)) in s.slots.iter().enumerate() {
            let dst = (t * k + slot) * n_embd;
            s.expert_out[dst..dst + n_embd].copy_from_slice(&s.y[j * n_embd..(j + 1) * n_embd]);
        }
    }
    drop(set);

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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_best_first_and_renormalised() {
        let r = MoeRouting { n_expert: 5, n_expert_used: 2, norm_topk_prob: true };
        let mut route_out = Route { experts: vec![], weights: vec![] };
        route(&[0.1, 2.0, -1.0, 1.5, 2.0], &r, &mut vec![], &mut vec![], &mut route_out);
        assert_eq!(route_out.experts, vec![1, 4], "ties go to the lower id");
        let sum: f32 = route_out.weights.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }
}
