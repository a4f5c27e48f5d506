//! Single-thread speed of the MLX affine dot kernels (F32 against Q8_A activations), on a matrix that fits in
//! cache (compute only) and on one that does not (weights from RAM).
//!
//!   cargo run --release -p flash-moe-kernels --example affine_bench [-- ROWS COLS]

use std::hint::black_box;
use std::time::Instant;

use kernels::affine::quantize_affine_ref;
use kernels::{AffineFormat, AffineRow, DType, Kernels};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let cols = args.get(1).copied().unwrap_or(2048);
    let k = Kernels::detect();
    for bits in [4u32, 8] {
        for group in [32usize, 64, 128] {
            let f = AffineFormat::new(bits, group, DType::BF16).expect("format");
            for rows in [args.first().copied().unwrap_or(256), 65536] {
                let x: Vec<f32> = (0..cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
                let (qb, pb) = (f.q_bytes(cols), f.param_bytes(cols));
                let (mut q, mut s, mut b) = (vec![0u8; rows * qb], vec![0u8; rows * pb], vec![0u8; rows * pb]);
                for r in 0..rows.min(64) {
                    let w: Vec<f32> = (0..cols).map(|i| (((i + 13 * r) * 31 % 97) as f32 - 48.0) / 50.0).collect();
                    quantize_affine_ref(
                        f,
                        &w,
                        &mut q[r * qb..(r + 1) * qb],
                        &mut s[r * pb..(r + 1) * pb],
                        &mut b[r * pb..(r + 1) * pb],
                    );
                }
                for r in 64..rows {
                    let src = (r % 64) * qb;
                    q.copy_within(src..src + qb, r * qb);
                    let srcp = (r % 64) * pb;
                    s.copy_within(srcp..srcp + pb, r * pb);
                    b.copy_within(srcp..srcp + pb, r * pb);
                }
                let row = |r: usize| AffineRow {
                    q: &q[r * qb..(r + 1) * qb],
                    scales: &s[r * pb..(r + 1) * pb],
                    biases: &b[r * pb..(r + 1) * pb],
                };
                let xf: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
                let mut xq = vec![0u8; DType::Q8_A.row_bytes(cols).expect("blocks")];
                k.quantize_row(DType::Q8_A, &x, &mut xq);
                let reps = (4 << 20) / (rows * cols / 256).max(1) + 1;
                let time = |name: &str, dot: kernels::affine::AffineDotFn, xr: &[u8]| {
                    let t = Instant::now();
                    let mut acc = 0.0f32;
                    for _ in 0..reps {
                        let mut r = 0;
                        while r + 4 <= rows {
                            let mut o = [0.0f32; 4];
                            for (i, oi) in o.iter_mut().enumerate() {
                                *oi = dot(f, cols, row(r + i), black_box(xr));
                            }
                            acc += o[0] + o[1] + o[2] + o[3];
                            r += 4;
                        }
                    }
                    let ns = t.elapsed().as_nanos() as f64 / (reps * rows) as f64;
                    let gbs = (qb + 2 * pb) as f64 / ns;
                    println!("{bits}-bit g{group} {rows}x{cols} {name}: {ns:8.1} ns/row  {gbs:6.2} GB/s  ({acc:e})");
                };
                let time_r4 = |name: &str, dot: kernels::affine::AffineDotR4Fn, xr: &[u8]| {
                    let t = Instant::now();
                    let mut acc = 0.0f32;
                    for _ in 0..reps {
                        let mut r = 0;
                        while r + 4 <= rows {
                            let mut o = [0.0f32; 4];
                            dot(f, cols, [row(r), row(r + 1), row(r + 2), row(r + 3)], black_box(xr), &mut o);
                            acc += o[0] + o[1] + o[2] + o[3];
                            r += 4;
                        }
                    }
                    let ns = t.elapsed().as_nanos() as f64 / (reps * rows) as f64;
                    let gbs = (qb + 2 * pb) as f64 / ns;
                    println!("{bits}-bit g{group} {rows}x{cols} {name}: {ns:8.1} ns/row  {gbs:6.2} GB/s  ({acc:e})");
                };
                time("f32   ", k.affine_dot(f), &xf);
                time("q8    ", k.affine_dot_q8(f), &xq);
                time_r4("f32 r4", k.affine_dot_r4(f), &xf);
                time_r4("q8 r4 ", k.affine_dot_q8_r4(f), &xq);
            }
        }
    }
}
