//! Prefetch: low-priority reads of the experts predicted for the next layer (by the caller's router or the cache's
//! own transition table), into free slots or the slots of experts worth less than the prediction; polled, cancelled
//! when their layer's visit does not use them, and taken back when demand needs the slots (see the module doc of
//! [`super`]).

use std::time::Instant;

use super::policy::{SlotState, State};
use super::{ExpertCache, Prefetch, PREDICTED_PER_USED};
use crate::experts::io::ReadBatch;
use crate::experts::predict::TransitionTable;

/// How the cache prefetches, and the transition table when it predicts by itself.
pub(super) struct Prefetcher {
    mode: Prefetch,
    /// The model's experts per token: visits using more are multi-token steps; [`PREDICTED_PER_USED`] times as many
    /// are predicted.
    k: usize,
    table: Option<TransitionTable>,
    pred: Vec<u32>,
}

impl Prefetcher {
    pub(super) fn off() -> Prefetcher {
        Prefetcher { mode: Prefetch::Off, k: 0, table: None, pred: Vec::new() }
    }
}

impl ExpertCache {
    /// Turns prefetch on or off; `k` experts are predicted per layer (the model's experts per token).
    pub fn set_prefetch(&self, mode: Prefetch, k: usize) {
        let layout = self.store.layout();
        let moe_layers: Vec<bool> = layout.layers.iter().map(Option::is_some).collect();
        let mut p = self.prefetch.lock().unwrap_or_else(|e| e.into_inner());
        p.mode = mode;
        p.k = k;
        p.table = (mode == Prefetch::Table).then(|| TransitionTable::new(&moe_layers, layout.n_expert));
    }

    pub fn prefetch_mode(&self) -> Prefetch {
        self.prefetch.lock().unwrap_or_else(|e| e.into_inner()).mode
    }

    /// Starts low-priority reads of the predicted experts `ids` (best first) of `layer` that are not cached, as
    /// room allows (see the module doc); records the prediction for the accuracy statistics.
    pub fn prefetch(&self, layer: usize, ids: &[u32]) {
        let n_expert = self.store.layout().n_expert;
        if self.store.layout().layers.get(layer).is_none_or(Option::is_none)
            || ids.iter().any(|&e| e as usize >= n_expert)
        {
            return;
        }
        let mut st = self.lock();
        self.poll_prefetches(&mut st);
        st.note_prediction(layer, ids);
        let load = self
            .throttle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(self.io.demand_busy_secs(), st.stats.wait_secs);
        for (rank, &e) in ids.iter().enumerate() {
            let Some(s) = st.prefetch_slot(layer, e, rank, ids, load) else { continue };
            let reqs = self.store.read_reqs(layer, e as usize, self.slot_ptr(s));
            let bytes = reqs.iter().map(|r| r.len as u64).sum::<u64>();
            st.stats.bytes_read += bytes;
            st.stats.prefetch_bytes += bytes;
            st.slots[s].batch = Some(self.io.submit_speculative(reqs));
            st.prefetching.push(s);
        }
    }

    /// Bytes a read of the expert that slot `s` holds takes.
    pub(super) fn slot_read_bytes(&self, st: &State, s: usize) -> u64 {
        st.slots[s].owner.map_or(0, |(l, e)| {
            self.store.read_reqs(l as usize, e as usize, self.slot_ptr(s)).iter().map(|r| r.len as u64).sum()
        })
    }

    /// Marks finished prefetch reads ready (or frees their slots if they failed).
    pub(super) fn poll_prefetches(&self, st: &mut State) {
        let mut i = 0;
        while i < st.prefetching.len() {
            let s = st.prefetching[i];
            let slot = &st.slots[s];
            let done = slot.state != SlotState::Loading || slot.batch.as_ref().is_none_or(ReadBatch::is_done);
            if !done {
                i += 1;
                continue;
            }
            st.prefetching.swap_remove(i);
            if slot.state == SlotState::Loading && slot.pins == 0 {
                match slot.batch.as_ref().map(ReadBatch::wait) {
                    Some(Err(_)) => st.free_slot(s),
                    _ => {
                        st.slots[s].state = SlotState::Ready;
                        st.slots[s].batch = None;
                    }
                }
            }
        }
    }

    /// Makes the slots of unpinned prefetches in flight reusable (cancelling their reads, or waiting for them);
    /// returns whether there were any.
    pub(super) fn reclaim_prefetches(&self, st: &mut State) -> bool {
        let mut any = false;
        for i in 0..st.prefetching.len() {
            let s = st.prefetching[i];
            let slot = &st.slots[s];
            if slot.pins > 0 || slot.state != SlotState::Loading {
                continue;
            }
            any = true;
            if let Some(b) = slot.batch.clone() {
                if self.io.cancel(&b) {
                    let bytes = self.slot_read_bytes(st, s);
                    st.uncount_prefetch(bytes);
                } else {
                    let t0 = Instant::now();
                    let _ = b.wait_yielding();
                    st.stats.wait_secs += t0.elapsed().as_secs_f64();
                }
            }
        }
        self.poll_prefetches(st);
        any
    }

    /// Drops the queued prefetches of `layer` that its visit (using `ids`) does not need.
    pub(super) fn cancel_unused_prefetches(&self, st: &mut State, layer: usize, ids: &[u32]) {
        let mut i = 0;
        while i < st.prefetching.len() {
            let s = st.prefetching[i];
            let slot = &st.slots[s];
            let unused = slot.pins == 0
                && slot.state == SlotState::Loading
                && slot.owner.is_some_and(|(l, e)| l as usize == layer && !ids.contains(&e));
            if unused && slot.batch.as_ref().is_some_and(|b| self.io.cancel(b)) {
                st.prefetching.swap_remove(i);
                let bytes = self.slot_read_bytes(st, s);
                st.uncount_prefetch(bytes);
                st.free_slot(s);
            } else {
                i += 1;
            }
        }
    }

    /// With the cache's own predictions ([`Prefetch::Table`]): records the visit of `layer` using `ids` and
    /// prefetches the experts predicted for the next MoE layer (a visit by more tokens than the model's experts
    /// per token, a prompt chunk, breaks the chain instead).
    pub(super) fn predict_from_table(&self, layer: usize, ids: &[u32]) {
        let mut guard = self.prefetch.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *guard;
        if let Some(table) = p.table.as_mut() {
            if ids.len() <= p.k {
                table.observe(layer, ids);
                if let Some(next) = table.predict(layer, ids, PREDICTED_PER_USED * p.k, &mut p.pred) {
                    self.prefetch(next, &p.pred);
                }
            } else {
                table.interrupt();
            }
        }
    }
}
