//! Counters for `GET /metrics`, in Prometheus' text format: requests by endpoint and status, tokens (prompt,
//! reused from the prefix cache, generated), decode speed, queue depth, the forward steps and their mean batch,
//! and the expert cache (hit rate, bytes read from disk, time waiting for reads).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use engine::batch::{BatchCounters, Batcher};
use engine::experts::cache::CacheStats;

/// Shared by the HTTP side (requests) and the engine thread (everything else).
#[derive(Default)]
pub struct Metrics {
    /// Requests admitted and not finished: queued or decoding (what the 429 bound counts).
    pub in_flight: std::sync::atomic::AtomicUsize,
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    engine: Mutex<EngineView>,
}

#[derive(Default)]
struct EngineView {
    counters: BatchCounters,
    cache: Option<CacheStats>,
    queued: usize,
    active: usize,
    prefix_sessions: usize,
    /// (when, generated tokens so far), for the recent decode speed.
    recent: VecDeque<(Instant, u64)>,
}

/// The window over which `tokens_per_second` is measured.
const RATE_WINDOW_SECS: f64 = 10.0;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it cannot leave counters inconsistent in a way that matters here.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16) {
        *lock(&self.requests).entry((endpoint.to_string(), status)).or_default() += 1;
    }

    pub fn set_queue(&self, queued: usize, active: usize) {
        let mut e = lock(&self.engine);
        e.queued = queued;
        e.active = active;
    }

    /// Requests waiting for a free sequence.
    pub fn queued(&self) -> usize {
        lock(&self.engine).queued
    }

    pub fn after_step(&self, b: &Batcher<'_>, cache: Option<CacheStats>) {
        let mut e = lock(&self.engine);
        e.counters = b.counters();
        e.cache = cache;
        e.prefix_sessions = b.prefix_cache().len();
        let now = Instant::now();
        let generated = e.counters.generated_tokens;
        e.recent.push_back((now, generated));
        while e.recent.front().is_some_and(|(t, _)| now.duration_since(*t).as_secs_f64() > RATE_WINDOW_SECS) {
            e.recent.pop_front();
        }
    }

    /// The text of `GET /metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP flashmoe_{name} {help}\n# TYPE flashmoe_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "flashmoe_{name}{labels} {v}");
            }
        };
        let requests: Vec<(String, f64)> = lock(&self.requests)
            .iter()
            .map(|((ep, st), n)| (format!("{{endpoint=\"{ep}\",status=\"{st}\"}}"), *n as f64))
            .collect();
        metric("requests_total", "counter", "HTTP requests by endpoint and status.", requests);
        let e = lock(&self.engine);
        let c = &e.counters;
        let one = |v: f64| vec![(String::new(), v)];
        metric("prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", one(c.prompt_tokens as f64));
        metric(
            "prompt_tokens_reused_total",
            "counter",
            "Prompt tokens whose state came from the prefix cache (not computed).",
            one(c.prompt_tokens_reused as f64),
        );
        metric("generated_tokens_total", "counter", "Tokens generated.", one(c.generated_tokens as f64));
        let rate = match (e.recent.front(), e.recent.back()) {
            (Some((t0, g0)), Some((t1, g1))) if t1 > t0 => (g1 - g0) as f64 / t1.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        };
        metric(
            "tokens_per_second",
            "gauge",
            "Generated tokens per second over the last 10 s, all requests.",
            one(rate),
        );
        let in_flight = self.in_flight.load(std::sync::atomic::Ordering::Acquire);
        metric(
            "requests_in_flight",
            "gauge",
            "Requests admitted and not finished (queued or decoding).",
            one(in_flight as f64),
        );
        metric("requests_queued", "gauge", "Requests waiting for a free sequence.", one(e.queued as f64));
        metric("requests_active", "gauge", "Sequences being decoded.", one(e.active as f64));
        metric("prefix_cache_sessions", "gauge", "Conversation states kept for reuse.", one(e.prefix_sessions as f64));
        if let Some((rss, peak)) = resident_bytes() {
            metric("resident_bytes", "gauge", "Resident memory of the process (VmRSS).", one(rss as f64));
            metric("resident_bytes_peak", "gauge", "Peak resident memory of the process (VmHWM).", one(peak as f64));
        }
        metric(
            "forward_steps_total",
            "counter",
            "Forward steps (each over every active sequence).",
            one(c.steps as f64),
        );
        metric("forward_seconds_total", "counter", "Seconds in forward steps.", one(c.forward_secs));
        metric(
            "forward_sequences_total",
            "counter",
            "Sequences in forward steps, summed (divided by steps: the mean batch).",
            one(c.seqs_in_steps as f64),
        );
        let mean = if c.steps == 0 { 0.0 } else { c.seqs_in_steps as f64 / c.steps as f64 };
        metric("batch_sequences_mean", "gauge", "Sequences per forward step, on average.", one(mean));
        if let Some(cs) = &e.cache {
            metric("expert_cache_hits_total", "counter", "Experts found in the cache.", one(cs.hits as f64));
            metric("expert_cache_misses_total", "counter", "Experts read from disk on demand.", one(cs.misses as f64));
            metric("expert_cache_hit_rate", "gauge", "Hits / (hits + misses) since start.", one(cs.hit_rate()));
            metric("expert_bytes_read_total", "counter", "Expert bytes read from disk.", one(cs.bytes_read as f64));
            metric(
                "expert_read_wait_seconds_total",
                "counter",
                "Seconds the forward pass waited for expert reads.",
                one(cs.wait_secs),
            );
        }
        out
    }
}

/// This process's resident memory now and at its peak, in bytes (Linux `/proc/self/status`).
fn resident_bytes() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = |key: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kb("VmRSS:")? * 1024, kb("VmHWM:")? * 1024))
}
