//! The expert cache's eviction policy on a real routing trace (shared/traces: Qwen3-30B-A3B, 48 layers x 128
//! experts, top-6), replayed through the cache's own bookkeeping, against the trace's replay curve.
//!
//! Measured (printed by this test), against a global LRU computed here with the same accounting (the curve's own
//! LRU column runs 0-2 points higher, its accounting differs slightly): 15% vs 0% at 500 MiB (LRU thrashes below
//! one token cycle, 785 MiB), equal at 1 GB, +2.7 points at 2 GB, +0.3 at 3 GB, then 0.7-1.3 points below LRU
//! at 4-6 GB. The test holds the policy to that: above LRU where LRU thrashes, within 1.5 points of it elsewhere,
//! above random eviction, below Belady (else the replay would be wrong). The curve's per-layer LFU (38-91%) is
//! higher still; a plain per-layer LFU simulated with this accounting is not (16-88%), so its numbers likely
//! count differently.

mod common;

use engine::experts::cache::replay_policy;

/// (budget MiB, random, LRU, per-layer LFU, Belady hit %) from qwen3-30b-a3b.replay-curve.txt.
const CURVE: &[(f64, f64, f64, f64, f64)] = &[
    (500.0, 9.8, 0.0, 38.3, 45.3),
    (1000.0, 26.7, 37.7, 45.1, 62.7),
    (2000.0, 49.1, 56.5, 63.3, 79.4),
    (3000.0, 63.6, 70.6, 74.2, 87.8),
    (4000.0, 74.0, 80.3, 81.7, 92.7),
    (6000.0, 86.6, 92.1, 91.0, 96.6),
];

fn shared_traces() -> std::path::PathBuf {
    let root = common::repo_root();
    for dir in [root.join("../shared/traces"), root.join("../../shared/traces")] {
        if dir.join("qwen3-30b-a3b.route.csv").exists() {
            return dir;
        }
    }
    panic!("shared/traces/qwen3-30b-a3b.route.csv not found beside the repository (CI puts shared/ there)");
}

/// (layer, experts, is decode) per token and layer, in trace order.
fn steps() -> Vec<(usize, Vec<u32>, bool)> {
    let text = std::fs::read_to_string(shared_traces().join("qwen3-30b-a3b.route.csv")).expect("trace");
    let mut out: Vec<(usize, Vec<u32>, bool)> = Vec::new();
    let mut key = None;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("turn")) {
        let f: Vec<&str> = line.split(',').collect();
        let (turn, phase, step, layer, expert) = (f[0], f[1], f[2], f[3], f[5]);
        let k = (turn.to_string(), phase.to_string(), step.to_string(), layer.to_string());
        if key.as_ref() != Some(&k) {
            out.push((layer.parse().expect("layer"), Vec::new(), phase == "1"));
            key = Some(k);
        }
        out.last_mut().expect("a step").1.push(expert.parse().expect("expert"));
    }
    out
}

/// Global LRU over the same steps and the same hit accounting (the reference the policy is held to).
fn lru_reference(n_slots: usize, steps: &[(usize, Vec<u32>, bool)]) -> f64 {
    let mut last_use: std::collections::HashMap<(usize, u32), u64> = std::collections::HashMap::new();
    let (mut tick, mut hits, mut misses) = (0u64, 0u64, 0u64);
    for (layer, experts, counted) in steps {
        for &e in experts {
            tick += 1;
            let hit = last_use.contains_key(&(*layer, e));
            if *counted {
                if hit {
                    hits += 1;
                } else {
                    misses += 1;
                }
            }
            last_use.insert((*layer, e), tick);
            if !hit && last_use.len() > n_slots {
                let oldest = *last_use.iter().min_by_key(|(_, &t)| t).map(|(k, _)| k).expect("non-empty");
                last_use.remove(&oldest);
            }
        }
    }
    100.0 * hits as f64 / (hits + misses) as f64
}

#[test]
fn eviction_on_a_real_trace() {
    let steps = steps();
    let expert_mib = 3059712.0 / (1 << 20) as f64;
    for &(budget, random, lru, layer_lfu, belady) in CURVE {
        let n_slots = (budget / expert_mib) as usize;
        let (h, m) = replay_policy(n_slots, 48, 128, steps.iter().cloned());
        let ours = 100.0 * h as f64 / (h + m) as f64;
        let lru_here = lru_reference(n_slots, &steps);
        eprintln!(
            "{budget:6.0} MiB ({n_slots:4} slots): flash-moe {ours:5.1}%  LRU {lru_here:5.1}% (curve {lru:5.1}%)  \
             per-layer LFU (curve) {layer_lfu:5.1}%  Belady (curve) {belady:5.1}%"
        );
        // Same accounting: beat LRU where it thrashes, stay within 1.5 points of it elsewhere.
        if lru_here < 1.0 {
            assert!(ours > 10.0, "{budget} MiB: {ours:.1}%: thrashing like LRU");
        }
        assert!(ours >= lru_here - 1.5, "{budget} MiB: {ours:.1}% is more than 1.5 points below LRU's {lru_here:.1}%");
        assert!(ours >= random, "{budget} MiB: {ours:.1}% is below random eviction's {random}%");
        assert!(ours <= belady + 0.5, "{budget} MiB: {ours:.1}% beats Belady's {belady}%: the replay is wrong");
    }
}

/// Routing profiles on the real trace: a profile of the prompt and the first 64 decoded tokens (pinned experts and
/// per-layer shares, `experts::profile::plan`), decode hit rate measured on the last 64 tokens, against the same
/// cache without a profile. Measured (printed): +0.3 to +1.0 points from the per-layer shares at 1-6 GB (37.3 ->
/// 37.6% at 1 GB, 90.4 -> 91.4% at 6 GB); pinning a quarter or half of the slots on top changes at most 0.3 points.
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
        let base = rate(replay_policy_planned(n_slots, n_layer, n_expert, &[], &[], steps.iter().cloned()));
        let mut line = format!("{budget:6.0} MiB ({n_slots:4} slots): no profile {base:5.1}%");
        for pin_fraction in [0.0, 0.25, 0.5] {
            let p = plan(&counts, &moe, n_slots, k, pin_fraction);
            let r =
                rate(replay_policy_planned(n_slots, n_layer, n_expert, &p.quotas, &p.pinned, steps.iter().cloned()));
            line.push_str(&format!("  shares + pin {pin_fraction:.2}: {r:5.1}%"));
            assert!(
                r >= base - 1.0,
                "{budget} MiB, pin {pin_fraction}: {r:.1}% is over a point below {base:.1}% without a profile"
            );
        }
        eprintln!("{line}");
    }
}
