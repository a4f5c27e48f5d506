//! One decode token's attention over a long KV cache, as the engine runs it (`Exec::attention`, native
//! numerics): microseconds per layer and GB/s of KV bytes read, per cache type, at the given context lengths.
//! The fastest of several passes is reported (the machine may be shared).
//!
//! `cargo run -p flash-moe-engine --release --example attn_bench [threads] [n_head n_head_kv head_dim] [ctx...]`
//! (defaults: 2 threads, 16 / 4 / 64 heads, contexts 4096 16384 32768).

use engine::backend::{AttnScratch, Exec, Numerics};
use engine::kv_cache::{KvType, KvTypes, LayerKv};
use engine::ops::Cpu;
use std::time::Instant;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let threads = args.first().copied().unwrap_or(2);
    let (n_head, n_head_kv, hd) = match args.get(1..4) {
        Some(s) => (s[0], s[1], s[2]),
        None => (16, 4, 64),
    };
    let ctxs: Vec<usize> = if args.len() > 4 { args[4..].to_vec() } else { vec![4096, 16384, 32768] };
    let cpu = Cpu::new(threads);
    let exec = Exec::new(&cpu, Numerics::Native);
    let kv_dim = n_head_kv * hd;
    println!("threads {threads}  heads {n_head}/{n_head_kv}  head_dim {hd}");
    for t in [KvType::F32, KvType::F16, KvType::Q8_0] {
        for &n_ctx in &ctxs {
            let types = KvTypes { k: t, v: t };
            let Some(mut kv) = LayerKv::try_new(n_ctx, kv_dim, hd, types) else {
                eprintln!("cannot allocate {n_ctx} positions");
                return;
            };
            kv.write(0, &values(n_ctx * kv_dim, 1), &values(n_ctx * kv_dim, 2));
            let q = values(n_head * hd, 3);
            let mut s = AttnScratch::default();
            let mut out = vec![0.0f32; n_head * hd];
            let pos0 = n_ctx - 1;
            let passes = (200_000_000 / (n_ctx * kv_dim)).clamp(5, 200);
            let mut best = f64::MAX;
            for _ in 0..passes {
                let t0 = Instant::now();
                exec.attention(&kv, (n_head, n_head_kv, hd), &q, pos0, &mut s, &mut out, 0);
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let bytes = kv.bytes() as f64;
            println!(
                "{:>5} ctx {n_ctx:>6}  {:>9.1} us  {:>6.2} GB/s of KV",
                format!("{t:?}"),
                best * 1e6,
                bytes / best / 1e9
            );
        }
    }
}
