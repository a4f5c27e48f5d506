//! `--approx` on the real binary: only an explicit, valid mode turns it on; it is announced on stderr at the start
//! and in the summary and recorded in `--stats-json`; a run without it says nothing of it and records `null`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::moe_gguf;

/// `flash-moe run` on the fixture, streaming with the smallest budget, plus `extra`.
fn run(extra: &[&str], stats: Option<&Path>) -> Output {
    let model = moe_gguf();
    let mut args: Vec<&str> = vec!["run", "-m", model.to_str().expect("utf-8 path"), "-p", "hello world"];
    args.extend(["-n", "12", "--temp", "0", "-t", "1", "--memory-budget", "min"]);
    if let Some(p) = stats {
        args.extend(["--stats-json", p.to_str().expect("utf-8 path")]);
    }
    args.extend_from_slice(extra);
    common::flash_moe(&args)
}

fn stats_path(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("approx_cli");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{test}.json"))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("stats written")).expect("stats parse")
}

#[test]
fn default_run_is_exact_and_says_nothing_of_approx() {
    let path = stats_path("default");
    let out = run(&[], Some(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("APPROXIMATE"), "{stderr}");
    assert!(json(&path)["approx"].is_null(), "exact mode records approx: null");
}

#[test]
fn drop_missing_is_announced_counted_and_recorded() {
    let path = stats_path("drop_missing");
    let out = run(&["--approx", "drop-missing"], Some(&path));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("APPROXIMATE MODE (--approx drop-missing)"), "no start banner:\n{stderr}");
    assert!(stderr.contains("APPROXIMATE MODE (drop-missing): dropped "), "no summary line:\n{stderr}");
    assert!(stderr.contains("experts routed in decode steps"), "{stderr}");
    let a = &json(&path)["approx"];
    assert_eq!(a["mode"], "drop-missing");
    let routed = a["routed_experts"].as_u64().expect("routed");
    let dropped = a["dropped_experts"].as_u64().expect("dropped");
    // 2 layers x 2 experts x 11 decode steps (the prompt is exact); a 2-slot cache cannot hold a token's 4.
    assert_eq!(routed, 2 * 2 * 11, "{a}");
    assert!(dropped > 0 && dropped < routed, "{a}");
}

#[test]
fn top_k_drops_exactly_the_rest() {
    let path = stats_path("top_k");
    let out = run(&["--approx", "top-k=1"], Some(&path));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a = &json(&path)["approx"];
    assert_eq!(a["mode"], "top-k=1");
    assert_eq!(a["dropped_experts"].as_u64().expect("dropped") * 2, a["routed_experts"].as_u64().expect("routed"));
}

#[test]
fn only_a_spelled_out_valid_mode_is_accepted() {
    for (args, needle) in [
        (&["--approx"][..], "a value is required"),
        (&["--approx", "on"][..], "unknown mode; give drop-missing or top-k=N"),
        (&["--approx", "top-k=0"][..], "at least 1"),
        (&["--approx", "top-k=2"][..], "N must be below that"),
        (&["--approx=drop"][..], "unknown mode"),
    ] {
        let out = run(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(code.is_some_and(|c| c != 0 && c != 101), "{args:?}: exit {code:?}\n{stderr}");
        assert!(!stderr.contains("panicked") && stderr.contains(needle), "{args:?}:\n{stderr}");
        assert!(!stderr.contains("APPROXIMATE MODE"), "{args:?}: refused yet announced:\n{stderr}");
    }
}
