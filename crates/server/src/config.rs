//! The server's settings and bounds.

use std::time::Duration;

/// How the server listens, and every bound a request meets.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Checked on every request but `/health` when set (`Authorization: Bearer KEY` or `x-api-key: KEY`).
    pub api_key: Option<String>,
    /// The model's name in responses and `/v1/models`.
    pub model_name: String,
    /// Tokens of context per sequence.
    pub n_ctx: usize,
    /// Sequences decoded together.
    pub n_parallel: usize,
    /// Requests waiting for a free sequence at most; more get 429.
    pub queue_max: usize,
    /// Finished conversations' states kept for prefix reuse.
    pub n_cached_prompts: usize,
    /// Compute threads.
    pub n_threads: usize,
    pub limits: Limits,
    /// Log one line per request to stderr.
    pub log_requests: bool,
}

/// Bounds on one request.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request body bytes (413 beyond).
    pub body_bytes_max: usize,
    pub messages_max: usize,
    pub tools_max: usize,
    pub stop_max: usize,
    /// Bytes of one stop string.
    pub stop_bytes_max: usize,
    /// The largest `max_tokens` accepted (a larger value than the context left is clamped to it).
    pub max_tokens_max: usize,
    /// Reading a request's headers and body.
    pub read_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub connections_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            body_bytes_max: 8 << 20,
            messages_max: 4096,
            tools_max: 512,
            stop_max: 16,
            stop_bytes_max: 1024,
            max_tokens_max: 1 << 20,
            read_timeout: Duration::from_secs(30),
            connections_max: 512,
        }
    }
}

impl Limits {
    /// Memory the HTTP side may hold beyond the engine's budget: bodies being read (at most
    /// [`BODIES_AT_ONCE`] at full size, each with its parsed JSON) and a fixed allowance for the runtime,
    /// connections and buffers.
    pub fn overhead_bytes(&self) -> u64 {
        (BODIES_AT_ONCE * self.body_bytes_max) as u64 * 2 + (32 << 20)
    }
}

/// Request bodies read at once (each up to `body_bytes_max`); others wait.
pub const BODIES_AT_ONCE: usize = 4;
