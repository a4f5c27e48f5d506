//! safetensors reader: single files, directories, sharded indexes, and every kind of broken input giving an error
//! that names the file and the problem.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use engine::formats::{safetensors, Metadata, WeightIndex};
use engine::Error;
use kernels::DType;
use serde_json::{json, Value};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flash-moe-formats-st-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A safetensors file: 8-byte length, `header` as JSON, `data`.
fn st_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("json");
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(&h);
    f.extend_from_slice(data);
    f
}

/// A valid file with tensors `a` (F32 [2, 3]), `b` (F16 [4]) and `c` (BF16 []), data bytes 0, 1, 2, ...
fn good_file() -> Vec<u8> {
    let header = json!({
        "__metadata__": {"format": "pt"},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "c": {"dtype": "BF16", "shape": [], "data_offsets": [32, 34]},
    });
    st_bytes(&header, &(0..34).collect::<Vec<u8>>())
}

fn config() -> Vec<u8> {
    serde_json::to_vec(&json!({"model_type": "qwen3_moe", "num_experts": 8})).expect("json")
}

/// An error from opening `path`, whose message must name `names`.
fn open_err(path: &Path, names: &Path) -> (Error, String) {
    let e = WeightIndex::open(path).expect_err("must fail");
    let msg = e.to_string();
    assert!(msg.contains(&names.display().to_string()), "message must name {}: {msg}", names.display());
    (e, msg)
}

#[test]
fn single_file_and_directory() {
    let dir = TempDir::new();
    let file = dir.write("model.safetensors", &good_file());
    dir.write("config.json", &config());
    for path in [file.clone(), dir.0.clone()] {
        let index = WeightIndex::open(&path).expect("open");
        let Metadata::HfConfig { config, dir: config_dir } = &index.metadata else { panic!("HfConfig") };
        assert_eq!(config["num_experts"], 8);
        assert_eq!(config_dir, &dir.0);
        let names: Vec<_> = index.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"], "sorted by offset");
        let a = index.require("a").expect("a");
        assert_eq!((a.dtype, a.shape.as_slice(), a.len), (DType::F32, &[2, 3][..], 24));
        let b = index.require("b").expect("b");
        assert_eq!((b.dtype, b.shape.as_slice(), b.len), (DType::F16, &[4][..], 8));
        let c = index.require("c").expect("c");
        assert_eq!((c.dtype, c.shape.len(), c.n_elems(), c.len), (DType::BF16, 0, 1, 2));
        let mut buf = vec![0u8; 8];
        index.read_tensor(b, &mut buf).expect("read");
        assert_eq!(buf, (24..32).collect::<Vec<u8>>());
    }
    // Any *.safetensors name works for a single file.
    let other = dir.write("weights.safetensors", &good_file());
    assert_eq!(WeightIndex::open(&other).expect("open").tensors.len(), 3);
}

#[test]
fn sharded_directory() {
    let dir = TempDir::new();
    dir.write("config.json", &config());
    let shard = |name: &str, off: u64| json!({ name: {"dtype": "F32", "shape": [2], "data_offsets": [off, off + 8]} });
    dir.write("model-00001-of-00002.safetensors", &st_bytes(&shard("x", 0), &[1; 8]));
    let mut two = shard("y", 0);
    two["z"] = json!({"dtype": "F32", "shape": [1], "data_offsets": [8, 12]});
    dir.write("model-00002-of-00002.safetensors", &st_bytes(&two, &[2; 12]));
    let index_json = json!({"metadata": {"total_size": 20}, "weight_map": {
        "x": "model-00001-of-00002.safetensors",
        "y": "model-00002-of-00002.safetensors",
        "z": "model-00002-of-00002.safetensors",
    }});
    let index_path = dir.write("model.safetensors.index.json", &serde_json::to_vec(&index_json).expect("json"));
    let index = WeightIndex::open(&dir.0).expect("open");
    assert_eq!(index.files.len(), 2);
    let z = index.require("z").expect("z");
    assert_eq!(index.files[z.file].path, dir.path("model-00002-of-00002.safetensors"));
    let mut buf = [0u8; 4];
    index.read_tensor(z, &mut buf).expect("read");
    assert_eq!(buf, [2; 4]);

    // The index names a shard that is not there.
    let mut missing = index_json.clone();
    missing["weight_map"]["w"] = json!("model-00003-of-00002.safetensors");
    std::fs::write(&index_path, serde_json::to_vec(&missing).expect("json")).expect("write");
    let (_, msg) = open_err(&dir.0, &index_path);
    assert!(msg.contains("shard 'model-00003-of-00002.safetensors'") && msg.contains("missing"), "{msg}");

    // The index puts a tensor in a shard that does not hold it.
    let mut wrong = index_json.clone();
    wrong["weight_map"]["x"] = json!("model-00002-of-00002.safetensors");
    std::fs::write(&index_path, serde_json::to_vec(&wrong).expect("json")).expect("write");
    let (_, msg) = open_err(&dir.0, &index_path);
    assert!(msg.contains("tensor 'x'") && msg.contains("does not hold it"), "{msg}");

    // A shard name that leaves the directory.
    let mut escape = index_json.clone();
    escape["weight_map"]["x"] = json!("../model-00001-of-00002.safetensors");
    std::fs::write(&index_path, serde_json::to_vec(&escape).expect("json")).expect("write");
    let (_, msg) = open_err(&dir.0, &index_path);
    assert!(msg.contains("not a plain file name"), "{msg}");

    // Not an index at all.
    std::fs::write(&index_path, b"{\"weights\": 1}").expect("write");
    let (_, msg) = open_err(&dir.0, &index_path);
    assert!(msg.contains("weight_map"), "{msg}");

    // The same tensor in two shards.
    std::fs::write(&index_path, serde_json::to_vec(&index_json).expect("json")).expect("write");
    let shard1 = dir.write("model-00001-of-00002.safetensors", &st_bytes(&shard("y", 0), &[1; 8]));
    let (_, msg) = open_err(&dir.0, &shard1);
    assert!(msg.contains("tensor 'y'") && msg.contains("another shard"), "{msg}");
}

#[test]
fn missing_or_bad_config_json() {
    let dir = TempDir::new();
    let file = dir.write("model.safetensors", &good_file());
    let (_, msg) = open_err(&file, &dir.path("config.json"));
    assert!(msg.contains("config.json is missing"), "{msg}");
    let (_, msg) = open_err(&dir.0, &dir.path("config.json"));
    assert!(msg.contains("config.json is missing"), "{msg}");
    dir.write("config.json", b"{\"model_type\": ");
    let (_, msg) = open_err(&file, &dir.path("config.json"));
    assert!(msg.contains("not valid JSON"), "{msg}");
    dir.write("config.json", b"[1, 2]");
    let (_, msg) = open_err(&file, &dir.path("config.json"));
    assert!(msg.contains("not a JSON object"), "{msg}");
}

#[test]
fn directory_without_weights() {
    let dir = TempDir::new();
    dir.write("config.json", &config());
    let (_, msg) = open_err(&dir.0, &dir.0);
    assert!(msg.contains("no model.safetensors or model.safetensors.index.json"), "{msg}");
}

/// Writes `bytes` as `model.safetensors` beside a good config.json and returns the open error's message.
fn file_err(bytes: &[u8]) -> (Error, String) {
    let dir = TempDir::new();
    dir.write("config.json", &config());
    let file = dir.write("model.safetensors", bytes);
    open_err(&file, &file)
}

#[test]
fn header_length_and_truncation() {
    let good = good_file();
    let mut past_eof = good.clone();
    past_eof[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let (_, msg) = file_err(&past_eof);
    assert!(msg.contains("header length") && msg.contains("exceeds"), "{msg}");
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_, msg) = file_err(&huge);
    assert!(msg.contains("header length 18446744073709551615"), "{msg}");
    let (_, msg) = file_err(&good[..5]);
    assert!(msg.contains("truncated"), "{msg}");
    // Data cut: the last tensor's end is past the end of the file.
    let (_, msg) = file_err(&good[..good.len() - 1]);
    assert!(msg.contains("tensor 'c'") && msg.contains("outside the data section"), "{msg}");
    // Every cut of the header fails (through parse_header too).
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().expect("8")) as usize;
    for cut in 0..header_end {
        let (_, msg) = file_err(&good[..cut]);
        assert!(msg.contains("truncated") || msg.contains("exceeds") || msg.contains("too short"), "{cut}: {msg}");
    }
}

#[test]
fn bad_json_and_entries() {
    let cases: Vec<(Value, &str)> = vec![
        (json!([1, 2, 3]), "not a JSON object of tensors"),
        (json!({"a": {"dtype": "F32", "shape": [2]}}), "tensor 'a': needs"),
        (json!({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}), "tensor 'a': needs"),
        (json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 9999]}}), "outside the data section"),
        (json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 4]}}), "outside the data section"),
        (json!({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}), "span 8 bytes, but F32 [3] needs 12"),
        (
            json!({"a": {"dtype": "F32", "shape": [4294967296u64, 4294967296u64, 2], "data_offsets": [0, 8]}}),
            "overflows",
        ),
        (
            json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}),
            "tensors 'a' and 'b' overlap",
        ),
    ];
    for (header, want) in cases {
        let (_, msg) = file_err(&st_bytes(&header, &[0u8; 16]));
        assert!(msg.contains(want), "want {want:?}: {msg}");
    }
    let mut bad = st_bytes(&json!({}), &[]);
    bad.extend_from_slice(b"{\"a\": ");
    bad[..8].copy_from_slice(&8u64.to_le_bytes());
    let (_, msg) = file_err(&bad);
    assert!(msg.contains("not a JSON object of tensors"), "{msg}");
}

#[test]
fn unsupported_dtypes_name_the_tensor() {
    for dtype in ["I8", "F64", "U8", "F8_E4M3", "BOOL"] {
        let header = json!({"model.layers.0.mlp.gate.weight": {"dtype": dtype, "shape": [1], "data_offsets": [0, 1]}});
        let (e, msg) = file_err(&st_bytes(&header, &[0u8; 8]));
        assert!(matches!(e, Error::UnsupportedDType { type_id: u32::MAX, .. }), "{e:?}");
        assert!(msg.contains(dtype) && msg.contains("model.layers.0.mlp.gate.weight"), "{msg}");
    }
}

#[test]
fn parse_header_from_bytes() {
    let good = good_file();
    let n =
        safetensors::header_len(good[..8].try_into().expect("8"), good.len() as u64, Path::new("mem")).expect("len");
    let tensors =
        safetensors::parse_header(&good[8..8 + n as usize], good.len() as u64, Path::new("mem")).expect("parse");
    assert_eq!(tensors.len(), 3);
    assert_eq!(tensors[0].offset, 8 + n);
    let e = safetensors::parse_header(b"{}", 1, Path::new("mem")).expect_err("header past the end").to_string();
    assert!(e.contains("mem") && e.contains("truncated"), "{e}");
}

/// Opens a safetensors file or model directory named by `FLASH_MOE_SAFETENSORS` and prints every tensor with its
/// first bytes, to compare with the `safetensors` Python package.
#[test]
#[ignore = "needs FLASH_MOE_SAFETENSORS=path/to/model_dir_or_file"]
fn real_model_from_env() {
    let path = PathBuf::from(std::env::var_os("FLASH_MOE_SAFETENSORS").expect("set FLASH_MOE_SAFETENSORS"));
    let index = WeightIndex::open(&path).expect("open");
    for t in &index.tensors {
        let mut buf = vec![0u8; t.len as usize];
        index.read_tensor(t, &mut buf).expect("read");
        let head: String = buf.iter().take(8).map(|b| format!("{b:02x}")).collect();
        println!("{} {} {:?} {} {head}", t.name, t.dtype.name(), t.shape, t.len);
    }
}
