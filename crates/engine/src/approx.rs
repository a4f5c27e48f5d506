//! Approximate expert selection: an opt-in mode that trades fidelity for speed. Never on by default: the
//! decoder applies it only when [`crate::models::Model::set_approx`] was called, and the CLI only with an
//! explicit `--approx MODE`. Without it the MoE block computes every expert the router chose, bit for bit.
//!
//! Two modes, both applied to each token's route after the router (and any [`crate::layers::moe::RouteHook`]):
//! - [`Approx::TopK`] (`top-k=N`): keep only the N best of the router's k experts.
//! - [`Approx::DropMissing`] (`drop-missing`), in single-token steps (decode): keep the token's best expert
//!   (the router's first choice, waiting for it if it misses) and, of the others, those that are in the cache or
//!   already being read ([`ExpertProvider::resident`]); skip the rest, but start their reads in the background
//!   ([`ExpertProvider::fetch_background`]) so a later token finds them. Always keeping the best one cost 2.3-6.6x
//!   less KL than dropping it too on the trained tiny-py-moe at 10-25% cache (1.5x on the random `small` model),
//!   and a token never goes through a layer with no expert. A batch of several tokens (a prompt) is left exact: each read
//!   there serves many tokens, and the prompt's KV cache feeds every later token (dropping in the prompt too cost
//!   2-5x the KL on the fixtures and the `small` model at large caches).
//!
//! In both, the kept experts' weights are scaled so they sum to what all the router's experts summed to (1 with
//! `norm_topk_prob`): the output is a weighted mean of fewer experts, not a shrunken one. The counters
//! ([`ApproxStats`]) say how many routed experts were dropped, of those routed in the steps the mode applies to.
//!
//! `drop-missing` is not reproducible bit for bit: background reads never block, so when the cache is full, which
//! slot a miss evicts (and so what is resident later) can depend on which reads had finished. The streaming cache
//! keeps at most a few background reads in flight and skips the rest, so that a disk that falls behind never
//! delays the reads a step waits for; a skipped expert is simply read the next time it is dropped. `top-k=N` is
//! reproducible and independent of the cache.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::experts::ExpertProvider;
use crate::layers::routing::Route;
use crate::{Error, Result};

/// Which approximation (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approx {
    DropMissing,
    TopK(usize),
}

impl Approx {
    /// Parses `drop-missing` or `top-k=N`.
    pub fn parse(s: &str) -> Result<Approx> {
        if s == "drop-missing" {
            return Ok(Approx::DropMissing);
        }
        if let Some(n) = s.strip_prefix("top-k=") {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Approx::TopK(n)),
                _ => Err(Error::Invalid(format!("--approx {s}: N in top-k=N must be a whole number of at least 1"))),
            };
        }
        Err(Error::Invalid(format!("--approx {s}: unknown mode; give drop-missing or top-k=N")))
    }

    /// The name as the CLI spells it.
    pub fn name(&self) -> String {
        match self {
            Approx::DropMissing => "drop-missing".into(),
            Approx::TopK(n) => format!("top-k={n}"),
        }
    }

    /// Checks the mode against a model with `n_expert_used` experts per token.
    pub fn check(&self, n_expert_used: usize) -> Result<()> {
        match *self {
            _ if n_expert_used == 0 => Err(Error::Invalid(format!(
                "--approx {}: the model has no routed experts, so there is nothing to approximate",
                self.name()
            ))),
            Approx::TopK(n) if n >= n_expert_used => Err(Error::Invalid(format!(
                "--approx top-k={n}: the model uses {n_expert_used} experts per token; N must be below that \
                 (1..={})",
                n_expert_used - 1
            ))),
            _ => Ok(()),
        }
    }
}

/// Routed and dropped experts (token-expert pairs) since the mode was set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApproxStats {
    /// Experts the router (or a replayed trace) chose, summed over tokens and layers.
    pub routed: u64,
    /// Of those, the ones not computed.
    pub dropped: u64,
}

impl ApproxStats {
    pub fn dropped_fraction(&self) -> f64 {
        if self.routed == 0 {
            0.0
        } else {
            self.dropped as f64 / self.routed as f64
        }
    }

    /// The counts accumulated since `start` (an earlier snapshot).
    pub fn since(&self, start: &ApproxStats) -> ApproxStats {
        ApproxStats { routed: self.routed - start.routed, dropped: self.dropped - start.dropped }
    }
}

/// An approximation and its counters, held by the decoder.
#[derive(Debug)]
pub struct ApproxMode {
    pub approx: Approx,
    routed: AtomicU64,
    dropped: AtomicU64,
}

/// Per-layer buffers of the selection (in the session's MoE scratch).
#[derive(Default)]
pub struct ApproxScratch {
    resident: Vec<bool>,     // [experts of the token]
    dropped: Vec<u32>,       // experts dropped, best first
    saved_weights: Vec<f32>, // one token's weights before dropping
}

impl ApproxMode {
    pub fn new(approx: Approx) -> ApproxMode {
        ApproxMode { approx, routed: AtomicU64::new(0), dropped: AtomicU64::new(0) }
    }

    pub fn stats(&self) -> ApproxStats {
        ApproxStats { routed: self.routed.load(Ordering::Relaxed), dropped: self.dropped.load(Ordering::Relaxed) }
    }

    /// Thins the routes of one layer's batch in place; the experts dropped are left in the scratch for
    /// [`ApproxMode::fetch_dropped`].
    pub fn select(&self, experts: &dyn ExpertProvider, layer: usize, routes: &mut [Route], s: &mut ApproxScratch) {
        s.dropped.clear();
        let mut routed = 0;
        let mut dropped = 0;
        match (self.approx, routes) {
            (Approx::TopK(n), routes) => {
                for r in routes.iter_mut() {
                    routed += r.experts.len();
                    dropped += retain_renormalised(r, |slot, _| slot < n, &mut s.saved_weights);
                }
            }
            // One token (a decode step); a batch is left exact (see the module doc).
            (Approx::DropMissing, [r]) if !r.experts.is_empty() => {
                routed = r.experts.len();
                experts.resident(layer, &r.experts, &mut s.resident);
                s.resident[0] = true; // the best expert, read and waited for if it misses
                s.dropped.extend(r.experts.iter().zip(&s.resident).filter(|(_, &x)| !x).map(|(&e, _)| e));
                dropped = retain_renormalised(r, |slot, _| s.resident[slot], &mut s.saved_weights);
            }
            (Approx::DropMissing, _) => {}
        }
        self.routed.fetch_add(routed as u64, Ordering::Relaxed);
        self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Starts background reads of the experts [`ApproxMode::select`] dropped (drop-missing only), without
    /// waiting for them. Called once the kept experts are acquired, so their reads go first.
    pub fn fetch_dropped(&self, experts: &dyn ExpertProvider, layer: usize, s: &ApproxScratch) {
        if !s.dropped.is_empty() {
            experts.fetch_background(layer, &s.dropped);
        }
    }
}

/// Keeps the experts of `route` for which `keep(top-k slot, expert)` holds, in order, scaling their weights so
/// they sum to what all of them summed to; returns how many were removed. A route that would keep none is
/// left whole (callers keep at least one).
fn retain_renormalised(route: &mut Route, mut keep: impl FnMut(usize, u32) -> bool, saved: &mut Vec<f32>) -> usize {
    let n = route.experts.len();
    let n_keep = (0..n).filter(|&i| keep(i, route.experts[i])).count();
    if n_keep == n || n_keep == 0 {
        return 0;
    }
    let sum_all: f32 = route.weights.iter().sum();
    saved.clear();
    saved.extend_from_slice(&route.weights);
    let mut j = 0;
    for (i, &w) in saved.iter().enumerate() {
        let e = route.experts[i];
        if keep(i, e) {
            route.experts[j] = e;
            route.weights[j] = w;
            j += 1;
        }
    }
    route.experts.truncate(j);
    route.weights.truncate(j);
    let sum_kept: f32 = route.weights.iter().sum();
    if sum_kept > 0.0 {
        let scale = sum_all / sum_kept;
        for w in route.weights.iter_mut() {
            *w *= scale;
        }
    }
    n - j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_only_spelled_out_modes() {
        assert_eq!(Approx::parse("drop-missing").expect("valid"), Approx::DropMissing);
        assert_eq!(Approx::parse("top-k=3").expect("valid"), Approx::TopK(3));
        for bad in ["", "drop", "top-k", "top-k=", "top-k=0", "top-k=-1", "top-k=x", "DROP-MISSING", "1"] {
            assert!(Approx::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(Approx::TopK(2).check(2).is_err(), "top-k=k is not an approximation");
        assert!(Approx::TopK(1).check(2).is_ok());
        assert!(Approx::DropMissing.check(0).is_err(), "a dense model has nothing to drop");
    }

    #[test]
    fn kept_weights_are_rescaled_to_the_original_sum() {
        let mut r = Route { experts: vec![5, 2, 9], weights: vec![0.5, 0.3, 0.2] };
        let n = retain_renormalised(&mut r, |_, e| e != 2, &mut vec![]);
        assert_eq!(n, 1);
        assert_eq!(r.experts, vec![5, 9]);
        assert!((r.weights[0] - 0.5 / 0.7).abs() < 1e-6 && (r.weights[1] - 0.2 / 0.7).abs() < 1e-6);
        // Not normalised (sum 0.6): the kept ones sum to 0.6 again.
        let mut r = Route { experts: vec![1, 2], weights: vec![0.4, 0.2] };
        retain_renormalised(&mut r, |slot, _| slot < 1, &mut vec![]);
        assert_eq!(r.experts, vec![1]);
        assert!((r.weights[0] - 0.6).abs() < 1e-6);
        // Keeping none leaves the route whole.
        let mut r = Route { experts: vec![1, 2], weights: vec![0.4, 0.2] };
        assert_eq!(retain_renormalised(&mut r, |_, _| false, &mut vec![]), 0);
        assert_eq!(r.experts, vec![1, 2]);
    }

    /// A provider whose resident set is fixed, recording background fetches.
    struct Fixed {
        resident: Vec<u32>,
        fetched: std::sync::Mutex<Vec<u32>>,
    }

    impl ExpertProvider for Fixed {
        fn acquire<'a>(&'a self, _: usize, _: &[u32]) -> Result<Box<dyn crate::experts::ExpertSet + 'a>> {
            unreachable!("select never acquires")
        }
        fn resident(&self, _: usize, ids: &[u32], out: &mut Vec<bool>) {
            out.clear();
            out.extend(ids.iter().map(|e| self.resident.contains(e)));
        }
        fn fetch_background(&self, _: usize, ids: &[u32]) {
            self.fetched.lock().expect("lock").extend_from_slice(ids);
        }
    }

    #[test]
    fn drop_missing_keeps_the_best_and_the_resident_experts() {
        let p = Fixed { resident: vec![3, 6], fetched: Default::default() };
        let mode = ApproxMode::new(Approx::DropMissing);
        let mut s = ApproxScratch::default();
        let cases = [
            // The best (1) misses but is kept; 3 is resident; 5 is dropped.
            (Route { experts: vec![1, 3, 5], weights: vec![0.5, 0.3, 0.2] }, vec![1, 3], vec![0.625, 0.375], vec![5]),
            // All miss: only the best is kept.
            (Route { experts: vec![4, 2], weights: vec![0.7, 0.3] }, vec![4], vec![1.0], vec![2]),
            // All resident but the best: nothing dropped.
            (
                Route { experts: vec![7, 6, 3], weights: vec![0.4, 0.3, 0.3] },
                vec![7, 6, 3],
                vec![0.4, 0.3, 0.3],
                vec![],
            ),
        ];
        for (mut route, kept, weights, dropped) in cases {
            mode.select(&p, 0, std::slice::from_mut(&mut route), &mut s);
            assert_eq!(route.experts, kept);
            for (w, want) in route.weights.iter().zip(&weights) {
                assert!((w - want).abs() < 1e-6, "weights {:?}, want {weights:?}", route.weights);
            }
            p.fetched.lock().expect("lock").clear();
            mode.fetch_dropped(&p, 0, &s);
            assert_eq!(*p.fetched.lock().expect("lock"), dropped, "the dropped experts are read for next time");
        }
        assert_eq!(mode.stats(), ApproxStats { routed: 8, dropped: 2 });
        // A batch (a prompt) is left exact and not counted.
        let mut batch = vec![Route { experts: vec![1, 2], weights: vec![0.5, 0.5] }; 2];
        mode.select(&p, 0, &mut batch, &mut s);
        assert!(batch.iter().all(|r| r.experts == vec![1, 2]));
        assert_eq!(mode.stats(), ApproxStats { routed: 8, dropped: 2 });
    }
}
