//! flash-moe's server: the OpenAI API (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) and the
//! Anthropic Messages API (`/v1/messages`, `/v1/messages/count_tokens`), with tool calls, reasoning, streaming,
//! `/health` and Prometheus `/metrics`, over one model that decodes every request together.
//!
//! # Layout
//! - `http`: listener, connections, routing, the API key, body limits, server-sent events.
//! - `openai`, `anthropic`: each API's requests (fields read with errors naming them) and replies.
//! - `generation`: the shared state ([`generation::App`]), a prepared request, admission (429 when the queue is
//!   full) and the parsed output stream.
//! - `engine`: the engine thread, the only place the model runs (continuous batching through
//!   [`engine::batch::Batcher`], prefix reuse, cancellation of requests whose client left).
//! - `params`, `metrics`, `error`, `config`.
//!
//! The async runtime (tokio) lives only in this crate, on the HTTP side; the engine is synchronous and runs on
//! its own thread, fed by a channel, answering through one unbounded channel per request (it never waits on a
//! client; a reply is bounded by `max_tokens`).

pub mod anthropic;
pub mod config;
pub mod engine;
pub mod error;
pub mod generation;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod params;

use std::sync::Arc;

use ::engine::batch::BatchConfig;
use ::engine::chat::{Chat, TokenTable};
use ::engine::runtime::Runtime;
use ::engine::sample_defaults::SamplingDefaults;

pub use config::{Limits, ServerConfig};
pub use error::ServeError;

/// A chat template given instead of the model file's: its text and where it came from.
pub struct TemplateOverride {
    pub text: String,
    pub source: String,
}

/// Serves `rt` until Ctrl-C (or SIGTERM): binds, prints `listening on http://HOST:PORT` to stderr, answers.
pub fn run(rt: Runtime, cfg: ServerConfig, template: Option<TemplateOverride>) -> Result<(), ServeError> {
    let chat = Chat::new(&rt.tokenizer, template.as_ref().map(|t| (t.text.as_str(), t.source.as_str())))?;
    eprintln!(
        "chat       template from {} (tool calls: {:?}, reasoning: {:?})",
        chat.source, chat.format.tools, chat.format.think
    );
    let table = Arc::new(TokenTable::new(&rt.tokenizer));
    let recommended = SamplingDefaults::of(&rt.index);
    let rt = Arc::new(rt);
    let metrics = Arc::new(metrics::Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let batch = BatchConfig {
        n_ctx: cfg.n_ctx,
        n_seqs_max: cfg.n_parallel,
        n_cached_max: cfg.n_cached_prompts,
        step_tokens_max: ::engine::backend::native::N_BATCH.max(cfg.n_parallel),
    };
    let engine_thread = {
        let (rt, metrics, n_threads) = (rt.clone(), metrics.clone(), cfg.n_threads);
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || engine::run(rt, batch, n_threads, rx, metrics))?
    };
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let app = Arc::new(generation::App {
        rt,
        chat,
        table,
        recommended,
        cfg,
        engine: tx.clone(),
        metrics,
        bodies: tokio::sync::Semaphore::new(config::BODIES_AT_ONCE),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
        let local = listener.local_addr()?;
        eprintln!("listening on http://{local}");
        http::serve(listener, app, shutdown_signal()).await;
        Ok::<(), ServeError>(())
    });
    let _ = tx.send(engine::Command::Shutdown);
    drop(tx);
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    let _ = engine_thread.join();
    eprintln!("stopped");
    served
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
