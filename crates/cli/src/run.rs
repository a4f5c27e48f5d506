//! `flash-moe run`: generate text from a prompt.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::formats::WeightIndex;
use engine::generate::{self, GenerateParams};
use engine::models::Model;
use engine::ops::Cpu;
use engine::runtime::Runtime;
use engine::sample::SamplerConfig;
use engine::sample_defaults::SamplingDefaults;
use engine::tokenizer::{ChatMessage, ChatTemplate, ControlText};

use crate::{mib, peak_rss_bytes, ModelArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(short = 'p', long = "prompt")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
    pub file: Option<std::path::PathBuf>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128, allow_negative_numbers = true, value_parser = crate::args::count)]
    pub n_predict: usize,
    /// Do not print the prompt before the generated text (it is printed unless --chat is given).
    #[arg(long = "no-display-prompt")]
    pub no_display_prompt: bool,
    /// Wrap the prompt in the model's chat template as a user message (the prompt is then not printed).
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long = "system", requires = "chat")]
    pub system: Option<String>,
    /// Sampling temperature; 0 means greedy. [default: what the model file recommends (GGUF general.sampling.*
    /// or generation_config.json), else 0.8; likewise for the other sampling flags, whose fallbacks are
    /// llama.cpp's defaults]
    #[arg(long = "temp", allow_negative_numbers = true)]
    pub temp: Option<f32>,
    /// Keep only the k most likely tokens (0 = off) [fallback: 40].
    #[arg(long = "top-k", allow_negative_numbers = true, value_parser = crate::args::count)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off) [fallback: 0.95].
    #[arg(long = "top-p", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than min-p times the most likely one (0 = off) [fallback: 0.05].
    #[arg(long = "min-p", allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Penalise repeats of the last --repeat-last-n tokens (1 = off) [fallback: 1].
    #[arg(long = "repeat-penalty", allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// How many of the latest tokens the penalties look at (0 = none) [fallback: 64].
    #[arg(long = "repeat-last-n", allow_negative_numbers = true, value_parser = crate::args::count)]
    pub repeat_last_n: Option<usize>,
    /// Subtract this from the logit of every token already present (0 = off).
    #[arg(long = "presence-penalty", default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Subtract this times the count of every token already present (0 = off).
    #[arg(long = "frequency-penalty", default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Random seed [default: random].
    #[arg(short = 's', long = "seed", allow_negative_numbers = true, value_parser = crate::args::seed)]
    pub seed: Option<u64>,
    /// Do not stop at end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Stop when the output contains this text (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Print control tokens the model generates (`<|im_start|>`, `<|channel|>`, ...) as their text; without it
    /// they print nothing, as with llama.cpp.
    #[arg(long = "special")]
    pub special: bool,
    /// Write the expert cache statistics of the run as JSON.
    #[arg(long = "stats-json")]
    pub stats_json: Option<std::path::PathBuf>,
    /// Record the experts chosen per token and layer to a CSV trace (the format of tests/fixtures/traces).
    #[arg(long = "record-routes", value_name = "FILE")]
    pub record_routes: Option<std::path::PathBuf>,
    /// BENCHMARK MODE, not inference: replace the router's choices by a recorded trace's, so the cache and
    /// loader run with real routing on a synthetic model of the same shape. The text it prints means nothing.
    #[arg(long = "replay-routes", value_name = "FILE", conflicts_with = "record_routes")]
    pub replay_routes: Option<std::path::PathBuf>,
    /// APPROXIMATE MODE, not the model's exact output: 'drop-missing' skips, in decode steps, routed experts that
    /// are not in the expert cache, except each token's best one (their reads start in the background; the prompt
    /// is computed exactly), 'top-k=N' uses only the N best of the router's k experts; the kept experts' weights
    /// are renormalised.
    /// Off unless given; the count of dropped experts is printed.
    #[arg(long = "approx", value_name = "drop-missing|top-k=N")]
    pub approx: Option<String>,
    /// Whose float arithmetic to follow: 'native' (flash-moe's kernels) or 'ggml' (llama.cpp's logits bit for
    /// bit, slowly; Llama, Qwen3 and Qwen3-MoE GGUFs with Q4_1, Q8_0, Q4_K, Q6_K or Q5_0 weights).
    #[arg(long, value_enum, default_value_t = crate::NumericsArg::Native)]
    pub numerics: crate::NumericsArg,
    #[command(flatten)]
    pub cache: crate::warmstart::CacheArgs,
}

/// Rejects sampling parameters that are NaN, infinite or outside their range.
fn check_sampling(a: &RunArgs) -> Result<()> {
    let ranges = [
        ("--temp", a.temp, 0.0, f32::MAX),
        ("--top-p", a.top_p, 0.0, 1.0),
        ("--min-p", a.min_p, 0.0, 1.0),
        ("--repeat-penalty", a.repeat_penalty, f32::MIN_POSITIVE, f32::MAX),
        ("--presence-penalty", Some(a.presence_penalty), f32::MIN, f32::MAX),
        ("--frequency-penalty", Some(a.frequency_penalty), f32::MIN, f32::MAX),
    ];
    for (flag, v, lo, hi) in ranges {
        let Some(v) = v else { continue };
        if !(lo..=hi).contains(&v) {
            let range = match (lo, hi) {
                (f32::MIN, f32::MAX) => "a finite number".to_string(),
                (_, f32::MAX) if lo > 0.0 => "a finite number above 0".to_string(),
                (_, f32::MAX) => format!("a finite number of at least {lo}"),
                _ => format!("between {lo} and {hi}"),
            };
            bail!("{flag} {v}: must be {range}");
        }
    }
    Ok(())
}

/// The sampler settings of a run: the command line, else what the model file recommends, else llama.cpp's
/// defaults; and a line saying which were used and where they came from.
fn sampler_config(a: &RunArgs, recommended: &SamplingDefaults, seed: u64) -> (SamplerConfig, String) {
    let base = recommended.apply(SamplerConfig::default());
    let c = SamplerConfig {
        temperature: a.temp.unwrap_or(base.temperature),
        top_k: a.top_k.unwrap_or(base.top_k),
        top_p: a.top_p.unwrap_or(base.top_p),
        min_p: a.min_p.unwrap_or(base.min_p),
        repeat_penalty: a.repeat_penalty.unwrap_or(base.repeat_penalty),
        repeat_last_n: a.repeat_last_n.unwrap_or(base.repeat_last_n),
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        seed,
    };
    let from = |given: bool, rec: bool| {
        if given {
            ""
        } else if rec {
            " (model)"
        } else {
            ""
        }
    };
    let mut line = if c.temperature <= 0.0 {
        format!(
            "sampling   greedy (temp {}){}",
            c.temperature,
            from(a.temp.is_some(), recommended.temperature.is_some())
        )
    } else {
        format!(
            "sampling   temp {}{}, top-k {}{}, top-p {}{}, min-p {}{}, repeat-penalty {}{}, seed {seed}",
            c.temperature,
            from(a.temp.is_some(), recommended.temperature.is_some()),
            c.top_k,
            from(a.top_k.is_some(), recommended.top_k.is_some()),
            c.top_p,
            from(a.top_p.is_some(), recommended.top_p.is_some()),
            c.min_p,
            from(a.min_p.is_some(), recommended.min_p.is_some()),
            c.repeat_penalty,
            from(a.repeat_penalty.is_some(), recommended.repeat_penalty.is_some()),
        )
    };
    line += &match recommended.source {
        Some(src) => format!("; (model) = recommended by the model file ({src}), the rest llama.cpp's defaults"),
        None => "; the model file recommends no sampling settings: llama.cpp's defaults unless given".to_string(),
    };
    (c, line)
}

pub fn main(a: RunArgs) -> Result<()> {
    let t_start = std::time::Instant::now();
    check_sampling(&a)?;
    // Checked before the (slow) load; applied after it.
    let approx = a.approx.as_deref().map(engine::approx::Approx::parse).transpose()?;
    let text = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => bail!("no prompt: give one with -p TEXT or -f FILE"),
    };
    if text.is_empty() {
        bail!("the prompt is empty: give some text with -p TEXT or -f FILE");
    }
    let index = WeightIndex::open(&a.model.model)?;
    let n_ctx = a.model.n_ctx(&index, a.model.ctx_size);
    let load = a.model.load_options_for(&index, n_ctx, a.replay_routes.is_some(), 0)?;
    let mut rt = Runtime::open(index, &load)?;
    crate::ModelArgs::warn_ctx(&rt.index, &rt.model.info, "-c", n_ctx);
    a.numerics.apply(&mut rt.model)?;
    let load_secs = t_start.elapsed().as_secs_f64();
    let hooks = route_hooks(&a, &mut rt.model)?;
    if let Some(mode) = approx {
        rt.model.set_approx(Some(mode))?;
        eprintln!("{}", approx_banner(mode, rt.model.info.n_expert_used, rt.model.memory_plan().is_some()));
    }
    for note in &rt.notes {
        eprintln!("note: {note}");
    }
    if let Some(plan) = rt.model.memory_plan() {
        eprintln!("{plan}");
    }
    a.model.apply_mlock();
    let cpu = Cpu::new(a.model.n_threads());
    rt.prepare_cache(&a.cache.prep())?;
    for w in rt.warnings.drain(..) {
        eprintln!("warning: {w}");
    }
    let (index, model, tokenizer, prepared) = (&rt.index, &rt.model, &rt.tokenizer, &rt.prepared);
    let RouteHooks { recorder, counter, replay } = hooks;

    let (prompt_text, parse_special) = if a.chat {
        let src = tokenizer.chat_template().context("--chat: the model has no chat template")?;
        let template = ChatTemplate::named(src, &format!("the chat template of {}", a.model.model.display()))?;
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(ChatMessage::new("system", s.clone()));
        }
        messages.push(ChatMessage::new("user", text));
        let bos = tokenizer.bos_token();
        let eos = tokenizer.eos_token();
        (template.render(&messages, true, bos.as_deref(), eos.as_deref())?, true)
    } else {
        (text, false)
    };
    // A chat template writes the BOS text itself when the model wants one.
    let add_special = !(a.chat && tokenizer.bos_token().is_some_and(|b| prompt_text.starts_with(&b)));
    let prompt = tokenizer.encode(&prompt_text, add_special, parse_special)?;

    if prompt.len() > n_ctx {
        return Err(engine::Error::PromptTooLong { n_tokens: prompt.len(), n_ctx }.into());
    }
    let mut session = model.try_new_session(n_ctx)?;
    let seed = a.seed.unwrap_or_else(random_seed);
    let (sampler, sampling_line) = sampler_config(&a, &SamplingDefaults::of(index), seed);
    eprintln!("{sampling_line}");
    let params = GenerateParams {
        n_predict: a.n_predict,
        sampler,
        ignore_eos: a.ignore_eos,
        stop: a.stop.clone(),
        interrupt: Some(crate::interrupt::install()),
        control_text: if a.special { ControlText::Shown } else { ControlText::Hidden },
    };
    if let Some(c) = &counter {
        c.start_prompt(prompt.len());
    }
    let cached_at_start: std::collections::HashSet<(usize, u32)> =
        model.expert_cache().map(|c| c.hot_experts().iter().map(|h| (h.layer, h.expert)).collect()).unwrap_or_default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !a.chat && !a.no_display_prompt {
        // Like llama.cpp: the continuation follows the prompt on the same line.
        let _ = out.write_all(prompt_text.as_bytes());
        let _ = out.flush();
    }
    let mut n_pieces = 0usize;
    let stats = generate::generate(model, &cpu, tokenizer, &mut session, &prompt, &params, &mut |t| {
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
        n_pieces += 1;
        if n_pieces.is_multiple_of(HOT_SAVE_EVERY) {
            let _ = rt.save_hot();
        }
    })?;
    let _ = writeln!(out);
    drop(out);
    let saved_hot = rt.save_hot();
    if let Some(r) = &recorder {
        r.finish()?;
    }
    if replay {
        eprintln!("REPLAY MODE: the routing came from the trace, not from the model");
    }
    if let Some((mode, st)) = model.approx_stats() {
        eprintln!(
            "APPROXIMATE MODE ({}): dropped {} of {} experts routed{} ({:.1}%); the output is not the model's exact \
             output",
            mode.name(),
            st.dropped,
            st.routed,
            if mode == engine::approx::Approx::DropMissing { " in decode steps" } else { "" },
            100.0 * st.dropped_fraction()
        );
    }

    eprintln!();
    eprintln!(
        "model      {} ({}, {} threads, {}){}",
        a.model.model.display(),
        model.info.arch,
        cpu.pool.n_threads(),
        cpu.kernels.name(),
        if a.model.is_bundled_model() { ", the bundled model" } else { "" }
    );
    if let Some(plan) = model.memory_plan() {
        eprintln!(
            "streaming  experts read from disk into a cache of {} of {} experts ({})",
            plan.n_slots, plan.n_experts_total, plan.budget_source
        );
    }
    eprintln!(
        "prompt     {} tokens in {:.3} s = {:.2} tok/s",
        stats.n_prompt,
        stats.prompt_secs,
        stats.n_prompt as f64 / stats.prompt_secs.max(1e-9)
    );
    eprintln!(
        "decode     {} tokens in {:.3} s = {:.2} tok/s  (stop: {:?}, seed {seed})",
        stats.n_generated,
        stats.decode_secs,
        stats.n_decode_steps as f64 / stats.decode_secs.max(1e-9),
        stats.stop
    );
    let ttft = prepared.as_ref().zip(model.expert_cache()).map(|(p, cache)| {
        let touched = counter.as_ref().map(|c| c.counts().prefill_experts()).unwrap_or_default();
        first_token_report(load_secs, p, &stats, cache, &touched, &cached_at_start)
    });
    if let (Some(pre), Some(dec)) = (&stats.cache_prefill, &stats.cache_decode) {
        for (phase, st, secs, n_tok) in [
            ("prefill", pre, stats.prompt_secs, stats.n_prompt),
            ("decode", dec, stats.decode_secs, stats.n_decode_steps),
        ] {
            eprintln!(
                "experts    {phase:<7} {} hits, {} misses ({:.1}% hit), {:.1} MiB read ({:.1} MiB/token, {:.2} GB/s), \
                 waited {:.3} s for reads",
                st.hits,
                st.misses,
                100.0 * st.hit_rate(),
                mib(st.bytes_read),
                mib(st.bytes_read) / n_tok.max(1) as f64,
                st.bytes_read as f64 / secs.max(1e-9) / 1e9,
                st.wait_secs
            );
            if st.prefetch_issued > 0 || st.predicted_of > 0 {
                eprintln!(
                    "prefetch   {phase:<7} {} reads ({:.1} MiB), {} used ({} late), {} cancelled, {} held back \
                     (throttled); prediction accuracy {:.1}% (predicted experts used / experts used)",
                    st.prefetch_issued,
                    mib(st.prefetch_bytes),
                    st.prefetch_used,
                    st.prefetch_late,
                    st.prefetch_cancelled,
                    st.prefetch_throttled,
                    100.0 * st.prediction_accuracy()
                );
            }
        }
    }
    if let Some(path) = &a.stats_json {
        let json = serde_json::json!({
            "mode": if replay { "replay (benchmark, not inference)" } else { "inference" },
            "approx": model.approx_stats().map(|(mode, st)| serde_json::json!({
                "mode": mode.name(),
                "applies_to": match mode {
                    engine::approx::Approx::DropMissing => "decode steps (single-token forward passes)",
                    engine::approx::Approx::TopK(_) => "every token",
                },
                "routed_experts": st.routed,
                "dropped_experts": st.dropped,
                "dropped_fraction": st.dropped_fraction(),
            })),
            "model": a.model.model,
            "prompt_tokens": stats.n_prompt,
            "prompt_secs": stats.prompt_secs,
            "generated_tokens": stats.n_generated,
            "decode_steps": stats.n_decode_steps,
            "decode_secs": stats.decode_secs,
            "decode_tok_s": stats.n_decode_steps as f64 / stats.decode_secs.max(1e-9),
            "plan": model.memory_plan(),
            "experts_prefill": stats.cache_prefill,
            "experts_decode": stats.cache_decode,
            "prefetch": format!("{:?}", a.model.prefetch.mode(replay)).to_lowercase(),
            "prediction_accuracy_decode": stats.cache_decode.as_ref().map(|d| d.prediction_accuracy()),
            "per_token": stats.per_token,
            "time_to_first_token": ttft,
            "peak_rss_bytes": peak_rss_bytes(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match saved_hot {
        Some(Ok((path, n))) => eprintln!("warm start {n} hot experts saved for the next start: {}", path.display()),
        Some(Err(w)) => eprintln!("warning: {w}"),
        None => {}
    }
    if let Some(rss) = peak_rss_bytes() {
        eprintln!(
            "memory     peak RSS {:.1} MiB (weights resident {:.1} MiB, KV cache {:.1} MiB)",
            mib(rss),
            mib(model.info.resident_bytes),
            mib(session.kv_bytes() as u64)
        );
    }
    Ok(())
}

/// The route hooks of a run: a recorder (`--record-routes`), a replay (`--replay-routes`), and, when experts
/// stream, a counter of the experts the prefill touched around them; installed on the model.
struct RouteHooks {
    recorder: Option<std::sync::Arc<engine::routes::RouteRecorder>>,
    counter: Option<std::sync::Arc<engine::experts::profile::RouteCounter>>,
    replay: bool,
}

fn route_hooks(a: &RunArgs, model: &mut Model) -> Result<RouteHooks> {
    let mut hook: Option<std::sync::Arc<dyn engine::layers::moe::RouteHook>> = None;
    let mut recorder = None;
    if let Some(path) = &a.record_routes {
        let expert_bytes: Vec<u64> =
            model.expert_layout().layers.iter().map(|l| l.as_ref().map_or(0, |l| l.expert_bytes())).collect();
        let r = std::sync::Arc::new(engine::routes::RouteRecorder::create(
            path,
            &a.model.model.display().to_string(),
            &model.info.arch,
            model.info.n_expert,
            model.info.n_expert_used,
            &expert_bytes,
        )?);
        hook = Some(r.clone());
        recorder = Some(r);
    }
    let replay = a.replay_routes.is_some();
    if let Some(path) = &a.replay_routes {
        if a.model.prefetch == crate::PrefetchArg::Router {
            anyhow::bail!(
                "--prefetch router predicts from the model's own router, which --replay-routes overrides; use --prefetch table"
            );
        }
        let r = engine::routes::RouteReplay::load(path, model.info.n_expert.max(1))?;
        eprintln!(
            "REPLAY MODE: routing replaced by {} ({} tokens); a benchmark, not inference: the text means nothing",
            path.display(),
            r.n_tokens()
        );
        hook = Some(std::sync::Arc::new(r));
    }
    // When experts stream, count the routes too (which experts the prefill touched), around any other hook.
    let counter = model.expert_cache().map(|_| {
        let moe: Vec<bool> = model.expert_layout().layers.iter().map(Option::is_some).collect();
        std::sync::Arc::new(engine::experts::profile::RouteCounter::new(
            model.info.n_layer,
            model.info.n_expert,
            &moe,
            hook.take(),
        ))
    });
    if let Some(c) = &counter {
        hook = Some(c.clone());
    }
    model.set_route_hook(hook);
    Ok(RouteHooks { recorder, counter, replay })
}

/// The start-of-run warning for `--approx`.
fn approx_banner(mode: engine::approx::Approx, n_expert_used: usize, streaming: bool) -> String {
    let what = match mode {
        engine::approx::Approx::TopK(n) => format!("at most {n} experts per token (the router's k is {n_expert_used})"),
        _ if streaming => {
            "in decode steps, routed experts not in the expert cache, but a token's best, are skipped (read in the \
             background; the prompt is exact)"
                .into()
        }
        _ => "routed experts not in memory are skipped (all experts are in RAM: none will be)".into(),
    };
    format!(
        "APPROXIMATE MODE (--approx {}): {what}, the kept experts reweighted; the output is not the model's exact output",
        mode.name()
    )
}

/// Prints and returns the time to the first token split into load, warm start and prefill, and the bytes the
/// prefill read against what the distinct experts it touched (less those cached at the start) take to read.
fn first_token_report(
    load_secs: f64,
    p: &engine::runtime::Prepared,
    stats: &generate::GenerateStats,
    cache: &engine::experts::cache::ExpertCache,
    touched: &[(usize, u32)],
    cached_at_start: &std::collections::HashSet<(usize, u32)>,
) -> serde_json::Value {
    let not_cached: Vec<&(usize, u32)> = touched.iter().filter(|x| !cached_at_start.contains(x)).collect();
    let expected: u64 = not_cached.iter().map(|&&(l, e)| cache.expert_read_bytes(l, e)).sum();
    let read = stats.cache_prefill.as_ref().map_or(0, |s| s.bytes_read);
    let pre = &p.preload;
    eprintln!(
        "first token {:.3} s = load {:.3} s + warm start {:.3} s ({} experts{}, {:.1} MiB in {} reads, {:.2} GB/s) \
         + prefill {:.3} s",
        load_secs + pre.secs + stats.prompt_secs,
        load_secs,
        pre.secs,
        pre.n_experts,
        if pre.n_pinned > 0 { format!(", {} pinned", pre.n_pinned) } else { String::new() },
        mib(pre.bytes_read),
        pre.n_reads,
        pre.gb_per_s(),
        stats.prompt_secs
    );
    eprintln!(
        "prefill    touched {} distinct experts ({} already cached): {:.1} MiB to read, {:.1} MiB read ({})",
        touched.len(),
        touched.len() - not_cached.len(),
        mib(expected),
        mib(read),
        if read == expected { "each expert read once" } else { "not equal: experts evicted during the prefill" }
    );
    let st = cache.stats();
    if p.background > 0 {
        eprintln!(
            "warm start {} of {} hot experts read in the background ({:.1} MiB, low priority, into free slots)",
            st.warm_reads,
            p.background,
            mib(st.warm_bytes)
        );
    }
    serde_json::json!({
        "load_secs": load_secs,
        "warm_start": { "hot_file": p.hot_path, "read_back": p.warm, "pinned_planned": p.n_pinned_planned,
                        "preload": pre, "gb_per_s": pre.gb_per_s(),
                        "background": { "queued": p.background, "read": st.warm_reads, "bytes": st.warm_bytes } },
        "prefill_secs": stats.prompt_secs,
        "total_secs": load_secs + pre.secs + stats.prompt_secs,
        "prefill_distinct_experts": touched.len(),
        "prefill_distinct_experts_cached_at_start": touched.len() - not_cached.len(),
        "prefill_bytes_expected": expected,
        "prefill_bytes_read": read,
    })
}

/// Text pieces (about tokens) between saves of the hot experts.
const HOT_SAVE_EVERY: usize = 64;

pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish()
}
