//! Single-thread GB/s of weight bytes through `vec_dot`, per format and instruction set, over a 4096 x 4096
//! matrix (a gemv: every row against one quantized activation row). Each kernel is first checked against the
//! scalar reference on a few rows. Reports the fastest pass (the machine may be shared).
//!
//! `cargo run -p flash-moe-kernels --release --example kernel_bench [rows] [cols]`

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

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let rows = args.next().and_then(Result::ok).unwrap_or(4096);
    let cols = args.next().and_then(Result::ok).unwrap_or(4096);
    assert!(cols % 256 == 0, "cols must be a multiple of 256");
    let mut rng = SmallRng::seed_from_u64(42);
    let scalar = Kernels::with_isa(Isa::Scalar).expect("scalar is always available");
    let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1f32..1.0)).collect();
    println!("gemv {rows} x {cols}, single thread; GB/s of weight bytes read by vec_dot");
    let isas = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];
    let header: String = isas.iter().map(|isa| format!(" {:>10}", isa.name())).collect();
    println!("{:<6} {:>10}{header}", "format", "MB");
    for t in WEIGHT_TYPES {
        let m = random_matrix(&mut rng, t, rows, cols);
        let row_bytes = m.len() / rows;
        let mut xq = vec![0u8; t.vec_dot_type().row_bytes(cols).expect("whole blocks")];
        scalar.quantize_row(t.vec_dot_type(), &x, &mut xq);
        let mut line = format!("{:<6} {:>10.1}", t.name(), m.len() as f64 / 1e6);
        for isa in isas {
            let Some(k) = Kernels::with_isa(isa) else {
                line += &format!(" {:>10}", "-");
                continue;
            };
            let dot = k.vec_dot(t);
            // Correctness first: a few rows against the scalar reference.
            for r in [0, rows / 2, rows - 1] {
                let row = &m[r * row_bytes..(r + 1) * row_bytes];
                let (a, b) = (dot(cols, row, &xq), scalar.vec_dot(t)(cols, row, &xq));
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{} {}: {a} vs scalar {b}", t.name(), isa.name());
            }
            // Fastest of many passes: the machine is shared, and the minimum is the least disturbed pass.
            let mut sink = 0f32;
            let (mut best, start) = (f64::MAX, Instant::now());
            let mut passes = 0;
            while passes < 3 || start.elapsed() < Duration::from_millis(300) {
                let t0 = Instant::now();
                for row in m.chunks_exact(row_bytes) {
                    sink += dot(cols, row, &xq);
                }
                best = best.min(t0.elapsed().as_secs_f64());
                passes += 1;
            }
            std::hint::black_box(sink);
            line += &format!(" {:>10.2}", m.len() as f64 / best / 1e9);
        }
        println!("{line}");
    }
}
