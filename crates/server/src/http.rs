//! HTTP: the listener, connections (bounded in number, with a header read timeout), routing, the API key check,
//! request bodies (bounded in size, time and in how many are read at once) and responses: JSON, text, or a
//! stream of server-sent events fed by a channel (dropped when the client goes away, which cancels the
//! request's sequence in the engine).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::error::{ApiError, Flavor, Kind};
use crate::generation::App;
use crate::{anthropic, openai};

/// What a handler answers.
pub enum Reply {
    Json(u16, Value),
    Text(u16, &'static str, String),
    /// Server-sent events, as they come.
    Sse(UnboundedReceiver<Bytes>),
}

/// The sending end of a server-sent event stream; sends fail once the client is gone.
pub struct Sse(UnboundedSender<Bytes>);

impl Sse {
    pub fn new() -> (Sse, Reply) {
        let (tx, rx) = unbounded_channel();
        (Sse(tx), Reply::Sse(rx))
    }

    /// `data: JSON`; false once the client is gone.
    pub fn data(&self, v: &Value) -> bool {
        self.0.send(Bytes::from(format!("data: {v}\n\n"))).is_ok()
    }

    /// `event: NAME` and `data: JSON` (Anthropic's stream).
    pub fn event(&self, name: &str, v: &Value) -> bool {
        self.0.send(Bytes::from(format!("event: {name}\ndata: {v}\n\n"))).is_ok()
    }

    /// OpenAI's end of stream.
    pub fn done(&self) {
        let _ = self.0.send(Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

/// A response body: whole, or streamed from a channel.
pub enum ResBody {
    Full(Option<Bytes>),
    Stream(UnboundedReceiver<Bytes>),
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResBody::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// Accepts connections until `shutdown` completes.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    let connections = Arc::new(tokio::sync::Semaphore::new(app.cfg.limits.connections_max));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = &mut shutdown => return,
        };
        let stream = tokio::select! {
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                // Out of descriptors or a reset before accept: keep serving.
                Err(_) => { tokio::time::sleep(std::time::Duration::from_millis(10)).await; continue }
            },
            _ = &mut shutdown => return,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc_app = app.clone();
            let svc = hyper::service::service_fn(move |req| handle(svc_app.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(app.cfg.limits.read_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<ResBody>, Infallible> {
    let t0 = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let flavor = if path.starts_with("/v1/messages") { Flavor::Anthropic } else { Flavor::OpenAi };
    let (status, response) = match route(&app, req, &method, &path).await {
        Ok(reply) => respond(reply),
        Err(e) => respond(Reply::Json(e.status, e.body(flavor))),
    };
    let known = ["/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/messages"];
    let endpoint =
        if known.contains(&path.as_str()) || path == "/v1/messages/count_tokens" { path.as_str() } else { "other" };
    app.metrics.request(endpoint, status);
    if app.cfg.log_requests {
        eprintln!("{method} {path} {status} {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(response)
}

fn respond(reply: Reply) -> (u16, Response<ResBody>) {
    let (status, kind, body) = match reply {
        Reply::Json(s, v) => (s, "application/json", ResBody::Full(Some(Bytes::from(v.to_string())))),
        Reply::Text(s, kind, t) => (s, kind, ResBody::Full(Some(Bytes::from(t)))),
        Reply::Sse(rx) => (200, "text/event-stream", ResBody::Stream(rx)),
    };
    let mut r = Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    if kind == "text/event-stream" {
        h.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-cache"));
    }
    if status == 429 {
        h.insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    }
    (status, r)
}

async fn route(app: &Arc<App>, req: Request<Incoming>, method: &Method, path: &str) -> Result<Reply, ApiError> {
    if path == "/health" {
        return Ok(Reply::Json(200, json!({"status": "ok"})));
    }
    authorize(app, &req)?;
    match (method, path) {
        (&Method::GET, "/metrics") => Ok(Reply::Text(200, "text/plain; version=0.0.4", app.metrics.render())),
        (&Method::GET, "/v1/models") => Ok(Reply::Json(200, openai::models(app))),
        (&Method::POST, "/v1/chat/completions") => openai::chat_completions(app, &read_json(app, req).await?).await,
        (&Method::POST, "/v1/completions") => openai::completions(app, &read_json(app, req).await?).await,
        (&Method::POST, "/v1/messages") => anthropic::messages(app, &read_json(app, req).await?).await,
        (&Method::POST, "/v1/messages/count_tokens") => anthropic::count_tokens(app, &read_json(app, req).await?).await,
        (_, "/metrics" | "/v1/models" | "/v1/chat/completions" | "/v1/completions" | "/v1/messages") => {
            Err(ApiError::new(405, Kind::InvalidRequest, format!("{method} is not allowed on {path}")))
        }
        _ => Err(ApiError::new(404, Kind::NotFound, format!("no such endpoint: {method} {path}"))),
    }
}

/// The API key, when the server has one: `Authorization: Bearer KEY` or `x-api-key: KEY`.
fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(key) = &app.cfg.api_key else { return Ok(()) };
    let h = req.headers();
    let bearer =
        h.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let x_key = h.get("x-api-key").and_then(|v| v.to_str().ok());
    if [bearer, x_key].into_iter().flatten().any(|k| same(k.trim().as_bytes(), key.as_bytes())) {
        return Ok(());
    }
    Err(ApiError::new(
        401,
        Kind::Authentication,
        "a valid API key is required (Authorization: Bearer KEY or x-api-key)",
    ))
}

/// Compares without stopping at the first difference (no timing hint at the key).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request body as JSON: 413 beyond the size limit (refused from Content-Length before reading), 408 when it
/// arrives too slowly, 400 when it is not JSON (or not UTF-8).
async fn read_json(app: &App, req: Request<Incoming>) -> Result<Value, ApiError> {
    let max = app.cfg.limits.body_bytes_max;
    let too_large = || ApiError::new(413, Kind::TooLarge, format!("the request body is larger than {max} bytes"));
    let declared = req.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let _permit = app.bodies.acquire().await.map_err(|_| ApiError::server("shutting down"))?;
    let read = tokio::time::timeout(app.cfg.limits.read_timeout, Limited::new(req.into_body(), max).collect());
    let bytes = match read.await {
        Err(_) => return Err(ApiError::new(408, Kind::InvalidRequest, "the request body arrived too slowly")),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(e)) => return Err(ApiError::invalid(format!("reading the request body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    if bytes.is_empty() {
        return Err(ApiError::invalid("the request body is empty: send a JSON object"));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))
}
