//! The `flash-moe` command line: argument parsing and printing live here, the work in the engine.
//!
//! Subcommands: `run` (generate text), `chat` (a conversation in the terminal), `serve` (the OpenAI- and
//! Anthropic-compatible HTTP server), `logits` (all-position logits to .npy), `perplexity` (held-out loss),
//! `inspect` (what a model file holds), `bench` (prompt and decode speed, optionally against llama.cpp's
//! `llama-bench`), `profile` (expert use over prompts, for `run --profile`), `diskbench`, `synth`.

mod args;
mod bench;
mod chat;
mod diskbench;
mod inspect;
mod interrupt;
mod logits;
mod perplexity;
mod profile;
mod progress;
mod run;
mod serve;
mod synth;
mod warmstart;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use engine::models::{ExpertResidency, LoadOptions, StreamOptions};

/// Run Mixture-of-Experts language models larger than memory, exactly: the non-expert weights stay in RAM and
/// the experts the router picks stream from disk into a cache sized to --memory-budget.
#[derive(Parser)]
#[command(name = "flash-moe", version, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "Examples:
  flash-moe run -p 'def parse_args(argv):'                 generate with the bundled model (tiny-py-moe)
  flash-moe run -m model.gguf --memory-budget 8GiB --chat -p 'Hello'
                                                           a model larger than RAM, experts streamed within 8 GiB
  flash-moe serve -m model.gguf --memory-budget 8GiB       OpenAI and Anthropic APIs on http://127.0.0.1:8080
  flash-moe chat -m model.gguf                             a conversation in the terminal
  flash-moe inspect model.gguf                             what a file holds, and how many bytes are experts
  flash-moe bench -m model.gguf --llama-cpp DIR            speed, next to llama.cpp's llama-bench
  flash-moe help run                                       every option of a command";

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streaming it to stdout; a summary goes to stderr.
    Run(Box<run::RunArgs>),
    /// Chat in the terminal: the model's chat template, replies streamed, the conversation's state kept between
    /// turns; /reset, /stats, /exit; Ctrl-C stops a reply.
    Chat(Box<chat::ChatArgs>),
    /// Serve the OpenAI and Anthropic APIs over HTTP (chat completions, completions, messages, tool calls,
    /// streaming), decoding concurrent requests together.
    Serve(Box<serve::ServeArgs>),
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
    /// Write a MoE GGUF with random weights of a real model's shape (qwen3-30b-a3b, qwen3-coder-next, ...) for
    /// tests and benchmarks; flash-moe and llama.cpp both run it.
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
    #[arg(short = 't', long = "threads", allow_negative_numbers = true, value_parser = args::at_least_one)]
    pub threads: Option<usize>,
    /// Context size in tokens (KV cache length) [default: the model's training context, at most 4096; more than
    /// the training context is allowed, with a warning].
    #[arg(short = 'c', long = "ctx-size", allow_negative_numbers = true, value_parser = args::at_least_one)]
    pub ctx_size: Option<usize>,
    /// Memory the process may use: a size (8GiB, 512MiB), 'min' (the smallest expert cache that runs) or 'auto'
    /// (the cgroup limit or available memory, less headroom). Experts then stream from the model file into a
    /// cache sized to fit. [default: all experts in RAM when the model fits in 'auto', else 'auto']
    #[arg(long = "memory-budget", value_name = "SIZE|min|auto", allow_hyphen_values = true)]
    pub memory_budget: Option<String>,
    /// Threads issuing expert reads when experts stream and io_uring is unavailable (or FLASH_MOE_IO=threads).
    #[arg(long = "io-threads", default_value_t = 4, allow_negative_numbers = true, value_parser = args::at_least_one)]
    pub io_threads: usize,
    /// Lock the loaded weights and the expert cache in RAM (never swapped out).
    #[arg(long)]
    pub mlock: bool,
    /// When experts stream, predict the next layer's experts and read them early with low priority: 'router' (the
    /// next layer's router on the current hidden state), 'table' (routing history; works with --replay-routes),
    /// 'off', or 'auto' (router; table under --replay-routes). Fewer predictions are read the busier demand reads
    /// keep the disk and the less the forward pass waits for reads, so a compute-bound run reads only those with at
    /// least a 60% chance of use (FLASH_MOE_PREFETCH_THROTTLE=off reads them all). Never changes the output.
    #[arg(long, value_enum, default_value_t = PrefetchArg::Auto)]
    pub prefetch: PrefetchArg,
    /// No progress display on stderr (it is shown only on a terminal anyway).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// How the KV cache stores keys: f32, f16 or q8_0 (a half or about a quarter of f32; results then hold
    /// for that type). `-ctk` as in llama.cpp.
    #[arg(long = "cache-type-k", alias = "ctk", default_value = "f32", value_name = "f32|f16|q8_0")]
    pub cache_type_k: String,
    /// How the KV cache stores values: f32, f16 or q8_0. `-ctv` as in llama.cpp.
    #[arg(long = "cache-type-v", alias = "ctv", default_value = "f32", value_name = "f32|f16|q8_0")]
    pub cache_type_v: String,
    /// Keep the bundled model all in RAM when no budget is given (a comparison with an engine that holds it all),
    /// instead of streaming it through a quarter cache to show what the engine is for.
    #[arg(skip)]
    pub bundled_in_ram: bool,
}

/// `--numerics`: whose float arithmetic the forward pass follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NumericsArg {
    /// flash-moe's own kernels (SIMD where the CPU has it).
    #[default]
    Native,
    /// llama.cpp's arithmetic (ggml-cpu on AVX-512 x86), emulated op by op in scalar code; other models are
    /// refused.
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
    Auto,
    Off,
    Table,
    Router,
}

impl PrefetchArg {
    /// The prefetch mode; `replay`: routing comes from a trace, so the model's router cannot predict it.
    pub fn mode(self, replay: bool) -> engine::experts::cache::Prefetch {
        use engine::experts::cache::Prefetch;
        match self {
            PrefetchArg::Off => Prefetch::Off,
            PrefetchArg::Table => Prefetch::Table,
            PrefetchArg::Router => Prefetch::Router,
            PrefetchArg::Auto if replay => Prefetch::Table,
            PrefetchArg::Auto => Prefetch::Router,
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

    /// The context size (KV cache length) to use: `requested` (from `flag`), else the model's training context,
    /// at most 4096.
    pub fn n_ctx(&self, index: &engine::formats::WeightIndex, requested: Option<usize>) -> usize {
        requested.unwrap_or_else(|| engine::models::context_length(index).unwrap_or(4096).min(4096))
    }

    /// A context beyond the model's training context is allowed (as in llama.cpp) but warned about, with what its
    /// KV cache costs.
    pub fn warn_ctx(index: &engine::formats::WeightIndex, info: &engine::models::ModelInfo, flag: &str, n_ctx: usize) {
        if let Some(n_ctx_train) = engine::models::context_length(index).filter(|&t| n_ctx > t) {
            eprintln!(
                "warning: {flag} {n_ctx} is beyond the model's training context ({} tokens): the model was never \
                 trained on positions past it, and the KV cache takes {}",
                n_ctx_train,
                engine::experts::budget::human(info.kv_cache_bytes(n_ctx))
            );
        }
    }

    /// Load options for a KV cache of `n_ctx` tokens.
    pub fn load_options(&self, index: &engine::formats::WeightIndex, n_ctx: usize) -> anyhow::Result<LoadOptions> {
        self.load_options_for(index, n_ctx, false, 0)
    }

    /// [`ModelArgs::load_options`] for a run whose routing is replayed from a trace (`replay`) and that needs
    /// `extra` bytes beside the model and one sequence's state (the other sequences of a batch, a server's
    /// buffers). Without `--memory-budget` the experts stream when the whole file, one sequence's state and
    /// `extra` would not fit the automatic budget; the caller then takes `extra` off that budget
    /// ([`crate::serve::reserve_budget`]).
    pub fn load_options_for(
        &self,
        index: &engine::formats::WeightIndex,
        n_ctx: usize,
        replay: bool,
        extra: u64,
    ) -> anyhow::Result<LoadOptions> {
        use engine::experts::budget::{auto_budget, Budget};
        let budget = match &self.memory_budget {
            Some(s) => Some(Budget::parse(s)?),
            // The bundled model fits anywhere; stream its experts anyway, to show what the engine is for.
            None if self.is_bundled_model() && !self.bundled_in_ram => {
                Some(Budget::ExpertPercent(BUNDLED_CACHE_PERCENT))
            }
            // Stream only when the whole file and the sequences' state would not fit.
            None => {
                let kinds = engine::models::state_kinds(index)?;
                let one = engine::session::session_bytes_max(&kinds, n_ctx, self.kv_types()?);
                (index.total_bytes().saturating_add(one).saturating_add(extra) > auto_budget().0)
                    .then_some(Budget::Auto)
            }
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
                prefetch: self.prefetch.mode(replay),
            }),
        };
        Ok(LoadOptions { progress: progress::wanted(self.quiet), experts, kv: self.kv_types()? })
    }

    /// The KV cache's storage types.
    pub fn kv_types(&self) -> anyhow::Result<engine::kv_cache::KvTypes> {
        Ok(engine::kv_cache::KvTypes {
            k: engine::kv_cache::KvType::parse(&self.cache_type_k)?,
            v: engine::kv_cache::KvType::parse(&self.cache_type_v)?,
        })
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
    // llama.cpp's multi-letter short flags, which clap cannot declare.
    let args = std::env::args_os().map(|a| match a.to_str() {
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        _ => a,
    });
    let cli = Cli::parse_from(args);
    // Like other command-line tools, end quietly when the reader of stdout goes away (`flash-moe inspect M | head`)
    // instead of panicking on the failed write. Not the server: there SIGPIPE would kill the process when it writes
    // to a client that has just gone away (Rust's default, ignored, turns that into an error on that connection).
    if !matches!(cli.command, Command::Serve(_)) {
        // SAFETY: setting SIGPIPE's disposition to the default before any thread starts has no other effect.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run(a) => a.model.check().and_then(|()| run::main(*a)),
        Command::Chat(a) => a.model.check().and_then(|()| chat::main(*a)),
        Command::Serve(a) => a.model.check().and_then(|()| serve::main(*a)),
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
