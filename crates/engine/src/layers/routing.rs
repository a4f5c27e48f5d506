//! What a router decides: the routing parameters of a MoE layer, one token's route, and the hook that may observe or
//! replace it. A leaf module, shared by the MoE block, the backends that compute the routing, route traces and the
//! approximate mode.

use crate::Result;

/// How a MoE layer turns router logits into expert weights.
#[derive(Clone, Debug)]
pub struct MoeRouting {
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Renormalise the top-k weights to sum to one.
    pub norm_topk_prob: bool,
}

/// One token's routing decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub experts: Vec<u32>, // [n_expert_used], best first
    pub weights: Vec<f32>, // [n_expert_used]
}

/// Observes or replaces routing decisions: route traces, a benchmark and analysis mode that is never on by
/// default ([`crate::routes`]).
pub trait RouteHook: Send + Sync {
    /// Called with the router's choice for the token at position `pos` in MoE layer `layer` (`n_call` tokens in
    /// this forward call); may replace it.
    fn route(&self, layer: usize, pos: usize, n_call: usize, route: &mut Route) -> Result<()>;
}
