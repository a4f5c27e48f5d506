//! `flash-moe synth`: write a Qwen3-MoE GGUF with random weights (see `engine::synth`) that flash-moe and
//! llama.cpp both load, with progress on stderr and a summary at the end.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use engine::synth::{self, QuantMix, Shape, SynthOptions, SynthProgress};

use crate::mib;

#[derive(Args)]
#[command(after_help = shapes_help())]
pub struct SynthArgs {
    /// Model geometry (table below).
    #[arg(long, value_parser = parse_shape)]
    pub shape: Shape,
    /// Tensor types: q4_k_m (llama.cpp's Q4_K_M mix), q4_k (all Q4_K), q8_0, f16; norms and router stay F32.
    #[arg(long, default_value = "q4_k_m", value_parser = parse_quant)]
    pub quant: QuantMix,
    /// Output GGUF file (replaced when complete: written as FILE.part, then renamed); with --format mlx, the
    /// model directory to create.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// File format: gguf, or mlx (a directory as mlx-lm's `convert -q` writes it: 4-bit affine in groups of 64,
    /// bf16 scales and norms, the router at 8 bits; qwen3moe shapes only; --quant is then ignored).
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "mlx"])]
    pub format: String,
    /// Seed: the same seed, shape and quantization give the same bytes.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = crate::args::seed)]
    pub seed: u64,
    /// Router skew: 0 spreads tokens evenly over experts; larger values make a few experts per layer more
    /// popular (router rows scaled by (1 + rank)^-skew; 1 mild, 2 stronger).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub skew: f32,
    /// Override the shape's layer count (quick tests of the big shapes).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::args::at_least_one)]
    pub layers: Option<usize>,
    /// No progress display on stderr (it is shown only on a terminal anyway).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Threads for generating and quantizing [default: all CPUs].
    #[arg(short = 't', long = "threads", allow_negative_numbers = true, value_parser = crate::args::at_least_one)]
    pub threads: Option<usize>,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    Shape::from_name(s).map_err(|e| e.to_string())
}

fn parse_quant(s: &str) -> Result<QuantMix, String> {
    QuantMix::from_name(s).map_err(|e| e.to_string())
}

/// The shapes table of `--help`, with data bytes computed from the tensor plan.
fn shapes_help() -> String {
    let mut s = String::from(
        "Shapes (every layer MoE; bytes = tensor data, the header adds a few MB):\n  \
         name              arch       layers hidden heads/kv x dim  experts top  ffn_exp  vocab  q4_k_m MB  q8_0 MB\n",
    );
    for shape in Shape::ALL {
        let p = shape.params();
        let mb = |q| synth::data_bytes(&p, q) as f64 / 1e6;
        s += &format!(
            "  {:<17} {:<10} {:>6} {:>6} {:>3}/{:<2} x {:<4} {:>7} {:>4} {:>8} {:>6} {:>10.0} {:>8.0}\n",
            shape.name(),
            shape.arch(),
            p.n_layer,
            p.n_embd,
            p.n_head,
            p.n_head_kv,
            p.head_dim,
            p.n_expert,
            p.n_expert_used,
            p.n_ff_exp,
            p.n_vocab,
            mb(QuantMix::Q4KM),
            mb(QuantMix::Q8_0),
        );
    }
    for shape in Shape::ALL {
        s += &format!("  {}: {}\n", shape.name(), shape.about());
    }
    s += "Weights: norms (1 + 0.1 N(0,1)) and the F32 router are fully random; every row of every matrix \
          (embeddings, attention, experts, output) is copied from a pool of 4096 random N(0, 1/sqrt(row length)) (embeddings N(0, 1)) \
          rows quantized with flash-moe's reference quantizers, picked by a hash of (seed, tensor, row) and \
          rotated by whole blocks: disk-speed generation, and every expert distinct. Tokenizer: a synthetic \
          byte-level BPE (gpt2 model, qwen2 pre-tokenizer, ChatML template).";
    s
}

pub fn main(a: SynthArgs) -> Result<()> {
    let mut o = SynthOptions::new(a.shape, a.quant, a.layers)?;
    o.seed = a.seed;
    if !a.skew.is_finite() || a.skew < 0.0 {
        anyhow::bail!("--skew must be a finite number >= 0, got {}", a.skew);
    }
    o.skew = a.skew;
    if let Some(t) = a.threads {
        o.n_threads = t.max(1);
    }
    let mut line = crate::progress::ProgressLine::new(a.quiet);
    let mut report = |p: &SynthProgress| {
        line.update(p.bytes_written == p.bytes_total, || {
            format!(
                "synth: {:>9.1} / {:.1} MiB ({:3.0}%) {:7.1} MB/s",
                mib(p.bytes_written),
                mib(p.bytes_total),
                100.0 * p.bytes_written as f64 / p.bytes_total.max(1) as f64,
                p.bytes_written as f64 / 1e6 / p.seconds.max(1e-9)
            )
        })
    };
    let summary = if a.format == "mlx" {
        synth::write_mlx(&a.output, &o, &mut report)
    } else {
        synth::write(&a.output, &o, &mut report)
    }
    .with_context(|| format!("writing {}", a.output.display()))?;
    line.finish();
    eprintln!(
        "synth: wrote {} ({} {} seed {} skew {}, {} layers): {:.1} MiB in {} tensors; experts {:.1} MiB, other \
         {:.1} MiB, header {:.1} MiB; {:.1} s, {:.0} MB/s",
        a.output.display(),
        a.shape.name(),
        a.quant.name(),
        o.seed,
        o.skew,
        o.shape.n_layer,
        mib(summary.file_bytes),
        summary.n_tensors,
        mib(summary.expert_bytes),
        mib(summary.other_bytes),
        mib(summary.header_bytes),
        summary.seconds,
        summary.file_bytes as f64 / 1e6 / summary.seconds.max(1e-9)
    );
    Ok(())
}
