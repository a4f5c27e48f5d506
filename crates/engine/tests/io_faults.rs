//! Expert reads that fail (EIO), come back short, are slow, panic, or whose `io_uring_enter` fails, injected in
//! process ([`engine::experts::faults`]) under both I/O engines: every step gives a clear error or the logits of
//! the all-in-RAM model bit for bit, the cache's bookkeeping stays consistent, and it works again once the disk
//! does.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use engine::experts::budget::Budget;
use engine::experts::cache::Prefetch;
use engine::experts::faults::{self, Fault, FaultKind};
use engine::experts::io::IoEngine;
use engine::experts::ExpertProvider;
use engine::formats::WeightIndex;
use engine::models::{ExpertResidency, LoadOptions, Logits, Model, StreamOptions};
use engine::ops::Cpu;

/// A copy of the h256 Q4_K_M fixture (two MoE layers of four experts) under a name of its own, so that faults
/// injected for it touch no other test's reads.
fn temp_copy(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("io_faults").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dst = dir.join(format!("{name}.gguf"));
    std::fs::copy(fixture("qwen3moe-h256").join("qwen3moe-h256-q4_k_m.gguf"), &dst).expect("copy");
    dst
}

fn streamed(path: &Path, engine: IoEngine, n_slots: usize, prefetch: Prefetch) -> Model {
    let index = WeightIndex::open(path).expect("open");
    let opts = LoadOptions {
        progress: false,
        kv: Default::default(),
        experts: ExpertResidency::Stream(StreamOptions {
            budget: Budget::Min,
            n_ctx: 64,
            n_threads: 1,
            io_threads: 2,
            io_engine: Some(engine),
            n_slots: Some(n_slots),
            prefetch,
        }),
    };
    Model::load(&index, &opts).expect("load")
}

const TOKENS: [u32; 6] = [11, 22, 33, 44, 55, 66];

/// Logits of each single-token step of [`TOKENS`] (one step per forward call, so that every step reads). A step
/// that fails is tried again on the same session (a failed step leaves a KV cache as it was: the retry rewrites its
/// position) up to [`RETRIES`] times; the error of a step that keeps failing ends the list, since the steps after
/// it would miss its token.
fn step_logits(model: &Model) -> Vec<Result<Vec<f32>, String>> {
    let cpu = Cpu::new(1);
    let mut s = model.new_session(64);
    let mut out = Vec::new();
    for &t in &TOKENS {
        for attempt in 0..=RETRIES {
            match model.forward(&cpu, &mut s, &[t], Logits::Last) {
                Ok(l) => {
                    out.push(Ok(l.to_vec()));
                    break;
                }
                Err(e) => {
                    out.push(Err(e.to_string()));
                    if attempt == RETRIES {
                        return out;
                    }
                }
            }
        }
    }
    out
}

const RETRIES: usize = 4;

/// Every result either is an error naming the file and the read, or the reference logits of its step bit for bit
/// (a failed step is retried: the next result is the same step's).
#[track_caller]
fn assert_error_or_same(got: &[Result<Vec<f32>, String>], want: &[Vec<f32>], path: &Path) -> usize {
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let (mut n_err, mut step) = (0, 0);
    for g in got {
        match g {
            Ok(l) => {
                assert!(*l == want[step], "{name}, step {step}: logits differ from the all-in-RAM model");
                step += 1;
            }
            Err(msg) => {
                n_err += 1;
                assert!(msg.contains(name) && msg.contains("reading an expert failed"), "step {step}: {msg}");
            }
        }
    }
    n_err
}

/// Once the fault is gone the same model gives the reference logits again: nothing wrong stayed cached.
#[track_caller]
fn assert_recovers(model: &Model, want: &[Vec<f32>]) {
    let again: Vec<Vec<f32>> = step_logits(model).into_iter().map(|r| r.expect("no fault now")).collect();
    assert_eq!(again.len(), want.len());
    assert!(again == want, "logits differ after the fault was removed");
    let cache = model.expert_cache().expect("streaming");
    cache.check_bookkeeping(0).expect("consistent bookkeeping");
}

fn reference(path: &Path) -> Vec<Vec<f32>> {
    let m = load(path);
    step_logits(&m).into_iter().map(|r| r.expect("resident")).collect()
}

#[test]
fn faulty_reads_give_an_error_or_the_same_logits_under_both_engines() {
    let cases: [(&str, FaultKind, u64); 6] = [
        ("eio-all", FaultKind::Eio, 1),
        ("eio-some", FaultKind::Eio, 3),
        ("short-all", FaultKind::Short, 1),
        ("short-some", FaultKind::Short, 2),
        ("slow", FaultKind::Slow(std::time::Duration::from_millis(3)), 1),
        ("panic-some", FaultKind::Panic, 4),
    ];
    for engine in [IoEngine::Uring, IoEngine::Threads] {
        for prefetch in [Prefetch::Off, Prefetch::Table] {
            for (name, kind, every) in cases {
                let path = temp_copy(&format!("{name}-{engine:?}-{prefetch:?}").to_lowercase());
                let want = reference(&path);
                let model = streamed(&path, engine, 3, prefetch);
                let guard = faults::inject(Fault { every, ..Fault::new(kind, path.to_str().expect("utf-8")) });
                let got = step_logits(&model);
                // Reads of a step that stopped at an error go on without it: let them meet the fault too.
                model.expert_cache().expect("streaming").settle();
                drop(guard);
                let n_err = assert_error_or_same(&got, &want, &path);
                // A fault on every attempt fails (the retry fails too); a slow disk never does.
                match (kind, every) {
                    (FaultKind::Slow(_), _) => assert_eq!(n_err, 0, "{name}"),
                    (_, 1) => assert!(n_err > 0, "{name}: no error"),
                    _ => {}
                }
                model.expert_cache().expect("streaming").check_bookkeeping(0).expect("consistent after the faults");
                assert_recovers(&model, &want);
            }
        }
    }
}

/// A read error while the set still holds its slot pinned: dropping the set must not unpin a slot that another
/// set has taken since (a third set would then evict the second set's expert under it).
#[test]
fn a_failed_read_keeps_the_pins_of_other_sets() {
    for engine in [IoEngine::Uring, IoEngine::Threads] {
        let path = temp_copy(&format!("pins-{engine:?}").to_lowercase());
        let model = streamed(&path, engine, 4, Prefetch::Off);
        let cache = model.expert_cache().expect("streaming");
        assert_eq!(cache.class_slots(), [2, 2], "two slots for each layer's experts");
        let guard = faults::inject(Fault::new(FaultKind::Eio, path.to_str().expect("utf-8")));
        let mut a = cache.acquire(0, &[1]).expect("acquire");
        assert!(a.next().expect("one expert").is_err(), "the read fails");
        cache.settle();
        drop(guard);
        let mut b = cache.acquire(0, &[2]).expect("acquire");
        assert!(b.next().expect("one expert").is_ok());
        drop(a);
        // `b` and `d` hold the two slots now: `c` must find none to take.
        let mut d = cache.acquire(0, &[3]).expect("acquire");
        assert!(d.next().expect("one expert").is_ok());
        let mut c = cache.acquire(0, &[0]).expect("acquire");
        let err = c.next().expect("one expert").map(|(i, _)| i).expect_err("both slots are pinned");
        assert!(err.to_string().contains("every slot is pinned"), "{err}");
        drop((b, c, d));
        cache.check_bookkeeping(0).expect("consistent");
    }
}

/// Two sets wait for the same read, which fails: both get the error (the second must not find the slot freed
/// under its pin), and the slot is free again once both are gone.
#[test]
fn two_sets_waiting_for_one_failed_read_both_fail_cleanly() {
    for engine in [IoEngine::Uring, IoEngine::Threads] {
        let path = temp_copy(&format!("shared-{engine:?}").to_lowercase());
        let model = streamed(&path, engine, 2, Prefetch::Off);
        let cache = model.expert_cache().expect("streaming");
        let guard = faults::inject(Fault::new(FaultKind::Eio, path.to_str().expect("utf-8")));
        let mut a = cache.acquire(0, &[1]).expect("acquire");
        let mut b = cache.acquire(0, &[1]).expect("acquire (a hit on the read in flight)");
        assert!(a.next().expect("one expert").is_err());
        assert!(b.next().expect("one expert").is_err());
        cache.settle();
        drop(guard);
        assert!(b.next().is_none() && a.next().is_none());
        drop((a, b));
        cache.check_bookkeeping(0).expect("consistent");
        let want = reference(&path);
        assert_recovers(&model, &want);
    }
}

/// `io_uring_enter` fails (EAGAIN, as under a tight memory cgroup) after the kernel took the reads, or without
/// taking them: no buffer the kernel may still fill is handed out or read again, the logits are the same, and
/// when the ring keeps refusing, the engine goes on with pread.
#[test]
fn io_uring_enter_failures_never_change_the_logits() {
    for (name, kind, every) in [
        ("enter-some", FaultKind::UringEnter, 2),
        ("enter-all", FaultKind::UringEnter, 1),
        ("refused-some", FaultKind::UringEnterRefused, 3),
        ("refused-all", FaultKind::UringEnterRefused, 1),
    ] {
        let path = temp_copy(name);
        let want = reference(&path);
        let model = streamed(&path, IoEngine::Uring, 3, Prefetch::Table);
        if model.expert_cache().expect("streaming").io_engine() != IoEngine::Uring {
            eprintln!("io_uring is not available here: {name} skipped");
            return;
        }
        let guard = faults::inject(Fault { every, ..Fault::new(kind, path.to_str().expect("utf-8")) });
        let got = step_logits(&model);
        model.expert_cache().expect("streaming").settle();
        drop(guard);
        assert_eq!(got.len(), want.len(), "{name}: a step failed");
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.as_ref().is_ok_and(|l| l == w), "{name}, step {step}: {:?}", g.as_ref().err());
        }
        assert_recovers(&model, &want);
    }
}

/// A read error in a hybrid model (Qwen3-Next: DeltaNet layers before the failing MoE layer have stepped their
/// recurrent state): the session refuses to go on instead of computing from a state that matches no sequence, and
/// truncating it to a checkpoint gives the all-in-RAM logits again.
#[test]
fn a_failed_step_of_a_hybrid_model_tears_the_session_until_it_is_rewound() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("io_faults").join("hybrid");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("hybrid.gguf");
    std::fs::copy(fixture("qwen3next-h64").join("qwen3next-h64-q8_0.gguf"), &path).expect("copy");
    let want = reference(&path);
    let model = streamed(&path, IoEngine::Threads, 2, Prefetch::Off);
    let cpu = Cpu::new(1);
    let mut s = model.new_session(64);
    model.forward(&cpu, &mut s, &TOKENS[..1], Logits::Last).expect("first step");
    s.checkpoint();
    let guard = faults::inject(Fault::new(FaultKind::Eio, path.to_str().expect("utf-8")));
    let mut failed = false;
    for _ in 0..4 {
        // Cached experts make a step succeed; one that needs a read fails.
        match model.forward(&cpu, &mut s, &TOKENS[1..2], Logits::Last) {
            Err(e) => {
                assert!(e.to_string().contains("reading an expert failed"), "{e}");
                failed = true;
                break;
            }
            Ok(_) => {
                assert_eq!(s.truncate(1), 1, "back to the checkpoint");
            }
        }
    }
    assert!(failed, "a read was needed");
    model.expert_cache().expect("streaming").settle();
    drop(guard);
    let err = model.forward(&cpu, &mut s, &TOKENS[1..2], Logits::Last).expect_err("a torn session refuses");
    assert!(err.to_string().contains("part-updated"), "{err}");
    assert_eq!(s.truncate(s.pos), 1, "rewound to the checkpoint");
    let got = model.forward(&cpu, &mut s, &TOKENS[1..2], Logits::Last).expect("after the rewind").to_vec();
    assert!(got == want[1], "logits after the rewind differ from the all-in-RAM model");
    model.expert_cache().expect("streaming").check_bookkeeping(0).expect("consistent");
}

/// An expert whose prefetch is still being read does not hold up an expert already in memory behind it in the
/// layer's order (both count as cached): the one in memory is handed out first, at once, and the other when its
/// read is done.
#[test]
fn an_expert_in_memory_runs_before_a_prefetch_still_being_read() {
    use std::time::{Duration, Instant};
    let path = temp_copy("ready_first");
    for engine in [IoEngine::Uring, IoEngine::Threads] {
        let model = streamed(&path, engine, 8, Prefetch::Off);
        let cache = model.expert_cache().expect("a streaming cache");
        let all = |set: &mut Box<dyn engine::experts::ExpertSet + '_>| -> Vec<Vec<usize>> {
            let mut groups = Vec::new();
            while let Some(g) = set.next_group(&mut |_| true) {
                groups.push(g.expect("read").iter().map(|x| x.0).collect());
            }
            groups
        };
        // Expert 1 of layer 0 read and in memory.
        assert_eq!(all(&mut cache.acquire(0, &[1]).expect("acquire")), [[0]]);
        let delay = Duration::from_millis(400);
        let _slow = faults::inject(Fault::new(FaultKind::Slow(delay), path.to_str().expect("utf-8")));
        cache.prefetch(0, &[0]);
        let mut cached = Vec::new();
        cache.resident(0, &[0], &mut cached);
        assert_eq!(cached, [true], "{engine:?}: the prefetch of expert 0 did not start");
        let t0 = Instant::now();
        let mut set = cache.acquire(0, &[0, 1]).expect("acquire");
        let first: Vec<usize> =
            set.next_group(&mut |_| true).expect("a group").expect("read").iter().map(|x| x.0).collect();
        let waited = t0.elapsed();
        assert_eq!(first, [1], "{engine:?}: expert 1 (in memory) should come first");
        assert!(waited < delay / 2, "{engine:?}: the expert in memory waited {waited:?} for the other's read");
        assert_eq!(all(&mut set), [[0]], "{engine:?}: then expert 0, once read");
        assert!(t0.elapsed() >= delay / 2, "{engine:?}: expert 0 came before its slow read could finish");
    }
}
