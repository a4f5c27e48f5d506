//! MLX directories through the weight index: packed weights get their MLX type and logical shape, every expert
//! of a stacked `switch_mlp` projection is three byte ranges, and broken or unsupported quantization configs are
//! refused with a message naming the problem.

mod common;

use std::path::Path;

use common::*;
use engine::formats::mlx::{planes, Quantization};
use engine::formats::WeightIndex;
use kernels::DType;

const FIXTURE: &str = "mlx/qwen3moe-h64-4bit-g32";

fn open(path: &Path) -> WeightIndex {
    WeightIndex::open(path).unwrap_or_else(|e| panic!("{e}"))
}

/// A temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the fixture with `edit` applied to its config.json.
fn with_config(edit: impl FnOnce(&mut serde_json::Value)) -> TempDir {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = TempDir(std::env::temp_dir().join(format!("flash-moe-formats-mlx-{}-{n}", std::process::id())));
    std::fs::create_dir_all(dir.path()).expect("temp dir");
    for f in std::fs::read_dir(fixture(FIXTURE)).expect("fixture") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, dir.path().join(f.file_name().expect("name"))).expect("copy");
    }
    let p = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
    edit(&mut cfg);
    std::fs::write(&p, serde_json::to_vec(&cfg).expect("json")).expect("write");
    dir
}

#[test]
fn packed_weights_have_their_mlx_type_and_logical_shape() {
    let index = open(&fixture(FIXTURE));
    let t = index.require("model.layers.0.mlp.switch_mlp.gate_proj.weight").expect("gate");
    assert_eq!((t.dtype, t.shape.clone()), (DType::MLX_Q4, vec![8, 32, 64]));
    assert_eq!(t.len, 8 * 32 * 64 / 2);
    let p = planes(&index, t).expect("planes").expect("an MLX weight");
    assert_eq!((p.format.bits, p.format.group, p.format.param), (4, 32, DType::BF16));
    assert_eq!(p.scales.shape, vec![8, 32, 2]);
    // The router is kept at 8 bits in groups of 64 by mlx-lm's Qwen3-MoE predicate.
    let router = index.require("model.layers.0.mlp.gate.weight").expect("router");
    assert_eq!((router.dtype, router.shape.clone()), (DType::MLX_Q8, vec![8, 64]));
    assert_eq!(planes(&index, router).expect("planes").map(|p| p.format.group), Some(64));
    // Norms are plain tensors.
    assert!(planes(&index, index.require("model.norm.weight").expect("norm")).expect("ok").is_none());
}

#[test]
fn each_expert_is_three_ranges_per_projection() {
    let model = load(&fixture(FIXTURE));
    let layout = model.expert_layout();
    let l0 = layout.layers[0].as_ref().expect("a MoE layer");
    for p in l0.projs() {
        let parts: Vec<_> = p.parts(3).collect();
        assert_eq!(parts.len(), 3);
        let (rows, cols) = (p.rows as u64, p.cols as u64);
        assert_eq!(parts[0].len, rows * cols / 2, "packed 4-bit values");
        assert_eq!(parts[1].len, rows * cols / 32 * 2, "bf16 scales");
        assert_eq!(parts[2].len, rows * cols / 32 * 2, "bf16 biases");
        assert_eq!(p.expert_bytes(), parts.iter().map(|s| s.len).sum::<u64>());
    }
}

#[test]
fn a_sharded_directory_reads_the_same_tensors() {
    let one = open(&fixture(FIXTURE));
    let sharded = open(&fixture("mlx/qwen3moe-h64-4bit-g32-sharded"));
    assert!(sharded.files.len() > 1);
    assert_eq!(one.tensors.len(), sharded.tensors.len());
    for t in &one.tensors {
        let u = sharded.require(&t.name).expect("same names");
        assert_eq!((t.dtype, &t.shape, t.len), (u.dtype, &u.shape, u.len), "{}", t.name);
    }
}

fn open_err(dir: &Path) -> String {
    match WeightIndex::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_modes_and_inconsistent_configs_are_refused() {
    let dir = with_config(|c| c["quantization"]["mode"] = "mxfp4".into());
    assert!(open_err(dir.path()).contains("mxfp4"), "{}", open_err(dir.path()));
    // 8 bits declared for a 4-bit file: the packed words then hold half the columns, which the scales contradict.
    let dir = with_config(|c| c["quantization"]["bits"] = 8.into());
    let e = open_err(dir.path());
    assert!(e.contains("expected") || e.contains("groups"), "{e}");
    let dir = with_config(|c| c["quantization"]["bits"] = 7.into());
    assert!(open_err(dir.path()).contains("bits 7"), "{}", open_err(dir.path()));
    // Without a quantization entry the U32 tensors are not weights flash-moe knows.
    let dir = with_config(|c| {
        let o = c.as_object_mut().expect("object");
        o.remove("quantization");
        o.remove("quantization_config");
    });
    assert!(open_err(dir.path()).contains("U32"), "{}", open_err(dir.path()));
}

#[test]
fn per_layer_overrides_and_float_layers() {
    let cfg = serde_json::json!({"quantization": {"group_size": 64, "bits": 4, "a.b": {"group_size": 32, "bits": 8},
        "c": false}});
    let q = Quantization::from_config(&cfg, Path::new("config.json")).expect("ok").expect("quantized");
    assert_eq!(q.params("x").map(|p| (p.bits, p.group)), Some((4, 64)));
    assert_eq!(q.params("a.b").map(|p| (p.bits, p.group)), Some((8, 32)));
    assert_eq!(q.params("c"), None);
    let gptq = serde_json::json!({"quantization_config": {"quant_method": "gptq", "bits": 4}});
    assert!(Quantization::from_config(&gptq, Path::new("config.json")).expect("ok").is_none());
}
