//! Single-thread decode gemv through `vec_dot_r4` (four rows against one activation row) over a matrix of `rows`
//! rows of 4096 values: with many rows the matrix is far larger than the caches (memory-bound, as a model's weights
//! are), with few it fits (instruction-bound). Reports the fastest of 5 passes in GB/s of weight bytes.
//!
//! With `tokens` of 2 to 4, the same matrix against that many activation rows through `vec_dot_tile` (four rows
//! by the tokens), as an expert chosen by several sequences of a batched decode step is: whether a further token
//! costs only arithmetic the memory stream hides, or slows the stream.
//!
//! `FLASH_MOE_ISA=avx2|avx512 cargo run --release -p flash-moe-kernels --example gemv_mem [rows] [q4_k|q6_k|q8_0]
//! [tokens]`
use kernels::{DType, Kernels};
use std::time::Instant;

fn main() {
    let rows: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(65536) / 4 * 4;
    let t = match std::env::args().nth(2).as_deref() {
        Some("q6_k") => DType::Q6_K,
        Some("q8_0") => DType::Q8_0,
        _ => DType::Q4_K,
    };
    let cols = 4096;
    let k = Kernels::detect();
    let rb = t.row_bytes(cols).expect("whole blocks");
    // Pseudo-random quants with small, valid f16 scales (0x1c00 = 2^-8).
    let mut m: Vec<u8> = (0..rows * rb).map(|i| ((i.wrapping_mul(2_654_435_761)) >> 13) as u8).collect();
    let scale_at = if t == DType::Q6_K { 208 } else { 0 };
    for b in m.chunks_exact_mut(t.block_bytes()) {
        b[scale_at..scale_at + 2].copy_from_slice(&[0x00, 0x1c]);
        if t == DType::Q4_K {
            b[2..4].copy_from_slice(&[0x00, 0x1c]);
        }
    }
    let n_tok: usize = std::env::args().nth(3).and_then(|s| s.parse().ok()).unwrap_or(1).clamp(1, 4);
    let xqs: Vec<Vec<u8>> = (0..n_tok)
        .map(|j| {
            let xf: Vec<f32> = (0..cols).map(|i| ((i * 7 + j) % 13) as f32 - 6.0).collect();
            let mut xq = vec![0u8; t.vec_dot_type().row_bytes(cols).expect("whole blocks")];
            k.quantize_row(t.vec_dot_type(), &xf, &mut xq);
            xq
        })
        .collect();
    let xs: Vec<&[u8]> = xqs.iter().map(|x| &x[..]).collect();
    let dot_r4 = k.vec_dot_r4(t);
    let tile = k.vec_dot_tile(t).filter(|_| n_tok > 1);
    if n_tok > 1 && tile.is_none() {
        eprintln!("{t:?} has no tile kernel in the {:?} table", k.isa());
        std::process::exit(2);
    }
    let (mut best, mut sink) = (f64::MAX, 0f32);
    for _ in 0..5 {
        let t0 = Instant::now();
        for r in (0..rows).step_by(4) {
            let row = |i: usize| &m[(r + i) * rb..(r + i + 1) * rb];
            let ws = [row(0), row(1), row(2), row(3)];
            if let Some(tile) = tile {
                let mut out = [[0f32; 4]; 4];
                tile(cols, ws, &xs, &mut out);
                sink += out[0][0];
            } else {
                let mut out = [0f32; 4];
                dot_r4(cols, ws, xs[0], &mut out);
                sink += out[0];
            }
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let mb = (rows * rb) as f64 / 1e6;
    println!(
        "{t:?} {rows} rows ({mb:.0} MB) x {n_tok} token(s), {:?}: {:.2} GB/s of weights (checksum {sink})",
        k.isa(),
        mb / 1e3 / best
    );
}
