//! GGUF reader and writer: a round trip of every value type, and every kind of broken file giving an error that
//! names the file and the problem (never a panic, never a huge allocation).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use engine::formats::gguf::{self, GgufArray, GgufMetadata, GgufValue};
use engine::formats::gguf_writer::{write_kv, write_string, GgufWriter};
use engine::formats::{Metadata, WeightIndex};
use engine::Error;
use kernels::DType;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flash-moe-formats-gguf-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn every_value_type() -> Vec<(&'static str, GgufValue)> {
    use GgufValue as V;
    vec![
        ("general.architecture", V::String("qwen3moe".into())),
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60000)),
        ("t.i16", V::I16(-30000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.u64", V::U64(u64::MAX)),
        ("t.i64", V::I64(i64::MIN)),
        ("t.f32", V::F32(1.5e-6)),
        ("t.f64", V::F64(-2.25e100)),
        ("t.bool", V::Bool(true)),
        ("t.str_empty", V::String(String::new())),
        ("t.str_utf8", V::String("héllo ✓ 𝄞".into())),
        ("t.arr_u8", V::Array(GgufArray::U8(vec![0, 1, 255]))),
        ("t.arr_i8", V::Array(GgufArray::I8(vec![-128, 127]))),
        ("t.arr_u16", V::Array(GgufArray::U16(vec![1, 65535]))),
        ("t.arr_i16", V::Array(GgufArray::I16(vec![-1, 2]))),
        ("t.arr_u32", V::Array(GgufArray::U32(vec![7, 8, 9]))),
        ("t.arr_i32", V::Array(GgufArray::I32(vec![-7, 0, 7]))),
        ("t.arr_u64", V::Array(GgufArray::U64(vec![u64::MAX]))),
        ("t.arr_i64", V::Array(GgufArray::I64(vec![i64::MIN, 3]))),
        ("t.arr_f32", V::Array(GgufArray::F32(vec![0.5, -1.0, f32::INFINITY]))),
        ("t.arr_f64", V::Array(GgufArray::F64(vec![0.25]))),
        ("t.arr_bool", V::Array(GgufArray::Bool(vec![true, false, true]))),
        ("t.arr_empty", V::Array(GgufArray::F32(vec![]))),
        ("tokenizer.ggml.tokens", V::Array(GgufArray::String((0..1000).map(|i| format!("tok{i}")).collect()))),
        (
            "t.arr_nested",
            V::Array(GgufArray::Array(vec![
                GgufArray::U8(vec![1, 2]),
                GgufArray::String(vec!["a".into()]),
                GgufArray::Array(vec![GgufArray::I64(vec![-5])]),
                GgufArray::Array(vec![]),
            ])),
        ),
    ]
}

/// (name, dtype, row-major shape) of the round-trip model.
fn tensors() -> Vec<(&'static str, DType, Vec<usize>)> {
    vec![
        ("token_embd.weight", DType::F16, vec![10, 8]),
        ("blk.0.ffn_gate_inp.weight", DType::F32, vec![4, 8]),
        ("blk.0.ffn_up_exps.weight", DType::Q4_K, vec![4, 3, 256]),
        ("blk.0.ffn_down_exps.weight", DType::Q8_0, vec![4, 256, 32]),
        ("blk.0.attn_norm.weight", DType::F32, vec![7]),
        ("empty", DType::F32, vec![0, 4]),
        ("four_d", DType::BF16, vec![2, 3, 1, 5]),
    ]
}

/// Deterministic bytes for tensor `i`.
fn data(i: usize, len: u64) -> Vec<u8> {
    (0..len).map(|j| (j as usize * 31 + i * 7) as u8).collect()
}

/// Writes the round-trip model, tensor data in chunks of `chunk` bytes.
fn write_model(path: &Path, alignment: Option<u32>, chunk: usize) {
    let mut w = GgufWriter::create(path).expect("create");
    if let Some(a) = alignment {
        w.add_kv("general.alignment", GgufValue::U32(a)).expect("alignment");
    }
    for (k, v) in every_value_type() {
        w.add_kv(k, v).expect("kv");
    }
    for (name, dtype, shape) in tensors() {
        w.add_tensor(name, dtype, &shape).expect("tensor");
    }
    for (i, (name, _, _)) in tensors().into_iter().enumerate() {
        let bytes = data(i, w.tensor_len(name).expect("len"));
        for c in bytes.chunks(chunk) {
            w.write_tensor_data(c).expect("data");
        }
    }
    assert_eq!(w.next_tensor(), None, "all data written");
    w.finish().expect("finish");
}

fn gguf_md(index: &WeightIndex) -> &GgufMetadata {
    match &index.metadata {
        Metadata::Gguf(md) => md,
        m => panic!("expected GGUF metadata, got {m:?}"),
    }
}

#[test]
fn round_trip_every_value_type_and_tensor_layout() {
    for (alignment, chunk) in [(None, 1 << 20), (Some(64u32), 7), (Some(1), 100)] {
        let dir = TempDir::new();
        let path = dir.path("round_trip.gguf");
        write_model(&path, alignment, chunk);
        if let (None, Some(out)) = (alignment, std::env::var_os("FLASH_MOE_GGUF_OUT")) {
            // For checking against another reader by hand (gguf-py: see the formats report).
            std::fs::copy(&path, out).expect("copy");
        }
        let index = WeightIndex::open(&path).expect("open");
        let md = gguf_md(&index);
        assert_eq!(md.version, 3);
        assert_eq!(md.alignment, alignment.map_or(32, u64::from));
        let mut expected = every_value_type();
        if let Some(a) = alignment {
            expected.insert(0, ("general.alignment", GgufValue::U32(a)));
        }
        let got: Vec<_> = md.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let expected: Vec<_> = expected.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(got, expected);

        assert_eq!(index.tensors.len(), tensors().len());
        for (i, (name, dtype, shape)) in tensors().into_iter().enumerate() {
            let t = index.require(name).expect("tensor");
            assert_eq!((t.dtype, &t.shape), (dtype, &shape), "{name}");
            assert_eq!((t.offset - md.data_offset) % md.alignment, 0, "{name} aligned");
            let mut buf = vec![0u8; t.len as usize];
            index.read_tensor(t, &mut buf).expect("read");
            assert_eq!(buf, data(i, t.len), "{name} data");
        }
        let up = index.require("blk.0.ffn_up_exps.weight").expect("up");
        assert_eq!(up.len, 4 * 3 * 144, "Q4_K: 144 bytes per 256 values");
        assert_eq!(index.require("empty").expect("empty").len, 0);
    }
}

#[test]
fn accessors_convert_integers_and_name_key_and_file() {
    let dir = TempDir::new();
    let path = dir.path("accessors.gguf");
    write_model(&path, None, 4096);
    let index = gguf::open(&path).expect("open");
    let md = gguf_md(&index);
    assert_eq!(md.arch().expect("arch"), "qwen3moe");
    assert_eq!(md.get_u32("t.u8"), Some(200));
    assert_eq!(md.get_u64("t.u16"), Some(60000));
    assert_eq!(md.get_i32("t.i8"), Some(-100));
    assert_eq!(md.get_u32("t.i8"), None, "negative does not fit u32");
    assert_eq!(md.get_u32("t.u64"), None, "u64::MAX does not fit u32");
    assert_eq!(md.get_u64("t.u64"), Some(u64::MAX));
    assert_eq!(md.get_f32("t.f32"), Some(1.5e-6));
    assert_eq!(md.get_bool("t.bool"), Some(true));
    assert_eq!(md.get_str("t.str_utf8"), Some("héllo ✓ 𝄞"));
    assert_eq!(md.get_str_array("tokenizer.ggml.tokens").map(|t| t.len()), Some(1000));
    assert_eq!(md.get_f32_array("t.arr_f32").map(|a| a[0]), Some(0.5));
    assert_eq!(md.get_i32_array("t.arr_u8"), Some(vec![0, 1, 255]));
    assert_eq!(md.get_i32_array("t.arr_u64"), None, "u64::MAX does not fit i32");
    assert_eq!(md.opt_u32("absent").expect("absent is Ok(None)"), None);

    let e = md.require_u32("llm.block_count").expect_err("missing").to_string();
    assert!(e.contains("llm.block_count") && e.contains("missing") && e.contains("accessors.gguf"), "{e}");
    let e = md.require_u32("t.str_utf8").expect_err("wrong type").to_string();
    assert!(e.contains("t.str_utf8") && e.contains("STRING") && e.contains("integer"), "{e}");
    let e = md.require_u32("t.i64").expect_err("does not fit").to_string();
    assert!(e.contains("fits u32"), "{e}");
    let e = md.require_str_array("t.arr_f32").expect_err("wrong array").to_string();
    assert!(e.contains("ARRAY[FLOAT32]") && e.contains("array of strings"), "{e}");
    let shown = md.get("tokenizer.ggml.tokens").expect("tokens").to_string();
    assert!(shown.contains("\"tok0\"") && shown.contains("(1000 items)"), "{shown}");
    let debug = format!("{md:?}");
    assert!(debug.contains("(1000 items)") && debug.len() < 4000, "Debug shortens arrays: {debug}");
}

// ---- hand-made headers ----

/// A GGUF file: magic, version, counts, `body` (key/values then tensor infos), padding to 32, `data`.
fn file(version: u32, n_tensors: u64, n_kv: u64, body: &[u8], data: &[u8]) -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&n_tensors.to_le_bytes());
    f.extend_from_slice(&n_kv.to_le_bytes());
    f.extend_from_slice(body);
    f.resize(f.len().next_multiple_of(32), 0);
    f.extend_from_slice(data);
    f
}

fn tensor_info(buf: &mut Vec<u8>, name: &str, ne: &[u64], type_id: u32, offset: u64) {
    write_string(buf, name).expect("vec");
    buf.extend_from_slice(&(ne.len() as u32).to_le_bytes());
    for d in ne {
        buf.extend_from_slice(&d.to_le_bytes());
    }
    buf.extend_from_slice(&type_id.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
}

fn kv(buf: &mut Vec<u8>, key: &str, v: GgufValue) {
    write_kv(buf, key, &v).expect("vec");
}

/// Writes `bytes` to a temp file, opens it, and returns the error's message (which must name the file).
fn open_err(name: &str, bytes: &[u8]) -> (Error, String) {
    let dir = TempDir::new();
    let path = dir.path(name);
    std::fs::write(&path, bytes).expect("write");
    let e = gguf::open(&path).expect_err("must fail");
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "message must name the file: {msg}");
    (e, msg)
}

/// One F32 tensor `w` of 8 values at relative offset 0, with its data.
fn one_tensor_file(version: u32) -> Vec<u8> {
    let mut body = Vec::new();
    kv(&mut body, "general.architecture", GgufValue::String("llama".into()));
    tensor_info(&mut body, "w", &[8], 0, 0);
    file(version, 1, 1, &body, &[1u8; 32])
}

#[test]
fn v2_is_read() {
    let dir = TempDir::new();
    let path = dir.path("v2.gguf");
    std::fs::write(&path, one_tensor_file(2)).expect("write");
    let index = gguf::open(&path).expect("v2");
    assert_eq!(gguf_md(&index).version, 2);
    assert_eq!(index.require("w").expect("w").len, 32);
}

#[test]
fn wrong_magic() {
    let mut f = one_tensor_file(3);
    f[..4].copy_from_slice(b"GGUX");
    let (_, msg) = open_err("magic.gguf", &f);
    assert!(msg.contains("not a GGUF file") && msg.contains("GGUX"), "{msg}");
}

#[test]
fn unsupported_versions() {
    let (_, msg) = open_err("v1.gguf", &one_tensor_file(1));
    assert!(msg.contains("version 1 is not supported"), "{msg}");
    let (_, msg) = open_err("v4.gguf", &one_tensor_file(4));
    assert!(msg.contains("unsupported GGUF version 4"), "{msg}");
    let (_, msg) = open_err("be.gguf", &one_tensor_file(3u32.swap_bytes()));
    assert!(msg.contains("big-endian"), "{msg}");
}

#[test]
fn every_truncation_is_an_error() {
    let dir = TempDir::new();
    let path = dir.path("full.gguf");
    write_model(&path, None, 1 << 20);
    let full = std::fs::read(&path).expect("read");
    let index = gguf::open(&path).expect("open");
    let data_offset = gguf_md(&index).data_offset as usize;
    let last = index.tensors.last().expect("tensors");
    let data_end = (last.offset + last.len) as usize;
    assert!(full.len() >= data_end && full.len() - data_end < 32, "only padding after the last tensor");
    std::fs::write(&path, &full[..data_end]).expect("write");
    gguf::open(&path).expect("the padding after the last tensor is optional");
    // Every cut inside the header, and a few inside the data.
    let cuts = (0..data_offset).chain([data_offset, data_offset + 1, data_end - 33, data_end - 1]);
    for cut in cuts {
        let msg = match gguf::parse(&full[..cut], cut as u64, Path::new("cut.gguf")) {
            Ok(_) => panic!("cut at {cut} must fail"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("cut.gguf"), "{msg}");
        assert!(
            msg.contains("truncated") || msg.contains("cannot fit") || msg.contains("bytes left in the file"),
            "cut at {cut}: {msg}"
        );
    }
    let (_, msg) = open_err("cut_data.gguf", &full[..data_end - 1]);
    assert!(msg.contains("truncated file") && msg.contains("tensor 'four_d'"), "{msg}");
}

#[test]
fn unknown_tensor_type_names_the_type() {
    let mut body = Vec::new();
    tensor_info(&mut body, "blk.0.ffn_down_exps.weight", &[256, 4], 10, 0);
    let (e, msg) = open_err("q2k.gguf", &file(3, 1, 0, &body, &[0u8; 4 * 84]));
    assert!(matches!(e, Error::UnsupportedDType { type_id: 10, .. }), "{e:?}");
    assert!(msg.contains("Q2_K") && msg.contains("blk.0.ffn_down_exps.weight"), "{msg}");
    let mut body = Vec::new();
    tensor_info(&mut body, "x", &[32], 1000, 0);
    let (_, msg) = open_err("type1000.gguf", &file(3, 1, 0, &body, &[0u8; 64]));
    assert!(msg.contains("unknown") && msg.contains("1000"), "{msg}");
}

#[test]
fn huge_counts_fail_fast_without_allocating() {
    let start = Instant::now();
    let (_, msg) = open_err("n_tensors.gguf", &file(3, u64::MAX, 0, &[], &[]));
    assert!(msg.contains("18446744073709551615 tensors") && msg.contains("cannot fit"), "{msg}");
    let (_, msg) = open_err("n_kv.gguf", &file(3, 0, u64::MAX, &[], &[]));
    assert!(msg.contains("key/value pairs") && msg.contains("cannot fit"), "{msg}");

    let mut body = Vec::new();
    body.extend_from_slice(&(1u64 << 60).to_le_bytes());
    body.extend_from_slice(b"key");
    let (_, msg) = open_err("strlen.gguf", &file(3, 0, 1, &body, &[]));
    assert!(msg.contains("length 1152921504606846976") && msg.contains("key/value pair 0"), "{msg}");

    let mut body = Vec::new();
    write_string(&mut body, "tokenizer.ggml.tokens").expect("vec");
    body.extend_from_slice(&9u32.to_le_bytes()); // array
    body.extend_from_slice(&8u32.to_le_bytes()); // of strings
    body.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let (_, msg) = open_err("arrlen.gguf", &file(3, 0, 1, &body, &[]));
    assert!(msg.contains("elements of array 'tokenizer.ggml.tokens'") && msg.contains("cannot fit"), "{msg}");

    let mut body = Vec::new();
    write_string(&mut body, "name").expect("vec");
    body.extend_from_slice(&8u32.to_le_bytes());
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    let (_, msg) = open_err("valuelen.gguf", &file(3, 0, 1, &body, &[]));
    assert!(msg.contains("value of 'name'"), "{msg}");
    assert!(start.elapsed().as_secs() < 5, "huge counts must fail fast");
}

#[test]
fn duplicates() {
    let mut body = Vec::new();
    tensor_info(&mut body, "w", &[8], 0, 0);
    tensor_info(&mut body, "w", &[8], 0, 32);
    let (_, msg) = open_err("dup_tensor.gguf", &file(3, 2, 0, &body, &[0u8; 64]));
    assert!(msg.contains("duplicate tensor name 'w'"), "{msg}");
    let mut body = Vec::new();
    tensor_info(&mut body, "w1", &[16], 0, 0);
    tensor_info(&mut body, "w2", &[8], 0, 32);
    let (_, msg) = open_err("overlap.gguf", &file(3, 2, 0, &body, &[0u8; 64]));
    assert!(msg.contains("tensors 'w1' and 'w2' overlap"), "{msg}");
    let mut body = Vec::new();
    kv(&mut body, "a", GgufValue::U32(1));
    kv(&mut body, "a", GgufValue::U32(2));
    let (_, msg) = open_err("dup_key.gguf", &file(3, 0, 2, &body, &[]));
    assert!(msg.contains("duplicate metadata key 'a'"), "{msg}");
}

#[test]
fn alignment_rules() {
    let mut body = Vec::new();
    tensor_info(&mut body, "w", &[8], 0, 16);
    let (_, msg) = open_err("misaligned.gguf", &file(3, 1, 0, &body, &[0u8; 64]));
    assert!(msg.contains("tensor 'w'") && msg.contains("not a multiple of the alignment 32"), "{msg}");
    let mut body = Vec::new();
    kv(&mut body, "general.alignment", GgufValue::U32(48));
    let (_, msg) = open_err("align48.gguf", &file(3, 0, 1, &body, &[]));
    assert!(msg.contains("general.alignment is 48") && msg.contains("power of two"), "{msg}");
    let mut body = Vec::new();
    kv(&mut body, "general.alignment", GgufValue::String("32".into()));
    let (_, msg) = open_err("align_str.gguf", &file(3, 0, 1, &body, &[]));
    assert!(msg.contains("general.alignment") && msg.contains("STRING"), "{msg}");
}

#[test]
fn bad_shapes() {
    let cases: [(&str, &[u64], u32, &str); 5] = [
        ("block.gguf", &[64, 2], 12, "not a multiple of Q4_K's block size 256"),
        ("overflow.gguf", &[1 << 40, 1 << 40], 0, "overflows"),
        ("overflow3.gguf", &[1 << 20, 1 << 30, 1 << 30], 0, "overflows"),
        ("negative.gguf", &[8, u64::MAX], 0, "negative dimension"),
        ("dims5.gguf", &[1, 1, 1, 1, 1], 0, "5 dimensions"),
    ];
    for (name, ne, type_id, want) in cases {
        let mut body = Vec::new();
        tensor_info(&mut body, "w", ne, type_id, 0);
        let (_, msg) = open_err(name, &file(3, 1, 0, &body, &[0u8; 64]));
        assert!(msg.contains(want) && msg.contains("'w'"), "{name}: {msg}");
    }
}

#[test]
fn bad_values() {
    let mut body = Vec::new();
    write_string(&mut body, "b").expect("vec");
    body.extend_from_slice(&7u32.to_le_bytes());
    body.push(2);
    let (_, msg) = open_err("bool.gguf", &file(3, 0, 1, &body, &[]));
    assert!(msg.contains("'b'") && msg.contains("neither 0 nor 1"), "{msg}");

    let mut body = Vec::new();
    write_string(&mut body, "t").expect("vec");
    body.extend_from_slice(&13u32.to_le_bytes());
    let (_, msg) = open_err("vtype.gguf", &file(3, 0, 1, &body, &[0u8; 64]));
    assert!(msg.contains("'t'") && msg.contains("unknown value type 13"), "{msg}");

    // Arrays nested 100 deep (each level: type ARRAY, count 1).
    let mut body = Vec::new();
    write_string(&mut body, "deep").expect("vec");
    body.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        body.extend_from_slice(&9u32.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
    }
    let (_, msg) = open_err("deep.gguf", &file(3, 0, 1, &body, &[0u8; 64]));
    assert!(msg.contains("nested deeper"), "{msg}");
}

#[test]
fn writer_refuses_misuse() {
    let mut w = GgufWriter::new(Vec::new(), "mem.gguf");
    w.add_tensor("a", DType::F32, &[2]).expect("a");
    assert!(w.add_tensor("a", DType::F32, &[2]).expect_err("dup").to_string().contains("duplicate"));
    assert!(w.add_tensor("q", DType::Q4_K, &[64]).expect_err("block").to_string().contains("block size"));
    assert!(w.add_tensor("big", DType::F32, &[1, 1, 1, 1, 1]).is_err());
    assert!(w.add_kv("general.alignment", GgufValue::U32(64)).is_err(), "alignment after a tensor");
    assert!(w.write_tensor_data(&[0u8; 9]).expect_err("too much").to_string().contains("only 8 bytes left"));
    assert_eq!(w.next_tensor(), Some(("a", 8)));
    w.write_tensor_data(&[0u8; 4]).expect("half");
    assert_eq!(w.next_tensor(), Some(("a", 4)));
    assert!(w.add_kv("late", GgufValue::U8(1)).is_err(), "key after the header");
    let e = w.finish().expect_err("incomplete").to_string();
    assert!(e.contains("4 of 8 bytes of tensor 'a'"), "{e}");
}

#[test]
fn zero_tensors_and_no_data_section() {
    let mut body = Vec::new();
    kv(&mut body, "general.architecture", GgufValue::String("llama".into()));
    let mut f = file(3, 0, 1, &body, &[]);
    f.truncate(24 + body.len()); // the padding after the header is optional without tensors
    let dir = TempDir::new();
    let path = dir.path("empty.gguf");
    std::fs::write(&path, &f).expect("write");
    let index = gguf::open(&path).expect("open");
    assert!(index.tensors.is_empty());
    assert_eq!(gguf_md(&index).arch().expect("arch"), "llama");
}

/// Opens a real GGUF named by `FLASH_MOE_GGUF` (e.g. SmolLM2-135M-Instruct.Q4_1.gguf) and prints a summary to
/// compare with gguf-py's `gguf-dump`.
#[test]
#[ignore = "needs FLASH_MOE_GGUF=path/to/model.gguf"]
fn real_file_from_env() {
    let path = PathBuf::from(std::env::var_os("FLASH_MOE_GGUF").expect("set FLASH_MOE_GGUF"));
    let start = Instant::now();
    let index = WeightIndex::open(&path).expect("open");
    let md = gguf_md(&index);
    println!(
        "opened in {:?}: v{} {} kvs, {} tensors, data at {}",
        start.elapsed(),
        md.version,
        md.len(),
        index.tensors.len(),
        md.data_offset
    );
    for (k, v) in md.iter() {
        println!("{k} = {v}");
    }
    for t in &index.tensors {
        println!("{} {} {:?} @{} +{}", t.name, t.dtype.name(), t.shape, t.offset, t.len);
    }
}

/// A 150k-token vocabulary with scores, types and merges (the size of a real one) parses quickly.
#[test]
fn large_vocabulary_parses_quickly() {
    let n = 150_000;
    let mut w = GgufWriter::new(Vec::new(), "vocab.gguf");
    let tokens = (0..n).map(|i| format!("token{i}")).collect();
    w.add_kv("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(tokens))).expect("kv");
    w.add_kv("tokenizer.ggml.scores", GgufValue::Array(GgufArray::F32(vec![0.5; n]))).expect("kv");
    w.add_kv("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(vec![1; n]))).expect("kv");
    let merges = (0..n).map(|i| format!("tok en{i}")).collect();
    w.add_kv("tokenizer.ggml.merges", GgufValue::Array(GgufArray::String(merges))).expect("kv");
    let bytes = w.finish().expect("finish");
    let start = Instant::now();
    let (md, _) = gguf::parse(bytes.as_slice(), bytes.len() as u64, Path::new("vocab.gguf")).expect("parse");
    let took = start.elapsed();
    assert_eq!(md.require_str_array("tokenizer.ggml.tokens").expect("tokens")[n - 1], format!("token{}", n - 1));
    assert_eq!(md.require_i32_array("tokenizer.ggml.token_type").expect("types").len(), n);
    println!("{} header bytes parsed in {took:?}", bytes.len());
    assert!(took.as_secs() < 5, "{took:?}");
}

/// Files that gguf-py wrote (fuzz/seeds/gguf_header), read and written again by GgufWriter, are byte-identical:
/// the writer's encoding, order and padding match the reference implementation.
#[test]
fn rewriting_gguf_py_files_is_byte_identical() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/gguf_header");
    for name in ["small_f32.gguf", "moe_quant.gguf", "no_tensors.gguf"] {
        let path = dir.join(name);
        let original = std::fs::read(&path).expect("seed");
        let index = gguf::open(&path).expect("open");
        let mut w = GgufWriter::new(Vec::new(), "rewrite.gguf");
        for (k, v) in gguf_md(&index).iter() {
            w.add_kv(k, v.clone()).expect("kv");
        }
        for t in &index.tensors {
            w.add_tensor(t.name.clone(), t.dtype, &t.shape).expect("tensor");
        }
        for t in &index.tensors {
            let mut buf = vec![0u8; t.len as usize];
            index.read_tensor(t, &mut buf).expect("read");
            w.write_tensor_data(&buf).expect("data");
        }
        let rewritten = w.finish().expect("finish");
        assert!(rewritten == original, "{name}: {} vs {} bytes", rewritten.len(), original.len());
    }
}
