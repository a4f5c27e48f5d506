//! `flash-moe logits`: float32 logits of every position, for comparison with any reference.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::formats::WeightIndex;
use engine::models::{Logits, Model};
use engine::ops::Cpu;

use crate::ModelArgs;

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long)]
    pub tokens: String,
    /// Output .npy file (float32, shape [n_tokens, n_vocab]).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Feed the tokens one at a time instead of as one batch (the results must be identical).
    #[arg(long)]
    pub one_by_one: bool,
    /// Whose float arithmetic to follow: 'native' (flash-moe's kernels) or 'ggml' (llama.cpp's logits bit for
    /// bit, slowly; Llama, Qwen3 and Qwen3-MoE GGUFs with Q4_1, Q8_0, Q4_K, Q6_K or Q5_0 weights).
    #[arg(long, value_enum, default_value_t = crate::NumericsArg::Native)]
    pub numerics: crate::NumericsArg,
}

pub fn parse_tokens(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("--tokens: '{t}' is not a token id")))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--tokens: no token ids given");
    }
    Ok(ids)
}

pub fn main(a: LogitsArgs) -> Result<()> {
    let tokens = parse_tokens(&a.tokens)?;
    let index = WeightIndex::open(&a.model.model)?;
    let n_ctx = a.model.ctx_size.unwrap_or(tokens.len());
    if tokens.len() > n_ctx {
        return Err(engine::Error::PromptTooLong { n_tokens: tokens.len(), n_ctx }.into());
    }
    let mut model = Model::load(&index, &a.model.load_options(&index, n_ctx)?)?;
    crate::ModelArgs::warn_ctx(&index, &model.info, "-c", n_ctx);
    a.numerics.apply(&mut model)?;
    if let Some(plan) = model.memory_plan() {
        eprintln!("{plan}");
    }
    a.model.apply_mlock();
    let cpu = Cpu::new(a.model.n_threads());
    let n_vocab = model.info.n_vocab;
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= n_vocab) {
        let err = engine::Error::TokenOutOfRange { id, n_vocab };
        return Err(anyhow::Error::new(err).context(format!("--tokens (model {})", a.model.model.display())));
    }
    let mut session = model.try_new_session(n_ctx)?;
    let mut all = Vec::with_capacity(tokens.len() * n_vocab);
    if a.one_by_one {
        for &t in &tokens {
            all.extend_from_slice(model.forward(&cpu, &mut session, &[t], Logits::Last)?);
        }
    } else {
        all.extend_from_slice(model.forward(&cpu, &mut session, &tokens, Logits::All)?);
    }
    write_npy_f32(&a.output, &[tokens.len(), n_vocab], &all)?;
    eprintln!("wrote {} x {} logits to {}", tokens.len(), n_vocab, a.output.display());
    Ok(())
}

/// Writes a float32 array as a NumPy .npy (version 1.0) file.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n' padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(&out).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
