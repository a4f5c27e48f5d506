//! The expert cache's eviction policy on a real routing trace (shared/traces: Qwen3-30B-A3B, 48 layers x 128
//! experts, top-6), replayed through the cache's own bookkeeping, against the trace's replay curve.
//!
//! Measured (printed by this test): per-layer shares with least-used eviction beat global LRU below one token
//! cycle (785 MiB, where LRU thrashes to 0%: 15% vs 0%) and match it at 1-2 GB, but fall 2-3 points below LRU at
//! 3-6 GB and 2-23 points below the curve's per-layer LFU: the policy is not yet the best known (issue 4). What this test
//! holds the policy to is what it does today: never worse than random eviction, never better than Belady (which
//! would mean the replay is wrong), and not below LRU where LRU thrashes.

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

#[test]
fn eviction_on_a_real_trace() {
    let steps = steps();
    let expert_mib = 3059712.0 / (1 << 20) as f64;
    for &(budget, random, lru, layer_lfu, belady) in CURVE {
        let n_slots = (budget / expert_mib) as usize;
        let (h, m) = replay_policy(n_slots, 48, 128, steps.iter().cloned());
        let ours = 100.0 * h as f64 / (h + m) as f64;
        eprintln!(
            "{budget:6.0} MiB ({n_slots:4} slots): flash-moe {ours:5.1}%  LRU {lru:5.1}%  per-layer LFU {layer_lfu:5.1}%  \
             Belady {belady:5.1}%"
        );
        assert!(ours >= random, "{budget} MiB: {ours:.1}% is below random eviction's {random}%");
        if lru == 0.0 {
            assert!(ours > 10.0, "{budget} MiB: {ours:.1}%: thrashing like LRU");
        }
        assert!(ours <= belady + 0.5, "{budget} MiB: {ours:.1}% beats Belady's {belady}%: the replay is wrong");
    }
}
