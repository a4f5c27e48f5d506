//! Helpers shared by the integration tests: fixture paths, .npy reading, running a model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use engine::formats::WeightIndex;
use engine::models::{LoadOptions, Logits, Model};
use engine::ops::Cpu;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The reference.json of a fixture.
pub fn reference(name: &str) -> serde_json::Value {
    let p = fixture(name).join("reference.json");
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).expect("reference.json parses")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("an id array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// Reads a little-endian float32 C-order .npy file: (shape, data).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}: not .npy", path.display());
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&b[start..start + hlen]).expect("ascii header");
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_str = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).expect("shape");
    let shape: Vec<usize> =
        shape_str.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().expect("dim")).collect();
    let data: Vec<f32> =
        b[start + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>(), "{}: data length", path.display());
    (shape, data)
}

pub fn load(path: &Path) -> Model {
    let index = WeightIndex::open(path).unwrap_or_else(|e| panic!("{e}"));
    Model::load(&index, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Logits of every position of `tokens` in one batch: [n, n_vocab].
pub fn logits_all(model: &Model, cpu: &Cpu, tokens: &[u32]) -> Vec<f32> {
    let mut s = model.new_session(tokens.len() + 32);
    model.forward(cpu, &mut s, tokens, Logits::All).expect("forward").to_vec()
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy continuation of `prompt` for `n` tokens; also returns the logits of each greedy step ([n, n_vocab],
/// the first row being the prompt's last position).
pub fn greedy(model: &Model, cpu: &Cpu, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut s = model.new_session(prompt.len() + n + 1);
    let mut logits = model.forward(cpu, &mut s, prompt, Logits::Last).expect("prefill").to_vec();
    let mut out = Vec::new();
    let mut all = Vec::new();
    for _ in 0..n {
        all.extend_from_slice(&logits);
        let t = argmax(&logits);
        out.push(t);
        logits = model.forward(cpu, &mut s, &[t], Logits::Last).expect("decode").to_vec();
    }
    (out, all)
}

/// max |a - b| / max |b|.
pub fn rel_max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max);
    d / m.max(1e-30)
}

/// Decode hit rate (0-1) of a global LRU cache of `n_slots` experts over replay steps `(layer, experts, counted)`,
/// with the cache's accounting: a step's cached experts are claimed before its misses evict anything.
pub fn lru_hit_rate(n_slots: usize, steps: &[(usize, Vec<u32>, bool)]) -> f64 {
    let n_layer = steps.iter().map(|s| s.0 + 1).max().unwrap_or(0);
    lru_hit_rate_bytes(n_slots as u64, &vec![1; n_layer], steps)
}

/// [`lru_hit_rate`] over a byte budget, each layer's experts at their own size `layer_bytes[layer]` (as the shared
/// trace's replay curve counts them).
pub fn lru_hit_rate_bytes(budget: u64, layer_bytes: &[u64], steps: &[(usize, Vec<u32>, bool)]) -> f64 {
    let mut last_use: std::collections::HashMap<(usize, u32), u64> = std::collections::HashMap::new();
    let (mut tick, mut hits, mut misses, mut used) = (0u64, 0u64, 0u64, 0u64);
    for (layer, experts, counted) in steps {
        let (cached, missing): (Vec<u32>, Vec<u32>) =
            experts.iter().partition(|&&e| last_use.contains_key(&(*layer, e)));
        hits += u64::from(*counted) * cached.len() as u64;
        misses += u64::from(*counted) * missing.len() as u64;
        for e in cached.into_iter().chain(missing) {
            tick += 1;
            if last_use.insert((*layer, e), tick).is_none() {
                used += layer_bytes[*layer];
            }
            while used > budget {
                let oldest = *last_use.iter().min_by_key(|(_, &t)| t).map(|(k, _)| k).expect("non-empty");
                last_use.remove(&oldest);
                used -= layer_bytes[oldest.0];
            }
        }
    }
    hits as f64 / (hits + misses).max(1) as f64
}
