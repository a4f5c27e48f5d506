//! Streaming experts changes where expert bytes come from, never a bit of the result: logits of a streamed run
//! equal the all-in-RAM run exactly, at cache sizes from one slot to every expert, with 1 and several I/O threads,
//! for GGUF (stacked experts) and safetensors (one tensor per expert) files, with prefetch off, from the
//! transition table and from the next layer's router.

mod common;

use common::*;
use engine::experts::budget::Budget;
use engine::experts::cache::Prefetch;
use engine::experts::io::IoEngine;
use engine::formats::WeightIndex;
use engine::models::{ExpertResidency, LoadOptions, Logits, Model, StreamOptions};
use engine::ops::Cpu;

const MODELS: &[(&str, &str)] = &[
    ("qwen3moe-h64", "qwen3moe-h64-f32.gguf"),
    ("qwen3moe-h64", "qwen3moe-h64-q8_0.gguf"),
    ("qwen3moe-h64", "qwen3moe-h64-q4_k_m.gguf"),
    ("qwen3moe-h64", "model.safetensors"),
    ("qwen3moe-h256", "qwen3moe-h256-q4_k_m.gguf"),
    ("qwen3moe-h256", "model.safetensors"),
];

fn streamed(path: &std::path::Path, n_slots: usize, io_threads: usize, prefetch: Prefetch) -> Model {
    // One I/O thread: the pread engine; several: io_uring (where the kernel allows it), so both are covered.
    let io_engine = Some(if io_threads == 1 { IoEngine::Threads } else { IoEngine::Uring });
    let index = WeightIndex::open(path).expect("open");
    let opts = LoadOptions {
        progress: false,
        experts: ExpertResidency::Stream(StreamOptions {
            budget: Budget::Bytes(u64::MAX / 4),
            n_ctx: 64,
            n_threads: 2,
            io_threads,
            io_engine,
            n_slots: Some(n_slots),
            prefetch,
        }),
    };
    Model::load(&index, &opts).expect("load streamed")
}

/// Logits of a 23-token prefill (every position) followed by 8 greedy single steps.
fn run(model: &Model, cpu: &Cpu) -> Vec<f32> {
    let tokens: Vec<u32> = (0..23u32).map(|i| (i * 37 + 11) % model.info.n_vocab as u32).collect();
    let mut s = model.new_session(40);
    let mut out = model.forward(cpu, &mut s, &tokens, Logits::All).expect("prefill").to_vec();
    let mut next = argmax(&out[out.len() - model.info.n_vocab..]);
    for _ in 0..8 {
        let l = model.forward(cpu, &mut s, &[next], Logits::Last).expect("step");
        next = argmax(l);
        out.extend_from_slice(l);
    }
    out
}

#[test]
fn streamed_logits_equal_resident_bitwise() {
    let cpu = Cpu::new(2);
    // Prefetches started per mode (indexed by `Prefetch as usize`) and used, over every run: the prefetch paths
    // must actually run for the bit-identity above to mean something.
    let (mut issued, mut used) = ([0u64; 3], 0u64);
    for (dir, file) in MODELS {
        let path = fixture(dir).join(file);
        let resident = load(&path);
        let want = run(&resident, &cpu);
        let layout = resident.expert_layout();
        let n_total = layout.n_moe_layers() * layout.n_expert;
        let k = resident.info.n_expert_used;
        let n_moe = layout.n_moe_layers();
        for n_slots in [1, k, k + 1, n_moe, 2 * n_moe * k, n_total / 2, n_total] {
            for (io_threads, prefetch) in [
                (1, Prefetch::Off),
                (4, Prefetch::Off),
                (1, Prefetch::Table),
                (4, Prefetch::Table),
                (1, Prefetch::Router),
                (4, Prefetch::Router),
            ] {
                let model = streamed(&path, n_slots, io_threads, prefetch);
                let got = run(&model, &cpu);
                assert!(
                    got == want,
                    "{dir}/{file}: {n_slots} slots, {io_threads} I/O threads, prefetch {prefetch:?}: logits differ"
                );
                let st = model.cache_stats().expect("stats");
                if prefetch != Prefetch::Off {
                    assert!(st.predicted_of > 0, "{dir}/{file}: {n_slots} slots, {prefetch:?}: nothing predicted");
                    issued[prefetch as usize] += st.prefetch_issued;
                    used += st.prefetch_used;
                    eprintln!(
                        "{dir}/{file}: {n_slots} slots, {io_threads} I/O threads, {prefetch:?}: {:.1}% hit, \
                         {} prefetched, {} used, {} late, {} cancelled, accuracy {:.1}%",
                        100.0 * st.hit_rate(),
                        st.prefetch_issued,
                        st.prefetch_used,
                        st.prefetch_late,
                        st.prefetch_cancelled,
                        100.0 * st.prediction_accuracy()
                    );
                }
                assert!(st.misses > 0 && st.bytes_read > 0, "{dir}/{file}: nothing was read");
                if n_slots == n_total && prefetch == Prefetch::Off {
                    assert_eq!(st.misses as usize, n_total.min(st.misses as usize), "each expert read at most once");
                    assert!(st.misses as usize <= n_total, "{dir}/{file}: re-read with room for all");
                }
                if n_slots == 1 {
                    assert!(st.hit_rate() < 0.9, "{dir}/{file}: one slot cannot hit that often");
                }
            }
        }
    }
    assert!(issued[Prefetch::Table as usize] > 0, "the transition table never prefetched");
    assert!(issued[Prefetch::Router as usize] > 0, "the router predictor never prefetched");
    assert!(used > 0, "no prefetched expert was ever used");
}

#[test]
fn pinned_experts_stay_and_results_do_not_change() {
    use engine::experts::cache::{CacheConfig, ExpertCache};
    use engine::experts::store::ExpertStore;
    let cpu = Cpu::new(2);
    let path = fixture("qwen3moe-h256").join("qwen3moe-h256-q4_k_m.gguf");
    let resident = load(&path);
    let want = run(&resident, &cpu);
    let index = WeightIndex::open(&path).expect("open");
    let mut model = streamed(&path, 3, 2, Prefetch::Off);
    let store = ExpertStore::open(&index, model.expert_layout()).expect("store");
    let cache = ExpertCache::new(store, &CacheConfig { n_slots: 4, io_threads: 2, io_engine: None }).expect("cache");
    cache.pin(&[(0, 1), (1, 2)], 2).expect("pin two of four");
    assert!(cache.pin(&[(0, 3)], 2).is_err(), "a third pin would leave one free slot");
    assert!(cache.pin(&[(7, 0)], 0).is_err(), "no such layer");
    let before = cache.stats();
    assert_eq!(before.misses, 2);
    model.set_experts(Box::new(cache));
    assert!(run(&model, &cpu) == want, "pinning changed the logits");
    let st = model.cache_stats().expect("stats");
    assert!(st.hits > 0);
}
