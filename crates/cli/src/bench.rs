//! `flash-moe bench`: prompt and decode throughput, bytes of weights streamed from RAM per second next to the
//! memory bandwidth measured in the same run, and, given a llama.cpp build directory, `llama-bench` on the same
//! file with the same threads in the same command, in interleaved rounds (the machine may be shared: each
//! round runs both, and the best round of each is compared).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::formats::WeightIndex;
use engine::models::{Logits, Model};
use engine::ops::Cpu;
use engine::session::Session;

use crate::{mib, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length in tokens.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512, allow_negative_numbers = true, value_parser = crate::args::count)]
    pub n_prompt: usize,
    /// Decoded tokens.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128, allow_negative_numbers = true, value_parser = crate::args::count)]
    pub n_gen: usize,
    /// Rounds (the best is reported); with --llama-cpp each round runs llama-bench once too.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3, allow_negative_numbers = true, value_parser = crate::args::at_least_one)]
    pub reps: usize,
    /// A llama.cpp build directory (holding bin/llama-bench): run it on the same file and print the ratio.
    #[arg(long = "llama-cpp")]
    pub llama_cpp: Option<PathBuf>,
    /// Size of the buffer the memory bandwidth is measured on, in MiB (0: no measurement).
    #[arg(long = "bandwidth-mib", default_value_t = 1024)]
    pub bandwidth_mib: usize,
}

/// Best (highest) tok/s over the rounds, and every round's.
#[derive(Default)]
struct Rounds(Vec<f64>);

impl Rounds {
    fn best(&self) -> f64 {
        self.0.iter().copied().fold(0.0, f64::max)
    }

    fn list(&self) -> String {
        self.0.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" ")
    }
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
    let bandwidth = (a.bandwidth_mib > 0).then(|| memory_bandwidth(&cpu, a.bandwidth_mib << 20));
    let n_vocab = model.info.n_vocab as u32;
    // Deterministic pseudo-random prompt tokens.
    let prompt: Vec<u32> = (0..a.n_prompt as u32).map(|i| (i.wrapping_mul(2654435761) >> 7) % n_vocab).collect();
    let mut session = model.new_session(a.n_prompt + a.n_gen + 1);
    let (mut pp, mut tg, mut lpp, mut ltg) =
        (Rounds::default(), Rounds::default(), Rounds::default(), Rounds::default());
    for _ in 0..a.reps {
        let (p, t) = run_round(&model, &cpu, &mut session, &prompt, a.n_gen)?;
        pp.0.push(p);
        tg.0.push(t);
        if let Some(dir) = &a.llama_cpp {
            let (p, t) = llama_bench(dir, &a.model.model, n_threads, a.n_prompt, a.n_gen)?;
            lpp.0.push(p);
            ltg.0.push(t);
        }
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
    if let Some(bw) = bandwidth {
        println!("memory read      {bw:.2} GB/s ({n_threads} threads, {} MiB, best of 3 passes)", a.bandwidth_mib);
    }
    let gbs = tg.best() * bytes_token as f64 / 1e9;
    println!("flash-moe  pp{:<5} {:10.2} tok/s   (rounds: {})", a.n_prompt, pp.best(), pp.list());
    println!("flash-moe  tg{:<5} {:10.2} tok/s   (rounds: {})", a.n_gen, tg.best(), tg.list());
    match bandwidth {
        Some(bw) => {
            println!("decode weights   {gbs:.2} GB/s from RAM, {:.0}% of the measured bandwidth", 100.0 * gbs / bw)
        }
        None => println!("decode weights   {gbs:.2} GB/s from RAM"),
    }
    if a.llama_cpp.is_some() {
        println!("llama.cpp  pp{:<5} {:10.2} tok/s   (rounds: {})", a.n_prompt, lpp.best(), lpp.list());
        println!("llama.cpp  tg{:<5} {:10.2} tok/s   (rounds: {})", a.n_gen, ltg.best(), ltg.list());
        println!(
            "ratio flash-moe / llama.cpp: prompt {:.2}x, decode {:.2}x (best rounds)",
            pp.best() / lpp.best(),
            tg.best() / ltg.best()
        );
    }
    Ok(())
}

/// One round: the prompt from an empty session (tok/s), then `n_gen` greedy tokens after a one-token prompt.
fn run_round(model: &Model, cpu: &Cpu, session: &mut Session, prompt: &[u32], n_gen: usize) -> Result<(f64, f64)> {
    session.reset();
    let t0 = Instant::now();
    model.forward(cpu, session, prompt, Logits::Last)?;
    let pp = prompt.len() as f64 / t0.elapsed().as_secs_f64();
    session.reset();
    model.forward(cpu, session, &[1], Logits::Last)?;
    let t1 = Instant::now();
    let mut tok = 1u32;
    for _ in 0..n_gen {
        let logits = model.forward(cpu, session, &[tok], Logits::Last)?;
        tok = argmax(logits);
    }
    Ok((pp, n_gen as f64 / t1.elapsed().as_secs_f64()))
}

/// GB/s of reading a `bytes`-long buffer (filled first, so it is real memory) with the pool's threads: one word
/// of every 64-byte line is read, which makes the whole line come from memory; best of 3 passes.
fn memory_bandwidth(cpu: &Cpu, bytes: usize) -> f64 {
    let mut buf = engine::tensor::AlignedBuf::zeroed(bytes);
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate().step_by(4096) {
        *b = i as u8;
    }
    let data = buf.as_slice();
    let chunk = 4 << 20;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let sink = std::sync::atomic::AtomicU64::new(0);
        let t0 = Instant::now();
        cpu.pool.for_chunks(data.len(), chunk, &|r| {
            let mut acc = 0u64;
            for line in data[r].chunks_exact(64) {
                acc = acc.wrapping_add(line[0] as u64);
            }
            sink.fetch_add(acc, std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
        best = best.max(bytes as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    best
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

/// Runs `llama-bench` once (one repetition) and returns (prompt tok/s, decode tok/s) from its JSON output.
fn llama_bench(
    dir: &std::path::Path,
    model: &std::path::Path,
    threads: usize,
    pp: usize,
    tg: usize,
) -> Result<(f64, f64)> {
    let exe = [dir.join("bin/llama-bench"), dir.join("llama-bench"), dir.join("build/bin/llama-bench")]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("no llama-bench under {}", dir.display()))?;
    let out = Command::new(&exe)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", &pp.to_string(), "-n", &tg.to_string(), "-r", "1", "-o", "json"])
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
