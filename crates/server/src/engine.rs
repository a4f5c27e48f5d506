//! The engine thread: the only place the model runs. Requests arrive over a channel, wait in a queue until the
//! batcher has room, and are decoded together (continuous batching); each request's text and end go back over
//! its own channel. A request whose channel closed (a client that went away) is dropped from the queue, or
//! cancelled at the next step. The engine never waits on a client: its channels are unbounded, and a reply is
//! bounded by `max_tokens`.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::batch::{BatchConfig, Batcher, SeqRequest, SeqSink, SeqStats};
use engine::ops::Cpu;
use engine::runtime::Runtime;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

/// What a request hears from the engine.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Result<SeqStats, String>),
}

/// What the HTTP side asks of the engine thread.
pub enum Command {
    Submit(Box<SeqRequest>, UnboundedSender<Event>),
    /// Finish: cancel everything, save the hot experts, return.
    Shutdown,
}

/// A request's channel, as the batcher's sink.
struct ChannelSink(UnboundedSender<Event>);

impl SeqSink for ChannelSink {
    fn text(&mut self, piece: &str) -> bool {
        self.0.send(Event::Text(piece.to_string())).is_ok()
    }
    fn done(&mut self, outcome: engine::Result<SeqStats>) {
        let _ = self.0.send(Event::Done(outcome.map_err(|e| e.to_string())));
    }
    fn cancelled(&self) -> bool {
        self.0.is_closed()
    }
}

/// Seconds between saves of the hot experts (for the next warm start) while the server runs.
const HOT_SAVE_SECS: u64 = 60;

/// Runs the engine loop until [`Command::Shutdown`] or until every sender is gone.
pub fn run(rt: Arc<Runtime>, cfg: BatchConfig, n_threads: usize, rx: Receiver<Command>, metrics: Arc<Metrics>) {
    let cpu = Cpu::new(n_threads);
    let mut batcher = Batcher::new(&rt.model, &rt.tokenizer, cfg);
    let mut waiting: VecDeque<(Box<SeqRequest>, UnboundedSender<Event>)> = VecDeque::new();
    let mut last_save = Instant::now();
    let mut open = true;
    while open || !batcher.is_idle() {
        // Wait for work when there is none; otherwise take what has arrived and go on.
        if batcher.is_idle() && waiting.is_empty() {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(cmd) => open &= take(cmd, &mut waiting),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            open &= take(cmd, &mut waiting);
        }
        if !open {
            // Shutting down: nobody will be served.
            for (_, tx) in waiting.drain(..) {
                let _ = tx.send(Event::Done(Err("the server is shutting down".into())));
            }
            batcher.cancel_all();
        }
        admit(&mut batcher, &mut waiting);
        metrics.set_queue(waiting.len(), batcher.n_active());
        if !batcher.is_idle() {
            batcher.step(&cpu);
            metrics.after_step(&batcher, rt.model.cache_stats());
            metrics.set_queue(waiting.len(), batcher.n_active());
        }
        if last_save.elapsed() > Duration::from_secs(HOT_SAVE_SECS) {
            last_save = Instant::now();
            let _ = rt.save_hot();
        }
    }
    metrics.set_queue(0, 0);
    let _ = rt.save_hot();
}

/// Queues a submitted request; false for a shutdown.
fn take(cmd: Command, waiting: &mut VecDeque<(Box<SeqRequest>, UnboundedSender<Event>)>) -> bool {
    match cmd {
        Command::Submit(req, tx) => {
            waiting.push_back((req, tx));
            true
        }
        Command::Shutdown => false,
    }
}

/// Moves waiting requests into the batch while it has room; requests whose client left are dropped.
fn admit(batcher: &mut Batcher<'_>, waiting: &mut VecDeque<(Box<SeqRequest>, UnboundedSender<Event>)>) {
    while batcher.has_room() {
        let Some((req, tx)) = waiting.pop_front() else { break };
        if tx.is_closed() {
            continue;
        }
        if let Err(e) = batcher.admit(*req, Box::new(ChannelSink(tx.clone()))) {
            let _ = tx.send(Event::Done(Err(e.to_string())));
        }
    }
}
