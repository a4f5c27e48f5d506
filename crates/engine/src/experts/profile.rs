//! Routing profiles: how often the router chose each expert of each layer over a set of prompts, and what the
//! cache does with one (pin the hottest experts, size each layer's share of the slots).
//!
//! [`RouteCounter`] is a [`RouteHook`] that counts routing decisions, prompt and decode tokens apart (a position
//! below the prompt length set with [`RouteCounter::start_prompt`] is a prompt token); it can wrap another hook
//! (a route recorder or replay), counting the routes that hook leaves. `flash-moe profile` saves its counts as a
//! [`RoutingProfile`], a JSON file:
//!
//! ```json
//! {
//!   "format": "flash-moe routing profile",
//!   "version": 1,
//!   "model": {"file": "q30.gguf", "size_bytes": 18556684288, "n_layer": 48, "n_expert": 128, "n_expert_used": 8},
//!   "n_prompts": 12, "prompt_tokens": 1480, "decode_tokens": 384,
//!   "layers": [{"layer": 0, "prefill": [n_expert counts], "decode": [n_expert counts]}, ...]
//! }
//! ```
//!
//! `layers` lists the MoE layers only; `prefill[e]` counts the prompt tokens that routed to expert `e`, `decode[e]`
//! the generated tokens. A profile made for another model (file name, size or shape differ) is refused.
//!
//! Using one ([`plan`]): the hottest experts by total count are pinned (at most a given fraction of the slots),
//! and the slots are shared out by the greedy rule of the original flash-moe's adaptive per-layer budget: every
//! MoE layer first gets room for one token's experts, then each next slot goes to the layer whose next-hottest
//! expert (not yet counted in its share) has the highest count.

use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::formats::WeightIndex;
use crate::layers::routing::{Route, RouteHook};
use crate::models::ModelInfo;
use crate::{Error, Result};

pub const PROFILE_FORMAT: &str = "flash-moe routing profile";
pub const PROFILE_VERSION: u32 = 1;

/// What identifies a model for a profile or a hot file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// File (or directory) name, without its directory.
    pub file: String,
    /// Bytes of all its files.
    pub size_bytes: u64,
    pub n_layer: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
}

impl ModelIdentity {
    pub fn of(index: &WeightIndex, info: &ModelInfo) -> ModelIdentity {
        ModelIdentity {
            file: index
                .path
                .file_name()
                .map_or_else(|| index.path.display().to_string(), |n| n.to_string_lossy().into()),
            size_bytes: index.files.iter().map(|f| f.size).sum(),
            n_layer: info.n_layer,
            n_expert: info.n_expert,
            n_expert_used: info.n_expert_used,
        }
    }

    /// An error naming what differs, when `self` (from `path`) is not `want`.
    pub fn check(&self, want: &ModelIdentity, path: &Path, what: &str) -> Result<()> {
        if self == want {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "{}: this {what} was made for another model ({} of {} bytes, {} layers x {} experts, top-{}); the model \
             is {} of {} bytes, {} layers x {} experts, top-{}",
            path.display(),
            self.file,
            self.size_bytes,
            self.n_layer,
            self.n_expert,
            self.n_expert_used,
            want.file,
            want.size_bytes,
            want.n_layer,
            want.n_expert,
            want.n_expert_used
        )))
    }
}

/// Counts of one MoE layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCounts {
    pub layer: usize,
    pub prefill: Vec<u64>, // [n_expert]
    pub decode: Vec<u64>,  // [n_expert]
}

/// A saved routing profile (format in the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutingProfile {
    pub format: String,
    pub version: u32,
    pub model: ModelIdentity,
    pub n_prompts: usize,
    pub prompt_tokens: u64,
    pub decode_tokens: u64,
    pub layers: Vec<LayerCounts>,
}

impl RoutingProfile {
    /// Reads a profile and checks it was made for `model` and is consistent with it.
    pub fn load(path: &Path, model: &ModelIdentity) -> Result<RoutingProfile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, model)
    }

    /// [`RoutingProfile::load`] of the text of a profile (`path` names it in errors). Never panics, whatever the
    /// text holds (the `routing_profile` fuzz target calls it).
    pub fn parse(text: &str, path: &Path, model: &ModelIdentity) -> Result<RoutingProfile> {
        let p: RoutingProfile = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not a flash-moe routing profile: {e}")))?;
        if p.format != PROFILE_FORMAT || p.version != PROFILE_VERSION {
            return Err(Error::format(
                path,
                format!("format '{}' v{}, expected '{PROFILE_FORMAT}' v{PROFILE_VERSION}", p.format, p.version),
            ));
        }
        p.model.check(model, path, "routing profile")?;
        for l in &p.layers {
            if l.layer >= model.n_layer || l.prefill.len() != model.n_expert || l.decode.len() != model.n_expert {
                return Err(Error::format(
                    path,
                    format!(
                        "layer {} has {}/{} counts for {} experts",
                        l.layer,
                        l.prefill.len(),
                        l.decode.len(),
                        model.n_expert
                    ),
                ));
            }
        }
        Ok(p)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| Error::Invalid(format!("serializing a profile: {e}")))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }

    /// Total counts (prompt + decode), `[n_layer][n_expert]` (zero for layers the profile does not list).
    pub fn totals(&self) -> Vec<Vec<u64>> {
        let mut t = vec![vec![0u64; self.model.n_expert]; self.model.n_layer];
        for l in &self.layers {
            for (e, c) in t[l.layer].iter_mut().enumerate() {
                // Saturating: a profile's counts come from a file.
                *c = l.prefill[e].saturating_add(l.decode[e]);
            }
        }
        t
    }
}

/// What a profile asks of the cache: experts to pin (hottest first) and each layer's share of the slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachePlan {
    pub pinned: Vec<(usize, u32)>,
    pub quotas: Vec<usize>, // [n_layer]
    /// The profile's use counts, `[n_layer][n_expert]`: the prior of the cache's ranking
    /// ([`crate::experts::cache::ExpertCache::seed_uses`]).
    pub prior: Vec<Vec<u64>>,
}

/// Pins the hottest experts of `counts` (`[n_layer][n_expert]`; only those used at least once, at most
/// `pin_fraction` of `n_slots`, and leaving room for one token's experts in every MoE layer), and shares out
/// `n_slots` over the layers flagged in `moe_layers` by the greedy rule of the module doc.
pub fn plan(counts: &[Vec<u64>], moe_layers: &[bool], n_slots: usize, n_used: usize, pin_fraction: f64) -> CachePlan {
    let n_layer = counts.len();
    let n_moe = moe_layers.iter().filter(|&&m| m).count().max(1);
    // Per layer, expert ids by count, hottest first (ties to the lower id).
    let sorted: Vec<Vec<u32>> = counts
        .iter()
        .map(|c| {
            let mut ids: Vec<u32> = (0..c.len() as u32).collect();
            ids.sort_by(|&a, &b| c[b as usize].cmp(&c[a as usize]).then(a.cmp(&b)));
            ids
        })
        .collect();
    let mut quotas = vec![0usize; n_layer];
    let floor = n_used.min(n_slots / n_moe);
    let mut left = n_slots;
    for l in (0..n_layer).filter(|&l| moe_layers[l]) {
        quotas[l] = floor.min(counts[l].len());
        left -= quotas[l];
    }
    // Greedy: the next slot to the layer whose next expert is hottest.
    let mut heap: BinaryHeap<(u64, std::cmp::Reverse<usize>)> = (0..n_layer)
        .filter(|&l| moe_layers[l] && quotas[l] < counts[l].len())
        .map(|l| (counts[l][sorted[l][quotas[l]] as usize], std::cmp::Reverse(l)))
        .collect();
    while left > 0 {
        let Some((_, std::cmp::Reverse(l))) = heap.pop() else { break };
        quotas[l] += 1;
        left -= 1;
        if quotas[l] < counts[l].len() {
            heap.push((counts[l][sorted[l][quotas[l]] as usize], std::cmp::Reverse(l)));
        }
    }
    // Pins: the hottest experts overall, within each layer's share less one token's experts.
    let n_pin_max = ((n_slots as f64 * pin_fraction.clamp(0.0, 1.0)) as usize).min(n_slots.saturating_sub(n_used));
    let mut candidates: Vec<(u64, usize, u32)> = Vec::new();
    for l in (0..n_layer).filter(|&l| moe_layers[l]) {
        let room = quotas[l].saturating_sub(n_used);
        for &e in sorted[l].iter().take(room) {
            if counts[l][e as usize] > 0 {
                candidates.push((counts[l][e as usize], l, e));
            }
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let pinned = candidates.into_iter().take(n_pin_max).map(|(_, l, e)| (l, e)).collect();
    CachePlan { pinned, quotas, prior: counts.to_vec() }
}

/// [`plan`] for a cache with slots of several sizes: each slot class's slots (`class_slots[c]`) are shared out
/// over that class's layers, and pins are chosen within each class; the pins come hottest first overall.
pub fn plan_classes(
    counts: &[Vec<u64>],
    classes: &crate::experts::budget::SlotClasses,
    class_slots: &[usize],
    n_used: usize,
    pin_fraction: f64,
) -> CachePlan {
    let n_layer = counts.len();
    let mut out = CachePlan { pinned: Vec::new(), quotas: vec![0; n_layer], prior: counts.to_vec() };
    for (c, &n) in class_slots.iter().enumerate() {
        let moe: Vec<bool> = (0..n_layer).map(|l| classes.of_layer.get(l).copied().flatten() == Some(c)).collect();
        let p = plan(counts, &moe, n, n_used, pin_fraction);
        for l in (0..n_layer).filter(|&l| moe[l]) {
            out.quotas[l] = p.quotas[l];
        }
        out.pinned.extend(p.pinned);
    }
    out.pinned.sort_by(|a, b| counts[b.0][b.1 as usize].cmp(&counts[a.0][a.1 as usize]).then(a.cmp(b)));
    out
}

/// Counts of a [`RouteCounter`].
#[derive(Clone, Debug, Default)]
pub struct RouteCounts {
    pub prefill: Vec<Vec<u64>>, // [n_layer][n_expert]
    pub decode: Vec<Vec<u64>>,  // [n_layer][n_expert]
    pub prompt_tokens: u64,
    pub decode_tokens: u64,
}

impl RouteCounts {
    /// The `(layer, expert)` pairs used by at least one prompt token.
    pub fn prefill_experts(&self) -> Vec<(usize, u32)> {
        let mut v = Vec::new();
        for (l, c) in self.prefill.iter().enumerate() {
            v.extend(c.iter().enumerate().filter(|(_, &n)| n > 0).map(|(e, _)| (l, e as u32)));
        }
        v
    }
}

/// A route hook that counts the experts chosen, prompt and decode apart; wraps an optional inner hook.
pub struct RouteCounter {
    counts: Mutex<RouteCounts>,
    prompt_len: AtomicUsize,
    first_layer: usize,
    inner: Option<Arc<dyn RouteHook>>,
}

impl RouteCounter {
    /// `moe_layers[l]`: whether layer `l` routes (token counts are taken at the first MoE layer).
    pub fn new(n_layer: usize, n_expert: usize, moe_layers: &[bool], inner: Option<Arc<dyn RouteHook>>) -> Self {
        let counts = RouteCounts {
            prefill: vec![vec![0; n_expert]; n_layer],
            decode: vec![vec![0; n_expert]; n_layer],
            ..Default::default()
        };
        let first_layer = moe_layers.iter().position(|&m| m).unwrap_or(0);
        RouteCounter { counts: Mutex::new(counts), prompt_len: AtomicUsize::new(0), first_layer, inner }
    }

    /// Positions below `n_tokens` of the next sequence are prompt tokens.
    pub fn start_prompt(&self, n_tokens: usize) {
        self.prompt_len.store(n_tokens, Ordering::Relaxed);
    }

    pub fn counts(&self) -> RouteCounts {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The counts as a profile of `model` (MoE layers only).
    pub fn profile(&self, model: ModelIdentity, moe_layers: &[bool], n_prompts: usize) -> RoutingProfile {
        let c = self.counts();
        let layers = (0..c.prefill.len())
            .filter(|&l| moe_layers.get(l).copied().unwrap_or(false))
            .map(|l| LayerCounts { layer: l, prefill: c.prefill[l].clone(), decode: c.decode[l].clone() })
            .collect();
        RoutingProfile {
            format: PROFILE_FORMAT.into(),
            version: PROFILE_VERSION,
            model,
            n_prompts,
            prompt_tokens: c.prompt_tokens,
            decode_tokens: c.decode_tokens,
            layers,
        }
    }
}

impl RouteHook for RouteCounter {
    fn route(&self, layer: usize, pos: usize, n_call: usize, route: &mut Route) -> Result<()> {
        if let Some(h) = &self.inner {
            h.route(layer, pos, n_call, route)?;
        }
        let prefill = pos < self.prompt_len.load(Ordering::Relaxed);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = &mut *c;
        let (per_layer, tokens) =
            if prefill { (&mut c.prefill, &mut c.prompt_tokens) } else { (&mut c.decode, &mut c.decode_tokens) };
        if layer == self.first_layer {
            *tokens += 1;
        }
        if let Some(row) = per_layer.get_mut(layer) {
            for &e in &route.experts {
                if let Some(n) = row.get_mut(e as usize) {
                    *n += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_shares_follow_the_counts_and_pins_are_bounded() {
        // Layer 0 dense; layer 1 very skewed (one hot expert); layer 2 flat.
        let counts = vec![vec![0; 4], vec![100, 1, 0, 0], vec![10, 10, 10, 10]];
        let moe = [false, true, true];
        let p = plan(&counts, &moe, 6, 1, 0.5);
        // Floors of 1 each, then 10,10,10 (layer 2) beat layer 1's next (1) until layer 2 is full.
        assert_eq!(p.quotas, vec![0, 2, 4]);
        assert_eq!(p.quotas.iter().sum::<usize>(), 6);
        assert!(p.pinned.len() <= 3);
        assert_eq!(p.pinned[0], (1, 0), "the hottest expert is pinned first");
        // Never a pin that leaves no room for a token's experts in its layer.
        assert!(!p.pinned.contains(&(1, 1)));
        let none = plan(&counts, &moe, 6, 1, 0.0);
        assert!(none.pinned.is_empty());
    }

    #[test]
    fn counter_splits_prompt_and_decode() {
        let c = RouteCounter::new(2, 4, &[false, true], None);
        c.start_prompt(2);
        let mut r = Route { experts: vec![1, 3], weights: vec![0.5, 0.5] };
        for pos in 0..3 {
            c.route(1, pos, 1, &mut r).expect("count");
        }
        let n = c.counts();
        assert_eq!(n.prefill[1], vec![0, 2, 0, 2]);
        assert_eq!(n.decode[1], vec![0, 1, 0, 1]);
        assert_eq!((n.prompt_tokens, n.decode_tokens), (2, 1));
        assert_eq!(n.prefill_experts(), vec![(1, 1), (1, 3)]);
    }
}
