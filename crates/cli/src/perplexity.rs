//! `flash-moe perplexity`: held-out loss and perplexity of a text (or of given token ids), like llama.cpp's
//! `llama-perplexity` with non-overlapping windows scored from their second token.

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::formats::WeightIndex;
use engine::generate;
use engine::models::Model;
use engine::ops::Cpu;

use crate::logits::parse_tokens;
use crate::ModelArgs;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (tokenized with the model's tokenizer, no BOS added unless the model asks for one).
    #[arg(short = 'f', long = "file", required_unless_present = "tokens")]
    pub file: Option<std::path::PathBuf>,
    /// Comma-separated token ids to score instead of a text.
    #[arg(long, conflicts_with = "file")]
    pub tokens: Option<String>,
    /// Tokens per window [default: --ctx-size, else the model's training context, at most 4096].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::args::at_least_one)]
    pub window: Option<usize>,
    /// Write the result as JSON.
    #[arg(long = "json")]
    pub json: Option<std::path::PathBuf>,
}

pub fn main(a: PerplexityArgs) -> Result<()> {
    let index = WeightIndex::open(&a.model.model)?;
    let tokens = match (&a.tokens, &a.file) {
        (Some(t), _) => parse_tokens(t)?,
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            generate::load_tokenizer(&index)?.encode(&text, true, false)?
        }
        (None, None) => bail!("nothing to score: give -f FILE or --tokens 1,2,3"),
    };
    let flag = if a.window.is_some() { "--window" } else { "-c" };
    let n_ctx = a.model.n_ctx(&index, a.window.or(a.model.ctx_size));
    if n_ctx < 2 {
        bail!("--window {n_ctx}: a window needs at least 2 tokens");
    }
    if tokens.len() < 2 {
        bail!("the text has {} token(s); scoring needs at least 2", tokens.len());
    }
    // A window longer than the text holds the text: no KV cache beyond it.
    let n_kv = n_ctx.min(tokens.len());
    let model = Model::load(&index, &a.model.load_options(&index, n_kv)?)?;
    crate::ModelArgs::warn_ctx(&index, &model.info, flag, n_ctx);
    if let Some(plan) = model.memory_plan() {
        eprintln!("{plan}");
    }
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= model.info.n_vocab) {
        return Err(engine::Error::TokenOutOfRange { id, n_vocab: model.info.n_vocab }.into());
    }
    a.model.apply_mlock();
    let cpu = Cpu::new(a.model.n_threads());
    let mut session = model.try_new_session(n_kv)?;
    let t0 = std::time::Instant::now();
    let mut line = crate::progress::ProgressLine::new(a.model.quiet);
    let n_total = tokens.len();
    let loss =
        engine::perplexity::evaluate_with_progress(&model, &cpu, &mut session, &tokens, n_ctx, &mut |loss, done| {
            line.update(done == n_total, || {
                let secs = t0.elapsed().as_secs_f64();
                let rate = done as f64 / secs.max(1e-9);
                format!(
                    "perplexity: {done}/{n_total} tokens ({:.0}%), {:.1} tok/s, running perplexity {:.4}, ETA {}",
                    100.0 * done as f64 / n_total.max(1) as f64,
                    rate,
                    loss.perplexity(),
                    crate::progress::eta((n_total - done) as f64 / rate.max(1e-9))
                )
            })
        })?;
    line.finish();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "loss {:.6}  perplexity {:.4}  ({} tokens scored in {} windows of {n_ctx}, {:.1} tok/s)",
        loss.mean(),
        loss.perplexity(),
        loss.n_scored,
        loss.n_windows,
        tokens.len() as f64 / secs.max(1e-9)
    );
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "model": a.model.model,
            "window": n_ctx,
            "n_tokens": tokens.len(),
            "loss": loss.mean(),
            "perplexity": loss.perplexity(),
            "nll_sum": loss.nll_sum,
            "n_scored": loss.n_scored,
            "n_windows": loss.n_windows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
