//! `flash-moe bench`: prompt and decode throughput, bytes of weights streamed from RAM per second, and, given a
//! llama.cpp build directory, `llama-bench` on the same file with the same threads in the same command.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::formats::WeightIndex;
use engine::models::{Logits, Model};
use engine::ops::Cpu;

use crate::{mib, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128, allow_negative_numbers = true, value_parser = crate::args::count)]
    pub n_prompt: usize,
    /// Decoded tokens.
    #[arg(short = 'n', long = "n-gen", default_value_t = 32, allow_negative_numbers = true, value_parser = crate::args::count)]
    pub n_gen: usize,
    /// Repetitions (the best is reported).
    #[arg(short = 'r', long = "repetitions", default_value_t = 3, allow_negative_numbers = true, value_parser = crate::args::at_least_one)]
    pub reps: usize,
    /// A llama.cpp build directory (holding bin/llama-bench): run it on the same file and print the ratio.
    #[arg(long = "llama-cpp")]
    pub llama_cpp: Option<PathBuf>,
}

pub fn main(a: BenchArgs) -> Result<()> {
    let n_threads = a.model.n_threads();
    let index = WeightIndex::open(&a.model.model)?;
    let model = Model::load(&index, &a.model.load_options(&index, a.n_prompt + a.n_gen + 1)?)?;
    if let Some(plan) = model.memory_plan() {
        eprintln!("{plan}");
    }
    a.model.apply_mlock();
    let cpu = Cpu::new(n_threads);
    let n_vocab = model.info.n_vocab as u32;
    // Deterministic pseudo-random prompt tokens.
    let prompt: Vec<u32> = (0..a.n_prompt as u32).map(|i| (i.wrapping_mul(2654435761) >> 7) % n_vocab).collect();
    let mut session = model.new_session(a.n_prompt + a.n_gen + 1);
    let (mut best_pp, mut best_tg) = (0.0f64, 0.0f64);
    for _ in 0..a.reps.max(1) {
        session.reset();
        let t0 = Instant::now();
        model.forward(&cpu, &mut session, &prompt, Logits::Last)?;
        let pp = a.n_prompt as f64 / t0.elapsed().as_secs_f64();
        session.reset();
        model.forward(&cpu, &mut session, &[1], Logits::Last)?;
        let t1 = Instant::now();
        let mut tok = 1u32;
        for _ in 0..a.n_gen {
            let logits = model.forward(&cpu, &mut session, &[tok], Logits::Last)?;
            tok = argmax(logits);
        }
        let tg = a.n_gen as f64 / t1.elapsed().as_secs_f64();
        best_pp = best_pp.max(pp);
        best_tg = best_tg.max(tg);
    }
    // Bytes a decode step reads: resident weights (all) + the experts one token uses.
    let layout = model.expert_layout();
    let n_used = active_experts_per_layer(&model);
    let expert_bytes_token: u64 = layout.layers.iter().flatten().map(|l| l.expert_bytes() * n_used as u64).sum();
    let bytes_token = model.info.resident_bytes + expert_bytes_token;
    println!("model            {}", a.model.model.display());
    println!("threads          {n_threads}   isa {}", cpu.kernels.isa().name());
    println!(
        "weights/token    {:.1} MiB (resident {:.1} + active experts {:.1})",
        mib(bytes_token),
        mib(model.info.resident_bytes),
        mib(expert_bytes_token)
    );
    println!("flash-moe  pp{:<5} {:10.2} tok/s", a.n_prompt, best_pp);
    println!(
        "flash-moe  tg{:<5} {:10.2} tok/s   {:.2} GB/s of weights from RAM",
        a.n_gen,
        best_tg,
        best_tg * bytes_token as f64 / 1e9
    );
    if let Some(dir) = &a.llama_cpp {
        let (lpp, ltg) = llama_bench(dir, &a.model.model, n_threads, a.n_prompt, a.n_gen, a.reps)?;
        println!("llama.cpp  pp{:<5} {:10.2} tok/s", a.n_prompt, lpp);
        println!("llama.cpp  tg{:<5} {:10.2} tok/s", a.n_gen, ltg);
        println!("ratio flash-moe / llama.cpp: prompt {:.2}x, decode {:.2}x", best_pp / lpp, best_tg / ltg);
    }
    Ok(())
}

fn active_experts_per_layer(model: &Model) -> usize {
    if model.expert_layout().n_moe_layers() == 0 {
        0
    } else {
        model.info.n_expert_used
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Runs `llama-bench` and returns (prompt tok/s, decode tok/s) from its JSON output.
fn llama_bench(
    dir: &std::path::Path,
    model: &std::path::Path,
    threads: usize,
    pp: usize,
    tg: usize,
    reps: usize,
) -> Result<(f64, f64)> {
    let exe = [dir.join("bin/llama-bench"), dir.join("llama-bench"), dir.join("build/bin/llama-bench")]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("no llama-bench under {}", dir.display()))?;
    let out = Command::new(&exe)
        .arg("-m")
        .arg(model)
        .args([
            "-t",
            &threads.to_string(),
            "-p",
            &pp.to_string(),
            "-n",
            &tg.to_string(),
            "-r",
            &reps.to_string(),
            "-o",
            "json",
        ])
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("llama-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing llama-bench JSON")?;
    let (mut lpp, mut ltg) = (0.0, 0.0);
    for r in v.as_array().into_iter().flatten() {
        let ts = r.get("avg_ts").and_then(|x| x.as_f64()).unwrap_or(0.0);
        let n_p = r.get("n_prompt").and_then(|x| x.as_u64()).unwrap_or(0);
        let n_g = r.get("n_gen").and_then(|x| x.as_u64()).unwrap_or(0);
        if n_p > 0 && n_g == 0 {
            lpp = ts;
        } else if n_g > 0 && n_p == 0 {
            ltg = ts;
        }
    }
    if lpp == 0.0 || ltg == 0.0 {
        bail!("llama-bench output had no pp/tg results");
    }
    Ok((lpp, ltg))
}
