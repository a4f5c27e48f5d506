//! A stable-Rust stand-in for the cargo-fuzz targets in `fuzz/`: mutates valid GGUF and safetensors files
//! (bit flips, interesting counts and type ids, truncations, deletions, duplications) and checks that the header
//! parsers never panic and that whatever they accept lies inside the file. Deterministic (fixed seed);
//! `FLASH_MOE_FUZZ_ITERS=n` runs longer.

use std::path::Path;

use engine::formats::gguf::{self, GgufArray, GgufValue};
use engine::formats::gguf_writer::GgufWriter;
use engine::formats::safetensors;
use kernels::DType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn iters() -> usize {
    std::env::var("FLASH_MOE_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000)
}

/// Files in `fuzz/seeds/<target>/`, plus `extra`.
fn seeds(target: &str, extra: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
    let mut out = extra;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        out.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    out
}

const U64S: [u64; 8] = [0, 1, 2, 31, 1 << 32, 1 << 60, i64::MAX as u64, u64::MAX];
const U32S: [u32; 10] = [0, 1, 4, 8, 9, 10, 12, 13, 30, u32::MAX];

fn mutate(rng: &mut SmallRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if v.is_empty() {
            break;
        }
        let at = rng.gen_range(0..v.len());
        match rng.gen_range(0..7) {
            0 => v[at] ^= 1 << rng.gen_range(0..8),
            1 => v[at] = rng.gen(),
            2 => {
                let x = U64S[rng.gen_range(0..U64S.len())].to_le_bytes();
                let n = x.len().min(v.len() - at);
                v[at..at + n].copy_from_slice(&x[..n]);
            }
            3 => {
                let x = U32S[rng.gen_range(0..U32S.len())].to_le_bytes();
                let n = x.len().min(v.len() - at);
                v[at..at + n].copy_from_slice(&x[..n]);
            }
            4 => v.truncate(at),
            5 => {
                let end = rng.gen_range(at..=v.len().min(at + 64));
                v.drain(at..end);
            }
            _ => {
                let end = rng.gen_range(at..=v.len().min(at + 64));
                let chunk = v[at..end].to_vec();
                let to = rng.gen_range(0..=v.len());
                v.splice(to..to, chunk);
            }
        }
    }
    v
}

fn check_gguf(data: &[u8]) -> bool {
    let file_len = data.len() as u64;
    let Ok((md, tensors)) = gguf::parse(data, file_len, Path::new("fuzz.gguf")) else {
        return false;
    };
    assert!(md.alignment.is_power_of_two());
    for t in &tensors {
        assert!(t.offset >= md.data_offset && t.offset + t.len <= file_len, "{t:?}");
        let row = t.shape.last().copied().unwrap_or(1);
        let rows: usize = t.shape.iter().rev().skip(1).product();
        assert_eq!(t.dtype.row_bytes(row).map(|b| (b * rows) as u64), Some(t.len), "{t:?}");
    }
    for (_, v) in md.iter() {
        let _ = v.to_string();
    }
    true
}

fn check_safetensors(data: &[u8]) -> bool {
    let path = Path::new("fuzz.safetensors");
    let file_len = data.len() as u64;
    let Some(Ok(prefix)) = data.get(..8).map(<[u8; 8]>::try_from) else {
        return false;
    };
    let Ok(n) = safetensors::header_len(prefix, file_len, path) else {
        return false;
    };
    let Ok(tensors) = safetensors::parse_header(&data[8..8 + n as usize], file_len, path) else {
        return false;
    };
    for t in &tensors {
        assert!(t.offset >= 8 + n && t.offset + t.len <= file_len, "{t:?}");
        assert_eq!((t.n_elems() * t.dtype.block_bytes()) as u64, t.len, "{t:?}");
    }
    true
}

fn small_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new(Vec::new(), "seed.gguf");
    let kvs = [
        ("general.architecture", GgufValue::String("qwen3moe".into())),
        ("qwen3moe.expert_count", GgufValue::U32(4)),
        ("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::String(vec!["a".into(), "b".into()]))),
        ("tokenizer.ggml.scores", GgufValue::Array(GgufArray::F32(vec![0.0, 1.0]))),
        ("t.nested", GgufValue::Array(GgufArray::Array(vec![GgufArray::Bool(vec![true])]))),
    ];
    for (k, v) in kvs {
        w.add_kv(k, v).expect("kv");
    }
    w.add_tensor("blk.0.ffn_up_exps.weight", DType::Q8_0, &[2, 2, 32]).expect("t");
    w.add_tensor("blk.0.ffn_gate_inp.weight", DType::F32, &[2, 4]).expect("t");
    w.write_tensor_data(&[7u8; 136]).expect("data");
    w.write_tensor_data(&[1u8; 32]).expect("data");
    w.finish().expect("finish")
}

/// Runs `iters()` mutations over `seeds`; every seed must parse unmutated.
fn run(seeds: Vec<Vec<u8>>, check: fn(&[u8]) -> bool, seed: u64) -> usize {
    assert!(!seeds.is_empty());
    for s in &seeds {
        assert!(check(s), "every seed must parse");
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut n_ok = 0;
    for _ in 0..iters() {
        let s = &seeds[rng.gen_range(0..seeds.len())];
        n_ok += usize::from(check(&mutate(&mut rng, s)));
    }
    n_ok
}

#[test]
fn gguf_mutations_never_panic() {
    let n_ok = run(seeds("gguf_header", vec![small_gguf()]), check_gguf, 1);
    println!("gguf: {n_ok} of {} mutants parsed", iters());
}

#[test]
fn safetensors_mutations_never_panic() {
    let seed = br#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}"#;
    let mut file = (seed.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(seed);
    file.extend_from_slice(&[0u8; 22]);
    let n_ok = run(seeds("safetensors_header", vec![file]), check_safetensors, 2);
    println!("safetensors: {n_ok} of {} mutants parsed", iters());
}
