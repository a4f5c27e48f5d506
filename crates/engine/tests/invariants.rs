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
