//! A stable-Rust stand-in for the fuzz targets of `fuzz/` that feed files other than weight headers (those are in
//! `formats_fuzz_smoke.rs`): mutates each target's seeds (bit flips, interesting numbers, truncations, deletions,
//! duplications, splices of another seed; fixed seed) and calls the same `engine::fuzz` entry point, which panics
//! on a violated property. Deterministic; `FLASH_MOE_FUZZ_ITERS=n` runs `n` iterations per target.

use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn iters(default: usize) -> usize {
    std::env::var("FLASH_MOE_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The files of `fuzz/seeds/<target>/`.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = repo().join("fuzz/seeds").join(target);
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("seeds").filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let out: Vec<Vec<u8>> = paths.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// Numbers that break things, as text (the files here are JSON and CSV).
const NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-0.0",
    "NaN",
    "9007199254740993",
    "100000000000",
];

fn mutate(rng: &mut SmallRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=v.len());
        match rng.gen_range(0..8) {
            0 if at < v.len() => v[at] ^= 1 << rng.gen_range(0..8),
            1 if at < v.len() => v[at] = rng.gen(),
            2 => {
                // Replace a run of digits (or insert) with an interesting number.
                let end = (at..v.len()).find(|&i| !v[i].is_ascii_digit()).unwrap_or(v.len());
                v.splice(at..end, NUMBERS[rng.gen_range(0..NUMBERS.len())].bytes());
            }
            3 => v.truncate(at),
            4 => {
                let end = rng.gen_range(at..=v.len().min(at + 32));
                v.drain(at..end);
            }
            5 => {
                let end = rng.gen_range(at..=v.len().min(at + 64));
                let chunk = v[at..end].to_vec();
                let to = rng.gen_range(0..=v.len());
                v.splice(to..to, chunk);
            }
            6 if !other.is_empty() => {
                let from = rng.gen_range(0..other.len());
                let end = rng.gen_range(from..=other.len().min(from + 64));
                v.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                let punct = b"{}[],:\"\\\0\x01";
                v.insert(at.min(v.len()), punct[rng.gen_range(0..punct.len())]);
            }
        }
    }
    v
}

/// Runs `check` on every seed, then on `n` mutations.
fn run(target: &str, n: usize, check: impl Fn(&[u8])) {
    let seeds = seeds(target);
    for s in &seeds {
        check(s);
    }
    let mut rng = SmallRng::seed_from_u64(0x5eed_f00d ^ target.len() as u64);
    for i in 0..n {
        let seed = &seeds[i % seeds.len()];
        let other = &seeds[rng.gen_range(0..seeds.len())];
        let input = mutate(&mut rng, seed, other);
        check(&input);
    }
}

#[test]
fn model_config() {
    let fixtures = repo().join("tests/fixtures");
    run("model_config", iters(300), |d| engine::fuzz::model_config(d, &fixtures));
}

#[test]
fn chat_template() {
    run("chat_template", iters(20_000), engine::fuzz::chat_template);
}

#[test]
fn tokenizer_json() {
    run("tokenizer_json", iters(300), engine::fuzz::tokenizer_json);
}

#[test]
fn hot_file() {
    run("hot_file", iters(50_000), engine::fuzz::hot_file);
}

#[test]
fn routing_profile() {
    run("routing_profile", iters(50_000), engine::fuzz::routing_profile);
}

#[test]
fn route_trace() {
    run("route_trace", iters(50_000), engine::fuzz::route_trace);
}
