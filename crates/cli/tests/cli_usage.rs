//! The command line as a new user meets it: counts and sizes that say what they accept, help that describes
//! every option, the bundled model as the default everywhere, the prompt echoed, the sampling settings named,
//! progress on a terminal only, and `synth` never leaving a truncated file behind.

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

use common::{assert_fails, assert_succeeds, command, fixtures, flash_moe, moe_gguf, rewrite_gguf_with, s, temp_dir};
use engine::formats::gguf::GgufValue;

/// `run` on the tiny Qwen3-MoE fixture with a greedy, single-thread setup, plus `extra`.
fn run_fixture(extra: &[&str]) -> std::process::Output {
    let model = moe_gguf();
    let mut args = vec!["run", "-m", s(&model), "-t", "1", "--warm-start", "off"];
    args.extend_from_slice(extra);
    flash_moe(&args)
}

#[test]
fn n_zero_evaluates_the_prompt_and_generates_nothing() {
    let (stdout, stderr) = assert_succeeds(&run_fixture(&["-p", "hello world", "-n", "0", "--temp", "0"]));
    assert_eq!(stdout.trim_end(), "hello world", "only the echoed prompt:\n{stderr}");
    assert!(stderr.contains("prompt     2 tokens") || stderr.contains("prompt     "), "{stderr}");
    assert!(stderr.contains("decode     0 tokens"), "{stderr}");
}

#[test]
fn zero_threads_is_an_error_not_one_thread() {
    assert_fails(&flash_moe(&["run", "-m", s(&moe_gguf()), "-p", "hi", "-t", "0"]), &["--threads", "1 or more"]);
}

#[test]
fn negative_and_fractional_numbers_name_the_flag_and_the_rule() {
    assert_fails(&run_fixture(&["-p", "hi", "-n", "-5"]), &["'-5'", "--n-predict", "0 or more, not negative"]);
    assert_fails(&run_fixture(&["-p", "hi", "--top-k", "-1"]), &["--top-k", "not negative"]);
    assert_fails(&run_fixture(&["-p", "hi", "-c", "-5"]), &["--ctx-size", "not negative"]);
    assert_fails(&run_fixture(&["-p", "hi", "-n", "2.5"]), &["--n-predict", "not a fraction"]);
    assert_fails(&run_fixture(&["-p", "hi", "--temp", "-1"]), &["--temp -1", "at least 0"]);
    assert_fails(&run_fixture(&["-p", "hi", "--memory-budget", "-5GiB"]), &["memory budget '-5GiB'"]);
    assert_fails(&flash_moe(&["perplexity", "-m", s(&moe_gguf()), "--tokens", "1,2", "--window", "-3"]), &["--window"]);
}

#[test]
fn a_tiny_memory_budget_is_shown_in_bytes_and_a_bare_number_needs_a_unit() {
    assert_fails(&run_fixture(&["-p", "hi", "--memory-budget", "1B"]), &["memory budget 1 B is too small"]);
    assert_fails(&run_fixture(&["-p", "hi", "--memory-budget", "1"]), &["'1'", "give a unit", "1GiB"]);
}

#[test]
fn a_context_beyond_the_training_context_is_warned_about() {
    // The fixture was made with max_position_embeddings 256.
    let (_, stderr) = assert_succeeds(&run_fixture(&["-p", "hi", "-n", "1", "-c", "100000", "--temp", "0"]));
    assert!(
        stderr.contains("warning: -c 100000 is beyond the model's training context (256 tokens)")
            && stderr.contains("KV cache takes"),
        "{stderr}"
    );
    let (_, stderr) = assert_succeeds(&run_fixture(&["-p", "hi", "-n", "1", "-c", "256", "--temp", "0"]));
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn help_describes_every_command_and_option() {
    let (top, _) = assert_succeeds(&flash_moe(&["--help"]));
    let first = top.lines().next().unwrap_or_default();
    assert!(first.contains("larger than memory") && !first.contains("run, logits"), "first line: {first}");
    assert!(top.contains("Examples:"), "{top}");
    let commands = ["run", "logits", "perplexity", "inspect", "bench", "diskbench", "profile", "synth"];
    for c in commands {
        assert!(top.lines().any(|l| l.trim_start().starts_with(&format!("{c} "))), "--help lists {c}:\n{top}");
        // Every option has a description, on its line or the next.
        let (help, _) = assert_succeeds(&flash_moe(&[c, "-h"]));
        for flag in options(&help) {
            assert!(description(&help, &flag).is_some_and(|d| !d.is_empty()), "{c} {flag}: no description\n{help}");
        }
    }
    let (run_help, _) = assert_succeeds(&flash_moe(&["run", "-h"]));
    let numerics = description(&run_help, "--numerics").unwrap_or_default();
    assert!(numerics.contains("Qwen3-MoE") && !numerics.contains("dense Llama"), "{numerics}");
    let (long_help, _) = assert_succeeds(&flash_moe(&["run", "--help"]));
    assert!(long_help.contains("Qwen3-MoE") && !long_help.contains("dense Llama"), "{long_help}");
    assert!(description(&run_help, "--repeat-last-n").is_some_and(|d| d.starts_with("How many")), "{run_help}");
}

/// The flags a short help lists (`-t, --threads <THREADS>` gives `--threads`).
fn options(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")).map(|w| w.trim_end_matches(',').to_string()))
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// The description of `flag` in a short help: the text after the flag on its line, else the next line.
fn description(help: &str, flag: &str) -> Option<String> {
    let lines: Vec<&str> = help.lines().collect();
    let i = lines.iter().position(|l| {
        l.trim_start().starts_with('-') && l.split_whitespace().any(|w| w.trim_end_matches(',') == flag)
    })?;
    let line = lines[i].trim();
    // Flags and their value names are separated from the text by two spaces.
    match line.find("  ") {
        Some(at) => Some(line[at..].trim().to_string()),
        None => lines.get(i + 1).map(|l| l.trim()).filter(|l| !l.starts_with('-')).map(str::to_string),
    }
}

#[test]
fn inspect_defaults_to_the_bundled_model() {
    let (stdout, _) =
        assert_succeeds(&command().current_dir(env!("CARGO_MANIFEST_DIR")).arg("inspect").output().expect("run"));
    assert!(stdout.contains("tiny-py-moe-Q4_K_M.gguf") && stdout.contains("qwen3moe"), "{stdout}");
}

#[test]
fn the_bundled_model_runs_without_notes_or_warnings() {
    let (stdout, stderr) = assert_succeeds(&flash_moe(&[
        "run",
        "-p",
        "import os",
        "-n",
        "8",
        "--temp",
        "0",
        "-t",
        "1",
        "--warm-start",
        "off",
    ]));
    assert!(stdout.starts_with("import os"), "{stdout}");
    for bad in ["note:", "warning:", "norm_topk_prob"] {
        assert!(!stderr.contains(bad), "{bad} in:\n{stderr}");
    }
}

#[test]
fn the_prompt_is_echoed_unless_chat_or_asked_not_to() {
    let (stdout, _) = assert_succeeds(&run_fixture(&["-p", "The capital of France is", "-n", "4", "--temp", "0"]));
    assert!(stdout.starts_with("The capital of France is"), "{stdout:?}");
    let (quiet, _) = assert_succeeds(&run_fixture(&[
        "-p",
        "The capital of France is",
        "-n",
        "4",
        "--temp",
        "0",
        "--no-display-prompt",
    ]));
    assert_eq!(format!("The capital of France is{quiet}"), stdout, "the same continuation without the prompt");
    let dir = temp_dir("cli_usage", "prompt_echo");
    let gguf = dir.join("with-template.gguf");
    let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                  {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let extra = [("tokenizer.chat_template", GgufValue::String(chatml.into()))];
    rewrite_gguf_with(&moe_gguf(), &gguf, |_, v| Some(v.clone()), &extra, |_| true);
    let args =
        ["run", "-m", s(&gguf), "-t", "1", "--warm-start", "off", "-p", "Hello", "-n", "4", "--chat", "--temp", "0"];
    let (chat, _) = assert_succeeds(&flash_moe(&args));
    // Neither the prompt nor the template's markup is echoed (greedy: a random model's sampled reply could hold a
    // control token such as `<|im_start|>` anywhere, which `run` prints as llama.cpp does with --special).
    assert!(!chat.starts_with("<|im_start|>") && !chat.starts_with("Hello"), "{chat:?}");
}

#[test]
fn sampling_defaults_come_from_the_model_file_and_are_named() {
    // Without recommendations: llama.cpp's defaults, said so.
    let (_, stderr) = assert_succeeds(&run_fixture(&["-p", "hi", "-n", "2"]));
    assert!(stderr.contains("sampling   temp 0.8, top-k 40, top-p 0.95, min-p 0.05"), "{stderr}");
    assert!(stderr.contains("recommends no sampling settings"), "{stderr}");
    // A GGUF with general.sampling.* keys (as llama.cpp's converter writes them from generation_config.json).
    let dir = temp_dir("cli_usage", "sampling_defaults");
    let gguf = dir.join("with-sampling.gguf");
    let extra = [("general.sampling.temp", GgufValue::F32(0.6)), ("general.sampling.top_k", GgufValue::U32(20))];
    rewrite_gguf_with(&moe_gguf(), &gguf, |_, v| Some(v.clone()), &extra, |_| true);
    let out = flash_moe(&["run", "-m", s(&gguf), "-t", "1", "--warm-start", "off", "-p", "hi", "-n", "2"]);
    let (_, stderr) = assert_succeeds(&out);
    assert!(stderr.contains("temp 0.6 (model), top-k 20 (model), top-p 0.95, min-p 0.05"), "{stderr}");
    assert!(stderr.contains("GGUF general.sampling.*"), "{stderr}");
    // The command line wins.
    let out =
        flash_moe(&["run", "-m", s(&gguf), "-t", "1", "--warm-start", "off", "-p", "hi", "-n", "2", "--temp", "0"]);
    let (_, stderr) = assert_succeeds(&out);
    assert!(stderr.contains("sampling   greedy (temp 0);"), "{stderr}");
    // A Hugging Face directory's generation_config.json.
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).expect("dir");
    let src = common::fixtures().join("llama-h64");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), hf.join(f)).expect("copy fixture");
    }
    let g = r#"{"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}"#;
    std::fs::write(hf.join("generation_config.json"), g).expect("write");
    let (_, stderr) = assert_succeeds(&flash_moe(&["run", "-m", s(&hf), "-t", "1", "-p", "hi", "-n", "2"]));
    assert!(
        stderr
            .contains("temp 0.7 (model), top-k 20 (model), top-p 0.8 (model), min-p 0.05, repeat-penalty 1.05 (model)"),
        "{stderr}"
    );
    assert!(stderr.contains("generation_config.json"), "{stderr}");
}

/// Runs `args` with stderr on a pseudo-terminal and returns what the terminal received.
fn stderr_on_a_terminal(args: &[&str]) -> String {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two file descriptors into the given integers; the other arguments may be null.
    let rc =
        unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = command().args(args).stdout(Stdio::null()).stderr(Stdio::from(slave)).spawn().expect("spawn");
    let mut reader = std::fs::File::from(master);
    let mut text = Vec::new();
    // Reading the master fails with EIO once the child (the only holder of the slave) has exited.
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    assert!(child.wait().expect("wait").success(), "{}", String::from_utf8_lossy(&text));
    String::from_utf8_lossy(&text).into_owned()
}

#[test]
fn long_work_shows_progress_on_a_terminal_only() {
    let text = "def main(argv):\n    return 0\n".repeat(40);
    let dir = temp_dir("cli_usage", "progress");
    let file = dir.join("text.py");
    std::fs::write(&file, text).expect("write");
    let model = moe_gguf();
    let ppl = ["perplexity", "-m", s(&model), "-f", s(&file), "--window", "64", "-t", "1"];
    let tty = stderr_on_a_terminal(&ppl);
    assert!(tty.contains("\rperplexity: ") && tty.contains("running perplexity"), "{tty}");
    let load = ["run", "-m", s(&model), "-p", "hi", "-n", "1", "-t", "1", "--warm-start", "off"];
    let tty = stderr_on_a_terminal(&load);
    assert!(tty.contains("\rloading weights ["), "{tty}");
    // A pipe gets no progress; neither does a terminal with --quiet.
    let (stdout, piped) = assert_succeeds(&flash_moe(&ppl));
    assert!(!piped.contains("perplexity: ") && stdout.contains("loss "), "{piped}");
    let mut quiet = ppl.to_vec();
    quiet.push("--quiet");
    let tty = stderr_on_a_terminal(&quiet);
    assert!(!tty.contains("perplexity: ") && !tty.contains("loading weights"), "{tty}");
}

#[test]
fn synth_never_leaves_a_truncated_file_at_the_output_path() {
    let dir = temp_dir("cli_usage", "synth");
    let out = dir.join("small.gguf");
    let part = dir.join("small.gguf.part");
    // `small` is ~430 MB: long enough to be killed mid-write.
    let mut child = command()
        .args(["synth", "--shape", "small", "-o", s(&out), "-t", "1"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&part).map_or(true, |m| m.len() < 1 << 20) {
        assert!(t0.elapsed().as_secs() < 60, "synth never wrote {}", part.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(!out.exists(), "an interrupted synth left {}", out.display());
    // A complete one is at the output path, and its temporary file is gone.
    let tiny = dir.join("tiny.gguf");
    assert_succeeds(&flash_moe(&["synth", "--shape", "tiny", "-o", s(&tiny)]));
    assert!(tiny.exists() && !dir.join("tiny.gguf.part").exists());
}

#[test]
fn inspect_names_the_family_layer_kinds_and_routing() {
    let model = common::fixtures().join("qwen3next-h64/qwen3next-h64-q8_0.gguf");
    let (out, _) = assert_succeeds(&flash_moe(&["inspect", s(&model)]));
    for want in [
        "family        qwen3next",
        "4 layers: 3 gated DeltaNet (linear attention) + 1 gated attention",
        "sigmoid output gate, RoPE (NeoX) on 8 of 32 dims",
        "routed experts: 8 per layer, top-2, softmax, top-k weights renormalised",
        "shared expert FFN 32 with a sigmoid gate",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let (out, _) = assert_succeeds(&flash_moe(&["inspect", s(&moe_gguf())]));
    assert!(
        out.contains("family        qwen3") && out.contains("all attention") && out.contains("norm_topk_prob"),
        "{out}"
    );
}

/// `DIR/bin/llama-bench`: a script that runs `first` and answers with llama-bench's JSON for a decode test of
/// `n_gen` tokens at depth `n_depth` (10 tok/s).
fn stand_in_llama_bench(dir: &std::path::Path, first: &str, n_gen: usize, n_depth: usize) {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    let script = bin.join("llama-bench");
    let json = format!("[{{\"n_prompt\": 0, \"n_gen\": {n_gen}, \"n_depth\": {n_depth}, \"avg_ts\": 10.0}}]");
    fs::write(&script, format!("#!/bin/sh\n{first}\necho '{json}'\n")).expect("write");
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
}

#[test]
fn bench_fills_a_context_depth_and_hands_the_same_depth_and_kv_types_to_llama_bench() {
    // A stand-in llama-bench that records its arguments and answers with llama-bench's JSON.
    let dir = temp_dir("cli_usage", "bench_depth");
    let args_file = dir.join("args.txt");
    stand_in_llama_bench(&dir, &format!("echo \"$@\" > '{}'", args_file.display()), 3, 40);
    let fixture = fixtures().join("qwen3next-h64/qwen3next-h64-q8_0.gguf");
    for model in [moe_gguf(), fixture] {
        let out = flash_moe(&[
            "bench",
            "-m",
            s(&model),
            "-t",
            "1",
            "-d",
            "40",
            "-p",
            "0",
            "-n",
            "3",
            "-r",
            "2",
            "--bandwidth-mib",
            "0",
            "-ctk",
            "f32",
            "-ctv",
            "f16",
            "--llama-cpp",
            s(&dir),
        ]);
        let (stdout, _) = assert_succeeds(&out);
        assert!(stdout.contains("depth            40 tokens") && stdout.contains("KV cache k f32 v f16"), "{stdout}");
        assert!(stdout.contains("flash-moe  tg3") && stdout.contains("@ d40"), "{stdout}");
        assert!(!stdout.contains("pp0"), "no prompt test with -p 0: {stdout}");
        assert!(stdout.contains("ratio flash-moe / llama.cpp: decode"), "{stdout}");
        let passed = fs::read_to_string(&args_file).expect("llama-bench ran");
        for want in ["-d 40", "-p 0", "-n 3", "-ctv f16", "-t 1"] {
            assert!(passed.contains(want), "llama-bench got `{passed}`, wanted {want}");
        }
        // llama-bench refuses an f32 KV cache: it keeps its f16 default, and the output says so.
        assert!(!passed.contains("-ctk"), "llama-bench got `{passed}`");
        assert!(stdout.contains("llama-bench has no f32 KV cache"), "{stdout}");
    }
    // A prompt at the depth, on the hybrid model: its recurrent state comes back to the depth every round.
    let hybrid = fixtures().join("qwen3next-h64/qwen3next-h64-q8_0.gguf");
    let out = flash_moe(&[
        "bench",
        "-m",
        s(&hybrid),
        "-t",
        "1",
        "-d",
        "9",
        "-p",
        "5",
        "-n",
        "2",
        "-r",
        "2",
        "--bandwidth-mib",
        "0",
    ]);
    let (stdout, _) = assert_succeeds(&out);
    assert!(stdout.contains("flash-moe  pp5") && stdout.contains("@ d9"), "{stdout}");
}

#[test]
fn bench_against_llama_cpp_holds_the_bundled_model_in_ram_as_llama_cpp_does() {
    let dir = temp_dir("cli_usage", "bench_bundled");
    stand_in_llama_bench(&dir, "", 2, 0);
    let args = ["bench", "-t", "1", "-p", "0", "-n", "2", "-r", "1", "--bandwidth-mib", "0"];
    // Alone, the bundled model streams through its quarter cache (the memory plan names it) ...
    let (_, stderr) = assert_succeeds(&flash_moe(&args));
    assert!(stderr.contains("a cache of 25% of the experts"), "{stderr}");
    // ... next to llama.cpp, which holds every weight, it is all in RAM too ...
    let (stdout, stderr) = assert_succeeds(&flash_moe(&[&args[..], &["--llama-cpp", s(&dir)]].concat()));
    assert!(!stderr.contains("expert cache"), "{stderr}");
    assert!(stdout.contains("ratio flash-moe / llama.cpp: decode"), "{stdout}");
    // ... unless a budget says otherwise.
    let with_budget = [&args[..], &["--llama-cpp", s(&dir), "--memory-budget", "48MiB"]].concat();
    let (_, stderr) = assert_succeeds(&flash_moe(&with_budget));
    assert!(stderr.contains("expert cache"), "{stderr}");
    // -n 0 times the prompt only: no empty decode line.
    let (stdout, _) =
        assert_succeeds(&flash_moe(&["bench", "-t", "1", "-p", "3", "-n", "0", "-r", "1", "--bandwidth-mib", "0"]));
    assert!(
        stdout.contains("flash-moe  pp3") && !stdout.contains("tg0") && !stdout.contains("decode reads"),
        "{stdout}"
    );
}

#[test]
fn stats_json_is_written_with_the_model_in_ram_too() {
    let dir = temp_dir("cli_usage", "stats_json_ram");
    let path = dir.join("stats.json");
    let out = flash_moe(&[
        "run",
        "-m",
        s(&moe_gguf()),
        "-p",
        "hello there",
        "-n",
        "3",
        "-t",
        "1",
        "--temp",
        "0",
        "-q",
        "--stats-json",
        s(&path),
    ]);
    assert_succeeds(&out);
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path).expect("written")).expect("json");
    assert!(json["prompt_tokens"].as_u64().is_some_and(|n| n > 0), "{json}");
    assert!(json["prompt_secs"].as_f64().is_some() && json["decode_steps"].as_u64().is_some(), "{json}");
    assert!(json["experts_decode"].is_null(), "no expert cache in RAM: {json}");
}

#[test]
fn bench_parallel_decodes_sequences_together_and_hands_the_same_counts_to_llama_batched_bench() {
    // "12.5 KiB" and the like, in bytes.
    let bytes_of = |s: &str| -> Option<f64> {
        let (v, unit) = s.trim().split_once(' ')?;
        let scale = match unit {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            _ => return None,
        };
        Some(v.parse::<f64>().ok()? * scale)
    };
    // A stand-in llama-batched-bench that records its arguments and answers with its JSON lines.
    let dir = temp_dir("cli_usage", "bench_parallel");
    let args_file = dir.join("args.txt");
    fs::create_dir_all(dir.join("bin")).expect("mkdir");
    let script = dir.join("bin/llama-batched-bench");
    let lines = [(1, 40.0), (3, 90.0)]
        .map(|(pl, tg)| format!("echo '{{\"pl\": {pl}, \"speed_pp\": 100.0, \"speed_tg\": {tg}}}'"))
        .join("\n");
    fs::write(&script, format!("#!/bin/sh\necho \"$@\" > '{}'\n{lines}\n", args_file.display())).expect("write");
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let hybrid = fixtures().join("qwen3next-h64/qwen3next-h64-q8_0.gguf");
    for model in [moe_gguf(), hybrid] {
        let args = ["bench", "-m", s(&model), "-t", "1", "-p", "2", "-n", "3", "-r", "1", "--parallel", "1,3"];
        let (stdout, _) = assert_succeeds(&flash_moe(&[&args[..], &["--llama-cpp", s(&dir)]].concat()));
        for want in [
            "flash-moe  N=1 ",
            "flash-moe  N=3 ",
            "(1.00x one sequence)",
            "llama.cpp  N=3   pp   100.00 tok/s   tg   90.00 tok/s (2.25x one sequence)",
            "ratio      N=3   flash-moe / llama.cpp: prompt",
        ] {
            assert!(stdout.contains(want), "wanted `{want}` in {stdout}");
        }
        // The weights a step touches: each distinct expert once, so three sequences touch at least the experts of
        // one and at most three times them.
        let expert_bytes: Vec<f64> = stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("weights a step "))
            .map(|l| {
                let e = l.split(" + experts ").nth(1).and_then(|e| e.split(')').next());
                e.and_then(bytes_of).unwrap_or_else(|| panic!("no expert bytes in `{l}`"))
            })
            .collect();
        assert_eq!(expert_bytes.len(), 2, "{stdout}");
        assert!(expert_bytes[0] > 0.0 && expert_bytes[0] <= expert_bytes[1], "{stdout}");
        assert!(expert_bytes[1] <= 3.0 * expert_bytes[0] * 1.01, "{stdout}");
        assert!(stdout.contains("a step costing only its bytes: 1.00x one sequence"), "{stdout}");
        let passed = fs::read_to_string(&args_file).expect("llama-batched-bench ran");
        for want in ["-npl 1,3", "-npp 2", "-ntg 3", "-t 1", "--output-format jsonl"] {
            assert!(passed.contains(want), "llama-batched-bench got `{passed}`, wanted {want}");
        }
    }
    // The bundled model streams through its quarter cache: the bytes read a token are shown.
    let (stdout, _) =
        assert_succeeds(&flash_moe(&["bench", "-t", "1", "-p", "1", "-n", "2", "-r", "1", "--parallel", "2"]));
    assert!(stdout.contains("flash-moe  N=2 ") && stdout.contains("MiB of experts read a token"), "{stdout}");
    // Decode is what it measures.
    assert_fails(&flash_moe(&["bench", "-t", "1", "-n", "0", "--parallel", "2"]), &["--parallel", "--n-gen"]);
    assert_fails(&flash_moe(&["bench", "-t", "1", "--parallel", "0"]), &["--parallel", "1 or more"]);
    // More sequences than memory holds: refused before any is allocated.
    assert_fails(
        &flash_moe(&["bench", "-m", s(&moe_gguf()), "-t", "1", "--parallel", "1,100000000"]),
        &["100000000 sequences", "lower --parallel"],
    );
}

/// Large tensors read past the page cache (`O_DIRECT`, chosen for a model that would not fit in memory twice;
/// forced here) give the same weights, so the same logits bit for bit, as buffered reads.
#[test]
fn a_direct_load_gives_the_logits_of_a_buffered_one() {
    let dir = temp_dir("cli_usage", "direct_load");
    let model = dir.join("small-2.gguf");
    // Two layers of the `small` shape: stacked expert tensors and an embedding table of 4 MiB and more.
    assert_succeeds(&flash_moe(&["synth", "--shape", "small", "--layers", "2", "-o", s(&model), "-q"]));
    let logits = |direct: &str| {
        let out = dir.join(format!("logits-{direct}.npy"));
        let run = command()
            .env("FLASH_MOE_DIRECT_LOAD", direct)
            .args(["logits", "-m", s(&model), "--tokens", "1,17,300,4000", "-o", s(&out), "-t", "2"])
            .output()
            .expect("run");
        assert_succeeds(&run);
        std::fs::read(&out).expect("logits file")
    };
    let (buffered, direct) = (logits("0"), logits("1"));
    assert!(buffered.len() > 1000, "{} bytes of logits", buffered.len());
    assert!(buffered == direct, "the logits differ between buffered and direct loading");
}
