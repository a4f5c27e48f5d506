//! What both APIs share once a request is read: the server's state ([`App`]), a prepared request
//! ([`Prepared`]: prompt tokens, sampling, how to read the output), its admission into the engine's queue, and
//! the stream of parsed output that comes back ([`Generation`]).

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use engine::batch::{Finish, SeqRequest, SeqStats};
use engine::chat::{Chat, ForcedCall, OutputParser, Piece, TokenTable};
use engine::runtime::Runtime;
use engine::sample::SamplerConfig;
use engine::sample_defaults::SamplingDefaults;
use engine::tokenizer::ControlText;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::config::ServerConfig;
use crate::engine::{Command, Event};
use crate::error::{ApiError, Kind};
use crate::metrics::Metrics;

/// Everything a request handler reads.
pub struct App {
    pub rt: Arc<Runtime>,
    pub chat: Chat,
    pub table: Arc<TokenTable>,
    pub recommended: SamplingDefaults,
    pub cfg: ServerConfig,
    pub engine: Sender<Command>,
    pub metrics: Arc<Metrics>,
    /// Request bodies being read at full size at most (see [`crate::config::BODIES_AT_ONCE`]).
    pub bodies: tokio::sync::Semaphore,
}

/// A request ready for the engine.
pub struct Prepared {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (before clamping to the context).
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    /// `cache_prompt`: reuse and keep the conversation's state.
    pub reuse: bool,
    /// `ignore_eos` (llama.cpp's): generate past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Reads chat output; `None` for plain completions.
    pub parser: Option<OutputParser>,
    pub forced: Option<ForcedCall>,
}

/// One admitted request's place in the server; freed on drop.
struct Slot(Arc<App>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a generation yields.
pub enum Out {
    Pieces(Vec<Piece>),
    /// The last pieces and the end.
    End(Vec<Piece>, Result<SeqStats, String>),
}

/// A request in the engine: its parsed output as it comes.
pub struct Generation {
    rx: UnboundedReceiver<Event>,
    parser: Option<OutputParser>,
    _slot: Slot,
    pub n_prompt: usize,
    pub max_tokens: usize,
}

impl App {
    /// Checks `p` against the context, takes a place in the queue (429 when full) and hands it to the engine.
    pub fn submit(self: &Arc<App>, p: Prepared) -> Result<Generation, ApiError> {
        let n_ctx = self.cfg.n_ctx;
        if p.prompt.is_empty() {
            return Err(ApiError::invalid("the prompt is empty"));
        }
        if p.prompt.len() >= n_ctx {
            return Err(ApiError::invalid(format!(
                "the prompt is {} tokens but a request's context holds {n_ctx} (prompt and reply; the server's \
                 --ctx-size): shorten the conversation",
                p.prompt.len()
            )));
        }
        let max_tokens = p.max_tokens.min(n_ctx - p.prompt.len());
        let cap = self.cfg.n_parallel + self.cfg.queue_max;
        let taken =
            self.metrics.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1));
        if taken.is_err() {
            return Err(ApiError::new(
                429,
                Kind::RateLimit,
                format!(
                    "the server is busy: {} requests are running and {} waiting, the most it takes (--parallel, \
                     --queue); retry later",
                    self.cfg.n_parallel, self.cfg.queue_max
                ),
            ));
        }
        let slot = Slot(self.clone());
        let (tx, rx) = unbounded_channel();
        let n_prompt = p.prompt.len();
        // A chat reply keeps the control tokens its parser reads; a plain completion shows none (as llama.cpp's
        // server).
        let control_text = if p.parser.is_some() { self.chat.control_text() } else { ControlText::Hidden };
        let req = SeqRequest {
            control_text,
            prompt: p.prompt,
            max_tokens,
            sampler: p.sampler,
            stop: p.stop,
            ignore_eos: p.ignore_eos,
            reuse_prefix: p.reuse,
            constraint: p.forced.map(|f| Box::new(f) as Box<dyn engine::batch::Constraint>),
        };
        self.engine
            .send(Command::Submit(Box::new(req), tx))
            .map_err(|_| ApiError::new(503, Kind::Overloaded, "the engine has stopped"))?;
        Ok(Generation { rx, parser: p.parser, _slot: slot, n_prompt, max_tokens })
    }
}

impl Generation {
    /// The next parsed output, or the end.
    pub async fn next(&mut self) -> Out {
        match self.rx.recv().await {
            Some(Event::Text(t)) => Out::Pieces(match &mut self.parser {
                Some(p) => p.push(&t),
                None => vec![Piece::Content(t)],
            }),
            Some(Event::Done(r)) => Out::End(self.parser.as_mut().map(OutputParser::finish).unwrap_or_default(), r),
            None => Out::End(vec![], Err("the engine stopped".into())),
        }
    }

    /// Whether the output held tool calls.
    pub fn n_calls(&self) -> usize {
        self.parser.as_ref().map_or(0, OutputParser::n_calls)
    }
}

/// Why a reply ended, as both APIs tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Stop,
    StopString,
    Length,
    ToolCalls,
}

/// The ending of `stats` for a reply that made `n_calls` tool calls.
pub fn ending(stats: &SeqStats, n_calls: usize) -> Ending {
    match stats.finish {
        Finish::Length | Finish::ContextFull => Ending::Length,
        Finish::Constraint => Ending::ToolCalls,
        _ if n_calls > 0 => Ending::ToolCalls,
        Finish::StopString => Ending::StopString,
        Finish::EndOfGeneration | Finish::Cancelled => Ending::Stop,
    }
}

/// A rendering or tokenizing failure of the request's content: the client's to fix.
pub fn prompt_error(e: engine::Error) -> ApiError {
    ApiError::invalid(format!("the conversation does not fit the model's chat template: {e}"))
}

/// The prompt of a chat request, rendered and tokenized (CPU work: run off the async threads).
pub async fn render_chat(
    app: &Arc<App>,
    messages: Vec<engine::chat::Message>,
    tools: Vec<engine::chat::Tool>,
    vars: serde_json::Map<String, serde_json::Value>,
) -> Result<(String, Vec<u32>), ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let text = app.chat.render(&messages, &tools, &vars).map_err(prompt_error)?;
        let tokens = app.chat.tokens(&app.rt.tokenizer, &text).map_err(prompt_error)?;
        Ok((text, tokens))
    })
    .await
    .map_err(|e| ApiError::server(format!("rendering the prompt: {e}")))?
}
