//! Invariants that need no reference: a prefill of n tokens gives bit-identical logits to n single-token steps,
//! and the thread count never changes a bit of the result.

mod common;

use common::*;
use engine::models::Logits;
use engine::ops::Cpu;

const MODELS: &[(&str, &str)] = &[
    ("llama-h64", "llama-h64-f32.gguf"),
    ("llama-h64", "llama-h64-q8_0.gguf"),
    ("llama-h64", "model.safetensors"),
    ("qwen3-h64", "qwen3-h64-q8_0.gguf"),
    ("qwen3moe-h64", "qwen3moe-h64-f32.gguf"),
    ("qwen3moe-h64", "qwen3moe-h64-q4_k_m.gguf"),
    ("qwen3moe-h256", "qwen3moe-h256-q4_k_m.gguf"),
    ("qwen3next-h64", "qwen3next-h64-f32.gguf"),
    ("qwen3next-h64", "model.safetensors"),
    ("qwen3next-h256", "qwen3next-h256-q4_k_m.gguf"),
    ("qwen35moe-h64", "qwen35moe-h64-q8_0.gguf"),
    ("mixtral-h64", "mixtral-h64-q8_0.gguf"),
];

fn prompt(n_vocab: usize) -> Vec<u32> {
    (0..23u32).map(|i| (i * 37 + 11) % n_vocab as u32).collect()
}

#[test]
fn prefill_equals_single_steps_bitwise() {
    let cpu = Cpu::new(2);
    for (dir, file) in MODELS {
        let model = load(&fixture(dir).join(file));
        let tokens = prompt(model.info.n_vocab);
        let batch = logits_all(&model, &cpu, &tokens);
        let mut s = model.new_session(tokens.len());
        let mut steps = Vec::new();
        for &t in &tokens {
            steps.extend_from_slice(model.forward(&cpu, &mut s, &[t], Logits::Last).expect("step"));
        }
        assert!(batch == steps, "{dir}/{file}: prefill and single steps differ");
        // Mixed chunks too.
        let mut s = model.new_session(tokens.len());
        let mut chunks = Vec::new();
        for c in tokens.chunks(5) {
            chunks.extend_from_slice(model.forward(&cpu, &mut s, c, Logits::All).expect("chunk"));
        }
        assert!(batch == chunks, "{dir}/{file}: chunked prefill differs");
    }
}

#[test]
fn thread_count_does_not_change_results() {
    for (dir, file) in MODELS {
        let model = load(&fixture(dir).join(file));
        let tokens = prompt(model.info.n_vocab);
        let base = logits_all(&model, &Cpu::new(1), &tokens);
        for n in [2, 3, 4] {
            assert!(logits_all(&model, &Cpu::new(n), &tokens) == base, "{dir}/{file}: {n} threads differ from 1");
        }
    }
}

/// A session rewound with `truncate` continues as if the dropped tokens had never been fed: to any position for
/// KV caches, to the latest checkpoint for recurrent (DeltaNet) states, from where the caller feeds the rest again.
#[test]
fn truncate_rewinds_every_kind_of_layer_state() {
    let cpu = Cpu::new(2);
    for (dir, file) in MODELS {
        let model = load(&fixture(dir).join(file));
        let tokens = prompt(model.info.n_vocab);
        let want = logits_all(&model, &cpu, &tokens);
        let v = model.info.n_vocab;
        let mut s = model.new_session(tokens.len());
        model.forward(&cpu, &mut s, &tokens[..10], Logits::None).expect("first part");
        s.checkpoint();
        model.forward(&cpu, &mut s, &tokens[10..15], Logits::None).expect("second part");
        // A different continuation after token 15, then back to token 15 of the prompt.
        let other: Vec<u32> = tokens[15..].iter().map(|&t| (t + 1) % v as u32).collect();
        model.forward(&cpu, &mut s, &other, Logits::Last).expect("other continuation");
        let reached = s.truncate(15);
        if s.rewinds_anywhere() {
            assert_eq!(reached, 15, "{dir}/{file}: a KV cache rewinds anywhere");
        } else {
            assert_eq!(reached, 10, "{dir}/{file}: a recurrent state rewinds to its checkpoint");
        }
        let got = model.forward(&cpu, &mut s, &tokens[reached..], Logits::All).expect("refeed").to_vec();
        assert!(got == want[reached * v..], "{dir}/{file}: logits after truncate({reached}) differ");
        // Without a checkpoint a recurrent model starts over.
        let mut fresh = model.new_session(tokens.len());
        model.forward(&cpu, &mut fresh, &tokens, Logits::None).expect("all");
        let back = fresh.truncate(5);
        assert_eq!(back, if fresh.rewinds_anywhere() { 5 } else { 0 }, "{dir}/{file}");
    }
}

/// An f16 or Q8_0 KV cache keeps every invariant (prefill == single steps, any chunking, thread count), and its
/// logits stay close to the f32 cache's (the stored keys and values are rounded, nothing else changes).
#[test]
fn kv_cache_types_keep_the_invariants() {
    use engine::kv_cache::{KvType, KvTypes};
    use engine::models::{LoadOptions, Model};
    let cpu = Cpu::new(2);
    // Unquantized weights (a quantized random model turns small differences into expert flips); heads of 64 and 32.
    for (dir, file) in [("qwen3moe-h256", "model.safetensors"), ("qwen3next-h64", "qwen3next-h64-f32.gguf")] {
        let index = engine::formats::WeightIndex::open(&fixture(dir).join(file)).expect("open");
        let f32_model = Model::load(&index, &LoadOptions::default()).expect("load");
        let tokens = prompt(f32_model.info.n_vocab);
        let reference = logits_all(&f32_model, &cpu, &tokens);
        for (k, v) in [(KvType::F16, KvType::F16), (KvType::Q8_0, KvType::Q8_0), (KvType::F16, KvType::Q8_0)] {
            let opts = LoadOptions { kv: KvTypes { k, v }, ..Default::default() };
            let model = Model::load(&index, &opts).expect("load");
            let batch = logits_all(&model, &cpu, &tokens);
            let mut s = model.new_session(tokens.len());
            let mut steps = Vec::new();
            for &t in &tokens {
                steps.extend_from_slice(model.forward(&cpu, &mut s, &[t], Logits::Last).expect("step"));
            }
            assert!(batch == steps, "{dir}/{file} {k:?}/{v:?}: prefill and single steps differ");
            assert!(logits_all(&model, &Cpu::new(1), &tokens) == batch, "{dir}/{file}: threads change bits");
            // Per position; a position where the rounding flips a near-tied routing decision moves by ~0.1, so
            // most positions (not all) must stay within the rounding's bound: f16 keeps 11 bits of mantissa (~5e-4
            // relative per value), Q8_0 about 7 bits per block (~4e-3).
            let nv = model.info.n_vocab;
            let diffs: Vec<f32> = (0..tokens.len())
                .map(|t| rel_max_diff(&batch[t * nv..(t + 1) * nv], &reference[t * nv..(t + 1) * nv]))
                .collect();
            let bound = if k == KvType::F16 && v == KvType::F16 { 5e-3 } else { 3e-2 };
            let within = diffs.iter().filter(|&&d| d < bound).count();
            let worst = diffs.iter().copied().fold(0.0f32, f32::max);
            eprintln!(
                "{dir}/{file}: KV {}/{}: {within}/{} positions within {bound:e} of the f32 cache, worst {worst:e}",
                k.name(),
                v.name(),
                diffs.len()
            );
            assert!(worst > 0.0 && within * 10 >= diffs.len() * 9, "{dir}/{file} {k:?}/{v:?}: {diffs:?}");
        }
    }
}
