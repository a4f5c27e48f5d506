//! `flash-moe serve`: the OpenAI- and Anthropic-compatible HTTP server (crates/server), with the memory budget
//! covering every sequence's state: the sequences decoded together and the conversations kept for reuse.

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::experts::budget::{auto_budget, human, Budget};
use engine::formats::WeightIndex;
use engine::models::{ExpertResidency, LoadOptions};
use engine::runtime::Runtime;
use server::{Limits, ServerConfig, TemplateOverride};

use crate::ModelArgs;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (loopback: only this machine; 0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require this key (Authorization: Bearer KEY, or x-api-key: KEY); 401 otherwise. Also read from
    /// FLASH_MOE_API_KEY.
    #[arg(long = "api-key", env = "FLASH_MOE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests decoded together (continuous batching): each step runs every one of them and reads each expert
    /// once for all.
    #[arg(long, default_value_t = 4, value_parser = crate::args::at_least_one)]
    pub parallel: usize,
    /// Requests that may wait for a free sequence; more get 429.
    #[arg(long, default_value_t = 16, value_parser = crate::args::count)]
    pub queue: usize,
    /// Finished conversations whose state is kept, so that their next turn computes only the new tokens
    /// [default: --parallel].
    #[arg(long = "cache-prompts", value_parser = crate::args::count)]
    pub cache_prompts: Option<usize>,
    /// A Jinja chat template to use instead of the model file's (e.g. one of tests/fixtures/chat-templates).
    #[arg(long = "chat-template", value_name = "FILE")]
    pub chat_template: Option<std::path::PathBuf>,
    /// The model's name in responses [default: the file name without extension].
    #[arg(long)]
    pub alias: Option<String>,
    /// Largest request body (413 beyond), e.g. 8MiB.
    #[arg(long = "max-body", default_value = "8MiB")]
    pub max_body: String,
    /// Do not log one line per request to stderr.
    #[arg(long = "no-log")]
    pub no_log: bool,
    #[command(flatten)]
    pub cache: crate::warmstart::CacheArgs,
}

pub fn main(a: ServeArgs) -> Result<()> {
    let index = WeightIndex::open(&a.model.model)?;
    let n_ctx = a.model.n_ctx(&index, a.model.ctx_size);
    let body_bytes_max = match Budget::parse(&a.max_body)? {
        Budget::Bytes(b) if (1024..=(1 << 30)).contains(&b) => b as usize,
        _ => bail!("--max-body {}: give a size from 1KiB to 1GiB", a.max_body),
    };
    let limits = Limits { body_bytes_max, ..Limits::default() };
    let n_cached = a.cache_prompts.unwrap_or(a.parallel);
    let load = load_options(&a, &index, n_ctx, n_cached, &limits)?;
    let template = match &a.chat_template {
        Some(p) => Some(TemplateOverride {
            text: std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            source: p.display().to_string(),
        }),
        None => None,
    };
    let mut rt = Runtime::open(index, &load)?;
    crate::ModelArgs::warn_ctx(&rt.index, &rt.model.info, "-c", n_ctx);
    if let Some(plan) = rt.model.memory_plan() {
        eprintln!("{plan}");
    }
    a.model.apply_mlock();
    rt.prepare_cache(&a.cache.prep())?;
    for w in rt.warnings.drain(..) {
        eprintln!("warning: {w}");
    }
    let loopback = a.host == "localhost" || a.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback && a.api_key.as_deref().is_none_or(str::is_empty) {
        eprintln!("warning: --host {} without --api-key: anyone who can reach this address can use the model", a.host);
    }
    let model_name = a.alias.clone().unwrap_or_else(|| {
        a.model.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    });
    let cfg = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        model_name,
        n_ctx,
        n_parallel: a.parallel,
        queue_max: a.queue,
        n_cached_prompts: n_cached,
        n_threads: a.model.n_threads(),
        limits,
        log_requests: !a.no_log,
    };
    server::run(rt, cfg, template)?;
    Ok(())
}

/// The model's load options with the budget split: the engine's memory plan covers the resident weights, one
/// sequence's state and the expert cache; the other sequences' states (decoding and kept for reuse) and the HTTP
/// side's allowance come off the budget first. Without `--memory-budget` they also decide whether the whole file
/// can stay in memory beside them.
fn load_options(
    a: &ServeArgs,
    index: &WeightIndex,
    n_ctx: usize,
    n_cached: usize,
    limits: &Limits,
) -> Result<LoadOptions> {
    let kinds = engine::models::state_kinds(index)?;
    let per_seq = engine::session::session_bytes_max(&kinds, n_ctx, a.model.kv_types()?);
    let n_states = a.parallel + n_cached;
    let extra = (n_states as u64 - 1).saturating_mul(per_seq).saturating_add(limits.overhead_bytes());
    let mut load = a.model.load_options_for(index, n_ctx, false, extra)?;
    eprintln!(
        "sessions   {} decoding together + {n_cached} kept for reuse, {n_ctx} tokens each: {} of state each, {} in all",
        a.parallel,
        human(per_seq),
        human(per_seq.saturating_mul(n_states as u64))
    );
    match reserve_budget(&mut load, extra) {
        Err((total, source)) => bail!(
            "memory budget {} ({source}) is too small for {n_states} sequences of {n_ctx} tokens ({} each) and \
             the server's {}: lower --parallel, --cache-prompts or --ctx-size",
            human(total),
            human(per_seq),
            human(limits.overhead_bytes())
        ),
        Ok(Some((total, source))) => eprintln!(
            "budget     {} ({source}): {} for the other {} sequences' state and the HTTP side, {} for the model",
            human(total),
            human(extra),
            n_states - 1,
            human(total - extra)
        ),
        Ok(None) => {}
    }
    Ok(load)
}

/// Takes `extra` bytes off the memory budget of a model whose experts stream, when the budget is a size or
/// 'auto' (the engine's memory plan then covers the rest): returns that budget and where it came from, or `None`
/// when nothing was taken (experts resident, 'min', a percentage). `Err` gives the same pair when the budget is
/// smaller than `extra`. (Experts are resident by default only when the file, the states and `extra` fit:
/// [`crate::ModelArgs::load_options_for`].)
pub(crate) fn reserve_budget(load: &mut LoadOptions, extra: u64) -> Result<Option<(u64, String)>, (u64, String)> {
    let ExpertResidency::Stream(so) = &mut load.experts else { return Ok(None) };
    let (total, source) = match so.budget {
        Budget::Bytes(b) => (b, "--memory-budget".to_string()),
        Budget::Auto => auto_budget(),
        Budget::Min | Budget::ExpertPercent(_) => return Ok(None),
    };
    let Some(rest) = total.checked_sub(extra) else { return Err((total, source)) };
    so.budget = Budget::Bytes(rest);
    Ok(Some((total, source)))
}
