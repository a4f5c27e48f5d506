//! Reads nobody waits for: the warm start in the background (hot experts of an earlier run read into free slots
//! while the forward pass runs) and the approximate mode's background fetches (see the module doc of [`super`]).

use super::policy::{SlotState, State};
use super::{ExpertCache, PreloadItem, WARM_INFLIGHT_MAX};
use crate::experts::io::ReadBatch;
use crate::{Error, Result};

impl ExpertCache {
    /// Approximate mode: marks finished background reads ready (or frees their slot on an error), so that their
    /// slots can be evicted again; a read nobody waits for leaves its slot `Loading` and unpinned until then.
    pub(super) fn reap_background(&self, st: &mut State) {
        let mut i = 0;
        while i < st.background.len() {
            let s = st.background[i];
            if st.slots[s].state == SlotState::Loading && st.slots[s].pins == 0 {
                let batch = st.slots[s].batch.as_ref().expect("a loading slot has a batch");
                if !batch.is_done() {
                    i += 1;
                    continue;
                }
                if batch.wait().is_ok() {
                    st.slots[s].state = SlotState::Ready;
                    st.slots[s].batch = None;
                } else {
                    // Never leave garbage mapped: forget the expert and free the slot.
                    st.free_slot(s);
                }
            }
            // Finished here, or pinned by a set that waits for it itself.
            st.background.swap_remove(i);
        }
    }

    /// Warm start in the background: queues hot experts of an earlier run (`items`, hottest first; their `uses`
    /// seed the ranking, `pin` is ignored) to be read with low priority into free slots while the forward pass
    /// runs, instead of before the first token ([`ExpertCache::preload`]). A background read never evicts: it takes a
    /// free slot of its size only while more than one layer's experts' worth of them stay free, at most
    /// [`WARM_INFLIGHT_MAX`] at a time; a forward step that needs such an expert waits for its read (promoted to
    /// demand). Returns how many were queued. Never changes a computed bit.
    pub fn warm_in_background(&self, items: &[PreloadItem]) -> Result<usize> {
        let layout = self.store.layout();
        let mut st = self.lock();
        for it in items {
            if layout.layers.get(it.layer).is_none_or(Option::is_none) || it.expert as usize >= layout.n_expert {
                return Err(Error::Invalid(format!(
                    "cannot warm expert {} of layer {}: no such expert",
                    it.expert, it.layer
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for it in items {
            if seen.insert((it.layer, it.expert)) && !st.map.contains_key(&(it.layer as u32, it.expert)) {
                let u = &mut st.uses[it.layer][it.expert as usize];
                *u = (*u).max(it.uses);
                st.warm.push_back((it.layer as u32, it.expert));
            }
        }
        let n = st.warm.len();
        self.pump_warm(&mut st);
        Ok(n)
    }

    /// Marks finished background warm-start reads ready (or frees their slots on an error) and starts more.
    pub(super) fn pump_warm(&self, st: &mut State) {
        Self::poll_warm(st);
        self.start_warm(st);
    }

    /// Marks finished background warm-start reads ready (or frees their slots on an error).
    pub(super) fn poll_warm(st: &mut State) {
        let mut i = 0;
        while i < st.warming.len() {
            let (s, owner) = st.warming[i];
            let slot = &st.slots[s];
            if slot.owner != Some(owner) || slot.state != SlotState::Loading {
                st.warming.swap_remove(i); // a forward step waited for it (or it was freed)
                continue;
            }
            let done = slot.batch.as_ref().is_none_or(ReadBatch::is_done);
            if !done || slot.pins > 0 {
                i += 1; // in flight, or pinned by a step that waits for it itself
                continue;
            }
            match slot.batch.as_ref().map(ReadBatch::wait) {
                Some(Err(_)) => st.free_slot(s),
                _ => {
                    st.slots[s].state = SlotState::Ready;
                    st.slots[s].batch = None;
                }
            }
            st.warming.swap_remove(i);
        }
    }

    /// Starts background warm-start reads of queued hot experts into free slots (see
    /// [`ExpertCache::warm_in_background`]).
    pub(super) fn start_warm(&self, st: &mut State) {
        while st.warming.len() < WARM_INFLIGHT_MAX {
            let Some((l, e)) = st.warm.pop_front() else { break };
            if st.map.contains_key(&(l, e)) {
                continue;
            }
            let range = st.slots_for(l as usize);
            // Leave one layer's experts of this size free, so a step never finds every slot it could take loading.
            let mut free = range.filter(|&s| st.slots[s].state == SlotState::Free);
            let Some(s) = free.next() else { continue };
            if free.count() < st.k.max(1) {
                continue; // no room in this size: the forward pass reads it when it needs it
            }
            st.tick += 1;
            st.take_slot(s, l as usize, e);
            let reqs = self.store.read_reqs(l as usize, e as usize, self.slot_ptr(s));
            let bytes = reqs.iter().map(|r| r.len as u64).sum::<u64>();
            st.stats.bytes_read += bytes;
            st.stats.warm_bytes += bytes;
            st.stats.warm_reads += 1;
            st.slots[s].batch = Some(self.io.submit_speculative(reqs));
            st.warming.push((s, (l, e)));
        }
    }
}
