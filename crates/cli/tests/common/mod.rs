//! Helpers shared by the tests of the `flash-moe` binary. Every run gets `XDG_CACHE_HOME` inside cargo's
//! temporary directory, so that no test writes a hot file (or anything else) under the user's home.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod server;

use engine::formats::gguf::{self, GgufValue};
use engine::formats::gguf_writer::GgufWriter;
use engine::formats::Metadata;
use kernels::DType;

pub const BIN: &str = env!("CARGO_BIN_EXE_flash-moe");

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The tiny Qwen3-MoE GGUF (8 experts, top-2) with a tokenizer in its metadata.
pub fn moe_gguf() -> PathBuf {
    fixtures().join("qwen3moe-h64/qwen3moe-h64-q8_0.gguf")
}

/// A fresh, empty directory for one test, inside cargo's temporary directory for this crate's tests.
pub fn temp_dir(group: &str, test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(group).join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The binary with a clean environment: the cache home in cargo's temporary directory, no taps, and progress
/// display left to the terminal check.
pub fn command() -> Command {
    let mut c = Command::new(BIN);
    c.env("XDG_CACHE_HOME", Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"))
        .env_remove("FLASH_MOE_TAPS")
        .env_remove("FLASH_MOE_TAPS_DIR")
        .env_remove("FLASH_MOE_PROGRESS");
    c
}

pub fn flash_moe(args: &[&str]) -> Output {
    command().args(args).output().expect("run flash-moe")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Asserts a clean failure: exit code 1-255 but not 101 (panic), no panic message, and stderr containing
/// every one of `needles`. Returns stderr.
#[track_caller]
pub fn assert_fails(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    assert!(code.is_some_and(|c| c != 0 && c != 101), "exit code {code:?}, stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    assert!(stderr.contains("error: "), "no error line:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
    eprintln!("{}", stderr.trim_end());
    stderr
}

/// Asserts success and returns (stdout, stderr).
#[track_caller]
pub fn assert_succeeds(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit code {:?}, stderr:\n{stderr}", out.status.code());
    (stdout, stderr)
}

/// Copies a fixture GGUF to `dst` through the GGUF writer: metadata through `edit` (`None` drops a key), `extra`
/// keys appended, and each tensor through `tensor` (`None` drops it; another type than its own gets zero bytes of
/// that type's size).
pub fn rewrite_gguf_tensors(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, &GgufValue) -> Option<GgufValue>,
    extra: &[(&str, GgufValue)],
    tensor: impl Fn(&str, DType) -> Option<DType>,
) {
    let index = gguf::open(src).expect("open fixture");
    let Metadata::Gguf(md) = &index.metadata else { panic!("not GGUF metadata") };
    let mut w = GgufWriter::create(dst).expect("create");
    for (k, v) in md.iter() {
        if let Some(v) = edit(k, v) {
            w.add_kv(k, v).expect("add_kv");
        }
    }
    for (k, v) in extra {
        w.add_kv(*k, v.clone()).expect("add_kv");
    }
    let kept: Vec<_> = index.tensors.iter().filter_map(|t| tensor(&t.name, t.dtype).map(|dtype| (t, dtype))).collect();
    for (t, dtype) in &kept {
        w.add_tensor(t.name.clone(), *dtype, &t.shape).expect("add_tensor");
    }
    for (t, dtype) in &kept {
        let buf = if *dtype == t.dtype {
            let mut buf = vec![0u8; t.len as usize];
            index.read_tensor(t, &mut buf).expect("read fixture tensor");
            buf
        } else {
            let row = *t.shape.last().expect("a shape");
            let rows: usize = t.shape.iter().rev().skip(1).product();
            vec![0u8; dtype.row_bytes(row).expect("whole blocks") * rows]
        };
        w.write_tensor_data(&buf).expect("write tensor");
    }
    w.finish().expect("finish");
}

/// [`rewrite_gguf_tensors`] keeping the tensors `keep` accepts as they are.
pub fn rewrite_gguf_with(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, &GgufValue) -> Option<GgufValue>,
    extra: &[(&str, GgufValue)],
    keep: impl Fn(&str) -> bool,
) {
    rewrite_gguf_tensors(src, dst, edit, extra, |name, dtype| keep(name).then_some(dtype))
}

pub fn rewrite_gguf(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, &GgufValue) -> Option<GgufValue>,
    keep: impl Fn(&str) -> bool,
) {
    rewrite_gguf_with(src, dst, edit, &[], keep)
}
