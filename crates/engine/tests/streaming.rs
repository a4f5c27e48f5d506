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
    ("qwen3next-h64", "qwen3next-h64-q8_0.gguf"),
    ("qwen3next-h64", "model.safetensors"),
    ("qwen3next-h256", "qwen3next-h256-q4_k_m.gguf"),
    ("qwen35moe-h64", "qwen35moe-h64-q8_0.gguf"),
    ("mixtral-h64", "mixtral-h64-q4_k_m.gguf"),
    ("mixtral-h64", "model.safetensors"),
];

fn streamed(path: &std::path::Path, n_slots: usize, io_threads: usize, prefetch: Prefetch) -> Model {
    // One I/O thread: the pread engine; several: io_uring (where the kernel allows it), so both are covered.
    let io_engine = Some(if io_threads == 1 { IoEngine::Threads } else { IoEngine::Uring });
    let index = WeightIndex::open(path).expect("open");
    let opts = LoadOptions {
        progress: false,
        kv: Default::default(),
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

/// Logits of a 23-token prefill (every position) followed by 16 greedy single steps.
fn run(model: &Model, cpu: &Cpu) -> Vec<f32> {
    let tokens: Vec<u32> = (0..23u32).map(|i| (i * 37 + 11) % model.info.n_vocab as u32).collect();
    let mut s = model.new_session(48);
    let mut out = model.forward(cpu, &mut s, &tokens, Logits::All).expect("prefill").to_vec();
    let mut next = argmax(&out[out.len() - model.info.n_vocab..]);
    for _ in 0..16 {
        let l = model.forward(cpu, &mut s, &[next], Logits::Last).expect("step");
        next = argmax(l);
        out.extend_from_slice(l);
    }
    out
}

#[test]
fn streamed_logits_equal_resident_bitwise() {
    let cpu = Cpu::new(2);
    // Prefetches started (counting those cancelled before their read began, which depends on timing) and used,
    // over every run: the prefetch read path must actually run for the bit-identity above to mean something. The
    // transition table and the router predictor feed the same `ExpertCache::prefetch`; that each predicted is
    // checked per run (on these few-token fixtures the table's predictions rarely pass the prefetch rule).
    let (mut started, mut used) = (0u64, 0u64);
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
                    started += st.prefetch_issued + st.prefetch_cancelled;
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
    assert!(started > 0, "nothing was ever prefetched");
    assert!(used > 0, "no prefetched expert was ever used");
}

/// MLX directories (mlx-lm's `convert -q`): each expert is nine byte ranges (three planes of three projections),
/// stacked under `switch_mlp`; streamed at one slot (less than one expert per layer) up to every expert, with both
/// I/O engines and prefetch, the logits equal the all-in-RAM run's bit for bit.
#[test]
fn mlx_streamed_logits_equal_resident_bitwise() {
    const MLX: &[&str] = &[
        "mlx/qwen3moe-h64-4bit-g32",
        "mlx/qwen3moe-h64-4bit-g32-sharded",
        "mlx/qwen3moe-h64-mixed_3_6-g32",
        "mlx/qwen3moe-h256-mixed_4_6-g128-f16",
        "mlx/mixtral-h64-4bit-g32",
        "mlx/qwen3next-h64-4bit-g32",
        "mlx/qwen35moe-h64-4bit-g32",
    ];
    let cpu = Cpu::new(2);
    for dir in MLX {
        let path = fixture(dir);
        let resident = load(&path);
        let want = run(&resident, &cpu);
        let layout = resident.expert_layout();
        let n_total = layout.n_moe_layers() * layout.n_expert;
        let k = resident.info.n_expert_used;
        for n_slots in [1, k, layout.n_moe_layers(), n_total / 2, n_total] {
            for (io_threads, prefetch) in [(1, Prefetch::Off), (4, Prefetch::Off), (4, Prefetch::Router)] {
                let model = streamed(&path, n_slots, io_threads, prefetch);
                let got = run(&model, &cpu);
                assert!(got == want, "{dir}: {n_slots} slots, {io_threads} I/O threads, {prefetch:?}: logits differ");
                let st = model.cache_stats().expect("stats");
                assert!(st.misses > 0 && st.bytes_read > 0, "{dir}: nothing was read");
                if n_slots == 1 {
                    assert!(st.hit_rate() < 0.9, "{dir}: one slot cannot hit that often");
                }
            }
        }
    }
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
    // This Q4_K_M file has two expert sizes (layer 1's ffn_down is Q6_K): three slots of each.
    let cfg = CacheConfig { n_slots: 6, class_slots: None, io_threads: 2, io_engine: None };
    let cache = ExpertCache::new(store, &cfg).expect("cache");
    assert_eq!(cache.class_slots(), &[3, 3]);
    assert_eq!(cache.slot_classes().of_layer, vec![Some(1), Some(0)]);
    assert!(cache.cache_bytes() < 6 * cache.slot_bytes(), "the smaller experts take smaller slots");
    cache.pin(&[(0, 1), (1, 2)], 2).expect("pin one of each size");
    assert!(cache.pin(&[(0, 3)], 2).is_err(), "a second pin of layer 0's size would leave one free slot of it");
    assert!(cache.pin(&[(7, 0)], 0).is_err(), "no such layer");
    let before = cache.stats();
    assert_eq!(before.misses, 2);
    model.set_experts(Box::new(cache));
    assert!(run(&model, &cpu) == want, "pinning changed the logits");
    let st = model.cache_stats().expect("stats");
    assert!(st.hits > 0);
}

/// A routing profile (per-layer shares and pinned hot experts) and a warm start from the hot file of an earlier
/// run change which experts are cached, never a bit of the logits; at every cache size tried.
#[test]
fn profile_pinning_and_warm_start_do_not_change_results() {
    use engine::experts::profile::{plan_classes, ModelIdentity, RouteCounter};
    use engine::experts::warm::{prepare, HotFile};
    use std::sync::Arc;
    let cpu = Cpu::new(2);
    let dir = std::env::temp_dir().join(format!("flash-moe-warm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // The second Q4_K_M file has experts of two sizes (slot classes): shares and pins are planned per size.
    for (fixture_dir, file) in [
        ("qwen3moe-h64", "qwen3moe-h64-q4_k_m.gguf"),
        ("qwen3moe-h256", "model.safetensors"),
        ("qwen3moe-h256", "qwen3moe-h256-q4_k_m.gguf"),
    ] {
        let path = fixture(fixture_dir).join(file);
        let index = WeightIndex::open(&path).expect("open");
        let resident = load(&path);
        let want = run(&resident, &cpu);
        let layout = resident.expert_layout();
        let moe: Vec<bool> = layout.layers.iter().map(Option::is_some).collect();
        let n_total = layout.n_moe_layers() * layout.n_expert;
        let k = resident.info.n_expert_used;
        let id = ModelIdentity::of(&index, &resident.info);
        for n_slots in [k + 1, n_total / 2, n_total] {
            // First run: count routes for a profile, and save what the cache holds at the end.
            let mut first = streamed(&path, n_slots, 4, Prefetch::Off);
            let counter = Arc::new(RouteCounter::new(resident.info.n_layer, layout.n_expert, &moe, None));
            counter.start_prompt(23);
            first.set_route_hook(Some(counter.clone()));
            assert!(run(&first, &cpu) == want, "{file}: {n_slots} slots: counting routes changed the logits");
            let profile = counter.profile(id.clone(), &moe, 1);
            let hot_path = dir.join("model.hot.json");
            let cache = first.expert_cache().expect("a streaming cache");
            HotFile::of(cache, id.clone(), 7).save(&hot_path).expect("save hot file");
            let hot = HotFile::load(&hot_path, &id, 7, &moe).expect("valid").expect("present");
            assert_eq!(hot.experts.len(), cache.hot_experts().len());
            assert!(!hot.experts.is_empty() && hot.experts.len() <= n_slots);

            // Second run: profile shares, pins and warm start.
            let second = streamed(&path, n_slots, 4, Prefetch::Off);
            let cache = second.expert_cache().expect("a streaming cache");
            let p = plan_classes(&profile.totals(), cache.slot_classes(), cache.class_slots(), k, 0.5);
            assert_eq!(p.quotas.iter().sum::<usize>(), n_slots.min(n_total));
            // Hard per-layer shares (not what `run --profile` sets, but a mode of the cache) must be exact too.
            cache.set_layer_quotas(&p.quotas).expect("shares");
            let pre = prepare(cache, Some(&p), Some(&hot), k).expect("preload");
            assert!(pre.n_experts > 0 && pre.n_experts <= n_slots, "{file}: {} experts preloaded", pre.n_experts);
            assert!(pre.bytes_read > 0 && pre.n_reads <= 3 * pre.n_experts);
            assert!(pre.n_pinned <= n_slots - k, "{file}: pins leave room for a token's experts");
            assert_eq!(cache.layer_quotas(), Some(p.quotas.clone()));
            let before = cache.stats();
            assert_eq!(before.misses, 0, "preloading is not counted as misses");
            assert!(run(&second, &cpu) == want, "{file}: {n_slots} slots: profile/pins/warm start changed the logits");
            if n_slots == n_total {
                let st = second.cache_stats().expect("stats");
                assert_eq!(st.misses, 0, "{file}: a warm start with room for all re-read nothing");
            }

            // Third run: the hot file read in the background while the forward pass runs.
            let third = streamed(&path, n_slots, 4, Prefetch::Off);
            let cache = third.expert_cache().expect("a streaming cache");
            let queued = engine::experts::warm::queue_background(cache, &hot).expect("queue");
            assert_eq!(queued, hot.experts.len());
            assert!(run(&third, &cpu) == want, "{file}: {n_slots} slots: background warm start changed the logits");
            let st = third.cache_stats().expect("stats");
            if n_slots == n_total {
                assert!(st.warm_reads > 0 && st.warm_bytes > 0, "{file}: nothing read in the background");
            }
            assert!(st.warm_reads as usize <= queued);
        }
        // Hot files for another model, of another model file version, or corrupt, are refused.
        let hot_path = dir.join("model.hot.json");
        let other = ModelIdentity { size_bytes: id.size_bytes + 1, ..id.clone() };
        assert!(HotFile::load(&hot_path, &other, 7, &moe).is_err(), "another model's hot file");
        assert!(HotFile::load(&hot_path, &id, 8, &moe).is_err(), "a modified model file");
        std::fs::write(&hot_path, "{\"format\": \"flash-moe hot experts\", \"vers").expect("write");
        assert!(HotFile::load(&hot_path, &id, 7, &moe).is_err(), "a truncated hot file");
        assert!(HotFile::load(&dir.join("absent.json"), &id, 7, &moe).expect("absent is fine").is_none());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The expert-major prefill reads each expert it touches once: with room for all, the bytes read by a prefill
/// equal the distinct experts its tokens routed to times their read size; after a warm start from a full run's
/// hot file it reads nothing.
#[test]
fn prefill_reads_each_touched_expert_once() {
    use engine::experts::profile::RouteCounter;
    use std::sync::Arc;
    let cpu = Cpu::new(2);
    let path = fixture("qwen3moe-h256").join("qwen3moe-h256-q4_k_m.gguf");
    let resident = load(&path);
    let layout = resident.expert_layout();
    let moe: Vec<bool> = layout.layers.iter().map(Option::is_some).collect();
    let n_total = layout.n_moe_layers() * layout.n_expert;
    let mut model = streamed(&path, n_total, 4, Prefetch::Off);
    let counter = Arc::new(RouteCounter::new(resident.info.n_layer, layout.n_expert, &moe, None));
    // Longer than one batch of the chunked forward (64), so several chunks share the cache.
    let tokens: Vec<u32> = (0..150u32).map(|i| (i * 37 + 11) % model.info.n_vocab as u32).collect();
    counter.start_prompt(tokens.len());
    model.set_route_hook(Some(counter.clone()));
    let mut s = model.new_session(160);
    model.forward(&cpu, &mut s, &tokens, Logits::Last).expect("prefill");
    let cache = model.expert_cache().expect("cache");
    let touched = counter.counts().prefill_experts();
    let expected: u64 = touched.iter().map(|&(l, e)| cache.expert_read_bytes(l, e)).sum();
    let st = cache.stats();
    assert_eq!(st.misses as usize, touched.len(), "one read per distinct expert");
    assert_eq!(st.bytes_read, expected);
}
