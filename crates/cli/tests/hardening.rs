//! Hostile files, hostile arguments and injected I/O faults against the real `flash-moe` binary: every case ends,
//! within a time bound, with a clean error (non-zero exit code other than 101, no panic message, the file and the
//! problem named) or with the same output as a run without the fault.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use engine::formats::gguf::{self, GgufArray, GgufValue};
use engine::formats::Metadata;
use kernels::DType;

use common::*;

/// Runs the binary with `env` set, killing it after `secs` (a hang fails the test).
fn flash_moe_env(args: &[&str], env: &[(&str, &str)], secs: u64) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("FLASH_MOE_TAPS").env_remove("FLASH_MOE_FAULTS").env_remove("FLASH_MOE_IO");
    // Hot files of the warm start go to cargo's temp dir, never the home directory.
    cmd.env("XDG_CACHE_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("hardening-cache"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run flash-moe");
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "flash-moe {args:?} did not finish within {secs} s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn flash_moe(args: &[&str]) -> Output {
    flash_moe_env(args, &[], 120)
}

#[test]
fn a_fifo_as_the_model_is_refused_at_once() {
    let dir = temp_dir("hardening", "a_fifo_as_the_model_is_refused_at_once");
    let fifo = dir.join("model.gguf");
    let c_path = std::ffi::CString::new(s(&fifo)).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let needles = [s(&fifo), "not a regular file (a FIFO)"];
    assert_fails(&flash_moe_env(&["run", "-m", s(&fifo), "-p", "hi"], &[], 30), &needles);
    assert_fails(&flash_moe_env(&["inspect", s(&fifo)], &[], 30), &needles);
    // In a model directory: config.json as a FIFO.
    let model_dir = dir.join("hf");
    fs::create_dir_all(&model_dir).expect("dir");
    fs::copy(fixtures().join("llama-h64/model.safetensors"), model_dir.join("model.safetensors")).expect("copy");
    let config = model_dir.join("config.json");
    let c_path = std::ffi::CString::new(s(&config)).expect("path");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    assert_fails(&flash_moe_env(&["run", "-m", s(&model_dir), "-p", "hi"], &[], 30), &[s(&config), "a FIFO"]);
}

/// Experts stored in an activation-only type (Q8_1, Q8_K: no weight dot product exists for them) are refused at
/// load like any other tensor, resident or streamed, instead of panicking in the kernel dispatch.
#[test]
fn experts_of_an_activation_only_type_are_refused_at_load() {
    let dir = temp_dir("hardening", "experts_of_an_activation_only_type_are_refused_at_load");
    let h256 = fixtures().join("qwen3moe-h256/qwen3moe-h256-q4_k_m.gguf");
    for (src, dtype, tensor) in
        [(moe_gguf(), DType::Q8_1, "blk.1.ffn_down_exps.weight"), (h256, DType::Q8_K, "blk.0.ffn_up_exps.weight")]
    {
        let path = dir.join(format!("{}.gguf", dtype.name()));
        rewrite_gguf_tensors(
            &src,
            &path,
            |_, v| Some(v.clone()),
            &[],
            |name, t| Some(if name == tensor { dtype } else { t }),
        );
        let needles = [s(&path), tensor, dtype.name(), "cannot"];
        for budget in [&[][..], &["--memory-budget", "min"][..]] {
            let mut args = vec!["run", "-m", s(&path), "-p", "hi", "-n", "2", "-t", "1"];
            args.extend_from_slice(budget);
            assert_fails(&flash_moe(&args), &needles);
        }
    }
}

/// An RMSNorm epsilon that is NaN, zero or negative (NaN logits, exit 0 before) is refused at load.
#[test]
fn a_bad_rms_epsilon_is_refused() {
    let dir = temp_dir("hardening", "a_bad_rms_epsilon_is_refused");
    let path = dir.join("model.gguf");
    for eps in [f32::NAN, -1e-6, 0.0, f32::INFINITY] {
        let edit = |k: &str, v: &GgufValue| {
            Some(if k == "qwen3moe.attention.layer_norm_rms_epsilon" { GgufValue::F32(eps) } else { v.clone() })
        };
        rewrite_gguf(&moe_gguf(), &path, edit, |_| true);
        assert_fails(&flash_moe(&["run", "-m", s(&path), "-p", "hi", "-n", "2"]), &[s(&path), "RMSNorm epsilon"]);
    }
    let src = fs::read_to_string(fixtures().join("llama-h64/config.json")).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&src).expect("json");
    config["rms_norm_eps"] = serde_json::json!(-0.001);
    let model_dir = dir.join("hf");
    fs::create_dir_all(&model_dir).expect("dir");
    fs::copy(fixtures().join("llama-h64/model.safetensors"), model_dir.join("model.safetensors")).expect("copy");
    fs::copy(fixtures().join("llama-h64/tokenizer.json"), model_dir.join("tokenizer.json")).expect("copy");
    fs::write(model_dir.join("config.json"), config.to_string()).expect("write");
    assert_fails(&flash_moe(&["run", "-m", s(&model_dir), "-p", "hi"]), &["RMSNorm epsilon -0.001"]);
}

/// The fixture with its tokenizer's vocabulary cut to `n` tokens (merges that need a dropped token go too) or
/// grown to `n` with extra tokens.
fn with_vocab_of(dst: &Path, n: usize) {
    let index = gguf::open(&moe_gguf()).expect("open");
    let Metadata::Gguf(md) = &index.metadata else { panic!("not GGUF metadata") };
    let Some(GgufValue::Array(GgufArray::String(tokens))) = md.get("tokenizer.ggml.tokens") else {
        panic!("no token list")
    };
    let mut tokens = tokens.clone();
    let first_extra = tokens.len();
    tokens.extend((first_extra..n).map(|i| format!("<extra_{i}>")));
    tokens.truncate(n);
    let kept: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let edit = |k: &str, v: &GgufValue| match (k, v) {
        ("tokenizer.ggml.tokens", _) => Some(GgufValue::Array(GgufArray::String(tokens.clone()))),
        ("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(t))) => {
            let mut t = t.clone();
            t.resize(n, 1);
            Some(GgufValue::Array(GgufArray::I32(t)))
        }
        ("tokenizer.ggml.merges", GgufValue::Array(GgufArray::String(m))) => {
            let ok = |m: &&String| {
                let (a, b) = m.split_once(' ').expect("a merge");
                kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str())
            };
            Some(GgufValue::Array(GgufArray::String(m.iter().filter(ok).cloned().collect())))
        }
        _ => Some(v.clone()),
    };
    rewrite_gguf(&moe_gguf(), dst, edit, |_| true);
}

/// A tokenizer with fewer tokens than the model has ids (normal for Hugging Face checkpoints) aborted
/// mid-generation when the sampler picked an id without text; now those ids are never generated, and the start
/// says so. A tokenizer with more tokens than the model is refused at load.
#[test]
fn a_tokenizer_smaller_than_the_model_never_yields_ids_without_text() {
    let dir = temp_dir("hardening", "a_tokenizer_smaller_than_the_model_never_yields_ids_without_text");
    let small = dir.join("small.gguf");
    with_vocab_of(&small, 300);
    // Nearly uniform sampling over the 320 ids: 64 tokens all but surely hit one of the 20 without text.
    let args = ["run", "-m", s(&small), "-p", "hi", "-n", "64", "--ignore-eos", "-t", "1", "--seed", "7", "--temp"];
    let out = flash_moe(&[&args[..], &["20", "--top-k", "0", "--top-p", "1", "--min-p", "0"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("ids 300 to 319 have no text and are never generated"), "{stderr}");
    let large = dir.join("large.gguf");
    with_vocab_of(&large, 330);
    let out = flash_moe(&["run", "-m", s(&large), "-p", "hi", "-n", "2"]);
    assert_fails(&out, &["the tokenizer has 330 tokens but the model's embedding has 320 rows"]);
}

/// Sizes that cannot be allocated or started are errors naming the flag, not aborts in the allocator or panics.
#[test]
fn huge_sizes_and_thread_counts_are_errors() {
    let m = moe_gguf();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-m", s(&m), "-p", "hi", "-n", "2", "-t", "1"];
        args.extend_from_slice(extra);
        flash_moe(&args)
    };
    // Without a budget, a file that fits but whose KV cache does not streams under the automatic budget, whose
    // plan then refuses the KV cache.
    assert_fails(&run(&["-c", "100000000000"]), &["too small to run", "KV cache 47683.72 GiB", "lower --ctx-size"]);
    let kv = ["a KV cache of 100000000000 tokens needs", "cannot be allocated", "--ctx-size"];
    assert_fails(&run(&["-c", "100000000000", "--memory-budget", "min"]), &kv);
    // Sizes that saturate: the plan refuses them.
    for budget in [&[][..], &["--memory-budget", "min"]] {
        let out = run(&[&["-c", "18446744073709551615"][..], budget].concat());
        assert_fails(&out, &["too small to run", "KV cache", "lower --ctx-size"]);
    }
    assert_fails(&run(&["--io-threads", "200000"]), &["--io-threads 200000: give at most 256"]);
    assert_fails(&run(&["--io-threads", "200000", "--memory-budget", "min"]), &["--io-threads 200000"]);
    // A window longer than the text needs no more KV cache than the text.
    let dir = temp_dir("hardening", "huge_sizes_and_thread_counts_are_errors");
    let json = dir.join("ppl.json");
    let out = flash_moe(&["perplexity", "-m", s(&m), "--tokens", "1,2,3,4", "--window", "1000000000000", "-t", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = flash_moe(&["perplexity", "-m", s(&m), "--tokens", "1,2,3,4", "--json", s(&json), "-t", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Strings from a file quoted in an error (an architecture, a tensor name) reach the terminal with their control
/// characters escaped and cut to a bounded length.
#[test]
fn errors_escape_and_cut_what_they_quote_from_the_file() {
    let dir = temp_dir("hardening", "errors_escape_and_cut_what_they_quote_from_the_file");
    let path = dir.join("model.gguf");
    let arch = format!("\x1b]0;pwned\x07\x1b[2J\x1b[31mevil\nline{}", "A".repeat(100_000));
    let edit = |k: &str, v: &GgufValue| {
        Some(if k == "general.architecture" { GgufValue::String(arch.clone()) } else { v.clone() })
    };
    rewrite_gguf(&moe_gguf(), &path, edit, |_| true);
    for args in [&["run", "-m", s(&path), "-p", "hi"][..], &["logits", "-m", s(&path), "--tokens", "1", "-o", "x.npy"]]
    {
        let stderr =
            assert_fails(&flash_moe(args), &["unknown architecture", "\\u{1b}[2J", "\\u{a}line", "more bytes"]);
        assert!(!stderr.contains('\x1b') && !stderr.contains('\x07'), "raw control characters:\n{stderr}");
        assert!(stderr.len() < 5000, "{} bytes of error", stderr.len());
    }
}

/// A chat template in the model file that loops without end, or writes without end, stops `run --chat` with an
/// error naming the template, within seconds (it hung at 100% CPU or grew to gigabytes before).
#[test]
fn a_hostile_chat_template_stops_with_an_error() {
    let dir = temp_dir("hardening", "a_hostile_chat_template_stops_with_an_error");
    let path = dir.join("model.gguf");
    for (template, msg) in [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "template steps"),
        ("{% for i in range(100000) %}{{ 'x' * 100000000 }}{% endfor %}", "the prompt passed"),
    ] {
        let add = [("tokenizer.chat_template", GgufValue::String(template.into()))];
        rewrite_gguf_with(&moe_gguf(), &path, |_, v| Some(v.clone()), &add, |_| true);
        let out = flash_moe_env(&["run", "-m", s(&path), "-p", "hi", "-n", "2", "--chat"], &[], 60);
        assert_fails(&out, &["the chat template of", s(&path), msg]);
    }
}

/// Expert reads that fail, come back short or are slow (FLASH_MOE_FAULTS), under both I/O engines, in a streamed
/// run of the real binary: a clean error naming the file, or the very text of a run without faults.
#[test]
fn a_streamed_run_with_faulty_reads_fails_cleanly_or_prints_the_same_text() {
    let dir = temp_dir("hardening", "a_streamed_run_with_faulty_reads_fails_cleanly_or_prints_the_same_text");
    let model = dir.join("model.gguf");
    fs::copy(moe_gguf(), &model).expect("copy");
    let args = ["run", "-m", s(&model), "-p", "hello there", "-n", "12", "--temp", "0", "-t", "1"];
    let args = [&args[..], &["--memory-budget", "min", "--warm-start", "off", "--prefetch", "table"]].concat();
    let clean = flash_moe(&args);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    for engine in ["uring", "threads"] {
        for (faults, must_fail) in [
            ("eio", true),
            ("short", true),
            ("eio:every=3", false),
            ("short:every=2", false),
            ("slow=2ms", false),
            ("uring-enter:every=2", false),
            ("uring-enter-refused", false),
        ] {
            let out = flash_moe_env(&args, &[("FLASH_MOE_FAULTS", faults), ("FLASH_MOE_IO", engine)], 120);
            let what = format!("{engine}, {faults}");
            if out.status.success() {
                assert!(!must_fail, "{what}: no error");
                assert_eq!(out.stdout, clean.stdout, "{what}: different text");
            } else {
                assert_fails(&out, &[s(&model), "reading an expert failed"]);
            }
        }
    }
}

/// A server whose sequences' state cannot fit beside the model is refused before it listens, naming the sizes and
/// what to lower (it used to keep every expert in memory, the file alone fitting, and start: the states were
/// allocated as the conversations grew, past the machine's memory). A time bound catches a server that starts.
#[test]
fn serve_refuses_more_sequence_state_than_memory_holds() {
    let m = moe_gguf();
    let out = flash_moe_env(&["serve", "-m", s(&m), "--parallel", "4", "-c", "500000000", "--port", "1"], &[], 60);
    let err = assert_fails(&out, &["8 sequences of 500000000 tokens", "too small", "lower --parallel"]);
    assert!(err.contains("--ctx-size"), "{err}");
}
