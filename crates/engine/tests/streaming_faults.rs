//! A model file truncated or rewritten while experts stream from it gives a clear error, never garbage weights.

mod common;

use common::*;
use engine::experts::budget::Budget;
use engine::formats::WeightIndex;
use engine::models::{ExpertResidency, LoadOptions, Logits, Model, StreamOptions};
use engine::ops::Cpu;

fn temp_copy(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flash-moe-faults-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dst = dir.join("model.gguf");
    std::fs::copy(fixture("qwen3moe-h256").join("qwen3moe-h256-q4_k_m.gguf"), &dst).expect("copy");
    dst
}

fn stream_options(n_slots: usize) -> LoadOptions {
    LoadOptions {
        progress: false,
        kv: Default::default(),
        experts: ExpertResidency::Stream(StreamOptions {
            budget: Budget::Min,
            n_ctx: 64,
            n_threads: 1,
            io_threads: 2,
            io_engine: None,
            n_slots: Some(n_slots),
            prefetch: engine::experts::cache::Prefetch::Off,
        }),
    }
}

fn open_streamed(path: &std::path::Path) -> Model {
    let index = WeightIndex::open(path).expect("open");
    Model::load(&index, &stream_options(1)).expect("load")
}

/// Runs single tokens until one fails; panics if none does.
fn first_error(model: &Model) -> String {
    let cpu = Cpu::new(1);
    let mut s = model.new_session(64);
    for t in 0..60u32 {
        if let Err(e) = model.forward(&cpu, &mut s, &[t % 300], Logits::Last) {
            return e.to_string();
        }
    }
    panic!("no error after the file changed");
}

#[test]
fn truncated_while_running_is_an_error() {
    let path = temp_copy("trunc");
    let model = open_streamed(&path);
    let cpu = Cpu::new(1);
    let mut s = model.new_session(64);
    model.forward(&cpu, &mut s, &[1, 2, 3], Logits::Last).expect("runs before the change");
    let len = std::fs::metadata(&path).expect("meta").len();
    std::fs::OpenOptions::new().write(true).open(&path).expect("open rw").set_len(len / 2).expect("truncate");
    let msg = first_error(&model);
    assert!(msg.contains("model.gguf") && (msg.contains("short read") || msg.contains("changed")), "{msg}");
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

#[test]
fn rewritten_while_running_is_an_error() {
    let path = temp_copy("rewrite");
    let model = open_streamed(&path);
    let cpu = Cpu::new(1);
    let mut s = model.new_session(64);
    model.forward(&cpu, &mut s, &[1, 2, 3], Logits::Last).expect("runs before the change");
    // Same size, other bytes, later modification time.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut bytes = std::fs::read(&path).expect("read");
    let n = bytes.len();
    for b in &mut bytes[n / 2..] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(&path, &bytes).expect("rewrite");
    let msg = first_error(&model);
    assert!(msg.contains("changed while running"), "{msg}");
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

/// A rewrite in place that keeps the size and sets the modification time back: only the status change time (which
/// nothing can set back) shows it.
#[test]
fn rewritten_with_the_mtime_restored_is_an_error() {
    let path = temp_copy("rewrite-mtime");
    let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    let model = open_streamed(&path);
    let cpu = Cpu::new(1);
    let mut s = model.new_session(64);
    model.forward(&cpu, &mut s, &[1, 2, 3], Logits::Last).expect("runs before the change");
    let mut bytes = std::fs::read(&path).expect("read");
    let n = bytes.len();
    for b in &mut bytes[n / 2..] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(&path, &bytes).expect("rewrite");
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open rw");
    f.set_modified(mtime).expect("set the mtime back");
    drop(f);
    assert_eq!(std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime"), mtime);
    let msg = first_error(&model);
    assert!(msg.contains("changed while running"), "{msg}");
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

/// The path replaced by another file of the same size and modification time between opening the index and
/// opening the expert store: the inode differs.
#[test]
fn replaced_by_a_file_with_the_same_size_and_mtime_is_refused() {
    let path = temp_copy("replace-same-mtime");
    let index = WeightIndex::open(&path).expect("open");
    let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
    let other = path.with_extension("other");
    std::fs::copy(&path, &other).expect("copy");
    std::fs::File::options().write(true).open(&other).and_then(|f| f.set_modified(mtime)).expect("set mtime");
    std::fs::rename(&other, &path).expect("replace");
    let err = Model::load(&index, &stream_options(1)).err().expect("must refuse");
    assert!(err.to_string().contains("changed since it was opened"), "{err}");
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

#[test]
fn replaced_before_streaming_starts_is_refused() {
    let path = temp_copy("replace");
    let index = WeightIndex::open(&path).expect("open");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let len = std::fs::metadata(&path).expect("meta").len();
    std::fs::OpenOptions::new().write(true).open(&path).expect("open rw").set_len(len + 4096).expect("grow");
    let opts = LoadOptions {
        progress: false,
        kv: Default::default(),
        experts: ExpertResidency::Stream(StreamOptions {
            budget: Budget::Min,
            n_ctx: 64,
            n_threads: 1,
            io_threads: 1,
            io_engine: None,
            n_slots: None,
            prefetch: engine::experts::cache::Prefetch::Off,
        }),
    };
    let err = Model::load(&index, &opts).err().expect("must refuse");
    assert!(err.to_string().contains("changed since it was opened"), "{err}");
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}
