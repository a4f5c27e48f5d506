//! Bad input to the real `flash-moe` binary: every case must end with a non-zero exit code (not 101, a panic),
//! no panic message, and an error on stderr that names the file (where there is one) and the problem.
//!
//! Broken model files are made in a temporary directory from the fixtures: cut short, with a wrong magic, a
//! patched tensor type, a tensor left out, or edited metadata (rewritten with the engine's own GGUF writer).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{assert_fails, flash_moe, moe_gguf, rewrite_gguf, s};
use engine::formats::gguf::{self, GgufValue};
use engine::formats::Metadata;

fn fixtures() -> PathBuf {
    common::fixtures()
}

/// A fresh, empty directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    common::temp_dir("bad_input", test)
}

/// Sets the ggml type id of tensor `name` in a GGUF file's header.
fn patch_tensor_type(path: &Path, name: &str, type_id: u32) {
    let mut bytes = fs::read(path).expect("read");
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("tensor name in header");
    let dims_at = at + needle.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().expect("4 bytes")) as usize;
    let type_at = dims_at + 4 + 8 * n_dims;
    bytes[type_at..type_at + 4].copy_from_slice(&type_id.to_le_bytes());
    fs::write(path, bytes).expect("write");
}

/// A copy of the fixture GGUF cut to `len` bytes.
fn truncated_gguf(dir: &Path, len: usize) -> PathBuf {
    let bytes = fs::read(moe_gguf()).expect("read fixture");
    assert!(len < bytes.len());
    let path = dir.join("cut.gguf");
    fs::write(&path, &bytes[..len]).expect("write");
    path
}

#[test]
fn fixture_runs() {
    let out = flash_moe(&["run", "-m", s(&moe_gguf()), "-p", "hello", "-n", "4", "--temp", "0", "-t", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("decode"), "{stderr}");
}

#[test]
fn truncated_in_header() {
    let dir = temp_dir("truncated_in_header");
    let index = gguf::open(&moe_gguf()).expect("fixture");
    let Metadata::Gguf(md) = &index.metadata else { panic!("not GGUF metadata") };
    // In the counts, in the key/values (among the token strings), in the tensor infos.
    let header_len = md.data_offset as usize;
    for len in [10, 100, header_len / 2, header_len - 40] {
        let path = truncated_gguf(&dir, len);
        assert_fails(&flash_moe(&["inspect", s(&path)]), &[s(&path), "truncated file"]);
        assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &[s(&path), "truncated file"]);
    }
}

#[test]
fn truncated_in_tensor_data() {
    let dir = temp_dir("truncated_in_tensor_data");
    let full = fs::metadata(moe_gguf()).expect("fixture").len() as usize;
    let path = truncated_gguf(&dir, full - 1000);
    assert_fails(&flash_moe(&["inspect", s(&path)]), &[s(&path), "truncated file", "past the end of the file"]);
    assert_fails(
        &flash_moe(&["run", "-m", s(&path), "-p", "hi"]),
        &[s(&path), "truncated file", "past the end of the file"],
    );
}

#[test]
fn wrong_magic() {
    let dir = temp_dir("wrong_magic");
    let mut bytes = fs::read(moe_gguf()).expect("read fixture");
    bytes[..4].copy_from_slice(b"GGML");
    let path = dir.join("model.gguf");
    fs::write(&path, bytes).expect("write");
    assert_fails(&flash_moe(&["inspect", s(&path)]), &[s(&path), "not a GGUF file", "GGML"]);
    assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &[s(&path), "not a GGUF file"]);
}

#[test]
fn unknown_tensor_type() {
    let dir = temp_dir("unknown_tensor_type");
    let path = dir.join("q2k.gguf");
    fs::copy(moe_gguf(), &path).expect("copy");
    patch_tensor_type(&path, "blk.0.attn_q.weight", 10);
    let needles = [s(&path), "blk.0.attn_q.weight", "Q2_K", "does not support"];
    assert_fails(&flash_moe(&["inspect", s(&path)]), &needles);
    assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &needles);
}

#[test]
fn missing_tensor() {
    let dir = temp_dir("missing_tensor");
    let path = dir.join("no_attn_q.gguf");
    rewrite_gguf(&moe_gguf(), &path, |_, v| Some(v.clone()), |name| name != "blk.0.attn_q.weight");
    let needles = [s(&path), "blk.0.attn_q.weight", "missing"];
    assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &needles);
    assert_fails(&flash_moe(&["logits", "-m", s(&path), "--tokens", "1,2", "-o", s(&dir.join("l.npy"))]), &needles);
}

#[test]
fn shape_contradicts_config() {
    let dir = temp_dir("shape_contradicts_config");
    let path = dir.join("wide.gguf");
    let edit = |k: &str, v: &GgufValue| match (k, v) {
        ("qwen3moe.embedding_length", GgufValue::U32(n)) => Some(GgufValue::U32(n * 2)),
        _ => Some(v.clone()),
    };
    rewrite_gguf(&moe_gguf(), &path, edit, |_| true);
    let needles = [s(&path), "tensor 'token_embd.weight' has shape [320, 64], but the model config implies [320, 128]"];
    assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &needles);
    // Twice the heads: attn_q must have twice the rows.
    let edit = |k: &str, v: &GgufValue| match (k, v) {
        ("qwen3moe.attention.head_count", GgufValue::U32(n)) => Some(GgufValue::U32(n * 2)),
        _ => Some(v.clone()),
    };
    rewrite_gguf(&moe_gguf(), &path, edit, |_| true);
    let needles = [s(&path), "tensor 'blk.0.attn_q.weight' has shape [64, 64], but the model config implies [128, 64]"];
    assert_fails(&flash_moe(&["logits", "-m", s(&path), "--tokens", "1", "-o", s(&dir.join("l.npy"))]), &needles);
}

#[test]
fn unknown_gguf_architecture() {
    let dir = temp_dir("unknown_gguf_architecture");
    let path = dir.join("mamba9.gguf");
    let edit = |k: &str, v: &GgufValue| match k {
        "general.architecture" => Some(GgufValue::String("mamba9".into())),
        _ => Some(v.clone()),
    };
    rewrite_gguf(&moe_gguf(), &path, edit, |_| true);
    let needles = [s(&path), "unknown architecture 'mamba9'", "supported: GGUF: llama"];
    assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &needles);
    assert_fails(&flash_moe(&["logits", "-m", s(&path), "--tokens", "1", "-o", s(&dir.join("l.npy"))]), &needles);
}

/// A model directory: the Llama fixture's safetensors, tokenizer and a `config.json` given as text.
fn safetensors_dir(test: &str, config: Option<&str>) -> PathBuf {
    let dir = temp_dir(test);
    let src = fixtures().join("llama-h64");
    fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).expect("copy weights");
    fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).expect("copy tokenizer");
    if let Some(c) = config {
        fs::write(dir.join("config.json"), c).expect("write config");
    }
    dir
}

#[test]
fn unknown_safetensors_architecture() {
    let src = fs::read_to_string(fixtures().join("llama-h64/config.json")).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&src).expect("json");
    config["architectures"] = serde_json::json!(["MambaForCausalLM"]);
    let dir = safetensors_dir("unknown_safetensors_architecture", Some(&config.to_string()));
    let needles = [s(&dir), "unknown architecture 'MambaForCausalLM'", "LlamaForCausalLM"];
    assert_fails(&flash_moe(&["run", "-m", s(&dir), "-p", "hi"]), &needles);
    assert_fails(&flash_moe(&["logits", "-m", s(&dir), "--tokens", "1", "-o", s(&dir.join("l.npy"))]), &needles);
}

#[test]
fn missing_config_json() {
    let dir = safetensors_dir("missing_config_json", None);
    let config = dir.join("config.json");
    let needles = [s(&config), "config.json is missing"];
    assert_fails(&flash_moe(&["inspect", s(&dir)]), &needles);
    assert_fails(&flash_moe(&["run", "-m", s(&dir), "-p", "hi"]), &needles);
    // A .safetensors file given directly needs config.json beside it too.
    assert_fails(&flash_moe(&["run", "-m", s(&dir.join("model.safetensors")), "-p", "hi"]), &needles);
}

#[test]
fn empty_prompt() {
    let out = flash_moe(&["run", "-m", s(&moe_gguf()), "-p", ""]);
    assert_fails(&out, &["the prompt is empty", "-p"]);
}

#[test]
fn prompt_longer_than_context() {
    let long = "the quick brown fox jumps over the lazy dog ".repeat(4);
    let out = flash_moe(&["run", "-m", s(&moe_gguf()), "-c", "8", "-p", &long, "-n", "4"]);
    assert_fails(&out, &["the prompt has", "the context holds 8", "--ctx-size"]);
}

#[test]
fn logits_token_out_of_vocabulary() {
    let dir = temp_dir("logits_token_out_of_vocabulary");
    let out = dir.join("l.npy");
    let res = flash_moe(&["logits", "-m", s(&moe_gguf()), "--tokens", "1,4000000000", "-o", s(&out)]);
    assert_fails(&res, &["--tokens", s(&moe_gguf()), "token id 4000000000 is outside the vocabulary (size 320)"]);
    assert!(!out.exists(), "no output file after an error");
}

#[test]
fn ggml_numerics_refused_where_not_covered() {
    let dir = temp_dir("ggml_numerics_refused_where_not_covered");
    let out = dir.join("l.npy");
    let q4k = fixtures().join("qwen3moe-h64/qwen3moe-h64-q4_k_m.gguf");
    let res = flash_moe(&["logits", "-m", s(&q4k), "--tokens", "1,2", "-o", s(&out), "--numerics", "ggml"]);
    assert_fails(&res, &["--numerics ggml", "token_embd is Q5_0", "embeddings are covered"]);
    assert!(!out.exists(), "no output file after an error");
    let f16 = fixtures().join("llama-h64/llama-h64-f16.gguf");
    let res = flash_moe(&["run", "-m", s(&f16), "-p", "hi", "-n", "1", "--numerics", "ggml"]);
    assert_fails(&res, &["--numerics ggml", "token_embd is F16", "embeddings are covered"]);
}

#[test]
fn logits_tokens_longer_than_context() {
    let dir = temp_dir("logits_tokens_longer_than_context");
    let res = flash_moe(&["logits", "-m", s(&moe_gguf()), "-c", "2", "--tokens", "1,2,3", "-o", s(&dir.join("l.npy"))]);
    assert_fails(&res, &["the prompt has 3 tokens but the context holds 2", "--ctx-size"]);
}

#[test]
fn logits_tokens_not_numbers() {
    let dir = temp_dir("logits_tokens_not_numbers");
    let res = flash_moe(&["logits", "-m", s(&moe_gguf()), "--tokens", "abc", "-o", s(&dir.join("l.npy"))]);
    assert_fails(&res, &["--tokens", "'abc' is not a token id"]);
    let res = flash_moe(&["logits", "-m", s(&moe_gguf()), "--tokens", ",", "-o", s(&dir.join("l.npy"))]);
    assert_fails(&res, &["--tokens", "no token ids"]);
}

#[test]
fn nonexistent_model_path() {
    let dir = temp_dir("nonexistent_model_path");
    let path = dir.join("no-such-model.gguf");
    let needles = [s(&path), "No such file or directory"];
    assert_fails(&flash_moe(&["inspect", s(&path)]), &needles);
    assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &needles);
    assert_fails(&flash_moe(&["logits", "-m", s(&path), "--tokens", "1", "-o", s(&dir.join("l.npy"))]), &needles);
}

#[test]
fn directory_without_weights() {
    // Empty, and with only a config.json: both name the weight files a model directory needs.
    let dir = temp_dir("directory_without_weights");
    let needles = [s(&dir), "no model.safetensors or model.safetensors.index.json"];
    assert_fails(&flash_moe(&["inspect", s(&dir)]), &needles);
    fs::copy(fixtures().join("llama-h64/config.json"), dir.join("config.json")).expect("copy config");
    assert_fails(&flash_moe(&["inspect", s(&dir)]), &needles);
    assert_fails(&flash_moe(&["run", "-m", s(&dir), "-p", "hi"]), &needles);
}

#[test]
fn contradictory_gguf_hparams() {
    let dir = temp_dir("contradictory_gguf_hparams");
    let path = dir.join("model.gguf");
    let cases: [(&str, GgufValue, &str); 6] = [
        ("qwen3moe.attention.head_count", GgufValue::U32(3), "3 heads cannot share 2 KV heads"),
        ("qwen3moe.expert_used_count", GgufValue::U32(9), "9 experts per token out of 8"),
        ("qwen3moe.attention.value_length", GgufValue::U32(32), "value head size 32 differs from key head size 16"),
        ("qwen3moe.rope.freq_base", GgufValue::F32(0.0), "RoPE base frequency 0 must be a positive number"),
        ("qwen3moe.block_count", GgufValue::U32(u32::MAX), "implausibly large model shape"),
        (
            "qwen3moe.embedding_length",
            GgufValue::String("64".into()),
            "GGUF metadata key 'qwen3moe.embedding_length' has type STRING (value \"64\"), expected an integer",
        ),
    ];
    for (key, value, msg) in cases {
        let edit = |k: &str, v: &GgufValue| Some(if k == key { value.clone() } else { v.clone() });
        rewrite_gguf(&moe_gguf(), &path, edit, |_| true);
        assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi"]), &[s(&path), msg]);
    }
}

#[test]
fn contradictory_config_json() {
    let src = fs::read_to_string(fixtures().join("llama-h64/config.json")).expect("config");
    let cases = [
        (
            "hidden_size",
            serde_json::json!("64"),
            "config.json has \"hidden_size\": \"64\", expected a non-negative integer",
        ),
        ("num_attention_heads", serde_json::json!(0), "impossible shape"),
        ("num_key_value_heads", serde_json::json!(-1), "\"num_key_value_heads\": -1"),
        ("hidden_size", serde_json::json!(128), "model config implies"),
    ];
    for (i, (key, value, msg)) in cases.into_iter().enumerate() {
        let mut config: serde_json::Value = serde_json::from_str(&src).expect("json");
        config[key] = value;
        let dir = safetensors_dir(&format!("contradictory_config_json_{i}"), Some(&config.to_string()));
        assert_fails(&flash_moe(&["run", "-m", s(&dir), "-p", "hi"]), &[s(&dir), msg]);
    }
}

#[test]
fn bad_sampling_and_thread_arguments() {
    let m = moe_gguf();
    for (flag, value, msg) in [
        ("--temp", "nan", "--temp NaN: must be a finite number of at least 0"),
        ("--temp", "-1", "--temp -1: must be a finite number of at least 0"),
        ("--top-p", "1.5", "--top-p 1.5: must be between 0 and 1"),
        ("--min-p", "inf", "--min-p inf: must be between 0 and 1"),
        ("--repeat-penalty", "0", "--repeat-penalty 0: must be a finite number above 0"),
        ("--frequency-penalty", "nan", "--frequency-penalty NaN: must be a finite number"),
        ("-t", "100000", "-t 100000: this machine has"),
    ] {
        assert_fails(&flash_moe(&["run", "-m", s(&m), "-p", "hi", "-n", "1", flag, value]), &[msg]);
    }
    // Negative penalties are allowed (they favour repeats), and parse as numbers, not flags.
    let out = flash_moe(&["run", "-m", s(&m), "-p", "hi", "-n", "1", "-t", "1", "--presence-penalty", "-0.5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn routing_profile_of_another_model() {
    let dir = temp_dir("routing_profile_of_another_model");
    let prompts = dir.join("prompts.txt");
    fs::write(&prompts, "hello there\ngeneral kenobi\n").expect("write prompts");
    let profile = dir.join("profile.json");
    let out = flash_moe(&["profile", "-m", s(&moe_gguf()), "--prompts", s(&prompts), "-n", "2", "-o", s(&profile)]);
    assert!(out.status.success(), "profile: {}", String::from_utf8_lossy(&out.stderr));
    let other = fixtures().join("qwen3moe-h64/qwen3moe-h64-q4_k_m.gguf");
    let run = |model: &Path, profile: &Path| {
        flash_moe(&[
            "run",
            "-m",
            s(model),
            "-p",
            "hi",
            "-n",
            "2",
            "--memory-budget",
            "min",
            "--warm-start",
            "off",
            "--profile",
            s(profile),
        ])
    };
    assert!(run(&moe_gguf(), &profile).status.success(), "the profile fits the model it was made for");
    assert_fails(&run(&other, &profile), &["profile.json", "made for another model", "qwen3moe-h64-q8_0.gguf"]);
    fs::write(&profile, "{\"format\": 3}").expect("write");
    assert_fails(&run(&moe_gguf(), &profile), &["profile.json", "not a flash-moe routing profile"]);
    let empty = dir.join("empty.txt");
    fs::write(&empty, "\n\n").expect("write");
    assert_fails(
        &flash_moe(&["profile", "-m", s(&moe_gguf()), "--prompts", s(&empty), "-o", s(&profile)]),
        &["empty.txt", "no prompts"],
    );
}

#[test]
fn corrupt_hot_file_is_ignored_with_a_warning() {
    let dir = temp_dir("corrupt_hot_file_is_ignored_with_a_warning");
    let hot = dir.join("model.hot.json");
    fs::write(&hot, "{\"format\": \"flash-moe hot experts\", \"versi").expect("write");
    let run = || {
        let out = flash_moe(&[
            "run",
            "-m",
            s(&moe_gguf()),
            "-p",
            "hi",
            "-n",
            "4",
            "--temp",
            "0",
            "--memory-budget",
            "min",
            "--warm-start",
            s(&hot),
            "--warm-start-mode",
            "before",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success() && !stderr.contains("panicked"), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (text_cold, stderr) = run();
    assert!(stderr.contains("warning: warm start") && stderr.contains("model.hot.json"), "{stderr}");
    // The run wrote a valid hot file; the next run reads it back without a warning and prints the same text.
    let (text_warm, stderr) = run();
    assert!(!stderr.contains("warning:"), "{stderr}");
    assert!(!stderr.contains("warm start 0.000 s (0 experts"), "nothing was read back:\n{stderr}");
    assert_eq!(text_cold, text_warm);
}

/// `--warm-start-mode background` (the default) reads the hot file's experts while the prompt runs: the same text as
/// `before` (read before the first token), and the summary says how many were read in the background.
#[test]
fn warm_start_in_the_background_gives_the_same_text() {
    let dir = temp_dir("warm_start_in_the_background_gives_the_same_text");
    let hot = dir.join("model.hot.json");
    let model = moe_gguf();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-m", s(&model), "-p", "hi", "-n", "6", "--temp", "0", "--memory-budget", "min"];
        args.extend_from_slice(&["--warm-start", s(&hot)]);
        args.extend_from_slice(extra);
        let out = flash_moe(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success() && !stderr.contains("panicked"), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (cold, _) = run(&[]);
    let (before, stderr_before) = run(&["--warm-start-mode", "before"]);
    assert!(!stderr_before.contains("read in the background"), "{stderr_before}");
    let (background, stderr) = run(&[]);
    assert_eq!(cold, before);
    assert_eq!(cold, background);
    assert!(stderr.contains("hot experts read in the background"), "{stderr}");
    assert!(stderr.contains("warm start 0.000 s (0 experts"), "nothing is read before the first token:\n{stderr}");
}
