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
