//! `flash-moe bench --parallel N,...`: several sequences decoded together through one forward pass, as `serve`
//! batches its clients, against one sequence; and, given a llama.cpp build, `llama-batched-bench` with the same
//! counts on the same file.
//!
//! Every sequence gets its own pseudo-random prompt and pseudo-random decode tokens (as llama-batched-bench
//! feeds them), so the sequences route independently: what several users sharing one decode loop look like to the
//! experts, without the sampling of any one model.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::formats::WeightIndex;
use engine::models::{LoadOptions, Model};
use engine::ops::Cpu;
use engine::session::{Scratch, Session};

use super::BenchArgs;
use crate::mib;

/// The load options of a parallel run: every sequence's state beyond the first comes off the memory budget
/// first (the engine's memory plan counts one), as in `serve`. Refuses what a parallel run cannot measure before
/// anything is loaded.
pub fn load_options(a: &BenchArgs, index: &WeightIndex, n_ctx: usize) -> Result<LoadOptions> {
    if a.n_gen == 0 {
        bail!("--parallel measures decode: --n-gen must be at least 1");
    }
    if a.n_depth > 0 {
        bail!("--parallel does not take --n-depth (each sequence starts empty, as in llama-batched-bench)");
    }
    let n_max = a.parallel.iter().copied().max().unwrap_or(1);
    let kinds = engine::models::state_kinds(index)?;
    let per_seq = engine::session::session_bytes_max(&kinds, n_ctx, a.model.kv_types()?);
    let extra = (n_max as u64 - 1).saturating_mul(per_seq);
    let mut load = a.model.load_options_for(index, n_ctx, false, extra)?;
    if let Err((total, source)) = crate::serve::reserve_budget(&mut load, extra) {
        bail!(
            "memory budget {} ({source}) is too small for {n_max} sequences of {n_ctx} tokens ({} each): lower \
             --parallel, --n-prompt or --n-gen",
            engine::experts::budget::human(total),
            engine::experts::budget::human(per_seq)
        );
    }
    Ok(load)
}

/// One count's result.
struct Row {
    n: usize,
    pp: f64, // aggregate prompt tok/s (the sequences' prompts run together)
    tg: f64, // aggregate decode tok/s
    step_ms: f64,
    experts_last: f64, // distinct experts a decode step used at the last MoE layer, on average
    read_mib: Option<f64>,
    expert_bytes: f64, // bytes of the distinct experts of a decode step, all layers, on average
}

pub fn main(a: &BenchArgs, model: &Model, cpu: &Cpu, n_threads: usize) -> Result<()> {
    let n_ctx = a.n_prompt.max(1) + a.n_gen + 1;
    let mut best: Vec<Option<Row>> = a.parallel.iter().map(|_| None).collect();
    let mut llama: Vec<Vec<(usize, f64, f64)>> = Vec::new();
    for _ in 0..a.reps {
        for (i, &n) in a.parallel.iter().enumerate() {
            let row = run(model, cpu, n, n_ctx, (a.n_prompt, a.n_gen))?;
            if best[i].as_ref().is_none_or(|b| row.tg > b.tg) {
                best[i] = Some(row);
            }
        }
        if let Some(dir) = &a.llama_cpp {
            llama.push(llama_batched_bench(dir, &a.model.model, n_threads, (a.n_prompt, a.n_gen), &a.parallel)?);
        }
    }
    let bandwidth = (a.bandwidth_mib > 0).then(|| super::memory_bandwidth(cpu, a.bandwidth_mib << 20));
    println!("model            {}", a.model.model.display());
    println!("threads          {n_threads}   isa {}", cpu.kernels.name());
    if let Some(bw) = bandwidth {
        println!("memory read      {bw:.2} GB/s ({n_threads} threads, {} MiB, best of 5 passes)", a.bandwidth_mib);
    }
    println!(
        "sequences        each a {}-token prompt, then {} decode steps of one token each (best of {} rounds)",
        a.n_prompt.max(1),
        a.n_gen,
        a.reps
    );
    let one = best.iter().flatten().find(|r| r.n == 1);
    // A decode step touches the resident weights once (the embedding table: a row a sequence) and each distinct
    // expert once, whatever the sequences.
    let resident = model.resident_bytes_read() as f64;
    let human = engine::experts::budget::human;
    for r in best.iter().flatten() {
        let gain = one.map(|o| format!(" ({:.2}x one sequence)", r.tg / o.tg)).unwrap_or_default();
        let read = r.read_mib.map(|m| format!(", {m:.1} MiB of experts read a token")).unwrap_or_default();
        println!(
            "flash-moe  N={:<3} pp {:8.2} tok/s   tg {:7.2} tok/s{gain}   {:.1} ms a step, {:.1} experts at the last \
             layer{read}",
            r.n, r.pp, r.tg, r.step_ms, r.experts_last
        );
        let step_bytes = resident + r.expert_bytes;
        let gbs = step_bytes / r.step_ms / 1e6;
        let of_bw = bandwidth.map(|bw| format!(" ({:.0}% of the memory read)", 100.0 * gbs / bw)).unwrap_or_default();
        // The most that batching can give where a step costs the bytes it touches.
        let bound = one
            .map(|o| {
                format!(
                    "; a step costing only its bytes: {:.2}x one sequence",
                    r.n as f64 * (resident + o.expert_bytes) / step_bytes
                )
            })
            .unwrap_or_default();
        println!(
            "           weights a step {} (resident {} + experts {}), {gbs:.2} GB/s{of_bw}{bound}",
            human(step_bytes as u64),
            human(resident as u64),
            human(r.expert_bytes as u64)
        );
    }
    if !llama.is_empty() {
        for (i, &n) in a.parallel.iter().enumerate() {
            let (lpp, ltg) = llama
                .iter()
                .filter_map(|round| round.iter().find(|r| r.0 == n))
                .fold((0.0f64, 0.0f64), |(p, t), r| (p.max(r.1), t.max(r.2)));
            let l1 = llama.iter().filter_map(|round| round.iter().find(|r| r.0 == 1)).map(|r| r.2).fold(0.0, f64::max);
            let gain = if l1 > 0.0 { format!(" ({:.2}x one sequence)", ltg / l1) } else { String::new() };
            println!("llama.cpp  N={n:<3} pp {lpp:8.2} tok/s   tg {ltg:7.2} tok/s{gain}");
            if let Some(r) = &best[i] {
                println!(
                    "ratio      N={n:<3} flash-moe / llama.cpp: prompt {:.2}x, decode {:.2}x",
                    r.pp / lpp,
                    r.tg / ltg
                );
            }
        }
    }
    Ok(())
}

/// Pseudo-random token `i` of sequence `seq` (a fixed hash, the same every run).
fn token(seq: usize, i: usize, n_vocab: u32) -> u32 {
    let x = ((seq as u64) << 32 | i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((x >> 29) % n_vocab as u64) as u32
}

/// `n` sequences: their prompts in one forward pass, then `n_gen` steps of one token each.
fn run(model: &Model, cpu: &Cpu, n: usize, n_ctx: usize, (n_prompt, n_gen): (usize, usize)) -> Result<Row> {
    let n_vocab = model.info.n_vocab as u32;
    let mut sessions: Vec<Session> = (0..n).map(|_| model.try_new_session(n_ctx)).collect::<engine::Result<_>>()?;
    let prompts: Vec<Vec<u32>> = (0..n).map(|s| (0..n_prompt.max(1)).map(|i| token(s, i, n_vocab)).collect()).collect();
    let mut scratch = Scratch::default();
    // At most a batch's worth of tokens a step (what the memory plan counts), each sequence's prompt in chunks.
    let per = (engine::backend::native::N_BATCH / n).max(1);
    let t0 = Instant::now();
    for off in (0..n_prompt.max(1)).step_by(per) {
        let mut batch: Vec<(&mut Session, &[u32])> =
            sessions.iter_mut().zip(&prompts).map(|(s, p)| (s, &p[off..(off + per).min(p.len())])).collect();
        model.forward_multi(cpu, &mut batch, &mut scratch)?;
    }
    let pp = (n * n_prompt.max(1)) as f64 / t0.elapsed().as_secs_f64();
    let read0 = model.cache_stats().map(|s| s.bytes_read);
    let touched0 = scratch.moe.experts_touched().to_vec();
    let t1 = Instant::now();
    for step in 0..n_gen {
        let toks: Vec<[u32; 1]> = (0..n).map(|s| [token(s, n_prompt.max(1) + step, n_vocab)]).collect();
        let mut batch: Vec<(&mut Session, &[u32])> =
            sessions.iter_mut().zip(&toks).map(|(s, t)| (s, t.as_slice())).collect();
        model.forward_multi(cpu, &mut batch, &mut scratch)?;
    }
    let secs = t1.elapsed().as_secs_f64();
    let tokens = (n * n_gen) as f64;
    let read_mib = match (read0, model.cache_stats()) {
        (Some(r0), Some(s)) => Some(mib(s.bytes_read - r0) / tokens),
        _ => None,
    };
    // Each MoE layer's distinct experts over the decode steps, and their bytes.
    let layers = &model.expert_layout().layers;
    let per_layer: Vec<(u64, u64)> = (scratch.moe.experts_touched().iter().enumerate())
        .filter_map(|(l, &c)| {
            let per = layers.get(l)?.as_ref()?.expert_bytes();
            Some((c - touched0.get(l).copied().unwrap_or(0), per))
        })
        .collect();
    let expert_bytes: f64 = per_layer.iter().map(|&(c, per)| c as f64 * per as f64).sum();
    let experts_last = per_layer.last().map_or(0, |&(c, _)| c);
    Ok(Row {
        expert_bytes: expert_bytes / n_gen as f64,
        n,
        pp,
        tg: tokens / secs,
        step_ms: 1e3 * secs / n_gen as f64,
        experts_last: experts_last as f64 / n_gen as f64,
        read_mib,
    })
}

/// Runs `llama-batched-bench` once with the same counts and returns (count, prompt tok/s, decode tok/s) for each.
fn llama_batched_bench(
    dir: &Path,
    model: &Path,
    threads: usize,
    (pp, tg): (usize, usize),
    counts: &[usize],
) -> Result<Vec<(usize, f64, f64)>> {
    let exe = ["bin/llama-batched-bench", "llama-batched-bench", "build/bin/llama-batched-bench"]
        .into_iter()
        .map(|p| dir.join(p))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no llama-batched-bench under {} (build it: cmake --build build --target llama-batched-bench)",
                dir.display()
            )
        })?;
    let n_max = counts.iter().copied().max().unwrap_or(1);
    let list = counts.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let out = Command::new(&exe)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-c", &(n_max * (pp.max(1) + tg + 1)).to_string()])
        .args(["-npp", &pp.max(1).to_string(), "-ntg", &tg.to_string(), "-npl", &list, "--output-format", "jsonl"])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("llama-batched-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else { continue };
        let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
        if let (Some(pl), Some(spp), Some(stg)) = (f("pl"), f("speed_pp"), f("speed_tg")) {
            rows.push((pl as usize, spp, stg));
        }
    }
    if rows.len() != counts.len() {
        bail!("llama-batched-bench printed {} results for {} counts", rows.len(), counts.len());
    }
    Ok(rows)
}
