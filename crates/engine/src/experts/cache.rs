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
//! A routing profile can give each layer a share of the slots ([`ExpertCache::set_layer_quotas`]): a miss then
//! evicts from the layers holding more than their share first. Only the opt-in approximate mode
//! ([`crate::approx`]) asks which experts are resident and starts reads nobody waits for
//! ([`ExpertProvider::fetch_background`]); such a slot stays `Loading`, unpinned and never evicted, until a later
//! call finds its read finished (`reap_background`).

mod preload;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::budget::SlotClasses;
use super::io::{IoEngine, IoPool, ReadBatch, DIRECT_ALIGN};
use super::predict::TransitionTable;
use super::store::ExpertStore;
use super::{ExpertProvider, ExpertSet, ExpertWeights};
use crate::tensor::AlignedBuf;
use crate::{Error, Result};

pub use preload::{replay_policy_planned, HotExpert, PreloadItem, PreloadStats};

/// Counters of the cache, for the run summary and `--stats-json`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacheStats {
    /// Experts found in the cache (prefetched ones included, even when their read had not finished).
    pub hits: u64,
    pub misses: u64,
    /// Bytes read, prefetches included.
    pub bytes_read: u64,
    /// Time the forward pass waited for expert reads.
    pub wait_secs: f64,
    pub per_layer_hits: Vec<u64>,
    pub per_layer_misses: Vec<u64>,
    /// Prefetch reads started, and their bytes.
    pub prefetch_issued: u64,
    pub prefetch_bytes: u64,
    /// Prefetched experts that a forward step then used (counted in `hits`), and of those, the ones whose read had
    /// not finished when they were needed.
    pub prefetch_used: u64,
    pub prefetch_late: u64,
    /// Prefetches whose read was dropped before it started (the prediction was wrong; not counted above).
    pub prefetch_cancelled: u64,
    /// Experts used at visits that had a prediction, and how many of them were predicted.
    pub predicted_of: u64,
    pub predicted_used: u64,
    /// Predicted experts not prefetched because the disk was busy with demand reads or the forward pass hardly
    /// waited for reads (see `PrefetchThrottle`).
    pub prefetch_throttled: u64,
    /// Warm start in the background ([`ExpertCache::warm_in_background`]): hot experts read, and their bytes.
    pub warm_reads: u64,
    pub warm_bytes: u64,
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
            prefetch_issued: self.prefetch_issued - start.prefetch_issued,
            prefetch_bytes: self.prefetch_bytes - start.prefetch_bytes,
            prefetch_used: self.prefetch_used - start.prefetch_used,
            prefetch_late: self.prefetch_late - start.prefetch_late,
            prefetch_cancelled: self.prefetch_cancelled - start.prefetch_cancelled,
            predicted_of: self.predicted_of - start.predicted_of,
            predicted_used: self.predicted_used - start.predicted_used,
            prefetch_throttled: self.prefetch_throttled - start.prefetch_throttled,
            warm_reads: self.warm_reads - start.warm_reads,
            warm_bytes: self.warm_bytes - start.warm_bytes,
        }
    }

    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }

    /// Predicted experts that were used / experts used (at visits that had a prediction).
    pub fn prediction_accuracy(&self) -> f64 {
        ratio(self.predicted_used, self.predicted_of)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

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
    /// Brought in by a prefetch and not used since: `Some(visits of its layer when the prefetch was issued)`.
    prefetched: Option<u64>,
}

impl Slot {
    const FREE: Slot =
        Slot { owner: None, state: SlotState::Free, pins: 0, last_use: 0, batch: None, prefetched: None };
}

/// Weight of a use at the latest visit of a layer, against use rates (at most 1).
const RECENT_BONUS: f32 = 0.3;
/// Use counts and visit counts of a layer are halved every this many visits of it.
const RATE_HALF_LIFE_VISITS: u32 = 64;
/// Predictions are ranked; the chance that the expert predicted at each rank is used is measured online (at most
/// this many ranks).
const RANKS_MAX: usize = 64;
/// A predicted expert is prefetched only if its rank's measured chance of use is at least this (each wrong
/// prefetch costs a read), at least what `PrefetchThrottle` asks, and only over experts valued lower.
pub const PREFETCH_CHANCE_MIN: f32 = 0.05;
/// Experts predicted per layer, per expert a token uses: the ranks past `k` are read only while the disk has room
/// (their measured chance of use is low).
pub const PREDICTED_PER_USED: usize = 3;

/// Background reads (approximate mode) in flight at most: more would queue ahead of the reads a step waits for
/// when the disk falls behind; past it, dropped experts are not read. Never more than half the slots either: a
/// slot being read in the background cannot be evicted, and the others must keep a step going.
const BACKGROUND_READS_MAX: usize = 16;
/// Background warm-start reads in flight at most ([`ExpertCache::warm_in_background`]); the I/O pool starts at most
/// [`super::io::SPEC_INFLIGHT_MAX`] speculative reads at once anyway, behind every demand read.
pub const WARM_INFLIGHT_MAX: usize = 8;

/// An eviction candidate's rank: experts that are not the latest experts of another layer first (see
/// [`State::victim`]), then prefetched-but-unused ones, then the lowest value, then least recently used.
type VictimKey = (bool, bool, f32, u64);

struct State {
    slots: Vec<Slot>,
    map: HashMap<(u32, u32), usize>,
    /// Uses of each expert, `[layer][expert]`, halved with `visits_eff`.
    uses: Vec<Vec<u32>>,
    /// Visits of each layer: all of them (`visits`), and the count halved with `uses` (`visits_eff`).
    visits: Vec<u64>,
    visits_eff: Vec<u32>,
    /// Whether each slot class holds the experts of one token in each of its layers, and one layer's more: then
    /// the experts a layer used at its latest visit are evicted last ([`State::victim`]). Set with the model's
    /// experts per token ([`State::set_k`]).
    keeps_latest: Vec<bool>,
    /// The visit of its layer at which each expert was last used (0: never), `[layer][expert]`.
    last_visit: Vec<Vec<u64>>,
    tick: u64,
    stats: CacheStats,
    /// The latest prediction for each layer (cleared when the layer is visited).
    predicted: Vec<Vec<u32>>,
    /// The latest prediction's experts that were not cached then, with their rank.
    predicted_missing: Vec<Vec<(usize, u32)>>,
    /// Per prediction rank, over predicted experts that were not cached: how many, and how many were then used
    /// (halved together now and then). Measured whether or not they were prefetched, so a rank judged useless can
    /// recover.
    rank_made: [u32; RANKS_MAX],
    rank_used: [u32; RANKS_MAX],
    /// [`PREFETCH_CHANCE_MIN`] (the offline replay can change it).
    chance_min: f32,
    /// Slots with a prefetch read in flight.
    prefetching: Vec<usize>,
    /// The layer visited last and the experts it uses: a prefetch never evicts them (a visit may not have pinned
    /// all of them yet).
    current_layer: usize,
    current: Vec<u32>,
    /// Slots held by each layer, and each layer's share of the slots when a routing profile set one
    /// ([`ExpertCache::set_layer_quotas`]; `None`: one global ranking).
    per_layer: Vec<usize>,
    quota: Option<Vec<usize>>,
    /// Slots with a read started by [`ExpertProvider::fetch_background`] (approximate mode only) that nobody has
    /// waited for yet.
    background: Vec<usize>,
    /// The slot class of each layer's experts (0 for layers without), and each class's slots: a range of `slots`
    /// ([`crate::experts::budget::SlotClasses`]).
    class_of: Vec<usize>,
    class_slots: Vec<std::ops::Range<usize>>,
    /// Experts per token (0: not set).
    k: usize,
    /// Hot experts still to read in the background ([`ExpertCache::warm_in_background`]), hottest first, and the
    /// slots (with the expert each was given) whose background read is in flight.
    warm: std::collections::VecDeque<(u32, u32)>,
    warming: Vec<(usize, (u32, u32))>,
}

impl State {
    /// One class of `n_slots` slots for every layer.
    fn new(n_slots: usize, n_layer: usize, n_expert: usize) -> State {
        State::with_classes(&[n_slots], vec![0; n_layer], n_expert)
    }

    /// `class_slots[c]` slots of each class, in class order; `class_of[layer]`: the class of each layer's experts.
    fn with_classes(class_slots: &[usize], class_of: Vec<usize>, n_expert: usize) -> State {
        let n_layer = class_of.len();
        let n_slots = class_slots.iter().sum();
        let mut start = 0;
        let ranges = class_slots
            .iter()
            .map(|&n| {
                start += n;
                start - n..start
            })
            .collect();
        let stats =
            CacheStats { per_layer_hits: vec![0; n_layer], per_layer_misses: vec![0; n_layer], ..Default::default() };
        State {
            slots: (0..n_slots).map(|_| Slot::FREE).collect(),
            map: HashMap::new(),
            uses: vec![vec![0; n_expert]; n_layer],
            visits: vec![0; n_layer],
            visits_eff: vec![0; n_layer],
            keeps_latest: vec![false; class_slots.len()],
            last_visit: vec![vec![0; n_expert]; n_layer],
            tick: 0,
            stats,
            predicted: vec![Vec::new(); n_layer],
            predicted_missing: vec![Vec::new(); n_layer],
            rank_made: [0; RANKS_MAX],
            rank_used: [0; RANKS_MAX],
            chance_min: PREFETCH_CHANCE_MIN,
            prefetching: Vec::new(),
            current_layer: 0,
            current: Vec::new(),
            per_layer: vec![0; n_layer],
            quota: None,
            background: Vec::new(),
            k: 0,
            warm: Default::default(),
            warming: Vec::new(),
            class_of,
            class_slots: ranges,
        }
    }

    /// Takes the model's experts per token, `k` (see `keeps_latest`).
    fn set_k(&mut self, k: usize) {
        self.k = k;
        for (c, r) in self.class_slots.iter().enumerate() {
            let n_layers = self.class_of.iter().filter(|&&x| x == c).count();
            self.keeps_latest[c] = k > 0 && r.len() >= (n_layers + 1) * k;
        }
    }

    /// The slots that can hold experts of `layer`.
    fn slots_for(&self, layer: usize) -> std::ops::Range<usize> {
        self.class_slots[self.class_of[layer]].clone()
    }

    /// Starts a visit of `layer` by one forward step that uses `ids`: counts the uses and scores the layer's last
    /// prediction.
    fn visit(&mut self, layer: usize, ids: &[u32]) {
        self.visits[layer] += 1;
        self.visits_eff[layer] += 1;
        if self.visits_eff[layer] >= 2 * RATE_HALF_LIFE_VISITS {
            self.visits_eff[layer] /= 2;
            self.uses[layer].iter_mut().for_each(|u| *u /= 2);
        }
        self.current_layer = layer;
        self.current.clear();
        self.current.extend_from_slice(ids);
        let v = self.visits[layer];
        for &e in ids {
            self.uses[layer][e as usize] += 1;
            self.last_visit[layer][e as usize] = v;
        }
        let pred = &self.predicted[layer];
        if !pred.is_empty() {
            self.stats.predicted_of += ids.len() as u64;
            self.stats.predicted_used += ids.iter().filter(|e| pred.contains(e)).count() as u64;
        }
        for &(r, e) in &self.predicted_missing[layer] {
            let r = r.min(RANKS_MAX - 1);
            self.rank_made[r] += 1;
            self.rank_used[r] += u32::from(ids.contains(&e));
            if self.rank_made[r] >= 4096 {
                self.rank_made[r] /= 2;
                self.rank_used[r] /= 2;
            }
        }
        self.predicted[layer].clear();
        self.predicted_missing[layer].clear();
    }

    /// Records a prediction `ids` (best first) for the next visit of `layer`.
    fn note_prediction(&mut self, layer: usize, ids: &[u32]) {
        self.predicted[layer].clear();
        self.predicted[layer].extend_from_slice(ids);
        let mut missing = std::mem::take(&mut self.predicted_missing[layer]);
        missing.clear();
        missing.extend(
            ids.iter().enumerate().filter(|(_, &e)| !self.map.contains_key(&(layer as u32, e))).map(|(r, &e)| (r, e)),
        );
        self.predicted_missing[layer] = missing;
    }

    /// The estimated chance that expert `e` of `layer` is used at the layer's next visit (see the module doc).
    fn value(&self, layer: usize, e: u32) -> f32 {
        let rate = self.uses[layer][e as usize] as f32 / self.visits_eff[layer].max(1) as f32;
        let last = self.last_visit[layer][e as usize];
        if last == 0 {
            return rate;
        }
        let age = (self.visits[layer] - last).min(64) as i32;
        rate + RECENT_BONUS * (-age as f32).exp2()
    }

    /// What keeping an expert of `layer` with chance `p` of use at each visit of its layer is worth: the inverse of
    /// the expected number of layer steps until its next use, `d + n * (1/p - 1)` with `d` the steps until its
    /// layer's next visit (the layers run in a cycle of `n`; the layer being visited is a whole cycle away). Two
    /// experts of equal chance are ranked by which layer comes sooner, as Belady's rule would.
    fn keep_value(&self, layer: usize, p: f32) -> f32 {
        let n = self.visits.len();
        let d = match (layer + n - self.current_layer) % n {
            0 => n,
            d => d,
        };
        let p = p.clamp(1e-3, 1.0);
        1.0 / (d as f32 + n as f32 * (1.0 / p - 1.0))
    }

    /// The rank of slot `s` as a victim for a read of `layer`'s experts.
    fn key(&self, s: &Slot, layer: usize) -> VictimKey {
        let (l, e) = s.owner.expect("a ready slot has an owner");
        let l = l as usize;
        let stale = s.prefetched.is_some_and(|v| self.visits[l] > v);
        let latest = self.keeps_latest[self.class_of[layer]]
            && l != layer
            && self.visits[l] > 0
            && self.last_visit[l][e as usize] == self.visits[l];
        (latest, !stale, self.keep_value(l, self.value(l, e)), s.last_use)
    }

    /// The policy's bookkeeping for one use of expert `e` of `layer` (whose visit was counted by [`State::visit`]):
    /// pins the expert's slot, evicting a victim on a miss (that slot is left `Loading` for the caller to fill).
    /// Returns the slot and whether it was a miss; `None` when every slot is pinned.
    fn claim_slot(&mut self, layer: usize, e: u32) -> Option<(usize, bool)> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(&s) = self.map.get(&(layer as u32, e)) {
            let slot = &mut self.slots[s];
            slot.pins += 1;
            slot.last_use = tick;
            if slot.prefetched.take().is_some() {
                self.stats.prefetch_used += 1;
                if slot.state == SlotState::Loading {
                    self.stats.prefetch_late += 1;
                }
            }
            self.stats.hits += 1;
            self.stats.per_layer_hits[layer] += 1;
            return Some((s, false));
        }
        let (victim, _) = self.victim(layer, None)?;
        self.take_slot(victim, layer, e);
        self.stats.misses += 1;
        self.stats.per_layer_misses[layer] += 1;
        self.slots[victim].pins = 1;
        Some((victim, true))
    }

    /// Gives slot `s` to expert `e` of `layer`, `Loading`, unpinned.
    fn take_slot(&mut self, s: usize, layer: usize, e: u32) {
        if let Some(old) = self.slots[s].owner.take() {
            self.map.remove(&old);
            self.per_layer[old.0 as usize] -= 1;
        }
        self.map.insert((layer as u32, e), s);
        self.per_layer[layer] += 1;
        self.slots[s] =
            Slot { owner: Some((layer as u32, e)), state: SlotState::Loading, last_use: self.tick, ..Slot::FREE };
    }

    /// Where a read for `layer` goes: a free slot, else the unpinned ready slot with the lowest [`VictimKey`]
    /// (skipping the experts `keep` of one layer), taken first from the layers over their share when a profile
    /// set shares (`layer` itself counts as over at its share); with its key (`None` for a free slot).
    ///
    /// The experts another layer used at its latest visit go last: they are what that layer's next visit most
    /// likely uses again (38% of them on the shared Qwen3-30B-A3B trace), and a layer's own next visit, not
    /// another layer's miss, is what retires them. Ranking them by value alone gave up more of those reuses than
    /// the frequent experts it kept instead brought back (1291 against 977 hits at 1 GB on that trace).
    fn victim(&self, layer: usize, keep: Option<(usize, &[u32])>) -> Option<(usize, Option<VictimKey>)> {
        let current = (self.current_layer, &self.current[..]);
        let range = self.slots_for(layer);
        if let Some(s) = self.slots[range.clone()].iter().position(|s| s.state == SlotState::Free) {
            return Some((range.start + s, None));
        }
        let kept = |s: &Slot| {
            let is = |(l, ids): (usize, &[u32])| s.owner.is_some_and(|(ol, oe)| ol as usize == l && ids.contains(&oe));
            keep.is_some_and(|k| is(k) || is(current))
        };
        let best = |over_share_only: bool| {
            self.slots[range.clone()]
                .iter()
                .enumerate()
                .map(|(i, s)| (range.start + i, s))
                .filter(|(_, s)| s.pins == 0 && s.state == SlotState::Ready && !kept(s))
                .filter(|(_, s)| !over_share_only || s.owner.is_some_and(|(l, _)| self.over_share(l as usize, layer)))
                .map(|(i, s)| (i, self.key(s, layer)))
                .min_by(|a, b| {
                    let (x, y) = (a.1, b.1);
                    x.0.cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.total_cmp(&y.2)).then(x.3.cmp(&y.3))
                })
                .map(|(i, k)| (i, Some(k)))
        };
        if self.quota.is_some() {
            if let Some(v) = best(true) {
                return Some(v);
            }
        }
        best(false)
    }

    /// Whether layer `l` holds more slots than its profile share (at its share, for the layer `for_layer` that
    /// needs one more).
    fn over_share(&self, l: usize, for_layer: usize) -> bool {
        self.quota.as_ref().is_some_and(|q| self.per_layer[l] > q[l] || (l == for_layer && self.per_layer[l] >= q[l]))
    }

    /// The measured chance that an uncached expert predicted at `rank` is used (optimistic while little is known).
    fn rank_chance(&self, rank: usize) -> f32 {
        let r = rank.min(RANKS_MAX - 1);
        (self.rank_used[r] + 2) as f32 / (self.rank_made[r] + 2) as f32
    }

    /// A slot for prefetching expert `e` of `layer`, predicted at `rank` of `ids`, if it is not cached, its rank's
    /// chance of use is at least [`PREFETCH_CHANCE_MIN`], and a free slot or a victim valued lower exists. The slot
    /// is left `Loading`, unpinned.
    fn prefetch_slot(&mut self, layer: usize, e: u32, rank: usize, ids: &[u32], load: f32) -> Option<usize> {
        if self.map.contains_key(&(layer as u32, e)) {
            return None;
        }
        let chance = self.rank_chance(rank);
        if chance < self.chance_min {
            return None;
        }
        if chance < load {
            self.stats.prefetch_throttled += 1;
            return None;
        }
        let worth = self.keep_value(layer, self.value(layer, e).max(chance));
        let (s, key) = self.victim(layer, Some((layer, ids)))?;
        if key.is_some_and(|(latest, not_stale, v, _)| latest || (not_stale && v >= worth)) {
            return None;
        }
        self.tick += 1;
        self.take_slot(s, layer, e);
        self.slots[s].prefetched = Some(self.visits[layer]);
        self.stats.prefetch_issued += 1;
        Some(s)
    }

    /// Counts a prefetch of `bytes` as cancelled before its read started.
    fn uncount_prefetch(&mut self, bytes: u64) {
        self.stats.prefetch_cancelled += 1;
        self.stats.prefetch_issued -= 1;
        self.stats.prefetch_bytes -= bytes;
        self.stats.bytes_read -= bytes;
    }

    /// Frees slot `s` (a failed or cancelled read): never leave garbage mapped.
    fn free_slot(&mut self, s: usize) {
        if let Some(owner) = self.slots[s].owner.take() {
            self.map.remove(&owner);
            self.per_layer[owner.0 as usize] -= 1;
        }
        self.slots[s] = Slot::FREE;
    }
}

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
fn replay_state(
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
            st.slots[s].pins -= 1;
        }
    }
    out
}

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

/// Shortest window over which `PrefetchThrottle` measures.
const LOAD_WINDOW_SECS: f64 = 0.02;

/// When prefetch pays, measured over windows of at least [`LOAD_WINDOW_SECS`] (moving averages): the disk's
/// demand load, the fraction of time during which at least one demand read was queued or in flight, and the stall,
/// the fraction of time the forward pass waited for expert reads. A predicted expert is prefetched only if the
/// measured chance that its prediction rank is used is at least the load and at least one minus the stall: on a
/// disk that demand misses saturate only near-certain predictions are read (every wrong prefetch there delays the
/// reads the forward pass waits for; others measured -21%), and when the forward pass hardly waits (compute-bound)
/// a speculative read has little to save and still costs CPU time, so only likely ones are read.
/// `FLASH_MOE_PREFETCH_THROTTLE=off` turns the throttle off (for measuring what it does).
struct PrefetchThrottle {
    enabled: bool,
    /// The start of the current window, and the pool's demand-busy seconds and the forward pass's waiting seconds
    /// then.
    at: Option<(Instant, f64, f64)>,
    load: f32,
    stall: f32,
}

impl PrefetchThrottle {
    fn new() -> PrefetchThrottle {
        let enabled = std::env::var("FLASH_MOE_PREFETCH_THROTTLE").map_or(true, |v| v != "off");
        PrefetchThrottle { enabled, at: None, load: 0.0, stall: 1.0 }
    }

    /// The least chance of use worth a prefetch read, given the pool's demand-busy seconds and the forward pass's
    /// waiting seconds now.
    fn update(&mut self, busy_secs: f64, wait_secs: f64) -> f32 {
        if !self.enabled {
            return 0.0;
        }
        let now = Instant::now();
        match self.at {
            None => self.at = Some((now, busy_secs, wait_secs)),
            Some((t, b, w)) => {
                let dt = now.duration_since(t).as_secs_f64();
                if dt >= LOAD_WINDOW_SECS {
                    let frac = |x: f64| (x / dt).clamp(0.0, 1.0) as f32;
                    self.load = 0.5 * self.load + 0.5 * frac(busy_secs - b);
                    self.stall = 0.5 * self.stall + 0.5 * frac(wait_secs - w);
                    self.at = Some((now, busy_secs, wait_secs));
                }
            }
        }
        self.load.max(1.0 - self.stall)
    }
}

/// How the cache prefetches, and the transition table when it predicts by itself.
struct Prefetcher {
    mode: Prefetch,
    /// The model's experts per token: visits using more are multi-token steps; [`PREDICTED_PER_USED`] times as many
    /// are predicted.
    k: usize,
    table: Option<TransitionTable>,
    pred: Vec<u32>,
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
                Some(engine) => IoPool::with_engine(engine, cfg.io_threads),
                None => IoPool::new(cfg.io_threads),
            },
            mem,
            slot_off,
            slot_len,
            state: Mutex::new(State::with_classes(&class_slots, class_of, n_expert)),
            class_slots,
            classes,
            n_slots,
            prefetch: Mutex::new(Prefetcher { mode: Prefetch::Off, k: 0, table: None, pred: Vec::new() }),
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
    fn slot_read_bytes(&self, st: &State, s: usize) -> u64 {
        st.slots[s].owner.map_or(0, |(l, e)| {
            self.store.read_reqs(l as usize, e as usize, self.slot_ptr(s)).iter().map(|r| r.len as u64).sum()
        })
    }

    /// Marks finished prefetch reads ready (or frees their slots if they failed).
    fn poll_prefetches(&self, st: &mut State) {
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
    fn reclaim_prefetches(&self, st: &mut State) -> bool {
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
                    let _ = b.wait();
                    st.stats.wait_secs += t0.elapsed().as_secs_f64();
                }
            }
        }
        self.poll_prefetches(st);
        any
    }

    /// Drops the queued prefetches of `layer` that its visit (using `ids`) does not need.
    fn cancel_unused_prefetches(&self, st: &mut State, layer: usize, ids: &[u32]) {
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
                // Never leave garbage mapped: forget the expert and free the slot (other pins of it fail too).
                st.prefetching.retain(|&p| p != s);
                st.free_slot(s);
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
    fn pump_warm(&self, st: &mut State) {
        Self::poll_warm(st);
        self.start_warm(st);
    }

    /// Marks finished background warm-start reads ready (or frees their slots on an error).
    fn poll_warm(st: &mut State) {
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
    fn start_warm(&self, st: &mut State) {
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
        };
        set.top_up();
        // After this layer's demand reads are queued: background warm-start reads, then prediction and prefetch.
        self.pump_warm(&mut self.lock());
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
        drop(guard);
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
            st.slots[s].pins -= 1;
            if st.slots[s].state == SlotState::Loading && !st.background.contains(&s) {
                st.background.push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PrefetchThrottle;

    #[test]
    fn threshold_follows_throttle_and_stall() {
        let mut d = PrefetchThrottle { enabled: true, at: None, load: 0.0, stall: 1.0 };
        let t0 = std::time::Instant::now();
        assert_eq!(d.update(0.0, 0.0), 0.0, "no window yet: prefetch whatever is likely enough");
        std::thread::sleep(std::time::Duration::from_millis(30));
        // Disk busy and the forward pass waiting the whole window: the load moves halfway to 1.
        let busy = t0.elapsed().as_secs_f64() + 1.0;
        let l1 = d.update(busy, busy);
        assert!((l1 - 0.5).abs() < 1e-6, "{l1}");
        // Within the same window nothing changes.
        assert_eq!(d.update(busy, busy), l1);
        std::thread::sleep(std::time::Duration::from_millis(30));
        // Idle disk, but nobody waited: compute-bound, the stall halves, 1 - stall = 0.5 > load 0.25.
        let l2 = d.update(busy, busy);
        assert!((l2 - 0.5).abs() < 1e-6, "{l2}");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let l3 = d.update(busy, busy);
        assert!((l3 - 0.75).abs() < 1e-6, "{l3}");
        let mut off = PrefetchThrottle { enabled: false, at: None, load: 0.0, stall: 1.0 };
        assert_eq!(off.update(5.0, 0.0), 0.0);
    }
}
