//! Expert weights: where they live on disk ([`ExpertLayout`]) and how the MoE block gets them
//! ([`ExpertProvider`]).
//!
//! The MoE layer never indexes a big array of experts: it asks a provider for the experts the router chose and
//! gets back borrowed matrices that stay valid while the returned [`ExpertSet`] lives. Today the provider is
//! [`resident::ResidentExperts`] (every expert in RAM); the streaming expert cache is a second provider behind
//! the same trait, and it must give bit-identical results.

pub mod layout;
pub mod resident;

use crate::tensor::QMatRef;
use crate::Result;

pub use layout::{ExpertLayout, ExpertSpan, LayerExperts, ProjLayout};

/// The three matrices of one SwiGLU expert.
#[derive(Clone, Copy, Debug)]
pub struct ExpertWeights<'a> {
    pub gate: QMatRef<'a>, // [n_ff_exp, n_embd]
    pub up: QMatRef<'a>,   // [n_ff_exp, n_embd]
    pub down: QMatRef<'a>, // [n_embd, n_ff_exp]
}

/// Experts of one layer made available for one forward step.
pub trait ExpertSet {
    /// The weights of the `i`-th requested expert (blocking until they are in memory).
    fn get(&mut self, i: usize) -> Result<ExpertWeights<'_>>;
}

/// A source of expert weights.
pub trait ExpertProvider: Sync {
    /// Makes experts `ids` (ascending, distinct) of layer `layer` available; they stay so until the returned set
    /// is dropped.
    fn acquire<'a>(&'a self, layer: usize, ids: &[u32]) -> Result<Box<dyn ExpertSet + 'a>>;
}
