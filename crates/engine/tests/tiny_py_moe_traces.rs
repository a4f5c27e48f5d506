//! Routing of the bundled trained MoE, from the traces flash-moe recorded of it (assets/tiny-py-moe/traces: four
//! held-out prompts, the first 1200 bytes of Python files of this repository, 128 sampled tokens each; commands in
//! assets/tiny-py-moe/README.md). Real routing is not uniform, and a cache must profit from it:
//!
//! - popularity: in each layer, the top quarter of the experts takes far more than a quarter of the decode uses;
//! - reuse: a token's experts were often used by the token before, in the same layer;
//! - the cache's policy, replayed over these traces, hits more than a same-size cache would on uniform routing
//!   and no less than LRU.
//!
//! Each figure is compared with the same statistic of uniform random routing of the same shape and length.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::{lru_hit_rate, repo_root};
use engine::experts::cache::{replay_policy, ReplayPrefetch, ReplayStats, PREFETCH_CHANCE_MIN};

const N_LAYER: usize = 8;
const N_EXPERT: usize = 32;
const TOP_K: usize = 4;

/// (phase, step, layer) -> experts, best first.
type Trace = BTreeMap<(u32, u32, usize), Vec<u32>>;

fn traces() -> Vec<(String, Trace)> {
    let dir = repo_root().join("assets/tiny-py-moe/traces");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir).expect("traces dir").map(|e| e.expect("entry").path()).collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).expect("trace");
        let mut t = Trace::new();
        for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let num = |i: usize| f[i].parse::<u32>().expect("a number");
            t.entry((num(1), num(2), num(3) as usize)).or_default().push(num(5));
        }
        out.push((p.file_name().expect("name").to_string_lossy().into_owned(), t));
    }
    assert_eq!(out.len(), 4, "four committed traces");
    out
}

/// The same steps with uniformly random experts (a fixed xorshift, so the figures are repeatable).
fn uniform_like(t: &Trace) -> Trace {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    t.keys()
        .map(|&k| {
            let mut v = Vec::new();
            while v.len() < TOP_K {
                let e = (next() % N_EXPERT as u64) as u32;
                if !v.contains(&e) {
                    v.push(e);
                }
            }
            (k, v)
        })
        .collect()
}

/// Mean over layers of the decode-phase share of uses that go to the layer's top quarter of experts.
fn top_quarter_share(t: &Trace) -> f64 {
    let mut sum = 0.0;
    for l in 0..N_LAYER {
        let mut counts = [0u32; N_EXPERT];
        for (_, es) in t.iter().filter(|((ph, _, layer), _)| *ph == 1 && *layer == l) {
            for &e in es {
                counts[e as usize] += 1;
            }
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let total: u32 = counts.iter().sum();
        sum += counts[..N_EXPERT / 4].iter().sum::<u32>() as f64 / total as f64;
    }
    sum / N_LAYER as f64
}

/// Decode-phase fraction of a token's experts that the previous token used in the same layer.
fn reuse(t: &Trace) -> f64 {
    let (mut hit, mut n) = (0, 0);
    for ((ph, step, l), es) in t.iter().filter(|((ph, step, _), _)| *ph == 1 && *step > 0) {
        let prev: HashSet<u32> = t[&(*ph, step - 1, *l)].iter().copied().collect();
        hit += es.iter().filter(|e| prev.contains(e)).count();
        n += es.len();
    }
    hit as f64 / n as f64
}

/// The trace as the engine acquires experts: the prompt in chunks of the native batch, one step per layer with
/// the chunk's distinct experts (expert-major prefill), then one step per decoded token and layer.
fn engine_steps(t: &Trace) -> Vec<(usize, Vec<u32>, bool)> {
    let mut steps = Vec::new();
    let n_prompt = t.keys().filter(|k| k.0 == 0).map(|k| k.1 + 1).max().unwrap_or(0);
    let batch = engine::backend::native::N_BATCH as u32;
    for c0 in (0..n_prompt).step_by(batch as usize) {
        for l in 0..N_LAYER {
            let mut es: Vec<u32> =
                (c0..(c0 + batch).min(n_prompt)).flat_map(|st| t[&(0, st, l)].iter().copied()).collect();
            es.sort_unstable();
            es.dedup();
            steps.push((l, es, false));
        }
    }
    steps.extend(t.iter().filter(|(k, _)| k.0 == 1).map(|(&(_, _, l), es)| (l, es.clone(), true)));
    steps
}

/// The cache policy replayed over the whole trace with `n_slots` slots (decode counted), with the transition-table
/// prefetch if asked.
fn replay(t: &Trace, n_slots: usize, prefetch: bool) -> ReplayStats {
    let p = prefetch.then_some(ReplayPrefetch { chance_min: PREFETCH_CHANCE_MIN });
    replay_policy(n_slots, &[true; N_LAYER], N_EXPERT, TOP_K, p, engine_steps(t))
}

#[test]
fn routing_is_skewed_and_reused() {
    for (name, t) in traces() {
        let u = uniform_like(&t);
        let (share, share_u) = (top_quarter_share(&t), top_quarter_share(&u));
        let (re, re_u) = (reuse(&t), reuse(&u));
        eprintln!("{name}: top-quarter share {share:.2} (uniform {share_u:.2}), reuse {re:.2} (uniform {re_u:.2})");
        assert!(share > 1.6 * share_u, "{name}: popularity skew {share:.2} vs uniform {share_u:.2}");
        assert!(re > 2.0 * re_u, "{name}: token-to-token reuse {re:.2} vs uniform {re_u:.2}");
    }
}

#[test]
fn cache_policy_profits_from_real_routing() {
    for (name, t) in traces() {
        let u = uniform_like(&t);
        for pct in [25, 50] {
            let n_slots = N_LAYER * N_EXPERT * pct / 100;
            let (ours, ours_u) = (replay(&t, n_slots, false).hit_rate(), replay(&u, n_slots, false).hit_rate());
            let lru = lru_hit_rate(n_slots, &engine_steps(&t));
            eprintln!(
                "{name} cache {pct}%: hit {:.1}% (uniform routing {:.1}%, LRU {:.1}%)",
                100.0 * ours,
                100.0 * ours_u,
                100.0 * lru
            );
            assert!(ours > ours_u + 0.15, "{name} {pct}%: {ours:.3} barely beats uniform routing's {ours_u:.3}");
            assert!(ours >= lru - 0.005, "{name} {pct}%: policy {ours:.3} below LRU {lru:.3}");
        }
    }
}

/// Next-layer prediction by the online transition table (the predictor that needs no model): accuracy = predicted
/// experts used / experts used, `PREDICTED_PER_USED * k` = 12 predicted; uniform guessing would score 12 / 32 =
/// 37.5% (the test compares with the same replay on uniform routing).
#[test]
fn next_layer_prediction_beats_guessing() {
    for (name, t) in traces() {
        let n_slots = N_LAYER * N_EXPERT / 4;
        let (off, on) = (replay(&t, n_slots, false), replay(&t, n_slots, true));
        let acc = on.predicted_used as f64 / on.predicted_of.max(1) as f64;
        let acc_u = {
            let u = replay(&uniform_like(&t), n_slots, true);
            u.predicted_used as f64 / u.predicted_of.max(1) as f64
        };
        eprintln!(
            "{name}: prediction accuracy {:.1}% (uniform routing {:.1}%); hit at 25% cache {:.1}% -> {:.1}% with \
             prefetch counted when issued a layer ahead ({} prefetches, {} used)",
            100.0 * acc,
            100.0 * acc_u,
            100.0 * off.hit_rate(),
            100.0 * on.hit_rate(),
            on.prefetch_issued,
            on.prefetch_used
        );
        assert!(on.predicted_of > 0, "{name}: nothing was predicted");
        assert!(acc > 0.45 && acc > acc_u + 0.15, "{name}: accuracy {acc:.3} vs uniform routing {acc_u:.3}");
        assert!(on.hit_rate() >= off.hit_rate(), "{name}: prefetch lowered the hit rate");
    }
}
