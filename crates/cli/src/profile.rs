//! `flash-moe profile`: runs prompts through a model and saves how often the router chose each expert of each
//! layer, prompt and generated tokens apart (format: `engine::experts::profile`), for `run --profile`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::experts::profile::{ModelIdentity, RouteCounter};
use engine::formats::WeightIndex;
use engine::generate;
use engine::models::{Logits, Model};
use engine::ops::Cpu;

use crate::ModelArgs;

#[derive(Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts: one per line (empty lines skipped); with --chunk-tokens, the whole file as one text cut into
    /// chunks of that many tokens.
    #[arg(long = "prompts", value_name = "FILE")]
    pub prompts: PathBuf,
    /// Treat --prompts as one text and cut it into prompts of this many tokens.
    #[arg(long = "chunk-tokens", value_name = "N", allow_negative_numbers = true, value_parser = crate::args::at_least_one)]
    pub chunk_tokens: Option<usize>,
    /// Tokens generated (greedily) after each prompt, so decode routing is profiled too.
    #[arg(short = 'n', long = "n-predict", default_value_t = 16, allow_negative_numbers = true, value_parser = crate::args::count)]
    pub n_predict: usize,
    /// Where to write the profile (JSON).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

pub fn main(a: ProfileArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.prompts).with_context(|| format!("reading {}", a.prompts.display()))?;
    let index = WeightIndex::open(&a.model.model)?;
    let tokenizer = generate::load_tokenizer(&index)?;
    let prompts: Vec<Vec<u32>> = match a.chunk_tokens {
        Some(0) => bail!("--chunk-tokens 0: give a chunk length of at least one token"),
        Some(n) => tokenizer.encode(&text, true, false)?.chunks(n).map(<[u32]>::to_vec).collect(),
        None => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| tokenizer.encode(l, true, false))
            .collect::<engine::Result<_>>()?,
    };
    if prompts.is_empty() {
        bail!("{}: no prompts (the file is empty)", a.prompts.display());
    }
    let n_ctx = a.model.n_ctx(&index, a.model.ctx_size);
    if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() + a.n_predict > n_ctx) {
        bail!(
            "prompt {} is {} tokens; with -n {} it needs more than the context of {n_ctx} (raise -c, or cut the file \
             with --chunk-tokens)",
            i + 1,
            p.len(),
            a.n_predict
        );
    }
    let mut model = Model::load(&index, &a.model.load_options(&index, n_ctx)?)?;
    crate::ModelArgs::warn_ctx(&index, &model.info, "-c", n_ctx);
    if model.info.n_expert == 0 {
        bail!("{}: not a mixture-of-experts model (no routed experts to profile)", a.model.model.display());
    }
    if let Some(plan) = model.memory_plan() {
        eprintln!("{plan}");
    }
    a.model.apply_mlock();
    let moe: Vec<bool> = model.expert_layout().layers.iter().map(Option::is_some).collect();
    let counter = std::sync::Arc::new(RouteCounter::new(model.info.n_layer, model.info.n_expert, &moe, None));
    model.set_route_hook(Some(counter.clone()));
    let cpu = Cpu::new(a.model.n_threads());
    let t0 = Instant::now();
    let mut session = model.try_new_session(n_ctx)?;
    for (i, p) in prompts.iter().enumerate() {
        session.reset();
        counter.start_prompt(p.len());
        let mut next = argmax(model.forward(&cpu, &mut session, p, Logits::Last)?);
        for _ in 0..a.n_predict {
            next = argmax(model.forward(&cpu, &mut session, &[next], Logits::Last)?);
        }
        eprint!("\rprofiled {}/{} prompts", i + 1, prompts.len());
    }
    eprintln!();
    let profile = counter.profile(ModelIdentity::of(&index, &model.info), &moe, prompts.len());
    profile.save(&a.output)?;
    let secs = t0.elapsed().as_secs_f64();
    let totals = profile.totals();
    let routed: u64 = totals.iter().flatten().sum();
    let n_moe = profile.layers.len();
    // How concentrated routing is: the share of routings that went to each layer's hottest eighth of the experts.
    let top = (model.info.n_expert / 8).max(1);
    let top_sum: u64 = totals
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.sort_unstable_by(|a, b| b.cmp(a));
            c.iter().take(top).sum::<u64>()
        })
        .sum();
    eprintln!(
        "wrote {}: {} prompts, {} prompt + {} generated tokens over {n_moe} MoE layers in {secs:.1} s; the hottest {top} \
         of {} experts per layer took {:.1}% of the routings",
        a.output.display(),
        prompts.len(),
        profile.prompt_tokens,
        profile.decode_tokens,
        model.info.n_expert,
        100.0 * top_sum as f64 / routed.max(1) as f64
    );
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
