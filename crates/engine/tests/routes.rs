//! Route traces: what is recorded replays to the same expert choices, and bad traces are refused clearly.

mod common;

use std::sync::Arc;

use common::*;
use engine::layers::moe::{Route, RouteHook};
use engine::models::Logits;
use engine::ops::Cpu;
use engine::routes::{RouteRecorder, RouteReplay};

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flash-moe-routes-{}-{name}", std::process::id()))
}

/// Replays, then records what was replayed.
struct ReplayThenRecord(RouteReplay, RouteRecorder);

impl RouteHook for ReplayThenRecord {
    fn route(&self, layer: usize, pos: usize, n_call: usize, route: &mut Route) -> engine::Result<()> {
        self.0.route(layer, pos, n_call, route)?;
        self.1.route(layer, pos, n_call, route)
    }
}

fn run(model: &engine::models::Model) {
    let cpu = Cpu::new(2);
    let mut s = model.new_session(32);
    model.forward(&cpu, &mut s, &[5, 6, 7, 8, 9], Logits::Last).expect("prefill");
    for t in 0..6 {
        model.forward(&cpu, &mut s, &[t], Logits::Last).expect("decode");
    }
}

#[test]
fn recorded_routes_replay_to_the_same_experts() {
    let mut model = load(&fixture("qwen3moe-h64").join("qwen3moe-h64-q8_0.gguf"));
    let bytes: Vec<u64> =
        model.expert_layout().layers.iter().map(|l| l.as_ref().map_or(0, |l| l.expert_bytes())).collect();
    let (a, b) = (tmp("a.csv"), tmp("b.csv"));
    let rec = Arc::new(RouteRecorder::create(&a, "m", "qwen3moe", 8, 2, &bytes).expect("create"));
    model.set_route_hook(Some(rec.clone()));
    run(&model);
    rec.finish().expect("flush");
    let replay = RouteReplay::load(&a, 8).expect("load");
    assert_eq!(replay.n_tokens(), 11, "5 prompt tokens + 6 decode steps");
    let rec2 = RouteRecorder::create(&b, "m", "qwen3moe", 8, 2, &bytes).expect("create");
    let both = Arc::new(ReplayThenRecord(replay, rec2));
    model.set_route_hook(Some(both.clone()));
    run(&model);
    both.1.finish().expect("flush");
    let rows = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(p).expect("read").lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
    };
    assert_eq!(rows(&a), rows(&b));
    assert!(rows(&a).len() > 11 * 2 * 2, "every token, layer and slot is recorded");
    let _ = (std::fs::remove_file(a), std::fs::remove_file(b));
}

#[test]
fn bad_traces_are_refused() {
    let p = tmp("bad.csv");
    for (text, want) in [
        ("0,0,0,0,0,9,0.5,0,1\n", "the model has 8 experts"),
        ("0,0,0,0,0,x,0.5,0,1\n", "not a number"),
        ("0,0,0,0,0,1,0.5,0,1\n0,0,0,0,1,1,0.5,0,1\n", "appears twice"),
        ("# nothing\n", "no routing rows"),
    ] {
        std::fs::write(&p, text).expect("write");
        let err = RouteReplay::load(&p, 8).err().expect("must fail").to_string();
        assert!(err.contains(want) && err.contains("bad.csv"), "{err}");
    }
    let mut model = load(&fixture("qwen3moe-h64").join("qwen3moe-h64-q8_0.gguf"));
    std::fs::write(&p, "0,0,0,0,0,1,1.0,0,1\n0,0,0,1,0,2,1.0,0,1\n").expect("write");
    model.set_route_hook(Some(Arc::new(RouteReplay::load(&p, 8).expect("load"))));
    let cpu = Cpu::new(1);
    let mut s = model.new_session(8);
    let err = model.forward(&cpu, &mut s, &[1, 2], Logits::Last).expect_err("token 1 is not in the trace");
    assert!(err.to_string().contains("covers 1 tokens"), "{err}");
    let _ = std::fs::remove_file(p);
}

/// Slots, steps and layers too large for any model (a slot of 10^12 aborted in the allocator, a step of 2^64 - 1
/// overflowed) are refused with the line, never a panic or an abort.
#[test]
fn traces_with_huge_numbers_are_refused() {
    let path = std::path::Path::new("huge.csv");
    let header = "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n";
    for (row, msg) in [
        ("0,0,0,0,1000000000000,1,0.5,0,0", "line 2: top-k slot 1000000000000"),
        ("0,0,0,0,18446744073709551615,1,0.5,0,0", "line 2: top-k slot 18446744073709551615"),
        ("0,0,18446744073709551615,0,0,1,0.5,0,0", "line 2: step 18446744073709551615"),
        ("0,1,18446744073709551615,0,0,1,0.5,0,0", "line 2: step 18446744073709551615"),
        ("0,0,0,18446744073709551615,0,1,0.5,0,0", "or layer 18446744073709551615 is beyond any model"),
        ("0,0,0,0,0,1,nan-ish,0,0", "line 2: weight is not a number"),
    ] {
        let err = RouteReplay::parse(&format!("{header}{row}\n"), path, 8).err().expect("refused");
        assert!(err.to_string().contains(msg), "{err}");
    }
    // The largest values allowed still load, and a step beyond the trace is an error at replay, not a panic.
    let max = format!("{header}0,0,{},0,0,1,0.5,0,0\n0,1,{0},0,0,2,0.5,0,0\n", engine::routes::TRACE_STEP_MAX);
    let r = RouteReplay::parse(&max, path, 8).expect("loads");
    assert_eq!(r.n_tokens(), 2 * engine::routes::TRACE_STEP_MAX + 2);
}
