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

mod parallel;

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
    /// A llama.cpp build directory (holding bin/llama-bench): run it on the same file and print the ratio. Like
    /// llama.cpp, flash-moe then holds the bundled model all in RAM unless --memory-budget is given.
    #[arg(long = "llama-cpp")]
    pub llama_cpp: Option<PathBuf>,
    /// Context depth: fill the KV cache with this many tokens first (not timed, like llama-bench's `-d`), then
    /// time the prompt and the decode after them. Long-context decode is attention over the whole cache.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0, allow_negative_numbers = true, value_parser = crate::args::count)]
    pub n_depth: usize,
    /// Size of the buffer the memory bandwidth is measured on, in MiB (0: no measurement).
    #[arg(long = "bandwidth-mib", default_value_t = 1024)]
    pub bandwidth_mib: usize,
    /// Sequences decoded together, a comma-separated list (like llama-batched-bench's `-npl`): for each count N,
    /// N sequences each take their own prompt of --n-prompt tokens (prefilled together), then --n-gen decode
    /// steps in which every sequence gets one token, all through one forward pass (each expert read once for
    /// all the tokens that chose it, as `serve` does). Tokens are pseudo-random, as in llama-batched-bench.
    /// Prints the aggregate prompt and decode tok/s of each N and its decode speed against N = 1; with
    /// --llama-cpp, llama-batched-bench runs the same counts on the same file.
    #[arg(long = "parallel", value_name = "N,N,...", value_delimiter = ',', value_parser = crate::args::at_least_one)]
    pub parallel: Vec<usize>,
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

pub fn main(mut a: BenchArgs) -> Result<()> {
    // llama.cpp holds every weight in RAM: so does the bundled model when compared with it (it streams through a
    // quarter cache otherwise, and --memory-budget still decides when given).
    a.model.bundled_in_ram = a.llama_cpp.is_some();
    let n_threads = a.model.n_threads();
    let index = WeightIndex::open(&a.model.model)?;
    let n_ctx = a.n_depth + a.n_prompt.max(1) + a.n_gen + 1;
    let load = if a.parallel.is_empty() {
        a.model.load_options(&index, n_ctx)?
    } else {
        parallel::load_options(&a, &index, n_ctx)?
    };
    let model = Model::load(&index, &load)?;
    if let Some(plan) = model.memory_plan() {
        eprintln!("{plan}");
    }
    a.model.apply_mlock();
    let cpu = Cpu::new(n_threads);
    if !a.parallel.is_empty() {
        return parallel::main(&a, &model, &cpu, n_threads);
    }
    let mut bandwidth = (a.bandwidth_mib > 0).then(|| memory_bandwidth(&cpu, a.bandwidth_mib << 20));
    let n_vocab = model.info.n_vocab as u32;
    // Deterministic pseudo-random tokens: the depth's, then the prompt's.
    let tokens: Vec<u32> =
        (0..(a.n_depth + a.n_prompt) as u32).map(|i| (i.wrapping_mul(2654435761) >> 7) % n_vocab).collect();
    let (depth, prompt) = tokens.split_at(a.n_depth);
    let mut session = model.try_new_session(n_ctx)?;
    let fill_s = fill(&model, &cpu, &mut session, depth, a.model.quiet)?;
    let kv_types = (&a.model.cache_type_k, &a.model.cache_type_v);
    let (mut pp, mut tg, mut lpp, mut ltg) =
        (Rounds::default(), Rounds::default(), Rounds::default(), Rounds::default());
    for _ in 0..a.reps {
        let (p, t) = run_round(&model, &cpu, &mut session, depth, prompt, a.n_gen)?;
        pp.0.push(p);
        tg.0.push(t);
        if let Some(dir) = &a.llama_cpp {
            let (p, t) = llama_bench(dir, &a.model.model, n_threads, (a.n_depth, a.n_prompt, a.n_gen), kv_types)?;
            lpp.0.push(p);
            ltg.0.push(t);
        }
    }
    // The host's memory speed drifts: measured again after the rounds, the faster reading counts (the harder limit).
    if let Some(b) = &mut bandwidth {
        *b = b.max(memory_bandwidth(&cpu, a.bandwidth_mib << 20));
    }
    // Bytes a decode step reads: the resident weights (one row of the embedding table) + the experts one token uses.
    let layout = model.expert_layout();
    let n_used = active_experts_per_layer(&model);
    let expert_bytes_token: u64 = layout.layers.iter().flatten().map(|l| l.expert_bytes() * n_used as u64).sum();
    // The KV cache a decode step at the depth reads: every cached position's keys and values, once.
    let kv_read = model.info.kv_cache_bytes(a.n_depth + 1) - model.info.kv_cache_bytes(0);
    let resident_read = model.resident_bytes_read();
    let bytes_token = resident_read + expert_bytes_token + kv_read;
    println!("model            {}", a.model.model.display());
    println!("threads          {n_threads}   isa {}", cpu.kernels.name());
    if a.n_depth > 0 {
        println!(
            "depth            {} tokens (filled in {fill_s:.1} s, {:.1} tok/s); KV cache k {} v {}: {:.1} MiB for \
             {n_ctx} tokens",
            a.n_depth,
            a.n_depth as f64 / fill_s,
            kv_types.0,
            kv_types.1,
            mib(model.info.kv_cache_bytes(n_ctx))
        );
    }
    println!(
        "bytes/token      {:.1} MiB (resident {:.1} + active experts {:.1} + KV cache {:.1})",
        mib(bytes_token),
        mib(resident_read),
        mib(expert_bytes_token),
        mib(kv_read)
    );
    if let Some(bw) = bandwidth {
        println!(
            "memory read      {bw:.2} GB/s ({n_threads} threads, {} MiB, best of 5 passes before and after)",
            a.bandwidth_mib
        );
    }
    let gbs = tg.best() * bytes_token as f64 / 1e9;
    let at = if a.n_depth > 0 { format!(" @ d{}", a.n_depth) } else { String::new() };
    if a.n_prompt > 0 {
        println!("flash-moe  pp{:<5} {:10.2} tok/s   (rounds: {}){at}", a.n_prompt, pp.best(), pp.list());
    }
    if a.n_gen > 0 {
        println!("flash-moe  tg{:<5} {:10.2} tok/s   (rounds: {}){at}", a.n_gen, tg.best(), tg.list());
        match bandwidth {
            Some(bw) => {
                println!("decode reads     {gbs:.2} GB/s from RAM, {:.0}% of the measured bandwidth", 100.0 * gbs / bw)
            }
            None => println!("decode reads     {gbs:.2} GB/s from RAM"),
        }
    }
    if a.llama_cpp.is_some() {
        if a.n_prompt > 0 {
            println!("llama.cpp  pp{:<5} {:10.2} tok/s   (rounds: {}){at}", a.n_prompt, lpp.best(), lpp.list());
        }
        if a.n_gen > 0 {
            println!("llama.cpp  tg{:<5} {:10.2} tok/s   (rounds: {}){at}", a.n_gen, ltg.best(), ltg.list());
        }
        if kv_types.0 == "f32" || kv_types.1 == "f32" {
            println!("note             llama-bench has no f32 KV cache: it kept f16 where flash-moe has f32");
        }
        let mut ratios = Vec::new();
        if a.n_prompt > 0 {
            ratios.push(format!("prompt {:.2}x", pp.best() / lpp.best()));
        }
        if a.n_gen > 0 {
            ratios.push(format!("decode {:.2}x", tg.best() / ltg.best()));
        }
        println!("ratio flash-moe / llama.cpp: {} (best rounds)", ratios.join(", "));
    }
    Ok(())
}

/// Feeds the `depth` tokens into the empty `session` (in prompt batches, with a progress line) and remembers the
/// state there; returns the seconds it took.
fn fill(model: &Model, cpu: &Cpu, session: &mut Session, depth: &[u32], quiet: bool) -> Result<f64> {
    let t0 = Instant::now();
    let mut line = crate::progress::ProgressLine::new(quiet);
    for (i, chunk) in depth.chunks(4096).enumerate() {
        line.update(false, || format!("filling the context: {} of {} tokens", i * 4096, depth.len()));
        model.forward(cpu, session, chunk, Logits::Last)?;
    }
    line.finish();
    session.checkpoint();
    Ok(t0.elapsed().as_secs_f64())
}

/// Rewinds `session` to the filled depth (filling it again if no checkpoint is left there).
fn rewind(model: &Model, cpu: &Cpu, session: &mut Session, depth: &[u32]) -> Result<()> {
    if session.truncate(depth.len()) != depth.len() {
        session.reset();
        fill(model, cpu, session, depth, true)?;
    }
    Ok(())
}

/// One round at the filled depth: the prompt (tok/s; none when empty), then `n_gen` greedy tokens after a
/// one-token prompt.
fn run_round(
    model: &Model,
    cpu: &Cpu,
    session: &mut Session,
    depth: &[u32],
    prompt: &[u32],
    n_gen: usize,
) -> Result<(f64, f64)> {
    let mut pp = 0.0;
    if !prompt.is_empty() {
        rewind(model, cpu, session, depth)?;
        let t0 = Instant::now();
        model.forward(cpu, session, prompt, Logits::Last)?;
        pp = prompt.len() as f64 / t0.elapsed().as_secs_f64();
    }
    if n_gen == 0 {
        return Ok((pp, 0.0));
    }
    rewind(model, cpu, session, depth)?;
    model.forward(cpu, session, &[1], Logits::Last)?;
    let t1 = Instant::now();
    let mut tok = 1u32;
    for _ in 0..n_gen {
        let logits = model.forward(cpu, session, &[tok], Logits::Last)?;
        tok = argmax(logits);
    }
    Ok((pp, n_gen as f64 / t1.elapsed().as_secs_f64()))
}

/// GB/s of reading a `bytes`-long buffer (filled first, so it is real memory) with the pool's threads: every
/// 8-byte word summed (wide loads, as the kernels read weights); best of 5 passes. One word per 64-byte line, as
/// this read before, measured 20-30% below what the decode itself read on a shared AMD EPYC host.
pub(crate) fn memory_bandwidth(cpu: &Cpu, bytes: usize) -> f64 {
    let mut buf = engine::tensor::AlignedBuf::zeroed(bytes);
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate().step_by(4096) {
        *b = i as u8;
    }
    let data = buf.as_slice();
    let chunk = 4 << 20;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let sink = std::sync::atomic::AtomicU64::new(0);
        let t0 = Instant::now();
        cpu.pool.for_chunks(data.len(), chunk, &|r| {
            let mut acc = [0u64; 8];
            for line in data[r].chunks_exact(64) {
                for (a, w) in acc.iter_mut().zip(line.chunks_exact(8)) {
                    *a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
                }
            }
            sink.fetch_add(acc.iter().fold(0, |s, &a| s ^ a), std::sync::atomic::Ordering::Relaxed);
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

/// `-ctk`/`-ctv` for llama-bench: the same KV cache types, except f32, which llama-bench does not take (it then
/// keeps its default, f16).
fn llama_kv_args<'a>(ctk: &'a str, ctv: &'a str) -> Vec<&'a str> {
    let mut args = vec![];
    for (flag, t) in [("-ctk", ctk), ("-ctv", ctv)] {
        if t != "f32" {
            args.extend([flag, t]);
        }
    }
    args
}

/// Runs `llama-bench` once (one repetition) at the same depth and KV cache types and returns (prompt tok/s,
/// decode tok/s) from its JSON output (prompt 0 when `pp` is 0).
fn llama_bench(
    dir: &std::path::Path,
    model: &std::path::Path,
    threads: usize,
    (depth, pp, tg): (usize, usize, usize),
    (ctk, ctv): (&String, &String),
) -> Result<(f64, f64)> {
    let exe = [dir.join("bin/llama-bench"), dir.join("llama-bench"), dir.join("build/bin/llama-bench")]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("no llama-bench under {}", dir.display()))?;
    let out = Command::new(&exe)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string(), "-p", &pp.to_string(), "-n", &tg.to_string(), "-d", &depth.to_string()])
        .args(llama_kv_args(ctk, ctv))
        .args(["-r", "1", "-o", "json"])
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
    if (pp > 0 && lpp == 0.0) || ltg == 0.0 {
        bail!("llama-bench output had no pp/tg results");
    }
    Ok((lpp, ltg))
}
