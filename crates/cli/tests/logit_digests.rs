//! Every model file the repository holds gives the same logits, bit for bit, as when the digests in
//! `tests/fixtures/logit-digests.txt` were recorded: on every instruction set this CPU has (forced with
//! `FLASH_MOE_ISA`), with flash-moe's own numerics and, where it applies, llama.cpp's (`--numerics ggml`, in one
//! batch and one token at a time), from RAM and streamed through the smallest expert cache. It guards refactors of
//! the model code: a change that moves one bit of one logit fails here.
//!
//! Each digest is a 64-bit FNV-1a hash of the float32 logits (`flash-moe logits`, every position) of the fixture's
//! reference prompt followed by its 16 greedy tokens. `FLASH_MOE_RECORD_DIGESTS=1` rewrites the file with the
//! digests of this build (for every instruction set this CPU has; lines for others are kept).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{assert_succeeds, command, fixtures, s, temp_dir};

/// (model file relative to the repository, reference.json with the token ids, --numerics ggml applies)
fn models() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("tests/fixtures/llama-h64/llama-h64-f32.gguf", "tests/fixtures/llama-h64/reference.json", false),
        ("tests/fixtures/llama-h64/llama-h64-f16.gguf", "tests/fixtures/llama-h64/reference.json", false),
        ("tests/fixtures/llama-h64/llama-h64-q8_0.gguf", "tests/fixtures/llama-h64/reference.json", true),
        ("tests/fixtures/llama-h64", "tests/fixtures/llama-h64/reference.json", false),
        ("tests/fixtures/qwen3-h64/qwen3-h64-f32.gguf", "tests/fixtures/qwen3-h64/reference.json", false),
        ("tests/fixtures/qwen3-h64/qwen3-h64-q8_0.gguf", "tests/fixtures/qwen3-h64/reference.json", true),
        ("tests/fixtures/qwen3moe-h64/qwen3moe-h64-f32.gguf", "tests/fixtures/qwen3moe-h64/reference.json", false),
        ("tests/fixtures/qwen3moe-h64/qwen3moe-h64-f16.gguf", "tests/fixtures/qwen3moe-h64/reference.json", false),
        ("tests/fixtures/qwen3moe-h64/qwen3moe-h64-q8_0.gguf", "tests/fixtures/qwen3moe-h64/reference.json", true),
        ("tests/fixtures/qwen3moe-h64/qwen3moe-h64-q4_k_m.gguf", "tests/fixtures/qwen3moe-h64/reference.json", false),
        ("tests/fixtures/qwen3moe-h64", "tests/fixtures/qwen3moe-h64/reference.json", false),
        ("tests/fixtures/qwen3moe-h256/qwen3moe-h256-q4_k_m.gguf", "tests/fixtures/qwen3moe-h256/reference.json", true),
        ("tests/fixtures/qwen3moe-h256", "tests/fixtures/qwen3moe-h256/reference.json", false),
        ("tests/fixtures/qwen3next-h64/qwen3next-h64-f32.gguf", "tests/fixtures/qwen3next-h64/reference.json", false),
        ("tests/fixtures/qwen3next-h64/qwen3next-h64-q8_0.gguf", "tests/fixtures/qwen3next-h64/reference.json", false),
        ("tests/fixtures/qwen3next-h64", "tests/fixtures/qwen3next-h64/reference.json", false),
        (
            "tests/fixtures/qwen3next-h256/qwen3next-h256-q4_k_m.gguf",
            "tests/fixtures/qwen3next-h256/reference.json",
            false,
        ),
        ("tests/fixtures/qwen35moe-h64/qwen35moe-h64-q8_0.gguf", "tests/fixtures/qwen35moe-h64/reference.json", false),
        ("tests/fixtures/qwen35moe-h64", "tests/fixtures/qwen35moe-h64/reference.json", false),
        ("tests/fixtures/mixtral-h64/mixtral-h64-q4_k_m.gguf", "tests/fixtures/mixtral-h64/reference.json", false),
        ("tests/fixtures/mixtral-h64", "tests/fixtures/mixtral-h64/reference.json", false),
        ("tests/fixtures/mlx/qwen3moe-h64-4bit-g32", "tests/fixtures/qwen3moe-h64/reference.json", false),
        ("tests/fixtures/mlx/qwen3moe-h256-4bit-g64", "tests/fixtures/qwen3moe-h256/reference.json", false),
        ("tests/fixtures/mlx/qwen3next-h64-4bit-g32", "tests/fixtures/qwen3next-h64/reference.json", false),
        ("tests/fixtures/mlx/qwen35moe-h64-4bit-g32", "tests/fixtures/qwen35moe-h64/reference.json", false),
        ("assets/tiny-py-moe/tiny-py-moe-Q8_0.gguf", "tests/fixtures/qwen3moe-h64/reference.json", true),
        ("assets/tiny-py-moe/tiny-py-moe-Q4_K_M.gguf", "tests/fixtures/qwen3moe-h64/reference.json", true),
    ]
}

fn repo() -> PathBuf {
    fixtures().join("../..")
}

fn digests_file() -> PathBuf {
    fixtures().join("logit-digests.txt")
}

/// The reference prompt ids followed by the transformers greedy ids.
fn token_ids(reference: &Path) -> String {
    let text = std::fs::read_to_string(reference).expect("reference.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id")).collect()
    };
    let mut all = ids(&json["prompt_ids"]);
    all.extend(ids(&json["hf"]["greedy_ids"]));
    all.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The instruction sets this CPU can run, by `FLASH_MOE_ISA` name.
fn isas() -> Vec<&'static str> {
    kernels::Kernels::available_isas().iter().map(|i| i.name()).collect()
}

/// Runs `flash-moe logits` and returns the digest of the logits (the .npy payload after its header).
fn digest(model: &Path, tokens: &str, isa: &str, extra: &[&str], out: &Path) -> String {
    let mut args = vec!["logits", "-m", s(model), "--tokens", tokens, "-o", s(out), "-t", "2"];
    args.extend_from_slice(extra);
    let run = command().args(&args).env("FLASH_MOE_ISA", isa).output().expect("run");
    let (_, stderr) = assert_succeeds(&run);
    assert!(!stderr.contains("is not supported here"), "{isa}: {stderr}");
    let npy = std::fs::read(out).expect("npy");
    let header = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    format!("{:016x}", fnv1a(&npy[10 + header..]))
}

/// Every (key, digest) this CPU can compute: key = "file isa mode".
fn compute() -> BTreeMap<String, String> {
    let dir = temp_dir("logit_digests", "npy");
    let out = dir.join("logits.npy");
    let mut all = BTreeMap::new();
    for (file, reference, ggml) in models() {
        let model = repo().join(file);
        let tokens = token_ids(&repo().join(reference));
        for isa in isas() {
            let mut modes: Vec<(&str, Vec<&str>)> =
                vec![("native", vec![]), ("native-streamed", vec!["--memory-budget", "min", "--prefetch", "router"])];
            if ggml {
                modes.push(("ggml", vec!["--numerics", "ggml"]));
                modes.push(("ggml-one-by-one", vec!["--numerics", "ggml", "--one-by-one"]));
            }
            for (mode, extra) in modes {
                all.insert(format!("{file} {isa} {mode}"), digest(&model, &tokens, isa, &extra, &out));
            }
        }
    }
    all
}

fn recorded() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(digests_file()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, d)| (k.to_string(), d.to_string())))
        .collect()
}

#[test]
fn logits_are_bit_identical_to_the_recorded_digests() {
    let now = compute();
    let mut before = recorded();
    if std::env::var_os("FLASH_MOE_RECORD_DIGESTS").is_some() {
        before.extend(now.clone());
        let mut text = String::from(
            "# FNV-1a 64 of float32 logits (flash-moe logits, reference prompt + 16 greedy tokens); see \
             crates/cli/tests/logit_digests.rs\n",
        );
        for (k, d) in &before {
            text += &format!("{k} {d}\n");
        }
        std::fs::write(digests_file(), text).expect("write digests");
        return;
    }
    let mut diffs = Vec::new();
    for (k, d) in &now {
        match before.get(k) {
            Some(r) if r == d => {}
            Some(r) => diffs.push(format!("{k}: {d}, recorded {r}")),
            None => diffs.push(format!("{k}: {d}, never recorded (FLASH_MOE_RECORD_DIGESTS=1 to record)")),
        }
    }
    assert!(diffs.is_empty(), "logits changed:\n{}", diffs.join("\n"));
    // Streaming through the smallest cache, with router prefetch, changes no bit.
    for (k, d) in now.iter().filter(|(k, _)| k.ends_with(" native")) {
        let streamed = now.get(&format!("{k}-streamed"));
        assert_eq!(streamed, Some(d), "{k}: streamed through one layer's experts differs from resident");
    }
    eprintln!("{} digests checked on {:?}", now.len(), isas());
}
