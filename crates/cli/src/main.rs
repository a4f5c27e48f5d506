//! The `flash-moe` command line: argument parsing and printing live here, the work in the engine.
//!
//! Subcommands: `run` (generate text), `logits` (all-position logits to .npy), `perplexity` (held-out loss),
//! `inspect` (what a model file holds), `bench` (prompt and decode speed, optionally against llama.cpp's
//! `llama-bench`), `profile` (expert use over prompts, for `run --profile`), `diskbench`, `synth`.

mod bench;
mod diskbench;
mod inspect;
mod interrupt;
mod logits;
mod perplexity;
mod profile;
mod run;
mod synth;
mod warmstart;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use engine::models::{ExpertResidency, LoadOptions, StreamOptions};

/// Run Mixture-of-Experts language models larger than memory, exactly.
#[derive(Parser)]
#[command(name = "flash-moe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout; a summary goes to stderr.
    Run(Box<run::RunArgs>),
    /// Write float32 logits [n_tokens, n_vocab] for every position of a token sequence to a .npy file.
    Logits(logits::LogitsArgs),
    /// Held-out loss and perplexity of a text (non-overlapping windows), like llama.cpp's llama-perplexity.
    Perplexity(perplexity::PerplexityArgs),
    /// Print a model file's architecture, tensor types and sizes, and how many bytes are experts.
    Inspect(inspect::InspectArgs),
    /// Measure prompt and decode speed (and, given a llama.cpp build, compare with llama-bench).
    Bench(bench::BenchArgs),
    /// Measure the disk's random direct-read bandwidth for expert-sized reads.
    Diskbench(diskbench::DiskbenchArgs),
    /// Run prompts through a model and save how often each expert was chosen (a routing profile for --profile).
    Profile(profile::ProfileArgs),
    /// Write a Qwen3-MoE GGUF with random weights (qwen3-30b-a3b, coder-next-like, small, tiny) for tests and
    /// benchmarks; flash-moe and llama.cpp both run it.
    Synth(synth::SynthArgs),
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file, a .safetensors file, or a Hugging Face model directory (config.json + safetensors).
    /// [default: the bundled tiny-py-moe (assets/tiny-py-moe), whose experts then stream from disk through a
    /// cache of a quarter of them unless --memory-budget says otherwise]
    #[arg(short = 'm', long = "model", default_value_os_t = bundled_model(), hide_default_value = true)]
    pub model: PathBuf,
    /// Threads for the forward pass [default: the number of physical cores].
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// Context size in tokens (KV cache length) [default: the model's training context, at most 4096].
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Memory the process may use: a size (8GiB, 512MiB), 'min' (the smallest expert cache that runs) or 'auto'
    /// (the cgroup limit or available memory, less headroom). Experts then stream from the model file into a
    /// cache sized to fit. [default: all experts in RAM when the model fits in 'auto', else 'auto']
    #[arg(long = "memory-budget", value_name = "SIZE|min|auto")]
    pub memory_budget: Option<String>,
    /// Threads issuing expert reads when experts stream and io_uring is unavailable (or FLASH_MOE_IO=threads).
    #[arg(long = "io-threads", default_value_t = 4)]
    pub io_threads: usize,
    /// Lock the loaded weights and the expert cache in RAM (never swapped out).
    #[arg(long)]
    pub mlock: bool,
    /// When experts stream, predict the next layer's experts and read them early with low priority: 'router' (the
    /// next layer's router on the current hidden state), 'table' (routing history; works with --replay-routes),
    /// or 'off'. Fewer predictions are read the busier demand reads keep the disk and the less the forward pass
    /// waits for reads (FLASH_MOE_PREFETCH_THROTTLE=off reads them all). Never changes the output.
    #[arg(long, value_enum, default_value_t = PrefetchArg::Off)]
    pub prefetch: PrefetchArg,
}

/// `--numerics`: whose float arithmetic the forward pass follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NumericsArg {
    /// flash-moe's own kernels.
    #[default]
    Native,
    /// llama.cpp's (ggml-cpu on AVX-512 x86), emulated op by op: logits bit-identical to llama.cpp's, slowly.
    /// Llama and Qwen3 / Qwen3-MoE GGUFs with Q4_1, Q8_0 or Q4_K_M weights; others are refused.
    Ggml,
}

impl NumericsArg {
    pub fn apply(self, model: &mut engine::models::Model) -> engine::Result<()> {
        model.set_numerics(match self {
            NumericsArg::Native => engine::models::Numerics::Native,
            NumericsArg::Ggml => engine::models::Numerics::Ggml,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrefetchArg {
    Off,
    Table,
    Router,
}

impl PrefetchArg {
    pub fn mode(self) -> engine::experts::cache::Prefetch {
        use engine::experts::cache::Prefetch;
        match self {
            PrefetchArg::Off => Prefetch::Off,
            PrefetchArg::Table => Prefetch::Table,
            PrefetchArg::Router => Prefetch::Router,
        }
    }
}

impl ModelArgs {
    /// Applies --mlock once the model is loaded (a warning, not an error, when the limit refuses it).
    pub fn apply_mlock(&self) {
        if self.mlock {
            // SAFETY: mlockall only changes how the kernel pages this process's memory.
            let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
            if rc != 0 {
                eprintln!(
                    "warning: --mlock failed ({}); raise the locked-memory limit (ulimit -l) or run without it",
                    std::io::Error::last_os_error()
                );
            }
        }
    }

    pub fn n_threads(&self) -> usize {
        self.threads.unwrap_or_else(engine::pool::physical_cores).max(1)
    }

    /// Load options for a KV cache of `n_ctx` tokens.
    pub fn load_options(&self, index: &engine::formats::WeightIndex, n_ctx: usize) -> anyhow::Result<LoadOptions> {
        use engine::experts::budget::{auto_budget, Budget};
        let budget = match &self.memory_budget {
            Some(s) => Some(Budget::parse(s)?),
            // The bundled model fits anywhere; stream its experts anyway, to show what the engine is for.
            None if self.is_bundled_model() => Some(Budget::ExpertPercent(BUNDLED_CACHE_PERCENT)),
            // Stream only when the whole file would not fit.
            None => (index.total_bytes() > auto_budget().0).then_some(Budget::Auto),
        };
        let experts = match budget {
            None => ExpertResidency::AllInRam,
            Some(budget) => ExpertResidency::Stream(StreamOptions {
                budget,
                n_ctx,
                n_threads: self.n_threads(),
                io_threads: self.io_threads.max(1),
                io_engine: None,
                n_slots: None,
                prefetch: self.prefetch.mode(),
            }),
        };
        Ok(LoadOptions { progress: true, experts })
    }

    /// Whether `--model` is the bundled model (given or by default).
    pub fn is_bundled_model(&self) -> bool {
        let canon = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        canon(&self.model).is_some_and(|m| Some(m) == canon(&bundled_model()))
    }

    /// Rejects a thread count above the logical CPUs: the pool's workers spin, so extra threads only steal time
    /// from each other (`-t 1000` on 2 CPUs takes minutes for a few tokens).
    fn check(&self) -> anyhow::Result<()> {
        if self.model == bundled_model() && !self.model.exists() {
            anyhow::bail!(
                "no model given (-m MODEL) and the bundled model is not at {} (run from a checkout of flash-moe, or \
                 give -m MODEL)",
                self.model.display()
            );
        }
        let n_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(t) = self.threads.filter(|&t| t > n_cpus) {
            anyhow::bail!("-t {t}: this machine has {n_cpus} logical CPUs; give at most {n_cpus} threads");
        }
        let io_max = engine::experts::io::IO_THREADS_MAX;
        if self.io_threads > io_max {
            anyhow::bail!("--io-threads {}: give at most {io_max}", self.io_threads);
        }
        Ok(())
    }
}

/// The bundled model's file, relative to the repository (see assets/tiny-py-moe/README.md).
const BUNDLED_MODEL: &str = "assets/tiny-py-moe/tiny-py-moe-Q4_K_M.gguf";

/// The share of the bundled model's experts its cache holds by default.
const BUNDLED_CACHE_PERCENT: u8 = 25;

/// The bundled model: under the current directory when run from a checkout, else where this binary was built from.
fn bundled_model() -> PathBuf {
    let here = PathBuf::from(BUNDLED_MODEL);
    if here.exists() {
        return here;
    }
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(BUNDLED_MODEL);
    if built.exists() {
        built
    } else {
        here
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => a.model.check().and_then(|()| run::main(*a)),
        Command::Logits(a) => a.model.check().and_then(|()| logits::main(a)),
        Command::Perplexity(a) => a.model.check().and_then(|()| perplexity::main(a)),
        Command::Inspect(a) => inspect::main(a),
        Command::Bench(a) => a.model.check().and_then(|()| bench::main(a)),
        Command::Diskbench(a) => diskbench::main(a),
        Command::Synth(a) => synth::main(a),
        Command::Profile(a) => a.model.check().and_then(|()| profile::main(a)),
    };
    match result {
        // Stopped by Ctrl-C after a clean summary: the shell's code for SIGINT.
        Ok(()) if interrupt::requested() => ExitCode::from(130),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The engine's errors escape what they quote from files; the chain as a whole is bounded too.
            eprintln!("error: {}", engine::error::printable(&error_text(&e), ERROR_CHARS_MAX));
            ExitCode::FAILURE
        }
    }
}

/// Characters of an error message printed at most.
const ERROR_CHARS_MAX: usize = 4000;

/// The error and its causes joined by ": ", like `{e:#}`, but without a cause that the message before it already
/// ends with (the engine's `Io` error prints its source itself: "path: No such file or directory").
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if text.is_empty() {
            text = cause;
        } else if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Peak resident set size of this process in bytes (VmHWM), if the kernel reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
