//! f32 GGUF files (from llama.cpp's converter) and the safetensors they came from give transformers' logits.
//!
//! Tolerance 1e-4 of the largest logit: both sides compute in float32 with different summation orders; the
//! observed gap is ~1e-6 (see tests/fixtures/README.md).

mod common;

use common::*;
use engine::ops::Cpu;

const TOL: f32 = 1e-4;

fn check(fixture_name: &str, model_file: &str) {
    let r = reference(fixture_name);
    let prompt = ids(&r["prompt_ids"]);
    let (shape, want) = read_npy(&fixture(fixture_name).join("logits.hf.npy"));
    let model = load(&fixture(fixture_name).join(model_file));
    let cpu = Cpu::new(2);
    let got = logits_all(&model, &cpu, &prompt);
    assert_eq!(shape, vec![prompt.len(), model.info.n_vocab]);
    let mut worst = 0.0f32;
    for t in 0..prompt.len() {
        let v = model.info.n_vocab;
        let d = rel_max_diff(&got[t * v..(t + 1) * v], &want[t * v..(t + 1) * v]);
        worst = worst.max(d);
        assert!(d < TOL, "{fixture_name}/{model_file}: position {t}: relative diff {d:e} >= {TOL:e}");
    }
    eprintln!("{fixture_name}/{model_file}: worst relative diff over the prompt {worst:e}");
    let want_greedy = ids(&r["hf"]["greedy_ids"]);
    let (got_greedy, _) = greedy(&model, &cpu, &prompt, want_greedy.len());
    assert_eq!(got_greedy, want_greedy, "{fixture_name}/{model_file}: greedy tokens");
}

#[test]
fn llama_f32_gguf_matches_transformers() {
    check("llama-h64", "llama-h64-f32.gguf");
}

#[test]
fn llama_safetensors_matches_transformers() {
    check("llama-h64", "model.safetensors");
}

#[test]
fn qwen3_f32_gguf_matches_transformers() {
    check("qwen3-h64", "qwen3-h64-f32.gguf");
}

#[test]
fn qwen3moe_f32_gguf_matches_transformers() {
    check("qwen3moe-h64", "qwen3moe-h64-f32.gguf");
}

#[test]
fn qwen3moe_safetensors_matches_transformers() {
    check("qwen3moe-h64", "model.safetensors");
}

/// bf16 safetensors; transformers ran float32 on exactly these (bf16-representable) weights.
#[test]
fn qwen3moe_h256_bf16_safetensors_matches_transformers() {
    check("qwen3moe-h256", "model.safetensors");
}

#[test]
fn qwen3next_f32_gguf_matches_transformers() {
    check("qwen3next-h64", "qwen3next-h64-f32.gguf");
}

#[test]
fn qwen3next_safetensors_matches_transformers() {
    check("qwen3next-h64", "model.safetensors");
}

#[test]
fn qwen35moe_f32_gguf_matches_transformers() {
    check("qwen35moe-h64", "qwen35moe-h64-f32.gguf");
}

#[test]
fn qwen35moe_safetensors_matches_transformers() {
    check("qwen35moe-h64", "model.safetensors");
}

#[test]
fn mixtral_f32_gguf_matches_transformers() {
    check("mixtral-h64", "mixtral-h64-f32.gguf");
}

#[test]
fn mixtral_safetensors_matches_transformers() {
    check("mixtral-h64", "model.safetensors");
}
