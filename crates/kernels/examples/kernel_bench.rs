//! Single-thread GB/s of weight bytes through `vec_dot`, per format and instruction set, over a 4096 x 4096
//! matrix (a gemv: every row against one quantized activation row). Each kernel is first checked against the
//! scalar reference on a few rows. Reports the fastest pass (the machine may be shared).
//!
//! Then the prefill case: every row against 4 activation rows (tokens), as 4 `vec_dot` calls per row (what the
//! engine's matmul does) and as one `vec_dot_x4` call, in GB/s of weight bytes x tokens; `vec_dot_x4` is first
//! checked to be bit-identical to the single calls.
//!
//! Then the decode case at the shapes of the benchmark MoE (hidden 1024, expert FFN 256): 1024 x 1024,
//! 256 x 1024 and 1024 x 256 matrices against one activation row, as one `vec_dot` per row and as one
//! `vec_dot_r4` per four rows, in GB/s of weight bytes (these matrices fit in cache: this measures the
//! per-row overhead the four-row kernel removes, not memory bandwidth); `vec_dot_r4` is first checked to be
//! bit-identical to the single calls.
//!
//! On an aarch64 CPU with dotprod, NEON appears twice: base NEON (`neon`) and with its `sdot` integer dots
//! (`neon+sdot`); both give the same bits.
//!
//! `cargo run -p flash-moe-kernels --release --example kernel_bench [rows] [cols]`, or `... kernel_bench r4`
//! for the decode comparison alone.

mod common;
use common::simd_tables;
use kernels::{f32_to_bf16, f32_to_f16, DType, Isa, Kernels};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const WEIGHT_TYPES: [DType; 11] = [
    DType::Q4_K,
    DType::Q6_K,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q5_K,
    DType::F16,
    DType::BF16,
    DType::F32,
];

/// Random quants with realistic f16 scales (random scale bytes could be NaN or huge).
fn random_matrix(rng: &mut SmallRng, t: DType, rows: usize, cols: usize) -> Vec<u8> {
    let row_bytes = t.row_bytes(cols).expect("cols is a whole number of blocks");
    let mut m: Vec<u8> = (0..rows * row_bytes).map(|_| rng.gen()).collect();
    let scale = |rng: &mut SmallRng| f32_to_f16(rng.gen_range(-0.01f32..0.01)).to_le_bytes();
    let fields: &[usize] = match t {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => &[],
    };
    match t {
        DType::F32 => m.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&rng.gen_range(-1f32..1.0).to_le_bytes())),
        DType::F16 => m.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&scale(rng))),
        DType::BF16 => {
            m.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&f32_to_bf16(rng.gen_range(-1f32..1.0)).to_le_bytes()))
        }
        _ => {
            for block in m.chunks_exact_mut(t.block_bytes()) {
                for &off in fields {
                    block[off..off + 2].copy_from_slice(&scale(rng));
                }
            }
        }
    }
    m
}

/// Fastest of several passes of `pass` (at least 3, and at least 300 ms), in seconds.
fn best_time(mut pass: impl FnMut()) -> f64 {
    let (mut best, start) = (f64::MAX, Instant::now());
    let mut passes = 0;
    while passes < 3 || start.elapsed() < Duration::from_millis(300) {
        let t0 = Instant::now();
        pass();
        best = best.min(t0.elapsed().as_secs_f64());
        passes += 1;
    }
    best
}

/// GB/s of weight bytes x 4 tokens through 4 `vec_dot` calls per row, and through one `vec_dot_x4` per row.
fn bench_x4(rng: &mut SmallRng, rows: usize, cols: usize) {
    println!("\nprefill {rows} x {cols} x 4 tokens, single thread; GB/s of weight bytes x tokens");
    println!("{:<6} {:<9} {:>10} {:>10} {:>8}", "format", "isa", "4 x dot", "dot_x4", "speedup");
    let scalar = Kernels::with_isa(Isa::Scalar).expect("scalar is always available");
    for t in [DType::Q4_K, DType::Q6_K, DType::Q8_0] {
        let m = random_matrix(rng, t, rows, cols);
        let row_bytes = m.len() / rows;
        let xq: Vec<Vec<u8>> = (0..4)
            .map(|_| {
                let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1f32..1.0)).collect();
                let mut xq = vec![0u8; t.vec_dot_type().row_bytes(cols).expect("whole blocks")];
                scalar.quantize_row(t.vec_dot_type(), &x, &mut xq);
                xq
            })
            .collect();
        let xs = [&xq[0][..], &xq[1][..], &xq[2][..], &xq[3][..]];
        for (name, k) in simd_tables() {
            let (dot, dot4) = (k.vec_dot(t), k.vec_dot_x4(t));
            for row in m.chunks_exact(row_bytes).step_by(rows / 8 + 1) {
                let mut out = [0f32; 4];
                dot4(cols, row, xs, &mut out);
                let want = xs.map(|x| dot(cols, row, x));
                assert!(out.map(f32::to_bits) == want.map(f32::to_bits), "{} {name}: x4 differs", t.name());
            }
            let mut sink = 0f32;
            let single = best_time(|| {
                for row in m.chunks_exact(row_bytes) {
                    for x in xs {
                        sink += dot(cols, row, x);
                    }
                }
            });
            let x4 = best_time(|| {
                let mut out = [0f32; 4];
                for row in m.chunks_exact(row_bytes) {
                    dot4(cols, row, xs, &mut out);
                    sink += out[0];
                }
            });
            std::hint::black_box(sink);
            let gbs = |secs: f64| 4.0 * m.len() as f64 / secs / 1e9;
            println!("{:<6} {name:<9} {:>10.2} {:>10.2} {:>7.2}x", t.name(), gbs(single), gbs(x4), single / x4);
        }
    }
}

/// GB/s of weight bytes through one `vec_dot` per row, and through one `vec_dot_r4` per four rows, for the
/// decode shapes of the benchmark model.
fn bench_r4(rng: &mut SmallRng) {
    println!("\ndecode: matrix x 1 activation row, single thread; GB/s of weight bytes");
    println!("{:<6} {:<9} {:>11} {:>10} {:>10} {:>8}", "format", "isa", "rows x cols", "4 x dot", "dot_r4", "speedup");
    let scalar = Kernels::with_isa(Isa::Scalar).expect("scalar is always available");
    for t in [DType::Q4_K, DType::Q6_K, DType::Q8_0] {
        for (rows, cols) in [(1024, 1024), (256, 1024), (1024, 256)] {
            let m = random_matrix(rng, t, rows, cols);
            let row_bytes = m.len() / rows;
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1f32..1.0)).collect();
            let mut xq = vec![0u8; t.vec_dot_type().row_bytes(cols).expect("whole blocks")];
            scalar.quantize_row(t.vec_dot_type(), &x, &mut xq);
            for (name, k) in simd_tables() {
                let (dot, dot_r4) = (k.vec_dot(t), k.vec_dot_r4(t));
                let quads = || {
                    m.chunks_exact(4 * row_bytes).map(|q| {
                        let r = |i: usize| &q[i * row_bytes..(i + 1) * row_bytes];
                        [r(0), r(1), r(2), r(3)]
                    })
                };
                for ws in quads() {
                    let mut out = [0f32; 4];
                    dot_r4(cols, ws, &xq, &mut out);
                    let want = ws.map(|w| dot(cols, w, &xq));
                    assert!(out.map(f32::to_bits) == want.map(f32::to_bits), "{} {name}: r4 differs", t.name());
                }
                let mut out = vec![0f32; rows];
                let single = best_time(|| {
                    for (o, row) in out.iter_mut().zip(m.chunks_exact(row_bytes)) {
                        *o = dot(cols, row, &xq);
                    }
                    std::hint::black_box(&mut out);
                });
                let r4 = best_time(|| {
                    for (o, ws) in out.chunks_exact_mut(4).zip(quads()) {
                        let o: &mut [f32; 4] = o.try_into().expect("chunks of 4");
                        dot_r4(cols, ws, &xq, o);
                    }
                    std::hint::black_box(&mut out);
                });
                let gbs = |secs: f64| m.len() as f64 / secs / 1e9;
                let shape = format!("{rows}x{cols}");
                println!(
                    "{:<6} {name:<9} {:>11} {:>10.2} {:>10.2} {:>7.2}x",
                    t.name(),
                    shape,
                    gbs(single),
                    gbs(r4),
                    single / r4
                );
            }
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("r4") {
        bench_r4(&mut SmallRng::seed_from_u64(42));
        return;
    }
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().and_then(Result::ok).unwrap_or(4096);
    let cols = args.next().and_then(Result::ok).unwrap_or(4096);
    assert!(cols % 256 == 0, "cols must be a multiple of 256");
    let mut rng = SmallRng::seed_from_u64(42);
    let scalar = Kernels::with_isa(Isa::Scalar).expect("scalar is always available");
    let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1f32..1.0)).collect();
    println!("gemv {rows} x {cols}, single thread; GB/s of weight bytes read by vec_dot");
    // One column per instruction set, and one for NEON with sdot; "-" where this CPU lacks it.
    let tables: Vec<(&str, Kernels)> = [("scalar", scalar)].into_iter().chain(simd_tables()).collect();
    let columns = ["scalar", "avx2", "avx512", "neon", "neon+sdot"];
    let header: String = columns.iter().map(|name| format!(" {name:>10}")).collect();
    println!("{:<6} {:>10}{header}", "format", "MB");
    for t in WEIGHT_TYPES {
        let m = random_matrix(&mut rng, t, rows, cols);
        let row_bytes = m.len() / rows;
        let mut xq = vec![0u8; t.vec_dot_type().row_bytes(cols).expect("whole blocks")];
        scalar.quantize_row(t.vec_dot_type(), &x, &mut xq);
        let mut line = format!("{:<6} {:>10.1}", t.name(), m.len() as f64 / 1e6);
        for name in columns {
            let Some(&(_, k)) = tables.iter().find(|(n, _)| *n == name) else {
                line += &format!(" {:>10}", "-");
                continue;
            };
            let dot = k.vec_dot(t);
            // Correctness first: a few rows against the scalar reference.
            for r in [0, rows / 2, rows - 1] {
                let row = &m[r * row_bytes..(r + 1) * row_bytes];
                let (a, b) = (dot(cols, row, &xq), scalar.vec_dot(t)(cols, row, &xq));
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{} {name}: {a} vs scalar {b}", t.name());
            }
            // Fastest of many passes: the machine is shared, and the minimum is the least disturbed pass.
            let mut sink = 0f32;
            let best = best_time(|| {
                for row in m.chunks_exact(row_bytes) {
                    sink += dot(cols, row, &xq);
                }
            });
            std::hint::black_box(sink);
            line += &format!(" {:>10.2}", m.len() as f64 / best / 1e9);
        }
        println!("{line}");
    }
    bench_x4(&mut rng, rows, cols);
    bench_r4(&mut rng);
}
