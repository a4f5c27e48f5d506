//! The expert cache's eviction policy on a real routing trace (tests/fixtures/traces: Qwen3-30B-A3B, 48 layers x 128
//! experts, top-6), replayed through the cache's own bookkeeping, against the trace's replay curve, and on
//! synthetic skewed workloads with drift, against a global LRU under the same accounting.
//!
//! The trace's model is a Q4_K_M file: its experts take 2.92 MiB in the 24 layers whose ffn_down is Q6_K and 2.53
//! MiB in the others, and the curve's script budgets each expert at its own size. So does the cache (slot classes,
//! [`engine::experts::budget::SlotClasses`]), and a global LRU counted that way reproduces the curve's LRU column
//! to the decimal at every budget (asserted below).
//!
//! Decode hit rates measured by this test (OURS below; the test holds the policy to them): 28.5 / 45.3 / 63.7 /
//! 75.1 / 83.2 / 92.3% at 0.5 / 1 / 2 / 3 / 4 / 6 GB, against the curve's LRU 0 / 37.7 / 56.5 / 70.6 / 80.3 / 92.1%
//! and per-layer LFU 38.3 / 45.1 / 63.3 / 74.2 / 81.7 / 91.0%: at least per-layer LFU at every budget of the curve from 1
//! GB on, 1.5, 2.5 and 8 GB included (asserted; below 842 MiB the per-layer figures keep 6 experts per layer, 842
//! MiB, over the budget). What got there from 42.7 / 73.3 /
//! 91.3% at 1 / 3 / 6 GB: slot classes (44.3 / 75.1 / 92.3: 7% more experts in the same bytes), then evicting the
//! experts a layer used at its latest visit last, once the cache holds one token's experts in every layer (45.3% at
//! 1 GB, where ranking by value alone traded 1291 of those reuses for 977 hits on frequent experts; no change at 2-6
//! GB).
//! With the transition-table prefetch modelled as read in time (usable at the next layer) on an idle disk (the
//! cache's throttle reads fewer when demand reads keep the disk busy), 18 experts predicted: 65.5 / 70.2 / 78.9 /
//! 84.4 / 87.6 / 92.9% with the cache's rule (ranks whose measured chance of use is at least 0.05), within 5 points
//! of the curve's Belady at the 1 / 3 / 6 GB (62.7 / 87.8 / 96.6%).

mod common;

use common::{lru_hit_rate, lru_hit_rate_bytes};
use engine::experts::budget::SlotClasses;
use engine::experts::cache::{replay_policy, replay_policy_classes, ReplayPrefetch, PREFETCH_CHANCE_MIN};

/// (budget MiB, random, LRU, per-layer LFU, Belady hit %) from qwen3-30b-a3b.replay-curve.txt.
const CURVE: &[(f64, f64, f64, f64, f64)] = &[
    (500.0, 9.8, 0.0, 38.3, 45.3),
    (750.0, 18.9, 0.0, 38.3, 55.4),
    (1000.0, 26.7, 37.7, 45.1, 62.7),
    (1500.0, 39.3, 47.0, 55.2, 72.7),
    (2000.0, 49.1, 56.5, 63.3, 79.4),
    (2500.0, 56.9, 65.1, 68.9, 84.1),
    (3000.0, 63.6, 70.6, 74.2, 87.8),
    (4000.0, 74.0, 80.3, 81.7, 92.7),
    (6000.0, 86.6, 92.1, 91.0, 96.6),
    (8000.0, 93.1, 96.0, 95.2, 97.1),
];

/// The real routing trace and its replay curve, kept in the repository (tests/fixtures/traces, Apache-2.0).
fn trace_dir() -> std::path::PathBuf {
    common::repo_root().join("tests/fixtures/traces")
}

/// The trace's slot classes: each layer's `expert_bytes` from its preamble (Q4_K_M: 2.92 MiB experts in the layers
/// whose ffn_down is Q6_K, 2.53 MiB in the others; both multiples of 4 KiB, as the cache's aligned slots are).
fn trace_classes() -> SlotClasses {
    let text = std::fs::read_to_string(trace_dir().join("qwen3-30b-a3b.route.csv")).expect("trace");
    let mut bytes = vec![None; 48];
    for line in text.lines().filter(|l| l.starts_with("# layer=")) {
        let field = |k: &str| -> u64 {
            let v = line.split_whitespace().find_map(|w| w.strip_prefix(k)).expect("a preamble field");
            v.parse().expect("a number")
        };
        bytes[field("layer=") as usize] = Some(field("expert_bytes="));
    }
    assert!(bytes.iter().all(Option::is_some), "expert_bytes for every layer");
    SlotClasses::from_layer_bytes(&bytes)
}

/// (layer, experts, is decode) per layer visit, in forward order: the prompt as one batch per layer (its distinct
/// experts, as the engine acquires them for a prompt of up to one native batch), then one visit per layer and token.
fn steps() -> Vec<(usize, Vec<u32>, bool)> {
    let text = std::fs::read_to_string(trace_dir().join("qwen3-30b-a3b.route.csv")).expect("trace");
    let mut prompt: Vec<Vec<u32>> = vec![Vec::new(); 48];
    let mut out: Vec<(usize, Vec<u32>, bool)> = Vec::new();
    let mut key = None;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("turn")) {
        let f: Vec<&str> = line.split(',').collect();
        let (turn, phase, step, layer, expert) = (f[0], f[1], f[2], f[3], f[5]);
        let (layer, expert): (usize, u32) = (layer.parse().expect("layer"), expert.parse().expect("expert"));
        if phase == "0" {
            if !prompt[layer].contains(&expert) {
                prompt[layer].push(expert);
            }
            continue;
        }
        let k = (turn.to_string(), step.to_string(), layer);
        if key.as_ref() != Some(&k) {
            out.push((layer, Vec::new(), true));
            key = Some(k);
        }
        out.last_mut().expect("a step").1.push(expert);
    }
    prompt.into_iter().enumerate().map(|(l, ids)| (l, ids, false)).chain(out).collect()
}

/// Our decode hit rate at each budget of [`CURVE`], measured by this test: without prefetch, with the cache's
/// prefetch (ranks whose measured chance of use is at least [`PREFETCH_CHANCE_MIN`]), and with every prediction
/// prefetched where a victim is valued lower (an upper bound that ignores the bandwidth wrong prefetches cost).
/// The policy is held to these (to 0.3 points), so a change that loses hits fails here.
const OURS: &[(f64, f64, f64, f64)] = &[
    (500.0, 28.5, 65.5, 65.5),
    (750.0, 37.1, 67.6, 67.7),
    (1000.0, 45.3, 70.2, 70.4),
    (1500.0, 55.5, 75.3, 75.5),
    (2000.0, 63.7, 78.9, 78.9),
    (2500.0, 70.1, 81.8, 81.9),
    (3000.0, 75.1, 84.4, 84.4),
    (4000.0, 83.2, 87.6, 87.6),
    (6000.0, 92.3, 92.9, 92.9),
    (8000.0, 96.0, 96.0, 96.0),
];

#[test]
fn eviction_on_a_real_trace() {
    let steps = steps();
    let classes = trace_classes();
    assert_eq!(classes.bytes, vec![3059712, 2654208], "the trace's two expert sizes");
    let layer_bytes: Vec<u64> = classes.of_layer.iter().map(|c| classes.bytes[c.expect("MoE")]).collect();
    let moe = [true; 48];
    // Print every budget first, then check, so that a failure shows the whole table.
    let mut rows = Vec::new();
    for &(budget, _, lru, layer_lfu, belady) in CURVE {
        let bytes = (budget * (1 << 20) as f64) as u64;
        let class_slots = classes.share(bytes, 128, 6).expect("the budget holds one token's experts per class");
        let n_slots: usize = class_slots.iter().sum();
        let ours =
            replay_policy_classes(&classes, &class_slots, 128, 6, None, steps.iter().cloned()).hit_rate() * 100.0;
        let replay = |chance_min| {
            let p = ReplayPrefetch { chance_min };
            replay_policy_classes(&classes, &class_slots, 128, 6, Some(p), steps.iter().cloned())
        };
        let (pf, all) = (replay(PREFETCH_CHANCE_MIN), replay(0.0));
        let (ours_pf, ours_all) = (pf.hit_rate() * 100.0, all.hit_rate() * 100.0);
        let acc = 100.0 * pf.predicted_used as f64 / pf.predicted_of as f64;
        let lru_here = 100.0 * lru_hit_rate_bytes(bytes, &layer_bytes, &steps);
        // The same cache with every slot at the larger size (as before slot classes), for the record.
        let n_uniform = (bytes / classes.bytes[0]) as usize;
        let uniform = replay_policy(n_uniform, &moe, 128, 6, None, steps.iter().cloned()).hit_rate() * 100.0;
        eprintln!(
            "{budget:6.0} MiB ({n_slots:4} slots {class_slots:?}): flash-moe {ours:5.2}% (one slot size: \
             {n_uniform} slots, {uniform:5.1}%)  LRU {lru_here:5.2}% (curve {lru:5.1}%)  per-layer LFU (curve) \
             {layer_lfu:5.1}%  Belady (curve) {belady:5.1}%  | with prefetch {ours_pf:5.1}% (prediction accuracy \
             {acc:.1}%, {} prefetches, {} used); all predictions {ours_all:5.1}% ({} prefetches, {} used)",
            pf.prefetch_issued, pf.prefetch_used, all.prefetch_issued, all.prefetch_used,
        );
        rows.push((ours, ours_pf, ours_all, acc, lru_here));
    }
    for (&(budget, random, lru, layer_lfu, belady), (&(_, want, want_pf, want_all), row)) in
        CURVE.iter().zip(OURS.iter().zip(&rows))
    {
        let &(ours, ours_pf, ours_all, acc, lru_here) = row;
        assert!((lru_here - lru).abs() < 0.1, "{budget} MiB: LRU {lru_here:.1}% here, {lru}% in the curve");
        assert!(ours > lru_here, "{budget} MiB: {ours:.1}% does not beat LRU's {lru_here:.1}%");
        if budget >= 1000.0 {
            // Below 842 MiB the curve's per-layer figure keeps 6 experts per layer, 842 MiB, over the budget.
            assert!(ours >= layer_lfu, "{budget} MiB: {ours:.1}% is below per-layer LFU's {layer_lfu}%");
        }
        assert!(ours >= random, "{budget} MiB: {ours:.1}% is below random eviction's {random}%");
        assert!(ours <= belady + 0.5, "{budget} MiB: {ours:.1}% beats Belady's {belady}%: the replay is wrong");
        assert!((ours - want).abs() < 0.3, "{budget} MiB: {ours:.1}%, was {want}%");
        assert!((ours_pf - want_pf).abs() < 0.3, "{budget} MiB with prefetch: {ours_pf:.1}%, was {want_pf}%");
        assert!((ours_all - want_all).abs() < 0.3, "{budget} MiB, all predictions: {ours_all:.1}%, was {want_all}%");
        assert!(ours_pf > ours, "{budget} MiB: prefetch loses hits ({ours:.1}% -> {ours_pf:.1}%)");
        if [1000.0, 3000.0, 6000.0].contains(&budget) {
            assert!(belady - ours_pf <= 5.0, "{budget} MiB: with prefetch {ours_pf:.1}%, Belady {belady}%");
        }
        assert!(acc > 70.0, "{budget} MiB: prediction accuracy {acc:.1}%");
    }
}

/// A small deterministic generator (xorshift64*), so the synthetic workload needs no dependency.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A synthetic skewed workload with drift: per layer, expert popularity is Zipf(s) over a per-layer permutation
/// that is partly reshuffled every `drift_every` tokens, plus token-to-token stickiness (an expert used by the
/// previous token is reused with probability `sticky`), `k` distinct experts per layer and token.
fn zipf_drift(
    n_layer: usize,
    n_expert: usize,
    k: usize,
    n_tokens: usize,
    s: f64,
    sticky: f64,
) -> Vec<(usize, Vec<u32>, bool)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let weights: Vec<f64> = (1..=n_expert).map(|r| 1.0 / (r as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut perm: Vec<Vec<u32>> = (0..n_layer).map(|_| (0..n_expert as u32).collect()).collect();
    let mut prev: Vec<Vec<u32>> = vec![Vec::new(); n_layer];
    let drift_every = 32;
    let mut out = Vec::new();
    for t in 0..n_tokens {
        if t > 0 && t % drift_every == 0 {
            for p in perm.iter_mut() {
                // Swap a few popular ranks with random others: popularity drifts.
                for _ in 0..n_expert / 16 {
                    let a = (rng.next_f64() * (n_expert / 4) as f64) as usize;
                    let b = (rng.next_f64() * n_expert as f64) as usize;
                    p.swap(a, b);
                }
            }
        }
        for l in 0..n_layer {
            let mut ids: Vec<u32> = Vec::with_capacity(k);
            for &e in &prev[l] {
                if ids.len() < k && rng.next_f64() < sticky {
                    ids.push(e);
                }
            }
            while ids.len() < k {
                let mut x = rng.next_f64() * total;
                let mut r = 0;
                while r + 1 < n_expert && x >= weights[r] {
                    x -= weights[r];
                    r += 1;
                }
                let e = perm[l][r];
                if !ids.contains(&e) {
                    ids.push(e);
                }
            }
            prev[l] = ids.clone();
            out.push((l, ids, t >= 8));
        }
    }
    out
}

#[test]
fn eviction_on_synthetic_skewed_workloads_with_drift() {
    let (n_layer, n_expert, k) = (16, 64, 4);
    for (s, sticky) in [(0.8, 0.0), (1.0, 0.2), (1.2, 0.4)] {
        let steps = zipf_drift(n_layer, n_expert, k, 600, s, sticky);
        for slots_per_layer in [3, 6, 12, 24] {
            let n_slots = n_layer * slots_per_layer;
            let ours = 100.0
                * replay_policy(n_slots, &vec![true; n_layer], n_expert, k, None, steps.iter().cloned()).hit_rate();
            let lru = 100.0 * lru_hit_rate(n_slots, &steps);
            eprintln!(
                "zipf s={s} sticky={sticky}, {slots_per_layer:2} slots/layer: flash-moe {ours:5.1}%  LRU {lru:5.1}%"
            );
            assert!(
                ours > lru,
                "zipf s={s} sticky={sticky}, {slots_per_layer} slots/layer: {ours:.1}% <= LRU {lru:.1}%"
            );
        }
    }
}

/// Routing profiles on the real trace: a profile of the prompt and the first 64 decoded tokens (pinned experts and
/// per-layer shares, `experts::profile::plan`), decode hit rate measured on the last 64 tokens, against the same
/// cache without a profile. Measured (printed; one slot size): the per-layer shares change -0.5 to 0 points at 1-6 GB
/// over the global ranking (42.6 -> 42.1% at 1 GB, 92.3 -> 91.9% at 6 GB), pinning a quarter or half of the slots on
/// top at most 0.5 more: why `run --profile` seeds the ranking with the profile instead of setting shares.
#[test]
fn routing_profile_on_a_real_trace() {
    use engine::experts::cache::replay_policy_planned;
    use engine::experts::profile::plan;
    let steps = steps();
    let (n_layer, n_expert, k) = (48, 128, 6);
    let mut counts = vec![vec![0u64; n_expert]; n_layer];
    let mut n_decode = 0;
    let steps: Vec<(usize, Vec<u32>, bool)> = steps
        .into_iter()
        .map(|(layer, experts, decode)| {
            let late = decode && n_decode / n_layer >= 64;
            n_decode += usize::from(decode);
            if !late {
                for &e in &experts {
                    counts[layer][e as usize] += 1;
                }
            }
            (layer, experts, late)
        })
        .collect();
    let moe = vec![true; n_layer];
    let expert_mib = 3059712.0 / (1 << 20) as f64;
    for budget in [1000.0, 2000.0, 3000.0, 4000.0, 6000.0] {
        let n_slots = (budget / expert_mib) as usize;
        let rate = |(h, m): (u64, u64)| 100.0 * h as f64 / (h + m) as f64;
        let base = rate(replay_policy_planned(n_slots, n_layer, n_expert, k, &[], &[], steps.iter().cloned()));
        let mut line = format!("{budget:6.0} MiB ({n_slots:4} slots): no profile {base:5.1}%");
        for pin_fraction in [0.0, 0.25, 0.5] {
            let p = plan(&counts, &moe, n_slots, k, pin_fraction);
            let r =
                rate(replay_policy_planned(n_slots, n_layer, n_expert, k, &p.quotas, &p.pinned, steps.iter().cloned()));
            line.push_str(&format!("  shares + pin {pin_fraction:.2}: {r:5.1}%"));
            assert!(
                r >= base - 1.0,
                "{budget} MiB, pin {pin_fraction}: {r:.1}% is over a point below {base:.1}% without a profile"
            );
        }
        eprintln!("{line}");
    }
}
