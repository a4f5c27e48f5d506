//! The expert cache: a fixed number of slots, allocated once, that hold experts read from the model files.
//!
//! A forward step asks for the experts the router chose ([`ExpertProvider::acquire`]); the cache pins those it
//! holds, starts reads for the others into free or evicted slots (as many as fit, all in flight together), and
//! hands the experts to the MoE block hits first, so compute overlaps the reads. A slot being read or computed is
//! pinned and never evicted. Eviction takes the unpinned slot whose expert has the lowest decayed use count
//! (least recently used among equals): routing is skewed, and frequency-aware policies beat plain LRU on the
//! traces in shared/traces. Two requests for an expert already being read share that read.
//!
//! The cache changes where expert bytes come from, never what is computed: results are bit-identical to
//! [`super::resident::ResidentExperts`] at any capacity down to one slot.
//!
//! Only the opt-in approximate mode ([`crate::approx`]) asks which experts are resident and starts reads nobody
//! waits for ([`ExpertProvider::fetch_background`]); such a slot stays `Loading`, unpinned and never evicted, until
//! a later call finds its read finished (`reap_background`).

mod preload;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::io::{IoEngine, IoPool, ReadBatch, DIRECT_ALIGN};
use super::store::ExpertStore;
use super::{ExpertProvider, ExpertSet, ExpertWeights};
use crate::tensor::AlignedBuf;
use crate::{Error, Result};

pub use preload::{replay_policy_planned, HotExpert, PreloadItem, PreloadStats};

/// Counters of the cache, for the run summary and `--stats-json`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes_read: u64,
    /// Time the forward pass waited for expert reads.
    pub wait_secs: f64,
    pub per_layer_hits: Vec<u64>,
    pub per_layer_misses: Vec<u64>,
}

impl CacheStats {
    /// The counts accumulated since `start` (an earlier snapshot of the same cache).
    pub fn since(&self, start: &CacheStats) -> CacheStats {
        let diff = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(x, y)| x - y).collect();
        CacheStats {
            hits: self.hits - start.hits,
            misses: self.misses - start.misses,
            bytes_read: self.bytes_read - start.bytes_read,
            wait_secs: self.wait_secs - start.wait_secs,
            per_layer_hits: diff(&self.per_layer_hits, &start.per_layer_hits),
            per_layer_misses: diff(&self.per_layer_misses, &start.per_layer_misses),
        }
    }

    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    Loading,
    Ready,
}

struct Slot {
    owner: Option<(u32, u32)>,
    state: SlotState,
    pins: u32,
    last_use: u64,
    batch: Option<ReadBatch>,
}

/// Background reads (approximate mode) in flight at most: more would queue ahead of the reads a step waits for
/// when the disk falls behind; past it, dropped experts are not read. Never more than half the slots either: a
/// slot being read in the background cannot be evicted, and the others must keep a step going.
const BACKGROUND_READS_MAX: usize = 16;

/// Use counts are halved after this many uses per slot, so that old popularity fades.
const DECAY_USES_PER_SLOT: u64 = 64;

struct State {
    slots: Vec<Slot>,
    map: HashMap<(u32, u32), usize>,
    /// Decayed use counts, `[layer][expert]`.
    freq: Vec<Vec<u32>>,
    tick: u64,
    uses_since_decay: u64,
    stats: CacheStats,
    /// Slots held by each layer, and each layer's share of the slots (even by default; from a routing profile
    /// with [`ExpertCache::set_layer_quotas`]).
    per_layer: Vec<usize>,
    quota: Vec<usize>,
    /// Slots with a read started by [`ExpertProvider::fetch_background`] (approximate mode only) that nobody has
    /// waited for yet.
    background: Vec<usize>,
}

impl State {
    fn new(n_slots: usize, n_layer: usize, n_moe_layers: usize, n_expert: usize) -> State {
        let slots = (0..n_slots)
            .map(|_| Slot { owner: None, state: SlotState::Free, pins: 0, last_use: 0, batch: None })
            .collect();
        let stats =
            CacheStats { per_layer_hits: vec![0; n_layer], per_layer_misses: vec![0; n_layer], ..Default::default() };
        State {
            slots,
            map: HashMap::new(),
            freq: vec![vec![0; n_expert]; n_layer],
            tick: 0,
            uses_since_decay: 0,
            stats,
            per_layer: vec![0; n_layer],
            quota: vec![(n_slots / n_moe_layers.max(1)).max(1); n_layer],
            background: Vec::new(),
        }
    }

    /// The policy's bookkeeping for one use of expert `e` of `layer`: counts the use and pins the expert's slot,
    /// evicting a victim on a miss (that slot is left `Loading` for the caller to fill). Returns the slot and
    /// whether it was a miss; `None` when every slot is pinned.
    fn claim_slot(&mut self, layer: usize, e: u32) -> Option<(usize, bool)> {
        self.tick += 1;
        let tick = self.tick;
        self.freq[layer][e as usize] = self.freq[layer][e as usize].saturating_add(1);
        self.uses_since_decay += 1;
        if self.uses_since_decay > DECAY_USES_PER_SLOT * self.slots.len() as u64 {
            self.uses_since_decay = 0;
            for f in self.freq.iter_mut().flatten() {
                *f /= 2;
            }
        }
        if let Some(&s) = self.map.get(&(layer as u32, e)) {
            self.slots[s].pins += 1;
            self.slots[s].last_use = tick;
            self.stats.hits += 1;
            self.stats.per_layer_hits[layer] += 1;
            return Some((s, false));
        }
        let victim = self.victim(layer)?;
        if let Some(old) = self.slots[victim].owner.take() {
            self.map.remove(&old);
            self.per_layer[old.0 as usize] -= 1;
        }
        self.per_layer[layer] += 1;
        self.map.insert((layer as u32, e), victim);
        self.stats.misses += 1;
        self.stats.per_layer_misses[layer] += 1;
        self.slots[victim] =
            Slot { owner: Some((layer as u32, e)), state: SlotState::Loading, pins: 1, last_use: tick, batch: None };
        Some((victim, true))
    }

    /// Where a miss of `layer` goes: a free slot; else, when the layer holds its share (`quota`) or more, its own
    /// least-used expert; else the least-used expert of the layer furthest over its share; else any unpinned one.
    /// "Least used" is the lowest (decayed use count, last use). Per-layer shares keep one layer's burst from
    /// evicting every other layer's experts, which a global policy does below one token's working set.
    fn victim(&self, layer: usize) -> Option<usize> {
        if let Some(s) = self.slots.iter().position(|s| s.state == SlotState::Free) {
            return Some(s);
        }
        let least_used = |from: Option<usize>| {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.pins == 0 && s.state == SlotState::Ready)
                .filter(|(_, s)| from.is_none_or(|l| s.owner.is_some_and(|o| o.0 as usize == l)))
                .min_by_key(|(_, s)| {
                    let (l, e) = s.owner.expect("a ready slot has an owner");
                    (self.freq[l as usize][e as usize], s.last_use)
                })
                .map(|(i, _)| i)
        };
        if self.per_layer[layer] >= self.quota[layer] {
            if let Some(v) = least_used(Some(layer)) {
                return Some(v);
            }
        }
        // Layers over their share, most over first, without allocating: take the largest excess below the last.
        let excess = |l: usize| self.per_layer[l].saturating_sub(self.quota[l]);
        let mut bound = usize::MAX;
        loop {
            let most = (0..self.per_layer.len())
                .filter(|&l| excess(l) > 0 && excess(l) < bound)
                .max_by_key(|&l| (excess(l), std::cmp::Reverse(l)));
            let Some(l) = most else { break };
            if let Some(v) = least_used(Some(l)) {
                return Some(v);
            }
            bound = excess(l);
        }
        least_used(None)
    }
}

/// Replays a routing trace through the cache's eviction policy alone (no model, no I/O): each element of `steps`
/// is one layer of one token, `(layer, experts used, counted)`; returns (hits, misses) over the counted steps. The
/// experts of a step are pinned together, as in a forward step.
pub fn replay_policy(
    n_slots: usize,
    n_layer: usize,
    n_expert: usize,
    steps: impl IntoIterator<Item = (usize, Vec<u32>, bool)>,
) -> (u64, u64) {
    let mut st = State::new(n_slots, n_layer, n_layer, n_expert);
    let (mut hits, mut misses) = (0, 0);
    for (layer, experts, counted) in steps {
        let mut pinned = Vec::with_capacity(experts.len());
        for &e in &experts {
            let Some((s, miss)) = st.claim_slot(layer, e) else { continue };
            st.slots[s].state = SlotState::Ready;
            pinned.push(s);
            if counted {
                if miss {
                    misses += 1;
                } else {
                    hits += 1;
                }
            }
        }
        for s in pinned {
            st.slots[s].pins -= 1;
        }
    }
    (hits, misses)
}

/// Sizes of an expert cache.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub n_slots: usize,
    pub io_threads: usize,
    /// `None`: io_uring where available (see [`IoPool::new`]).
    pub io_engine: Option<IoEngine>,
}

/// A fixed-size cache of experts over an [`ExpertStore`].
pub struct ExpertCache {
    store: ExpertStore,
    io: IoPool,
    mem: AlignedBuf, // [n_slots, slot_bytes]
    slot_bytes: usize,
    n_slots: usize,
    state: Mutex<State>,
}

// SAFETY: slot memory is written only by I/O threads for a slot claimed (pinned, Loading) by one set, and read
// only through pinned, Ready slots; the mutex guards all bookkeeping.
unsafe impl Sync for ExpertCache {}

impl ExpertCache {
    pub fn new(store: ExpertStore, cfg: &CacheConfig) -> Result<ExpertCache> {
        if cfg.n_slots == 0 {
            return Err(Error::Invalid("the expert cache needs at least one slot".into()));
        }
        let slot_bytes = store.slot_bytes();
        let n_layer = store.layout().layers.len();
        let n_expert = store.layout().n_expert;
        let mem = AlignedBuf::zeroed_aligned(cfg.n_slots * slot_bytes, DIRECT_ALIGN);
        let store_moe_layers = store.layout().n_moe_layers();
        Ok(ExpertCache {
            store,
            io: match cfg.io_engine {
                Some(engine) => IoPool::with_engine(engine, cfg.io_threads),
                None => IoPool::new(cfg.io_threads),
            },
            mem,
            slot_bytes,
            n_slots: cfg.n_slots,
            state: Mutex::new(State::new(cfg.n_slots, n_layer, store_moe_layers, n_expert)),
        })
    }

    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
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
        assert!(slot < self.n_slots);
        self.mem.as_ptr().wrapping_add(slot * self.slot_bytes)
    }

    /// The bytes of a pinned, ready slot.
    fn slot(&self, slot: usize) -> &[u8] {
        // SAFETY: the slot is pinned and Ready (checked by the caller), so no read into it is in flight and none
        // can start until it is unpinned; the range lies inside `mem`.
        unsafe { std::slice::from_raw_parts(self.slot_ptr(slot), self.slot_bytes) }
    }

    /// Pins expert `e` of `layer`, starting its read if it is not cached. `None` when every slot is pinned.
    fn claim(&self, st: &mut State, layer: usize, e: u32) -> Option<usize> {
        let (s, miss) = st.claim_slot(layer, e)?;
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
                SlotState::Loading => st.slots[s].batch.clone().expect("a loading slot has a batch"),
                SlotState::Free => unreachable!("a pinned slot is never free"),
            }
        };
        let t0 = Instant::now();
        let result = batch.wait();
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
                // Never leave garbage mapped: forget the expert and free the slot.
                if let Some(owner) = st.slots[s].owner.take() {
                    st.map.remove(&owner);
                }
                st.slots[s].state = SlotState::Free;
                st.slots[s].batch = None;
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
            let pinned = st.slots.iter().filter(|s| s.pins > 0).count();
            if pinned + experts.len() + keep_free > self.n_slots {
                return Err(Error::Invalid(format!(
                    "cannot pin {} experts: the cache has {} slots, {} already pinned, and {keep_free} must stay free",
                    experts.len(),
                    self.n_slots,
                    pinned
                )));
            }
            for &(layer, e) in experts {
                if layer >= st.freq.len()
                    || e as usize >= self.store.layout().n_expert
                    || self.store.layout().layers[layer].is_none()
                {
                    return Err(Error::Invalid(format!("cannot pin expert {e} of layer {layer}: no such expert")));
                }
                let s = self.claim(&mut st, layer, e).expect("room was checked above");
                slots.push(s);
            }
        }
        for s in slots {
            self.wait_ready(s)?;
        }
        Ok(())
    }

    /// Approximate mode: marks finished background reads ready (or frees their slot on an error), so that their
    /// slots can be evicted again; a read nobody waits for leaves its slot `Loading` and unpinned until then.
    fn reap_background(&self, st: &mut State) {
        let mut i = 0;
        while i < st.background.len() {
            let s = st.background[i];
            let slot = &mut st.slots[s];
            if slot.state == SlotState::Loading && slot.pins == 0 {
                let batch = slot.batch.as_ref().expect("a loading slot has a batch");
                if !batch.is_done() {
                    i += 1;
                    continue;
                }
                if batch.wait().is_ok() {
                    slot.state = SlotState::Ready;
                    slot.batch = None;
                } else {
                    // Never leave garbage mapped: forget the expert and free the slot.
                    slot.state = SlotState::Free;
                    slot.batch = None;
                    if let Some(owner) = slot.owner.take() {
                        st.map.remove(&owner);
                        st.per_layer[owner.0 as usize] -= 1;
                    }
                }
            }
            // Finished here, or pinned by a set that waits for it itself.
            st.background.swap_remove(i);
        }
    }

    fn unpin(&self, s: usize) {
        let mut st = self.lock();
        st.slots[s].pins -= 1;
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

impl ExpertSet for CacheSet<'_> {
    fn next(&mut self) -> Option<Result<(usize, ExpertWeights<'_>)>> {
        if self.next > 0 {
            if let Some(s) = self.claimed[self.next - 1].take() {
                self.cache.unpin(s);
            }
        }
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
            st.slots[s].pins -= 1;
        }
    }
}

impl ExpertProvider for ExpertCache {
    fn acquire<'a>(&'a self, layer: usize, ids: &[u32]) -> Result<Box<dyn ExpertSet + 'a>> {
        let order: Vec<usize> = {
            let st = self.lock();
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
        };
        set.top_up();
        Ok(Box::new(set))
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        Some(self.stats())
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
            st.slots[s].pins -= 1;
            if st.slots[s].state == SlotState::Loading && !st.background.contains(&s) {
                st.background.push(s);
            }
        }
    }

    fn as_cache(&self) -> Option<&ExpertCache> {
        Some(self)
    }
}
