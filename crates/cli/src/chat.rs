//! `flash-moe chat`: an interactive conversation in the terminal. Each turn goes through the model's chat
//! template; the reply streams as it is generated (reasoning dimmed on a terminal); the conversation's state is
//! kept between turns, so a turn computes only its new tokens. Ctrl-C stops a reply (the conversation goes on);
//! Ctrl-C at the prompt or Ctrl-D quits.
//!
//! Input: a line is a message; a line ending in `\` continues on the next; `"""` on a line of its own starts and
//! ends a block of several lines. Commands: `/reset` (a new conversation), `/stats`, `/exit`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Args;
use engine::batch::{BatchConfig, Batcher, SeqRequest, SeqSink, SeqStats};
use engine::chat::{Chat, Message, OutputParser, Piece};
use engine::formats::WeightIndex;
use engine::ops::Cpu;
use engine::runtime::Runtime;
use engine::sample::SamplerConfig;
use engine::sample_defaults::SamplingDefaults;

use crate::ModelArgs;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message at the start of the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// A Jinja chat template to use instead of the model file's.
    #[arg(long = "chat-template", value_name = "FILE")]
    pub chat_template: Option<std::path::PathBuf>,
    /// Tokens per reply at most [default: the rest of the context].
    #[arg(short = 'n', long = "n-predict", value_parser = crate::args::count)]
    pub n_predict: Option<usize>,
    /// Sampling temperature (0: greedy) [default: the model file's recommendation, else 0.8].
    #[arg(long = "temp", allow_negative_numbers = true)]
    pub temp: Option<f32>,
    /// Random seed [default: random].
    #[arg(short = 's', long = "seed", value_parser = crate::args::seed)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub cache: crate::warmstart::CacheArgs,
}

/// What a reply's sink shares with the loop.
#[derive(Default)]
struct Reply {
    content: String,
    reasoning: String,
    stats: Option<engine::Result<SeqStats>>,
}

/// Prints a reply as it comes and keeps it for the conversation.
struct Printer {
    parser: OutputParser,
    reply: Arc<Mutex<Reply>>,
    dim: bool,
    in_reasoning: bool,
    stop: &'static std::sync::atomic::AtomicBool,
}

impl Printer {
    fn show(&mut self, pieces: Vec<Piece>) {
        let mut out = std::io::stdout().lock();
        let mut reply = self.reply.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in pieces {
            let reasoning = matches!(p, Piece::Reasoning(_));
            if reasoning != self.in_reasoning && self.dim {
                let _ = out.write_all(if reasoning { b"\x1b[2m" } else { b"\x1b[0m\n" });
            }
            self.in_reasoning = reasoning;
            let text = match p {
                Piece::Content(t) => {
                    reply.content.push_str(&t);
                    t
                }
                Piece::Reasoning(t) => {
                    reply.reasoning.push_str(&t);
                    t
                }
                Piece::ToolCall(c) => format!("[tool call] {}({})", c.name, c.arguments),
            };
            let _ = out.write_all(text.as_bytes());
        }
        let _ = out.flush();
    }
}

impl SeqSink for Printer {
    fn text(&mut self, piece: &str) -> bool {
        let pieces = self.parser.push(piece);
        self.show(pieces);
        true
    }
    fn done(&mut self, outcome: engine::Result<SeqStats>) {
        let pieces = self.parser.finish();
        self.show(pieces);
        if self.in_reasoning && self.dim {
            let _ = std::io::stdout().write_all(b"\x1b[0m");
        }
        self.reply.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stats = Some(outcome);
    }
    fn cancelled(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one message: a line, lines joined by a trailing `\`, or a `"""` block. `None` at the end of input.
fn read_message(input: &mut impl BufRead, interactive: bool) -> Option<String> {
    let mut msg = String::new();
    let mut block = false;
    loop {
        if interactive {
            eprint!("{}", if msg.is_empty() && !block { "> " } else { ". " });
        }
        let mut line = String::new();
        if input.read_line(&mut line).ok()? == 0 {
            return if msg.is_empty() { None } else { Some(msg) };
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim() == "\"\"\"" {
            if block {
                return Some(msg);
            }
            block = true;
            continue;
        }
        if block {
            msg.push_str(line);
            msg.push('\n');
        } else if let Some(start) = line.strip_suffix('\\') {
            msg.push_str(start);
            msg.push('\n');
        } else {
            msg.push_str(line);
            return Some(msg);
        }
    }
}

pub fn main(a: ChatArgs) -> Result<()> {
    let index = WeightIndex::open(&a.model.model)?;
    let n_ctx = a.model.n_ctx(&index, a.model.ctx_size);
    let load = a.model.load_options(&index, n_ctx)?;
    let mut rt = Runtime::open(index, &load)?;
    ModelArgs::warn_ctx(&rt.index, &rt.model.info, "-c", n_ctx);
    a.model.apply_mlock();
    rt.prepare_cache(&a.cache.prep())?;
    for w in rt.warnings.drain(..) {
        eprintln!("warning: {w}");
    }
    let template = match &a.chat_template {
        Some(p) => Some((
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        )),
        None => None,
    };
    let chat = Chat::new(&rt.tokenizer, template.as_ref().map(|(t, s)| (t.as_str(), s.as_str())))?;
    let base = SamplingDefaults::of(&rt.index).apply(SamplerConfig::default());
    let sampler = SamplerConfig {
        temperature: a.temp.unwrap_or(base.temperature),
        seed: a.seed.unwrap_or_else(crate::run::random_seed),
        ..base
    };
    let interactive = std::io::stdin().is_terminal();
    let dim = std::io::stdout().is_terminal();
    let stop = crate::interrupt::install_for_chat();
    let cpu = Cpu::new(a.model.n_threads());
    let mut batcher = Batcher::new(
        &rt.model,
        &rt.tokenizer,
        BatchConfig { n_ctx, n_seqs_max: 1, n_cached_max: 1, step_tokens_max: 64 },
    );
    if interactive {
        eprintln!(
            "chat with {} ({n_ctx} tokens of context; template: {}). /reset starts over, /stats, /exit; end a line \
             with \\ or use \"\"\" for several lines; Ctrl-C stops a reply.",
            a.model.model.display(),
            chat.source
        );
    }
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s.clone())).collect();
    let mut last: Option<SeqStats> = None;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    while let Some(msg) = read_message(&mut input, interactive) {
        match msg.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m.role == "system");
                batcher.clear_prefix_cache();
                eprintln!("(new conversation)");
                continue;
            }
            "/stats" => {
                print_stats(&rt, last.as_ref(), &messages, n_ctx);
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", msg));
        let prompt_text = chat.render(&messages, &[], &serde_json::Map::new())?;
        let prompt = chat.tokens(&rt.tokenizer, &prompt_text)?;
        if prompt.len() >= n_ctx {
            messages.pop();
            eprintln!(
                "the conversation is {} tokens, the context holds {n_ctx}: /reset to start over (or a larger -c)",
                prompt.len()
            );
            continue;
        }
        let reply = Arc::new(Mutex::new(Reply::default()));
        let sink =
            Printer { parser: chat.parser(&prompt_text, &[]), reply: reply.clone(), dim, in_reasoning: false, stop };
        let req = SeqRequest {
            max_tokens: a.n_predict.unwrap_or(n_ctx).min(n_ctx - prompt.len()),
            prompt,
            sampler,
            stop: vec![],
            ignore_eos: false,
            reuse_prefix: true,
            constraint: None,
            control_text: chat.control_text(),
        };
        crate::interrupt::set_generating(true);
        batcher.admit(req, Box::new(sink))?;
        while !batcher.is_idle() {
            batcher.step(&cpu);
        }
        crate::interrupt::set_generating(false);
        println!();
        let r = std::mem::take(&mut *reply.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut m = Message::new("assistant", r.content);
        m.reasoning = (!r.reasoning.is_empty()).then_some(r.reasoning);
        messages.push(m);
        last = Some(r.stats.context("the reply did not end")??);
        let _ = rt.save_hot();
    }
    let _ = rt.save_hot();
    Ok(())
}

fn print_stats(rt: &Runtime, last: Option<&SeqStats>, messages: &[Message], n_ctx: usize) {
    if let Some(s) = last {
        let tps = s.n_generated.saturating_sub(1) as f64 / s.decode_secs.max(1e-9);
        eprintln!(
            "last reply  {} prompt tokens ({} reused from the conversation so far), first token after {:.2} s, {} tokens \
             at {tps:.2} tok/s, ended by {:?}",
            s.n_prompt, s.n_prompt_reused, s.first_token_secs, s.n_generated, s.finish
        );
        eprintln!("context     {} of {n_ctx} tokens used, {} messages", s.n_prompt + s.n_generated, messages.len());
    } else {
        eprintln!("no reply yet");
    }
    if let Some(c) = rt.model.cache_stats() {
        eprintln!(
            "experts     {} hits, {} misses ({:.1}% hit), {:.1} MiB read, waited {:.2} s for reads",
            c.hits,
            c.misses,
            100.0 * c.hit_rate(),
            crate::mib(c.bytes_read),
            c.wait_secs
        );
    }
}
