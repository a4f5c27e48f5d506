//! Text generation: prompt -> tokens -> prefill -> sample/decode loop -> streamed text, with timings.
//!
//! Also where a model's tokenizer is found: the GGUF metadata, or `tokenizer.json` beside the safetensors.

use std::time::Instant;

use crate::experts::cache::CacheStats;
use crate::formats::{Metadata, WeightIndex};
use crate::models::{Logits, Model};
use crate::ops::Cpu;
use crate::sample::{Sampler, SamplerConfig, StopMatcher};
use crate::session::Session;
use crate::tokenizer::{ControlText, GgufTokenizerData, StreamDecoder, Tokenizer};
use crate::{Error, Result};

/// The tokenizer that came with the weights.
pub fn load_tokenizer(index: &WeightIndex) -> Result<Tokenizer> {
    match &index.metadata {
        Metadata::Gguf(m) => {
            let model = m.get_str("tokenizer.ggml.model").ok_or_else(|| {
                Error::Tokenizer(format!(
                    "{}: GGUF metadata has no tokenizer (tokenizer.ggml.model)",
                    index.path.display()
                ))
            })?;
            let u32_key = |k: &str| m.get_u64(k).and_then(|v| u32::try_from(v).ok());
            let data = GgufTokenizerData {
                model: model.to_string(),
                pre: m.get_str("tokenizer.ggml.pre").map(str::to_string),
                tokens: m.require_str_array("tokenizer.ggml.tokens")?.to_vec(),
                token_types: m.opt_i32_array("tokenizer.ggml.token_type")?,
                merges: m.opt_str_array("tokenizer.ggml.merges")?.map(<[String]>::to_vec).unwrap_or_default(),
                bos_id: u32_key("tokenizer.ggml.bos_token_id"),
                eos_id: u32_key("tokenizer.ggml.eos_token_id"),
                eot_id: u32_key("tokenizer.ggml.eot_token_id"),
                eom_id: u32_key("tokenizer.ggml.eom_token_id"),
                pad_id: u32_key("tokenizer.ggml.padding_token_id"),
                unk_id: u32_key("tokenizer.ggml.unknown_token_id"),
                add_bos: m.get_bool("tokenizer.ggml.add_bos_token"),
                add_eos: m.get_bool("tokenizer.ggml.add_eos_token"),
                chat_template: m.get_str("tokenizer.chat_template").map(str::to_string),
            };
            Tokenizer::from_gguf(data).map_err(|e| match e {
                Error::Tokenizer(msg) => Error::Tokenizer(format!("{}: {msg}", index.path.display())),
                e => e,
            })
        }
        Metadata::HfConfig { dir, .. } => {
            let path = dir.join("tokenizer.json");
            if !path.exists() {
                return Err(Error::Tokenizer(format!("{}: not found (the model directory needs it)", path.display())));
            }
            Tokenizer::from_hf_file(&path)
        }
    }
}

/// Checks that `tokenizer` fits a model of `n_vocab` embedding rows, at load: every id it can produce needs a row.
/// A tokenizer with fewer tokens than rows is normal for Hugging Face checkpoints (Qwen3 pads its embedding to
/// 151936 rows for 151669 tokens): the rows without a token are never sampled ([`generate`] samples among the
/// tokenizer's ids only), and the returned note says so.
pub fn check_tokenizer(tokenizer: &Tokenizer, n_vocab: usize) -> Result<Option<String>> {
    let n_tok = tokenizer.n_vocab();
    if n_tok == 0 || n_tok > n_vocab {
        return Err(Error::Tokenizer(format!(
            "the tokenizer has {n_tok} tokens but the model's embedding has {n_vocab} rows: the tokenizer does not \
             belong to this model"
        )));
    }
    Ok((n_tok < n_vocab).then(|| {
        format!(
            "the model has {n_vocab} token ids, its tokenizer {n_tok}: ids {n_tok} to {} have no text and are never \
             generated",
            n_vocab - 1
        )
    }))
}

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Tokens to generate at most.
    pub n_predict: usize,
    pub sampler: SamplerConfig,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Stop when the text contains one of these (not printed).
    pub stop: Vec<String>,
    /// Stop after the token in progress once this is set (a Ctrl-C handler sets it).
    pub interrupt: Option<&'static std::sync::atomic::AtomicBool>,
    /// Which control tokens the text shows (stop strings match the text shown).
    pub control_text: ControlText,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Length,
    EndOfGeneration,
    StopString,
    ContextFull,
    /// [`GenerateParams::interrupt`] was set.
    Interrupted,
}

/// Counts and timings of one generation.
#[derive(Clone, Debug)]
pub struct GenerateStats {
    pub n_prompt: usize,
    pub prompt_secs: f64,
    pub n_generated: usize,
    /// Forward passes of one token (the first generated token comes from the prefill).
    pub n_decode_steps: usize,
    pub decode_secs: f64,
    pub stop: StopReason,
    pub tokens: Vec<u32>,
    /// Expert cache counters of the prefill and of the decode steps (streaming mode only).
    pub cache_prefill: Option<CacheStats>,
    pub cache_decode: Option<CacheStats>,
    /// Per decode step (the cache counters stay 0 when every weight is resident).
    pub per_token: Vec<TokenStats>,
}

/// What one decode step cost.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenStats {
    pub secs: f64,
    pub hits: u64,
    pub misses: u64,
    pub bytes_read: u64,
    pub wait_secs: f64,
}

/// Prefills `prompt` and generates, calling `on_text` with each complete piece of text.
pub fn generate(
    model: &Model,
    cpu: &Cpu,
    tokenizer: &Tokenizer,
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str),
) -> Result<GenerateStats> {
    if prompt.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    session.check_room(prompt.len())?;
    check_tokenizer(tokenizer, model.info.n_vocab)?;
    // Only ids the tokenizer can turn into text (see `check_tokenizer`).
    let n_sample = tokenizer.n_vocab();
    let mut sampler = Sampler::new(params.sampler);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut stream = StreamDecoder::showing(params.control_text.clone());
    let mut stops = StopMatcher::new(&params.stop);

    let t0 = Instant::now();
    let logits = model.forward(cpu, session, prompt, Logits::Last)?;
    let mut next = sampler.sample(&logits[..n_sample], &history);
    let prompt_secs = t0.elapsed().as_secs_f64();
    let cache_prefill = model.cache_stats();

    let t1 = Instant::now();
    let mut generated = Vec::new();
    let mut n_decode_steps = 0;
    let mut per_token = Vec::new();
    let stop = loop {
        if params.n_predict == 0 {
            // Like llama.cpp's `-n 0`: the prompt is evaluated, nothing is generated.
            break StopReason::Length;
        }
        if !params.ignore_eos && tokenizer.is_eog(next) {
            break StopReason::EndOfGeneration;
        }
        generated.push(next);
        history.push(next);
        let piece = stream.push(tokenizer, next)?;
        let out = if params.control_text.shows(tokenizer, next) {
            stops.push(&piece)
        } else {
            stops.push_hidden(&String::from_utf8_lossy(tokenizer.piece(next)?))
        };
        if !out.text.is_empty() {
            on_text(&out.text);
        }
        if out.stopped {
            break StopReason::StopString;
        }
        if generated.len() >= params.n_predict {
            break StopReason::Length;
        }
        if session.check_room(1).is_err() {
            break StopReason::ContextFull;
        }
        if params.interrupt.is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed)) {
            break StopReason::Interrupted;
        }
        let before = model.cache_stats();
        let t_step = Instant::now();
        let logits = model.forward(cpu, session, &[next], Logits::Last)?;
        n_decode_steps += 1;
        let secs = t_step.elapsed().as_secs_f64();
        per_token.push(match (before, model.cache_stats()) {
            (Some(b), Some(a)) => TokenStats {
                secs,
                hits: a.hits - b.hits,
                misses: a.misses - b.misses,
                bytes_read: a.bytes_read - b.bytes_read,
                wait_secs: a.wait_secs - b.wait_secs,
            },
            // Everything resident: the step's time only.
            _ => TokenStats { secs, hits: 0, misses: 0, bytes_read: 0, wait_secs: 0.0 },
        });
        next = sampler.sample(&logits[..n_sample], &history);
    };
    if stop != StopReason::StopString {
        let mut rest = stream.flush();
        rest = stops.push(&rest).text + &stops.flush();
        if !rest.is_empty() {
            on_text(&rest);
        }
    }
    Ok(GenerateStats {
        n_prompt: prompt.len(),
        prompt_secs,
        n_generated: generated.len(),
        n_decode_steps,
        decode_secs: t1.elapsed().as_secs_f64(),
        stop,
        tokens: generated,
        cache_decode: model.cache_stats().zip(cache_prefill.as_ref()).map(|(end, start)| end.since(start)),
        cache_prefill,
        per_token,
    })
}
