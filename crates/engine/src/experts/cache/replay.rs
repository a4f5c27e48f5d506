//! Offline replay of the eviction policy over a routing trace (no model, no I/O), for measuring the policy on
//! recorded traces ([`replay_policy`]).

use super::policy::{SlotState, State};
use super::stats::ratio;
use super::{PREDICTED_PER_USED, PREFETCH_CHANCE_MIN};
use crate::experts::predict::TransitionTable;

/// Prefetch in [`replay_policy`].
#[derive(Clone, Copy, Debug)]
pub struct ReplayPrefetch {
    /// The least measured chance of use of a prediction's rank to prefetch it ([`PREFETCH_CHANCE_MIN`] in the
    /// cache; 0 prefetches whatever is predicted, where a victim is valued lower).
    pub chance_min: f32,
}

/// What [`replay_policy`] counts.
#[derive(Clone, Debug, Default)]
pub struct ReplayStats {
    pub hits: u64,
    pub misses: u64,
    /// Hits on prefetched experts (included in `hits`).
    pub prefetch_used: u64,
    pub prefetch_issued: u64,
    /// Experts used at visits with a prediction, and how many were predicted.
    pub predicted_of: u64,
    pub predicted_used: u64,
}

impl ReplayStats {
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }
}

/// Replays a routing trace through the cache's eviction policy alone (no model, no I/O): each element of `steps`
/// is one layer of one token, `(layer, experts used, counted)`, in forward order; counts over the counted steps.
/// The experts of a step are claimed hits first and pinned together, as in a forward step. With `prefetch`, the
/// transition table predicts each next layer and its predictions are prefetched as the cache does it, modelled as
/// read in time (a prefetch issued at one layer is usable at the next); `PREDICTED_PER_USED * n_expert_used` experts are predicted,
/// as the cache does.
pub fn replay_policy(
    n_slots: usize,
    moe_layers: &[bool],
    n_expert: usize,
    n_expert_used: usize,
    prefetch: Option<ReplayPrefetch>,
    steps: impl IntoIterator<Item = (usize, Vec<u32>, bool)>,
) -> ReplayStats {
    let st = State::new(n_slots, moe_layers.len(), n_expert);
    replay_state(st, moe_layers, n_expert, n_expert_used, prefetch, steps)
}

/// [`replay_policy`] for a cache with slots of several sizes: `class_slots[c]` slots of class `c` of `classes`
/// (as [`crate::experts::budget::SlotClasses::share`] sizes them for a budget), each layer's experts in its class.
pub fn replay_policy_classes(
    classes: &crate::experts::budget::SlotClasses,
    class_slots: &[usize],
    n_expert: usize,
    n_expert_used: usize,
    prefetch: Option<ReplayPrefetch>,
    steps: impl IntoIterator<Item = (usize, Vec<u32>, bool)>,
) -> ReplayStats {
    let moe_layers: Vec<bool> = classes.of_layer.iter().map(Option::is_some).collect();
    let class_of = classes.of_layer.iter().map(|c| c.unwrap_or(0)).collect();
    let st = State::with_classes(class_slots, class_of, n_expert);
    replay_state(st, &moe_layers, n_expert, n_expert_used, prefetch, steps)
}

/// [`replay_policy`] from a given state (a profile's shares and pins already applied).
pub(super) fn replay_state(
    mut st: State,
    moe_layers: &[bool],
    n_expert: usize,
    n_expert_used: usize,
    prefetch: Option<ReplayPrefetch>,
    steps: impl IntoIterator<Item = (usize, Vec<u32>, bool)>,
) -> ReplayStats {
    st.chance_min = prefetch.map_or(PREFETCH_CHANCE_MIN, |p| p.chance_min);
    st.set_k(n_expert_used);
    let prefetch = prefetch.map(|_| n_expert_used);
    let mut table = prefetch.map(|_| TransitionTable::new(moe_layers, n_expert));
    let mut pred = Vec::new();
    let mut out = ReplayStats::default();
    for (layer, mut experts, counted) in steps {
        let stats0 = st.stats.clone();
        st.visit(layer, &experts);
        experts.sort_by_key(|e| !st.map.contains_key(&(layer as u32, *e)));
        let mut pinned = Vec::with_capacity(experts.len());
        for &e in &experts {
            let Some((s, _)) = st.claim_slot(layer, e) else { continue };
            st.slots[s].state = SlotState::Ready;
            pinned.push(s);
        }
        if counted {
            out.hits += st.stats.hits - stats0.hits;
            out.misses += st.stats.misses - stats0.misses;
            out.prefetch_used += st.stats.prefetch_used - stats0.prefetch_used;
            out.predicted_of += st.stats.predicted_of - stats0.predicted_of;
            out.predicted_used += st.stats.predicted_used - stats0.predicted_used;
        }
        if let (Some(k), Some(t)) = (prefetch, table.as_mut()) {
            let single = experts.len() <= k;
            if single {
                t.observe(layer, &experts);
            } else {
                t.interrupt();
            }
            if let Some(next) = t.predict(layer, &experts, PREDICTED_PER_USED * k, &mut pred).filter(|_| single) {
                st.note_prediction(next, &pred);
                for (rank, &e) in pred.iter().enumerate() {
                    if let Some(s) = st.prefetch_slot(next, e, rank, &pred, 0.0) {
                        st.slots[s].state = SlotState::Ready;
                        if counted {
                            out.prefetch_issued += 1;
                        }
                    }
                }
            }
        }
        for s in pinned {
            st.unpin(s);
        }
    }
    out
}
