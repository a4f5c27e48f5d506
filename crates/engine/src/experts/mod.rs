//! Expert weights: where they live on disk ([`ExpertLayout`]) and how the MoE block gets them
//! ([`ExpertProvider`]).
//!
//! The MoE layer never indexes a big array of experts: it asks a provider for the experts the router chose and
//! gets back borrowed matrices one at a time. [`resident::ResidentExperts`] holds every expert in RAM;
//! [`cache::ExpertCache`] streams them from the model files ([`store::ExpertStore`], [`io::IoPool`]) into a fixed
//! number of slots sized by [`budget`], and must give bit-identical results. [`profile`] (routing profiles: pins and
//! per-layer shares) and [`warm`] (hot files: the last run's cached experts, read back at start) prepare the cache
//! before the first token.

pub mod budget;
pub mod cache;
pub mod faults;
pub mod io;
pub mod layout;
pub mod predict;
pub mod profile;
pub mod resident;
pub mod store;
pub mod warm;

use crate::tensor::QMatRef;
use crate::Result;

pub use layout::{ExpertLayout, ExpertSpan, LayerExperts, PlaneSpans, ProjLayout};

/// The three matrices of one SwiGLU expert.
#[derive(Clone, Copy, Debug)]
pub struct ExpertWeights<'a> {
    pub gate: QMatRef<'a>, // [n_ff_exp, n_embd]
    pub up: QMatRef<'a>,   // [n_ff_exp, n_embd]
    pub down: QMatRef<'a>, // [n_embd, n_ff_exp]
}

/// Experts of one layer made available for one forward step.
pub trait ExpertSet {
    /// The next expert, in the order the provider prefers (experts already in memory first): its index in the
    /// requested ids and its weights, valid until the next call. `None` once every requested expert was handed out.
    fn next(&mut self) -> Option<Result<(usize, ExpertWeights<'_>)>>;

    /// The next experts to run together: at least one (waiting for it if need be), then, in order, each further one
    /// already in memory that `admit` accepts (it is asked about each, the first included, by its index in the
    /// requested ids, and stops the group at its first refusal); valid until the next call of either method.
    /// `None` once every requested expert was handed out. Lets the MoE block run several experts in one pass over
    /// the threads while those still being read arrive. The default hands out one at a time.
    fn next_group(&mut self, admit: &mut dyn FnMut(usize) -> bool) -> Option<Result<Vec<(usize, ExpertWeights<'_>)>>> {
        self.next().map(|r| {
            r.map(|x| {
                admit(x.0);
                vec![x]
            })
        })
    }
}

/// A source of expert weights.
pub trait ExpertProvider: Sync {
    /// Starts making experts `ids` (distinct) of layer `layer` available; the returned set hands each out once.
    fn acquire<'a>(&'a self, layer: usize, ids: &[u32]) -> Result<Box<dyn ExpertSet + 'a>>;

    /// Approximate mode only ([`crate::approx`]; never called by default): marks in `out` (`[ids.len()]`) which of
    /// experts `ids` (distinct) of `layer` are in memory or already being read, so that acquiring them waits for
    /// no read started now. Providers that hold every expert mark all.
    fn resident(&self, _layer: usize, ids: &[u32], out: &mut Vec<bool>) {
        out.clear();
        out.resize(ids.len(), true);
    }

    /// Approximate mode only: starts reading experts `ids` (distinct, not resident) of `layer` without waiting, so
    /// that a later step finds them; best effort (skips what finds no free slot). Providers that hold every expert
    /// do nothing.
    fn fetch_background(&self, _layer: usize, _ids: &[u32]) {}
    /// A hint that experts `ids` (best first) of `layer` will likely be acquired next; providers that stream may
    /// start reading them. Never changes a result.
    fn prefetch(&self, _layer: usize, _ids: &[u32]) {}

    /// Hit/miss/bytes counters, for providers that stream.
    fn cache_stats(&self) -> Option<cache::CacheStats> {
        None
    }

    /// The streaming cache behind this provider, if it is one (to pin, preload or size per-layer shares).
    fn as_cache(&self) -> Option<&cache::ExpertCache> {
        None
    }
}
