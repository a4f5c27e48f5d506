//! The expert cache: a fixed number of slots, allocated once, that hold experts read from the model files.
//!
//! A forward step asks for the experts the router chose ([`ExpertProvider::acquire`]); the cache pins those it
//! holds, starts reads for the others into free or evicted slots (as many as fit, all in flight together), and
//! hands the experts to the MoE block hits first, so compute overlaps the reads. A slot being read or computed is
//! pinned and never evicted. Two requests for an expert already being read share that read.
//!
//! Eviction takes the unpinned slot with the lowest estimated chance of being used at its layer's next visit:
//! `uses / visits` of its layer (a use rate, halved every `RATE_HALF_LIFE_VISITS` visits so that old popularity
//! fades) plus `RECENT_BONUS` `* 2^-visits since its last use` (an expert used at the latest visit of its layer is
//! used again at the next one far more often than its rate says: 38% on the shared Qwen3-30B-A3B trace). Ages count
//! visits of the expert's own layer, not time, so the layer about to run is not mistaken for the stalest one (what
//! makes a global LRU thrash below one token's working set). Chances are compared as the expected number of layer
//! steps until the next use (a chance `p` at a layer `d` steps ahead in a cycle of `n` layers: `d + n (1/p - 1)`),
//! so that between equal chances the expert whose layer runs later goes first, as Belady's rule would have it. The
//! choice is global: layers whose experts are worth more hold more slots. Once the cache holds one token's experts
//! in every layer, the experts each layer used at its latest visit are evicted last (only that layer's next visit
//! retires them): the token-to-token reuse they carry is worth more than the ranking credits it.
//!
//! Slots come in a few sizes ([`SlotClasses`]): each layer's experts go to slots of their own size (quantization
//! mixes make them differ by layer), and a read evicts only within its size.
//!
//! Prefetch ([`ExpertCache::prefetch`], or the cache's own transition table, [`super::predict`]): predicted experts
//! of the next layer are read with low priority, if the measured chance that a prediction of their rank is used
//! is at least [`PREFETCH_CHANCE_MIN`], into a free slot or the slot of an expert valued below that chance; a
//! prefetched expert that its layer's visit did not use is the first
//! victim, and its read is cancelled if it has not started. Prefetch is throttled (`PrefetchThrottle`): a
//! prediction is read only if its chance of use is at least the disk's demand load and at least one minus the
//! fraction of time the forward pass waits for reads.
//!
//! The cache changes where expert bytes come from, never what is computed: results are bit-identical to
//! [`super::resident::ResidentExperts`] at any capacity down to one slot, with or without prefetch.
//!
//! A read that fails (after the I/O layer's retry) fails every step waiting for it and unmaps its expert at once,
//! so that the next step reads it again; its slot stays out of use until the last step that pinned it lets go
//! (`SlotState::Failed`), so a failure never frees a slot another session still reads from.
//!
//! A routing profile can give each layer a share of the slots ([`ExpertCache::set_layer_quotas`]): a miss then
//! evicts from the layers holding more than their share first. Only the opt-in approximate mode
//! ([`crate::approx`]) asks which experts are resident and starts reads nobody waits for
//! ([`ExpertProvider::fetch_background`]); such a slot stays `Loading`, unpinned and never evicted, until a later
//! call finds its read finished (`reap_background`).
//!
//! Layout: this file holds the slots, claims and waits, and the [`ExpertProvider`] entry; `policy.rs` eviction and
//! the bookkeeping; `prefetch.rs` predicted reads; `background.rs` reads nobody waits for (the warm start in the
//! background, the approximate mode's fetches); `preload.rs` the warm start before the first token; `replay.rs`
//! offline replays of a routing trace; `stats.rs` the counters; `throttle.rs` how much prefetch the disk allows.

mod background;
mod policy;
mod prefetch;
mod preload;
mod replay;
mod stats;
mod throttle;

use std::sync::Mutex;
use std::time::Instant;

use super::budget::SlotClasses;
use super::io::{IoEngine, IoPool, ReadBatch, DIRECT_ALIGN};
use super::store::ExpertStore;
use super::{ExpertProvider, ExpertSet, ExpertWeights};
use crate::tensor::AlignedBuf;
use crate::{Error, Result};

use policy::{SlotState, State};
pub use policy::{PREDICTED_PER_USED, PREFETCH_CHANCE_MIN};
use prefetch::Prefetcher;
pub use preload::{replay_policy_planned, HotExpert, PreloadItem, PreloadStats};
pub use replay::{replay_policy, replay_policy_classes, ReplayPrefetch, ReplayStats};
pub use stats::CacheStats;
use throttle::PrefetchThrottle;

/// Where predictions for prefetch come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    Off,
    /// The cache's own cross-layer transition table ([`super::predict`]); works with replayed routes.
    Table,
    /// The caller (the decoder applies the next layer's router to the current hidden state) calls
    /// [`ExpertCache::prefetch`].
    Router,
}

/// Background reads (approximate mode) in flight at most: more would queue ahead of the reads a step waits for
/// when the disk falls behind; past it, dropped experts are not read. Never more than half the slots either: a
/// slot being read in the background cannot be evicted, and the others must keep a step going.
const BACKGROUND_READS_MAX: usize = 16;
/// Background warm-start reads in flight at most ([`ExpertCache::warm_in_background`]); the I/O pool starts at most
/// [`super::io::SPEC_INFLIGHT_MAX`] speculative reads at once anyway, behind every demand read.
pub const WARM_INFLIGHT_MAX: usize = 8;

/// Sizes of an expert cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Slots in all.
    pub n_slots: usize,
    /// Slots of each of the store's slot classes ([`ExpertStore::slot_classes`]), as a [`MemoryPlan`] sized them
    /// (summing to `n_slots`); `None`: `n_slots` shared out equally per layer.
    ///
    /// [`MemoryPlan`]: crate::experts::budget::MemoryPlan
    pub class_slots: Option<Vec<usize>>,
    pub io_threads: usize,
    /// `None`: io_uring where available (see [`IoPool::new`]).
    pub io_engine: Option<IoEngine>,
}

/// A fixed-size cache of experts over an [`ExpertStore`].
pub struct ExpertCache {
    store: ExpertStore,
    io: IoPool,
    /// The slots, class after class ([`State::slots_for`]); `slot_off[s]`, `slot_len[s]`: where each lies in
    /// `mem`.
    mem: AlignedBuf,
    slot_off: Vec<usize>,
    slot_len: Vec<usize>,
    class_slots: Vec<usize>,
    classes: SlotClasses,
    n_slots: usize,
    state: Mutex<State>,
    prefetch: Mutex<Prefetcher>,
    throttle: Mutex<PrefetchThrottle>,
    /// A thread faulting the slot memory in ahead of use (see [`ExpertCache::start_prefault`]), and its stop flag.
    prefault: std::sync::OnceLock<Option<(std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>>,
}

impl Drop for ExpertCache {
    fn drop(&mut self) {
        if let Some(Some((stop, thread))) = self.prefault.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

// SAFETY: slot memory is written only by I/O threads for a slot claimed (Loading) by one set or one prefetch, and
// read only through pinned, Ready slots; the mutex guards all bookkeeping.
unsafe impl Sync for ExpertCache {}

impl ExpertCache {
    pub fn new(store: ExpertStore, cfg: &CacheConfig) -> Result<ExpertCache> {
        if cfg.n_slots == 0 {
            return Err(Error::Invalid("the expert cache needs at least one slot".into()));
        }
        let mut classes = store.slot_classes().clone();
        let n_expert = store.layout().n_expert;
        let class_slots = match &cfg.class_slots {
            Some(c) => c.clone(),
            None if cfg.n_slots < classes.len() => {
                // Too few slots for one of each size: every slot at the largest size.
                let moe: Vec<bool> = classes.of_layer.iter().map(Option::is_some).collect();
                classes = SlotClasses::uniform(&moe, store.slot_bytes() as u64);
                vec![cfg.n_slots]
            }
            None => {
                // Equal slots per layer (counting slots, not bytes).
                let per = SlotClasses { bytes: vec![1; classes.len()], of_layer: classes.of_layer.clone() };
                per.share(cfg.n_slots as u64, n_expert, 1).unwrap_or_default()
            }
        };
        // Shared out equally, slots beyond every expert are dropped.
        let n_slots: usize = class_slots.iter().sum();
        if class_slots.len() != classes.len() || (cfg.class_slots.is_some() && n_slots != cfg.n_slots) {
            return Err(Error::Invalid(format!(
                "expert cache: slots per class {class_slots:?} do not make {} slots of {} classes",
                cfg.n_slots,
                classes.len()
            )));
        }
        if let Some(c) = (0..classes.len()).find(|&c| class_slots[c] == 0) {
            return Err(Error::Invalid(format!(
                "the expert cache needs at least one slot of each size (none of {} bytes)",
                classes.bytes[c]
            )));
        }
        let (mut slot_off, mut slot_len) = (Vec::with_capacity(n_slots), Vec::with_capacity(n_slots));
        let mut total = 0;
        for (c, &n) in class_slots.iter().enumerate() {
            for _ in 0..n {
                slot_off.push(total);
                slot_len.push(classes.bytes[c] as usize);
                total += classes.bytes[c] as usize;
            }
        }
        let class_of = classes.of_layer.iter().map(|c| c.unwrap_or(0)).collect();
        let mem = AlignedBuf::zeroed_aligned(total, DIRECT_ALIGN);
        let cache = ExpertCache {
            prefault: std::sync::OnceLock::new(),
            store,
            io: match cfg.io_engine {
                Some(engine) => IoPool::with_engine(engine, cfg.io_threads)?,
                None => IoPool::new(cfg.io_threads)?,
            },
            mem,
            slot_off,
            slot_len,
            state: Mutex::new(State::with_classes(&class_slots, class_of, n_expert)),
            class_slots,
            classes,
            n_slots,
            prefetch: Mutex::new(Prefetcher::off()),
            throttle: Mutex::new(PrefetchThrottle::new()),
        };
        cache.start_prefault();
        Ok(cache)
    }

    /// Faults the slot memory in on a thread of its own, lowest slots first (free slots are taken in that order),
    /// so that a read into a slot never used before does not pay for page allocation: on some virtual machines a
    /// first touch costs more than the disk read itself (measured 0.43 GB/s). Contents never change. Started with
    /// the cache, so that it overlaps the loading of the resident weights (starting it after a warm-start preload
    /// instead measured the same preload speed: the preload's own page faults are what bound it).
    fn start_prefault(&self) {
        self.prefault.get_or_init(|| {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (addr, len) = (self.mem.as_ptr() as usize, self.mem.len());
            let flag = stop.clone();
            std::thread::Builder::new()
                .name("cache-prefault".into())
                .spawn(move || {
                    const CHUNK: usize = 16 << 20;
                    let ranges: Vec<(usize, usize)> =
                        (0..len).step_by(CHUNK).map(|off| (addr + off, CHUNK.min(len - off))).collect();
                    preload::populate(&ranges, &flag);
                })
                .ok()
                .map(|t| (stop, t))
        });
    }

    /// The model's experts per token: when the cache holds that many in every layer (and one layer's more), the
    /// experts a layer used at its latest visit are evicted last (see the module doc). Unset, they are ranked
    /// as any other.
    pub fn set_n_expert_used(&self, k: usize) {
        self.lock().set_k(k);
    }

    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Bytes of the largest slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_len.iter().copied().max().unwrap_or(0)
    }

    /// Slots of each of the store's slot classes ([`ExpertStore::slot_classes`]).
    pub fn class_slots(&self) -> &[usize] {
        &self.class_slots
    }

    /// The slot sizes and each layer's (the store's, or one size for all when the cache has too few slots).
    pub fn slot_classes(&self) -> &SlotClasses {
        &self.classes
    }

    /// Bytes of all slots.
    pub fn cache_bytes(&self) -> usize {
        self.mem.len()
    }

    pub fn io_engine(&self) -> IoEngine {
        self.io.engine()
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        self.mem.as_ptr().wrapping_add(self.slot_off[slot])
    }

    /// The bytes of a pinned, ready slot.
    fn slot(&self, slot: usize) -> &[u8] {
        // SAFETY: the slot is pinned and Ready (checked by the caller), so no read into it is in flight and none
        // can start until it is unpinned; the range lies inside `mem`.
        unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), self.slot_len[slot]) }
    }

    /// Pins expert `e` of `layer`, starting its read if it is not cached. `None` when every slot is pinned.
    fn claim(&self, st: &mut State, layer: usize, e: u32) -> Option<usize> {
        if let Some(&s) = st.map.get(&(layer as u32, e)) {
            // A read that failed with nobody waiting (its step stopped at an earlier error): read it again rather
            // than hand this step an old error.
            let slot = &st.slots[s];
            let idle = slot.state == SlotState::Loading && slot.pins == 0;
            if idle && slot.batch.as_ref().is_some_and(|b| b.is_done() && b.wait().is_err()) {
                st.free_slot(s);
            }
        }
        let (s, miss) = match st.claim_slot(layer, e) {
            Some(claimed) => claimed,
            None => {
                // Demand comes before speculation: take back the slots of unused prefetches, dropping their reads
                // or waiting for them (I/O threads never take the state lock, so waiting under it is safe).
                if !self.reclaim_prefetches(st) {
                    return None;
                }
                st.claim_slot(layer, e)?
            }
        };
        if !miss && st.slots[s].state == SlotState::Loading {
            // A prefetch still queued or in flight: the forward pass waits for it now.
            if let Some(b) = &st.slots[s].batch {
                self.io.promote(b);
            }
        }
        if miss {
            let reqs = self.store.read_reqs(layer, e as usize, self.slot_ptr(s));
            st.stats.bytes_read += reqs.iter().map(|r| r.len as u64).sum::<u64>();
            st.slots[s].batch = Some(self.io.submit(reqs));
        }
        Some(s)
    }

    /// Blocks until the pinned slot `s` is readable.
    fn wait_ready(&self, s: usize) -> Result<()> {
        let batch = {
            let st = self.lock();
            match st.slots[s].state {
                SlotState::Ready => return Ok(()),
                SlotState::Loading | SlotState::Failed => {
                    st.slots[s].batch.clone().expect("a loading or failed slot has its batch")
                }
                SlotState::Free => unreachable!("a pinned slot is never free"),
            }
        };
        let t0 = Instant::now();
        let result = batch.wait_yielding();
        let mut st = self.lock();
        st.stats.wait_secs += t0.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                if st.slots[s].state == SlotState::Loading {
                    st.slots[s].state = SlotState::Ready;
                    st.slots[s].batch = None;
                }
                Ok(())
            }
            Err(msg) => {
                // Never leave garbage mapped: forget the expert; the slot is freed with its last pin (the other
                // holders get this error too).
                st.fail_slot(s);
                Err(Error::Invalid(format!("reading an expert failed: {msg}")))
            }
        }
    }

    /// Loads the given `(layer, expert)` pairs and keeps them for good (hot experts from a routing profile).
    /// Fails if pinning them would leave fewer than `keep_free` slots for everything else.
    pub fn pin(&self, experts: &[(usize, u32)], keep_free: usize) -> Result<()> {
        let mut slots = Vec::with_capacity(experts.len());
        {
            let mut st = self.lock();
            let mut want = vec![0usize; self.class_slots.len()];
            for &(layer, e) in experts {
                if layer >= st.uses.len()
                    || e as usize >= self.store.layout().n_expert
                    || self.store.layout().layers[layer].is_none()
                {
                    return Err(Error::Invalid(format!("cannot pin expert {e} of layer {layer}: no such expert")));
                }
                want[st.class_of[layer]] += 1;
            }
            for (c, &n) in want.iter().enumerate() {
                let range = st.class_slots[c].clone();
                let pinned = st.slots[range.clone()].iter().filter(|s| s.pins > 0).count();
                if n > 0 && pinned + n + keep_free > range.len() {
                    return Err(Error::Invalid(format!(
                        "cannot pin {n} experts: their slots of {} number {}, {pinned} already pinned, and \
                         {keep_free} must stay free",
                        super::budget::human(self.slot_len[range.start] as u64),
                        range.len(),
                    )));
                }
            }
            for &(layer, e) in experts {
                let s = self.claim(&mut st, layer, e).expect("room was checked above");
                slots.push(s);
            }
        }
        if let Some(e) = slots.iter().find_map(|&s| self.wait_ready(s).err()) {
            // Nothing of this call stays pinned.
            let mut st = self.lock();
            slots.iter().for_each(|&s| st.unpin(s));
            return Err(e);
        }
        Ok(())
    }

    /// Checks the cache's bookkeeping (for tests and fault drills): experts mapped to the slots that hold them,
    /// free slots empty and unpinned, `pins_expected` pins held in all (0 when no [`ExpertSet`] is alive and no
    /// expert was pinned for good). Returns what is wrong.
    pub fn check_bookkeeping(&self, pins_expected: usize) -> std::result::Result<(), String> {
        self.lock().check(pins_expected)
    }

    fn unpin(&self, s: usize) {
        self.lock().unpin(s);
    }

    /// Waits until no read of this cache is in flight (the reads of a step that stopped at an error go on without
    /// it; tests and fault drills wait for them before changing the conditions).
    pub fn settle(&self) {
        let batches: Vec<ReadBatch> = {
            let st = self.lock();
            st.slots.iter().filter(|s| s.state != SlotState::Ready).filter_map(|s| s.batch.clone()).collect()
        };
        for b in batches {
            let _ = b.wait();
        }
    }
}

/// The experts of one layer for one forward step.
struct CacheSet<'a> {
    cache: &'a ExpertCache,
    layer: usize,
    ids: Vec<u32>,
    /// Indices into `ids`, in the order they are handed out (hits first).
    order: Vec<usize>,
    /// Slot pinned for each entry of `order`, once claimed.
    claimed: Vec<Option<usize>>,
    /// Entries of `order` handed out so far.
    next: usize,
    /// Entries of `order` claimed so far (claims run ahead of `next`).
    n_claimed: usize,
    /// Entries of `order` unpinned after use (up to `next`).
    released: usize,
}

impl CacheSet<'_> {
    /// Claims further experts in order while slots are available.
    fn top_up(&mut self) {
        let mut st = self.cache.lock();
        while self.n_claimed < self.order.len() {
            let e = self.ids[self.order[self.n_claimed]];
            match self.cache.claim(&mut st, self.layer, e) {
                Some(s) => {
                    self.claimed[self.n_claimed] = Some(s);
                    self.n_claimed += 1;
                }
                None => break,
            }
        }
    }
}

impl CacheSet<'_> {
    /// Unpins the experts handed out by the previous call (their slots may be reused from now on).
    fn release_handed_out(&mut self) {
        for k in self.released..self.next {
            if let Some(s) = self.claimed[k].take() {
                self.cache.unpin(s);
            }
        }
        self.released = self.next;
    }

    /// Whether the expert claimed at entry `k` of `order` can be handed out without waiting.
    fn is_ready(&self, k: usize) -> bool {
        let Some(s) = self.claimed[k] else { return false };
        let st = self.cache.lock();
        let slot = &st.slots[s];
        slot.state == SlotState::Ready || slot.batch.as_ref().is_some_and(ReadBatch::is_done)
    }

    /// Whether entry `k` (not yet handed out) can be handed out without waiting, after swapping in the first
    /// later claimed entry that can, if `k`'s cannot. "Hits" include experts whose prefetch is still being read:
    /// in their place in the order they held up the experts already in memory behind them. The order the experts
    /// run in changes no result (each one's output is its own; the MoE block sums them in top-k order).
    fn ready_first(&mut self, k: usize) -> bool {
        if self.is_ready(k) {
            return true;
        }
        let Some(j) = (k + 1..self.n_claimed).find(|&j| self.is_ready(j)) else { return false };
        self.order.swap(k, j);
        self.claimed.swap(k, j);
        true
    }
}

impl ExpertSet for CacheSet<'_> {
    fn next_group(&mut self, admit: &mut dyn FnMut(usize) -> bool) -> Option<Result<Vec<(usize, ExpertWeights<'_>)>>> {
        self.release_handed_out();
        if self.next == self.order.len() {
            return None;
        }
        self.top_up();
        let first = self.next;
        if first < self.n_claimed {
            self.ready_first(first);
        }
        let Some(s) = self.claimed[first] else {
            return Some(Err(Error::Invalid(
                "expert cache: every slot is pinned (is it shared by concurrent sessions?)".into(),
            )));
        };
        self.next += 1;
        if let Err(e) = self.cache.wait_ready(s) {
            return Some(Err(e));
        }
        admit(self.order[first]);
        while self.next < self.n_claimed && self.ready_first(self.next) && admit(self.order[self.next]) {
            // Ready, or its read just finished (this marks it ready, or returns the read's error).
            let s = self.claimed[self.next].expect("claimed below n_claimed");
            self.next += 1;
            if let Err(e) = self.cache.wait_ready(s) {
                return Some(Err(e));
            }
        }
        let (cache, layer) = (self.cache, self.layer);
        Some(Ok((first..self.next)
            .map(|k| {
                let i = self.order[k];
                let s = self.claimed[k].expect("handed-out entries stay claimed until the next call");
                (i, cache.store.view(layer, self.ids[i] as usize, cache.slot(s)))
            })
            .collect()))
    }

    fn next(&mut self) -> Option<Result<(usize, ExpertWeights<'_>)>> {
        self.release_handed_out();
        if self.next == self.order.len() {
            return None;
        }
        self.top_up();
        let k = self.next;
        let Some(s) = self.claimed[k] else {
            return Some(Err(Error::Invalid(
                "expert cache: every slot is pinned (is it shared by concurrent sessions?)".into(),
            )));
        };
        self.next += 1;
        if let Err(e) = self.cache.wait_ready(s) {
            return Some(Err(e));
        }
        let i = self.order[k];
        Some(Ok((i, self.cache.store.view(self.layer, self.ids[i] as usize, self.cache.slot(s)))))
    }
}

impl Drop for CacheSet<'_> {
    fn drop(&mut self) {
        let mut st = self.cache.lock();
        for s in self.claimed.iter_mut().filter_map(Option::take) {
            st.unpin(s);
        }
    }
}

impl ExpertProvider for ExpertCache {
    fn acquire<'a>(&'a self, layer: usize, ids: &[u32]) -> Result<Box<dyn ExpertSet + 'a>> {
        self.start_prefault();
        let order: Vec<usize> = {
            let mut st = self.lock();
            self.poll_prefetches(&mut st);
            st.visit(layer, ids);
            self.cancel_unused_prefetches(&mut st, layer, ids);
            let cached = |i: &usize| st.map.contains_key(&(layer as u32, ids[*i]));
            let (mut hits, misses): (Vec<usize>, Vec<usize>) = (0..ids.len()).partition(cached);
            hits.extend(misses);
            hits
        };
        let mut set = CacheSet {
            cache: self,
            layer,
            ids: ids.to_vec(),
            claimed: vec![None; order.len()],
            order,
            next: 0,
            n_claimed: 0,
            released: 0,
        };
        set.top_up();
        // After this layer's demand reads are queued: background warm-start reads, then prediction and prefetch.
        self.pump_warm(&mut self.lock());
        self.predict_from_table(layer, ids);
        Ok(Box::new(set))
    }

    fn prefetch(&self, layer: usize, ids: &[u32]) {
        ExpertCache::prefetch(self, layer, ids);
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        Some(self.stats())
    }

    fn as_cache(&self) -> Option<&ExpertCache> {
        Some(self)
    }

    /// Cached or being read: acquiring waits at most for a read started by an earlier step.
    fn resident(&self, layer: usize, ids: &[u32], out: &mut Vec<bool>) {
        let mut st = self.lock();
        self.reap_background(&mut st);
        out.clear();
        out.extend(ids.iter().map(|&e| st.map.contains_key(&(layer as u32, e))));
    }

    fn fetch_background(&self, layer: usize, ids: &[u32]) {
        let mut st = self.lock();
        self.reap_background(&mut st);
        let max = BACKGROUND_READS_MAX.min(self.n_slots / 2);
        for &e in ids {
            if st.background.len() >= max {
                break;
            }
            let Some(s) = self.claim(&mut st, layer, e) else { break };
            st.unpin(s);
            if st.slots[s].state == SlotState::Loading && !st.background.contains(&s) {
                st.background.push(s);
            }
        }
    }
}
