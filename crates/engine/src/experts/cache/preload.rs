//! Filling the cache before the first token (warm start, pinned experts from a routing profile) and reading out
//! what it holds (for the next warm start), plus per-layer shares of the slots.
//!
//! [`ExpertCache::preload`] puts a list of experts into free slots in large sequential reads: the byte ranges of
//! their projections are sorted by file offset, ranges that touch (or nearly: gaps up to [`GAP_BYTES_MAX`], the
//! alignment padding) are coalesced into reads of up to [`RUN_BYTES_MAX`], and [`IN_FLIGHT_MAX`] of them are in
//! flight at once. A run of one range is read straight into its slot; a longer run into one of [`STAGING_MAX`]
//! staging buffers and copied out. Preloading only changes which experts are cached, never a computed bit.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::policy::{Slot, SlotState, State, RATE_HALF_LIFE_VISITS};
use super::ExpertCache;
use crate::experts::io::{ReadBatch, DIRECT_ALIGN};
use crate::tensor::AlignedBuf;
use crate::{Error, Result};

/// The longest coalesced read.
pub const RUN_BYTES_MAX: usize = 4 << 20;
/// Coalesced reads in flight (the io_uring queue depth; long reads are split into many device requests).
pub const IN_FLIGHT_MAX: usize = 64;
/// Staging buffers (of [`RUN_BYTES_MAX`]) for runs of several ranges: the transient memory a preload takes.
pub const STAGING_MAX: usize = 16;
/// Ranges closer than this are read as one (the gap is read and dropped).
pub const GAP_BYTES_MAX: u64 = 64 << 10;

/// One expert to preload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreloadItem {
    pub layer: usize,
    pub expert: u32,
    /// Starting (decayed) use count for the eviction policy.
    pub uses: u32,
    /// Keep it for good (never evicted).
    pub pin: bool,
}

/// What a preload did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PreloadStats {
    /// Experts read into slots, and how many of them (or of experts already cached) were pinned.
    pub n_experts: usize,
    pub n_pinned: usize,
    /// Experts asked for but not loaded: no free slot left, or already cached.
    pub n_skipped: usize,
    /// Coalesced reads issued, and the bytes they read (gaps included).
    pub n_reads: usize,
    pub bytes_read: u64,
    pub secs: f64,
}

impl PreloadStats {
    pub fn gb_per_s(&self) -> f64 {
        self.bytes_read as f64 / self.secs.max(1e-9) / 1e9
    }
}

/// One cached expert and how much it was used, for the hot file of the next warm start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotExpert {
    pub layer: usize,
    pub expert: u32,
    pub uses: u32,
}

/// One aligned range of one projection of one claimed expert.
struct Piece {
    file: usize,
    offset: u64,
    len: usize,
    len_needed: usize,
    dst: *mut u8,
}

impl State {
    /// Takes a free slot for `(layer, e)`, left `Loading` and pinned for the preload to fill.
    fn claim_free(&mut self, s: usize, layer: usize, e: u32, uses: u32) {
        debug_assert_eq!(self.slots[s].state, SlotState::Free);
        self.slots[s] =
            Slot { owner: Some((layer as u32, e)), state: SlotState::Loading, pins: 1, last_use: 0, ..Slot::FREE };
        self.map.insert((layer as u32, e), s);
        self.per_layer[layer] += 1;
        let u = &mut self.uses[layer][e as usize];
        *u = (*u).max(uses);
    }
}

impl ExpertCache {
    /// Each layer's share of the slots, if a routing profile set them (see [`ExpertCache::set_layer_quotas`]).
    pub fn layer_quotas(&self) -> Option<Vec<usize>> {
        self.lock().quota.clone()
    }

    /// Sets each layer's share of the slots (`quotas[layer]`, one per layer of the model): a miss then evicts from
    /// the layers over their share first (the missing layer counts as over at its share), and only then by the
    /// global ranking. The default is no shares: one global ranking.
    pub fn set_layer_quotas(&self, quotas: &[usize]) -> Result<()> {
        let mut st = self.lock();
        if quotas.len() != st.per_layer.len() {
            return Err(Error::Invalid(format!(
                "per-layer cache shares: {} given, the model has {} layers",
                quotas.len(),
                st.per_layer.len()
            )));
        }
        st.quota = Some(quotas.to_vec());
        Ok(())
    }

    /// Seeds the eviction ranking with a routing profile's use counts (`counts[layer][expert]`, over tokens that
    /// used `n_used` experts per layer): each layer's use rates start at the profile's, weighted as at most
    /// `RATE_HALF_LIFE_VISITS` visits, so that real use takes over within a few half-lives. The ranking then
    /// gives each layer as many slots as its experts are worth; hard per-layer shares
    /// ([`ExpertCache::set_layer_quotas`]) measured worse under it (2.9x the bytes per token, bench/warm_bench.sh).
    pub fn seed_uses(&self, counts: &[Vec<u64>], n_used: usize) {
        let mut st = self.lock();
        for (l, c) in counts.iter().enumerate().take(st.uses.len()) {
            let total: u64 = c.iter().fold(0u64, |t, &n| t.saturating_add(n));
            if total == 0 {
                continue;
            }
            let visits = (total / n_used.max(1) as u64).max(1);
            let scale = (RATE_HALF_LIFE_VISITS as f64 / visits as f64).min(1.0);
            st.visits_eff[l] = ((visits as f64 * scale).round() as u32).max(1);
            for (u, &n) in st.uses[l].iter_mut().zip(c) {
                *u = (n as f64 * scale).round() as u32;
            }
        }
    }

    /// Whether expert `e` of `layer` is cached (or being read).
    pub fn contains(&self, layer: usize, e: u32) -> bool {
        self.lock().map.contains_key(&(layer as u32, e))
    }

    /// The cached experts, most used first (decayed use count, then most recent use).
    pub fn hot_experts(&self) -> Vec<HotExpert> {
        let mut st = self.lock();
        ExpertCache::poll_warm(&mut st);
        let mut hot: Vec<(HotExpert, u64)> = st
            .slots
            .iter()
            .filter(|s| s.state == SlotState::Ready)
            .filter_map(|s| s.owner.map(|o| (o, s.last_use)))
            .map(|((l, e), last)| {
                (HotExpert { layer: l as usize, expert: e, uses: st.uses[l as usize][e as usize] }, last)
            })
            .collect();
        hot.sort_by(|a, b| b.0.uses.cmp(&a.0.uses).then(b.1.cmp(&a.1)).then(a.0.layer.cmp(&b.0.layer)));
        hot.into_iter().map(|(h, _)| h).collect()
    }

    /// Bytes read from disk to bring expert `e` of `layer` in.
    pub fn expert_read_bytes(&self, layer: usize, e: u32) -> u64 {
        self.store.read_bytes(layer, e as usize)
    }

    /// Reads `items` into free slots in large sequential reads (see the module doc), before the first forward
    /// step. Items already cached are pinned if asked and otherwise skipped; items beyond the free slots are
    /// skipped; pins that would leave fewer than `keep_free` unpinned slots load the expert unpinned. On a read
    /// error every slot this call claimed is freed again (once no forward step holds it) and the error returned (the
    /// cache stays usable).
    pub fn preload(&self, items: &[PreloadItem], keep_free: usize) -> Result<PreloadStats> {
        let t0 = Instant::now();
        let mut stats = PreloadStats::default();
        let mut jobs: Vec<(usize, bool)> = Vec::new(); // (slot, pinned)
        let mut pieces: Vec<Piece> = Vec::new();
        // What a forward step that finds one of these experts before the preload ends waits on.
        let done = ReadBatch::manual();
        {
            let mut st = self.lock();
            let layout = self.store.layout();
            // Free slots and pins per slot class.
            let mut free: Vec<Vec<usize>> = st
                .class_slots
                .iter()
                .map(|r| r.clone().rev().filter(|&s| st.slots[s].state == SlotState::Free).collect())
                .collect();
            let mut n_pinned: Vec<usize> =
                st.class_slots.iter().map(|r| st.slots[r.clone()].iter().filter(|s| s.pins > 0).count()).collect();
            let mut seen = HashSet::new();
            for it in items {
                if it.layer >= layout.layers.len()
                    || layout.layers[it.layer].is_none()
                    || it.expert as usize >= layout.n_expert
                {
                    return Err(Error::Invalid(format!(
                        "cannot preload expert {} of layer {}: no such expert",
                        it.expert, it.layer
                    )));
                }
                if !seen.insert((it.layer, it.expert)) {
                    continue;
                }
                let c = st.class_of[it.layer];
                let pin = it.pin && n_pinned[c] + 1 + keep_free <= st.class_slots[c].len();
                if let Some(&s) = st.map.get(&(it.layer as u32, it.expert)) {
                    stats.n_skipped += 1;
                    if pin {
                        st.slots[s].pins += 1;
                        n_pinned[c] += 1;
                        stats.n_pinned += 1;
                    }
                    continue;
                }
                let Some(s) = free[c].pop() else {
                    stats.n_skipped += 1;
                    continue;
                };
                st.claim_free(s, it.layer, it.expert, it.uses);
                st.slots[s].batch = Some(done.clone());
                n_pinned[c] += usize::from(pin);
                stats.n_pinned += usize::from(pin);
                jobs.push((s, pin));
                for p in self.store.placements(it.layer, it.expert as usize).iter() {
                    pieces.push(Piece {
                        file: p.file,
                        offset: p.read_offset,
                        len: p.read_len,
                        len_needed: p.data_offset - p.slot_offset + p.data_len,
                        dst: self.slot_ptr(s).wrapping_add(p.slot_offset),
                    });
                }
            }
        }
        pieces.sort_by_key(|p| (p.file, p.offset));
        let runs = coalesce(&pieces);
        // The slots' pages are first touched here: fault them in on a second thread, in the order the reads fill
        // them, so the kernel's page allocation overlaps the reads instead of delaying their submission (it
        // takes about 2 s for 5.5 GiB on the 2-core dev machine, as long as the reads themselves).
        let ranges: Vec<(usize, usize)> =
            runs.iter().flat_map(|r| pieces[r.clone()].iter().map(|p| (p.dst as usize, p.len))).collect();
        let stop = AtomicBool::new(false);
        let result = std::thread::scope(|scope| {
            scope.spawn(|| populate(&ranges, &stop));
            let r = self.read_runs(&pieces, &runs, &mut stats);
            stop.store(true, Ordering::Relaxed);
            r
        });
        let mut st = self.lock();
        for &(s, pin) in &jobs {
            if result.is_ok() {
                st.slots[s].state = SlotState::Ready;
                st.slots[s].batch = None;
                if !pin {
                    st.unpin(s);
                }
            } else {
                // Freed now, or by the last forward step that pinned it meanwhile.
                st.fail_slot(s);
                st.unpin(s);
            }
        }
        drop(st);
        done.complete(result.as_ref().err().map(ToString::to_string));
        result?;
        stats.n_experts = jobs.len();
        stats.secs = t0.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Issues the coalesced reads, at most [`IN_FLIGHT_MAX`] in flight, and copies staged runs into their slots.
    fn read_runs(&self, pieces: &[Piece], runs: &[Range<usize>], stats: &mut PreloadStats) -> Result<()> {
        let mut staging: Vec<AlignedBuf> = Vec::new();
        let mut free_staging: Vec<usize> = Vec::new();
        let mut inflight: VecDeque<(Range<usize>, Option<usize>, ReadBatch)> = VecDeque::new();
        let mut error: Option<String> = None;
        let mut next = 0;
        loop {
            while error.is_none() && next < runs.len() && inflight.len() < IN_FLIGHT_MAX {
                let run = runs[next].clone();
                let ps = &pieces[run.clone()];
                if ps.len() > 1 && free_staging.is_empty() && staging.len() == STAGING_MAX {
                    break; // wait for a staged run to finish
                }
                next += 1;
                let start = ps[0].offset;
                let end = ps.iter().map(|p| p.offset + p.len as u64).max().expect("a run has pieces");
                let needed = ps.iter().map(|p| p.offset + p.len_needed as u64).max().expect("a run has pieces");
                let len = (end - start) as usize;
                let (dst, buf) = if ps.len() == 1 {
                    (ps[0].dst, None)
                } else {
                    let b = free_staging.pop().unwrap_or_else(|| {
                        staging.push(AlignedBuf::zeroed_aligned(RUN_BYTES_MAX, DIRECT_ALIGN));
                        staging.len() - 1
                    });
                    assert!(len <= staging[b].len(), "a coalesced run fits its staging buffer");
                    (staging[b].as_ptr(), Some(b))
                };
                let req = self.store.read_req(ps[0].file, start, dst, len, (needed - start) as usize);
                stats.n_reads += 1;
                stats.bytes_read += len as u64;
                inflight.push_back((run, buf, self.io.submit(vec![req])));
            }
            let Some((run, buf, batch)) = inflight.pop_front() else { break };
            if let Err(msg) = batch.wait() {
                error.get_or_insert(msg);
                continue;
            }
            if let Some(b) = buf {
                let start = pieces[run.start].offset;
                for p in &pieces[run] {
                    let from = (p.offset - start) as usize;
                    let src = &staging[b].as_slice()[from..from + p.len];
                    // SAFETY: `p.dst` points into a slot this preload claimed (Loading, pinned), `p.len` bytes lie
                    // inside that slot, and no read targets it (its range was coalesced into this staged run).
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p.dst, p.len) };
                }
                free_staging.push(b);
            }
        }
        match error {
            Some(msg) => Err(Error::Invalid(format!("preloading experts failed: {msg}"))),
            None => Ok(()),
        }
    }
}

/// [`super::replay_policy`] with a routing profile's plan applied first: per-layer shares `quotas` (empty: the
/// even default) and `pinned` experts loaded and pinned before the first step.
pub fn replay_policy_planned(
    n_slots: usize,
    n_layer: usize,
    n_expert: usize,
    n_expert_used: usize,
    quotas: &[usize],
    pinned: &[(usize, u32)],
    steps: impl IntoIterator<Item = (usize, Vec<u32>, bool)>,
) -> (u64, u64) {
    let mut st = State::new(n_slots, n_layer, n_expert);
    if !quotas.is_empty() {
        assert_eq!(quotas.len(), n_layer, "one share per layer");
        st.quota = Some(quotas.to_vec());
    }
    let mut free: Vec<usize> = (0..n_slots).rev().collect();
    for &(layer, e) in pinned {
        let Some(s) = free.pop() else { break };
        st.claim_free(s, layer, e, 0);
        st.slots[s].state = SlotState::Ready;
    }
    let r = super::replay::replay_state(st, &vec![true; n_layer], n_expert, n_expert_used, None, steps);
    (r.hits, r.misses)
}

/// Faults in the pages of `ranges` (address, length; 4 KiB aligned) for writing, until `stop` or the kernel
/// refuses (MADV_POPULATE_WRITE needs Linux 5.14). Contents never change: present pages are left as they are.
pub(super) fn populate(ranges: &[(usize, usize)], stop: &AtomicBool) {
    for &(addr, len) in ranges {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: the range lies inside the cache's own anonymous mapping, alive until this returns (the cache joins
        // its prefault thread before freeing it; preload runs inside a scope); populating only
        // allocates pages that are not present yet and never changes data.
        if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) } != 0 {
            return;
        }
    }
}

/// Groups sorted pieces into runs: same file, each starting at most [`GAP_BYTES_MAX`] past the run's end, the
/// run at most [`RUN_BYTES_MAX`] long (a single longer piece is a run of its own).
fn coalesce(pieces: &[Piece]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let (file, start) = (pieces[i].file, pieces[i].offset);
        let mut end = start + pieces[i].len as u64;
        let mut j = i + 1;
        while j < pieces.len() {
            let p = &pieces[j];
            let new_end = end.max(p.offset + p.len as u64);
            if p.file != file || p.offset > end + GAP_BYTES_MAX || new_end - start > RUN_BYTES_MAX as u64 {
                break;
            }
            end = new_end;
            j += 1;
        }
        runs.push(i..j);
        i = j;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(file: usize, offset: u64, len: usize) -> Piece {
        Piece { file, offset, len, len_needed: len, dst: std::ptr::null_mut() }
    }

    #[test]
    fn ranges_coalesce_when_adjacent_and_split_at_gaps_files_and_the_length_cap() {
        let mb = 1 << 20;
        let pieces = [
            piece(0, 0, mb),
            piece(0, mb as u64, mb),                         // adjacent: same run
            piece(0, 2 * mb as u64 + 4096, mb),              // small gap: same run
            piece(0, 3 * mb as u64 + (1 << 20), mb),         // 1 MiB gap: new run
            piece(1, 4 * mb as u64 + (1 << 20), mb),         // another file: new run
            piece(1, 5 * mb as u64 + (1 << 20), 3 * mb + 1), // would pass 4 MiB: new run
        ];
        assert_eq!(coalesce(&pieces), vec![0..3, 3..4, 4..5, 5..6]);
        assert!(coalesce(&[]).is_empty());
    }
}
