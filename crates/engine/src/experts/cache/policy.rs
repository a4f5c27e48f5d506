//! The expert cache's bookkeeping and eviction policy: slots, which expert each holds, pins, use counts per layer,
//! predictions, and the choice of a victim (see the module doc of [`super`] for the policy). No I/O and no slot
//! memory here: [`super::ExpertCache`] wraps a [`State`] in a mutex and starts the reads; the offline replay
//! ([`super::replay`]) runs the same policy without a model.

use std::collections::HashMap;

use super::stats::CacheStats;
use crate::experts::io::ReadBatch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlotState {
    Free,
    Loading,
    Ready,
    /// Its read failed while sets held it pinned: no longer mapped (nothing new finds it), its batch kept so that
    /// every pin's holder gets the error; freed with its last pin ([`State::unpin`]).
    Failed,
}

pub(super) struct Slot {
    pub(super) owner: Option<(u32, u32)>,
    pub(super) state: SlotState,
    pub(super) pins: u32,
    pub(super) last_use: u64,
    pub(super) batch: Option<ReadBatch>,
    /// Brought in by a prefetch and not used since: `Some(visits of its layer when the prefetch was issued)`.
    pub(super) prefetched: Option<u64>,
}

impl Slot {
    pub(super) const FREE: Slot =
        Slot { owner: None, state: SlotState::Free, pins: 0, last_use: 0, batch: None, prefetched: None };
}

/// Weight of a use at the latest visit of a layer, against use rates (at most 1).
const RECENT_BONUS: f32 = 0.3;
/// Use counts and visit counts of a layer are halved every this many visits of it.
pub(super) const RATE_HALF_LIFE_VISITS: u32 = 64;
/// Predictions are ranked; the chance that the expert predicted at each rank is used is measured online (at most
/// this many ranks).
const RANKS_MAX: usize = 64;
/// A predicted expert is prefetched only if its rank's measured chance of use is at least this (each wrong
/// prefetch costs a read), at least what `PrefetchThrottle` asks, and only over experts valued lower.
pub const PREFETCH_CHANCE_MIN: f32 = 0.05;
/// Experts predicted per layer, per expert a token uses: the ranks past `k` are read only while the disk has room
/// (their measured chance of use is low).
pub const PREDICTED_PER_USED: usize = 3;

/// An eviction candidate's rank: experts that are not the latest experts of another layer first (see
/// [`State::victim`]), then prefetched-but-unused ones, then the lowest value, then least recently used.
pub(super) type VictimKey = (bool, bool, f32, u64);

pub(super) struct State {
    pub(super) slots: Vec<Slot>,
    pub(super) map: HashMap<(u32, u32), usize>,
    /// Uses of each expert, `[layer][expert]`, halved with `visits_eff`.
    pub(super) uses: Vec<Vec<u32>>,
    /// Visits of each layer: all of them (`visits`), and the count halved with `uses` (`visits_eff`).
    pub(super) visits: Vec<u64>,
    pub(super) visits_eff: Vec<u32>,
    /// Whether each slot class holds the experts of one token in each of its layers, and one layer's more: then
    /// the experts a layer used at its latest visit are evicted last ([`State::victim`]). Set with the model's
    /// experts per token ([`State::set_k`]).
    pub(super) keeps_latest: Vec<bool>,
    /// The visit of its layer at which each expert was last used (0: never), `[layer][expert]`.
    pub(super) last_visit: Vec<Vec<u64>>,
    pub(super) tick: u64,
    pub(super) stats: CacheStats,
    /// The latest prediction for each layer (cleared when the layer is visited).
    pub(super) predicted: Vec<Vec<u32>>,
    /// The latest prediction's experts that were not cached then, with their rank.
    pub(super) predicted_missing: Vec<Vec<(usize, u32)>>,
    /// Per prediction rank, over predicted experts that were not cached: how many, and how many were then used
    /// (halved together now and then). Measured whether or not they were prefetched, so a rank judged useless can
    /// recover.
    pub(super) rank_made: [u32; RANKS_MAX],
    pub(super) rank_used: [u32; RANKS_MAX],
    /// [`PREFETCH_CHANCE_MIN`] (the offline replay can change it).
    pub(super) chance_min: f32,
    /// Slots with a prefetch read in flight.
    pub(super) prefetching: Vec<usize>,
    /// The layer visited last and the experts it uses: a prefetch never evicts them (a visit may not have pinned
    /// all of them yet).
    pub(super) current_layer: usize,
    pub(super) current: Vec<u32>,
    /// Slots held by each layer, and each layer's share of the slots when a routing profile set one
    /// ([`ExpertCache::set_layer_quotas`]; `None`: one global ranking).
    pub(super) per_layer: Vec<usize>,
    pub(super) quota: Option<Vec<usize>>,
    /// Slots with a read started by [`ExpertProvider::fetch_background`] (approximate mode only) that nobody has
    /// waited for yet.
    pub(super) background: Vec<usize>,
    /// The slot class of each layer's experts (0 for layers without), and each class's slots: a range of `slots`
    /// ([`crate::experts::budget::SlotClasses`]).
    pub(super) class_of: Vec<usize>,
    pub(super) class_slots: Vec<std::ops::Range<usize>>,
    /// Experts per token (0: not set).
    pub(super) k: usize,
    /// Hot experts still to read in the background ([`ExpertCache::warm_in_background`]), hottest first, and the
    /// slots (with the expert each was given) whose background read is in flight.
    pub(super) warm: std::collections::VecDeque<(u32, u32)>,
    pub(super) warming: Vec<(usize, (u32, u32))>,
}

impl State {
    /// One class of `n_slots` slots for every layer.
    pub(super) fn new(n_slots: usize, n_layer: usize, n_expert: usize) -> State {
        State::with_classes(&[n_slots], vec![0; n_layer], n_expert)
    }

    /// `class_slots[c]` slots of each class, in class order; `class_of[layer]`: the class of each layer's experts.
    pub(super) fn with_classes(class_slots: &[usize], class_of: Vec<usize>, n_expert: usize) -> State {
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
    pub(super) fn set_k(&mut self, k: usize) {
        self.k = k;
        for (c, r) in self.class_slots.iter().enumerate() {
            let n_layers = self.class_of.iter().filter(|&&x| x == c).count();
            self.keeps_latest[c] = k > 0 && r.len() >= (n_layers + 1) * k;
        }
    }

    /// The slots that can hold experts of `layer`.
    pub(super) fn slots_for(&self, layer: usize) -> std::ops::Range<usize> {
        self.class_slots[self.class_of[layer]].clone()
    }

    /// Starts a visit of `layer` by one forward step that uses `ids`: counts the uses and scores the layer's last
    /// prediction.
    pub(super) fn visit(&mut self, layer: usize, ids: &[u32]) {
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
    pub(super) fn note_prediction(&mut self, layer: usize, ids: &[u32]) {
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
    pub(super) fn value(&self, layer: usize, e: u32) -> f32 {
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
    pub(super) fn keep_value(&self, layer: usize, p: f32) -> f32 {
        let n = self.visits.len();
        let d = match (layer + n - self.current_layer) % n {
            0 => n,
            d => d,
        };
        let p = p.clamp(1e-3, 1.0);
        1.0 / (d as f32 + n as f32 * (1.0 / p - 1.0))
    }

    /// The rank of slot `s` as a victim for a read of `layer`'s experts.
    pub(super) fn key(&self, s: &Slot, layer: usize) -> VictimKey {
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
    pub(super) fn claim_slot(&mut self, layer: usize, e: u32) -> Option<(usize, bool)> {
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
    pub(super) fn take_slot(&mut self, s: usize, layer: usize, e: u32) {
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
    pub(super) fn victim(&self, layer: usize, keep: Option<(usize, &[u32])>) -> Option<(usize, Option<VictimKey>)> {
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
    pub(super) fn over_share(&self, l: usize, for_layer: usize) -> bool {
        self.quota.as_ref().is_some_and(|q| self.per_layer[l] > q[l] || (l == for_layer && self.per_layer[l] >= q[l]))
    }

    /// The measured chance that an uncached expert predicted at `rank` is used (optimistic while little is known).
    pub(super) fn rank_chance(&self, rank: usize) -> f32 {
        let r = rank.min(RANKS_MAX - 1);
        (self.rank_used[r] + 2) as f32 / (self.rank_made[r] + 2) as f32
    }

    /// A slot for prefetching expert `e` of `layer`, predicted at `rank` of `ids`, if it is not cached, its rank's
    /// chance of use is at least [`PREFETCH_CHANCE_MIN`], and a free slot or a victim valued lower exists. The slot
    /// is left `Loading`, unpinned.
    pub(super) fn prefetch_slot(&mut self, layer: usize, e: u32, rank: usize, ids: &[u32], load: f32) -> Option<usize> {
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
    pub(super) fn uncount_prefetch(&mut self, bytes: u64) {
        self.stats.prefetch_cancelled += 1;
        self.stats.prefetch_issued -= 1;
        self.stats.prefetch_bytes -= bytes;
        self.stats.bytes_read -= bytes;
    }

    /// Checks that the bookkeeping is consistent: the map and the slots' owners agree, each layer's slot count is
    /// right, a free slot is empty and unpinned, and `pins_expected` pins are held in all (0 when no set is alive).
    pub(super) fn check(&self, pins_expected: usize) -> Result<(), String> {
        let mut per_layer = vec![0; self.per_layer.len()];
        let mut pins = 0usize;
        for (s, slot) in self.slots.iter().enumerate() {
            pins += slot.pins as usize;
            match (slot.state, slot.owner) {
                (SlotState::Free, None) if slot.pins == 0 && slot.batch.is_none() => {}
                (SlotState::Failed, None) if slot.pins > 0 => {}
                (SlotState::Loading | SlotState::Ready, Some(owner)) if self.map.get(&owner) == Some(&s) => {
                    per_layer[owner.0 as usize] += 1;
                }
                _ => return Err(format!("slot {s}: {:?} of {:?} with {} pins", slot.state, slot.owner, slot.pins)),
            }
        }
        if self.map.len() != per_layer.iter().sum::<usize>() {
            return Err(format!("{} experts mapped, {} slots owned", self.map.len(), per_layer.iter().sum::<usize>()));
        }
        if per_layer != self.per_layer {
            return Err(format!("slots per layer {:?}, counted {per_layer:?}", self.per_layer));
        }
        if pins != pins_expected {
            return Err(format!("{pins} pins held, {pins_expected} expected"));
        }
        Ok(())
    }

    /// A read into slot `s` failed: forgets its expert at once (never leave garbage mapped) and frees the slot, or,
    /// while sets hold it pinned, marks it [`SlotState::Failed`] until the last of them unpins it. Does nothing if
    /// another holder of a pin already did it.
    pub(super) fn fail_slot(&mut self, s: usize) {
        if self.slots[s].state != SlotState::Loading {
            return;
        }
        if self.slots[s].pins == 0 {
            self.free_slot(s);
            return;
        }
        if let Some(owner) = self.slots[s].owner.take() {
            self.map.remove(&owner);
            self.per_layer[owner.0 as usize] -= 1;
        }
        self.slots[s].state = SlotState::Failed;
        self.slots[s].prefetched = None;
        self.prefetching.retain(|&p| p != s);
    }

    /// Drops one pin of slot `s`; a failed slot is freed with its last pin.
    pub(super) fn unpin(&mut self, s: usize) {
        let slot = &mut self.slots[s];
        assert!(slot.pins > 0, "unpinning slot {s}, which nobody pinned");
        slot.pins -= 1;
        if slot.pins == 0 && slot.state == SlotState::Failed {
            *slot = Slot::FREE;
        }
    }

    /// Frees slot `s` (a failed or cancelled read nobody holds): never leave garbage mapped.
    pub(super) fn free_slot(&mut self, s: usize) {
        debug_assert_eq!(self.slots[s].pins, 0, "freeing a pinned slot");
        if let Some(owner) = self.slots[s].owner.take() {
            self.map.remove(&owner);
            self.per_layer[owner.0 as usize] -= 1;
        }
        self.slots[s] = Slot::FREE;
    }
}
