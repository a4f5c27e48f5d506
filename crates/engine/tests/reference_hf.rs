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

/// Qwen3.5's released safetensors are the multimodal `Qwen3_5MoeForConditionalGeneration`: the language model's
/// config under `text_config`, its tensors under `model.language_model.` (as transformers 5 saves that class). The
/// text fixture rewritten that way gives the same logits, bit for bit.
#[test]
fn qwen35moe_multimodal_checkpoint_runs_its_language_model() {
    let src = fixture("qwen35moe-h64");
    let dir = std::env::temp_dir().join(format!("flash-moe-qwen35-cg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy");
    }
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).expect("config")).expect("json");
    text.as_object_mut().expect("object").remove("architectures");
    let config = serde_json::json!({
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": text,
        "vision_config": {"depth": 1, "hidden_size": 32},
        "tie_word_embeddings": false,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write");
    // Same data, tensor names moved under model.language_model. (lm_head stays at the top).
    let bytes = std::fs::read(src.join("model.safetensors")).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let renamed: serde_json::Map<String, serde_json::Value> = header
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("model.") {
            Some(rest) => (format!("model.language_model.{rest}"), v),
            None => (k, v),
        })
        .collect();
    let mut h = serde_json::to_vec(&renamed).expect("header");
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(dir.join("model.safetensors"), out).expect("write");

    let cpu = Cpu::new(2);
    let prompt = ids(&reference("qwen35moe-h64")["prompt_ids"]);
    let want = logits_all(&load(&src.join("model.safetensors")), &cpu, &prompt);
    let model = load(&dir);
    assert_eq!(model.info.arch, "Qwen3_5MoeForConditionalGeneration");
    assert!(logits_all(&model, &cpu, &prompt) == want, "the multimodal checkpoint's language model differs");
    let _ = std::fs::remove_dir_all(&dir);
}
