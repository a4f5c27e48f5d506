//! Single-thread prompt-batch matrix products (`rows x cols` weights times `tokens` activation rows) at the
//! shapes of the benchmark MoE (hidden 1024, expert FFN 256; a 64-token batch gives each of 32 experts about
//! 8 tokens), through the two ways the engine can run them: one `vec_dot_x4` per row and group of four tokens,
//! and one `vec_dot_tile` per four rows and four tokens where the table has it. Every output is first checked
//! bit for bit against `vec_dot`. Reports the fastest pass in GMAC/s (multiply-adds of weight values). On an
//! aarch64 CPU with dotprod, NEON runs twice: base NEON (`neon`) and with `sdot` (`neon+sdot`).
//!
//! `cargo run --release -p flash-moe-kernels --example gemm_bench [q4_k|q6_k|q8_0]`
mod common;
use common::simd_tables;
use kernels::{f32_to_f16, DType, Isa, Kernels};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// Random quants with small f16 scales (random scale bytes could be NaN or huge).
fn random_matrix(rng: &mut SmallRng, t: DType, rows: usize, cols: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..rows * t.row_bytes(cols).expect("whole blocks")).map(|_| rng.gen()).collect();
    let fields: &[usize] = match t {
        DType::Q8_0 => &[0],
        DType::Q4_K => &[0, 2],
        _ => &[208],
    };
    for block in m.chunks_exact_mut(t.block_bytes()) {
        for &off in fields {
            block[off..off + 2].copy_from_slice(&f32_to_f16(rng.gen_range(-0.01f32..0.01)).to_le_bytes());
        }
    }
    m
}

/// Fastest of several passes (at least 3 and 200 ms), in seconds.
fn best_time(mut pass: impl FnMut()) -> f64 {
    let (mut best, start, mut n) = (f64::MAX, Instant::now(), 0);
    while n < 3 || start.elapsed() < Duration::from_millis(200) {
        let t0 = Instant::now();
        pass();
        best = best.min(t0.elapsed().as_secs_f64());
        n += 1;
    }
    best
}

/// `out[t * rows + r]` through `vec_dot_x4`, rows outer (the weight row stays in L1 for all tokens).
fn by_x4(k: &Kernels, t: DType, cols: usize, w: &[&[u8]], x: &[&[u8]], out: &mut [f32]) {
    let dot4 = k.vec_dot_x4(t);
    let rows = w.len();
    for (r, wr) in w.iter().enumerate() {
        for (q, xq) in x.chunks_exact(4).enumerate() {
            let mut v = [0f32; 4];
            dot4(cols, wr, [xq[0], xq[1], xq[2], xq[3]], &mut v);
            for (i, vi) in v.into_iter().enumerate() {
                out[(4 * q + i) * rows + r] = vi;
            }
        }
    }
}

/// The same through `vec_dot_tile`, four rows outer.
fn by_tile(k: &Kernels, t: DType, cols: usize, w: &[&[u8]], x: &[&[u8]], out: &mut [f32]) {
    let tile = k.vec_dot_tile(t).expect("a tile kernel");
    let rows = w.len();
    for (p, wq) in w.chunks_exact(4).enumerate() {
        for (q, xq) in x.chunks_exact(4).enumerate() {
            let mut v = [[0f32; 4]; 4];
            tile(cols, [wq[0], wq[1], wq[2], wq[3]], xq, &mut v);
            for (i, vi) in v.iter().enumerate() {
                out[(4 * q + i) * rows + 4 * p..(4 * q + i) * rows + 4 * p + 4].copy_from_slice(vi);
            }
        }
    }
}

fn main() {
    let t = match std::env::args().nth(1).as_deref() {
        Some("q6_k") => DType::Q6_K,
        Some("q8_0") => DType::Q8_0,
        _ => DType::Q4_K,
    };
    let mut rng = SmallRng::seed_from_u64(7);
    let scalar = Kernels::with_isa(Isa::Scalar).expect("scalar is always available");
    println!("{} prompt products, single thread, GMAC/s", t.name());
    println!("{:<9} {:>16} {:>9} {:>9} {:>8}", "isa", "rows x cols x tok", "x4", "tile", "speedup");
    for (rows, cols, n_tok) in [(256, 1024, 8), (1024, 256, 8), (1024, 1024, 64), (4096, 1024, 64)] {
        let m = random_matrix(&mut rng, t, rows, cols);
        let rb = m.len() / rows;
        let w: Vec<&[u8]> = m.chunks_exact(rb).collect();
        let xq: Vec<Vec<u8>> = (0..n_tok)
            .map(|_| {
                let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1f32..1.0)).collect();
                let mut q = vec![0u8; t.vec_dot_type().row_bytes(cols).expect("whole blocks")];
                scalar.quantize_row(t.vec_dot_type(), &x, &mut q);
                q
            })
            .collect();
        let x: Vec<&[u8]> = xq.iter().map(|q| &q[..]).collect();
        for (name, k) in simd_tables() {
            let dot = k.vec_dot(t);
            let want: Vec<u32> = (0..n_tok)
                .flat_map(|tk| w.iter().map(move |wr| (tk, wr)))
                .map(|(tk, wr)| dot(cols, wr, x[tk]).to_bits())
                .collect();
            let mut out = vec![0f32; rows * n_tok];
            by_x4(&k, t, cols, &w, &x, &mut out);
            assert!(out.iter().map(|v| v.to_bits()).eq(want.iter().copied()), "{name}: x4 differs");
            let x4 = best_time(|| by_x4(&k, t, cols, &w, &x, &mut out));
            let tile = k.vec_dot_tile(t).map(|_| {
                by_tile(&k, t, cols, &w, &x, &mut out);
                assert!(out.iter().map(|v| v.to_bits()).eq(want.iter().copied()), "{name}: tile differs");
                best_time(|| by_tile(&k, t, cols, &w, &x, &mut out))
            });
            let gmacs = |s: f64| (rows * cols * n_tok) as f64 / s / 1e9;
            let shape = format!("{rows}x{cols}x{n_tok}");
            match tile {
                Some(s) => println!("{name:<9} {shape:>16} {:>9.1} {:>9.1} {:>7.2}x", gmacs(x4), gmacs(s), x4 / s),
                None => println!("{name:<9} {shape:>16} {:>9.1} {:>9} {:>8}", gmacs(x4), "-", "-"),
            }
        }
    }
}
