//! Continuous batching: several sequences decoded together, one forward step at a time.
//!
//! A [`Batcher`] holds the active sequences (at most [`BatchConfig::n_seqs_max`]). Each [`Batcher::step`] gives
//! every decoding sequence its next token and fills the rest of the step (up to
//! [`BatchConfig::step_tokens_max`] tokens) with prompt chunks of the others, runs them all through
//! [`Model::forward_multi`] (each expert read once for every token that chose it), samples each sequence whose
//! prompt is done, and reports text to the sequence's [`SeqSink`]. A sequence joins between steps and leaves when
//! it ends; its output is bit-identical to running it alone with [`crate::generate::generate`] (same sampler, same
//! stop rules), since the native forward pass is batch-invariant.
//!
//! Multi-turn reuse: a finished sequence's session goes to the [`PrefixCache`] with the tokens it holds; a new
//! request takes the session sharing the longest prefix with its prompt, rewinds it there
//! ([`Session::truncate`]; a DeltaNet state rewinds to its last checkpoint at or before it: the end of a prompt or
//! of a reply) and computes only the rest. Results do not change: prefill == steps, bit for bit.
//!
//! # Layout
//! - `mod.rs`: [`Batcher`], the request ([`SeqRequest`]) and what comes back ([`SeqSink`], [`SeqStats`]).
//! - `seq.rs`: one sequence's progress: what to feed next, sampling, stop rules, text.
//! - `prefix.rs`: [`PrefixCache`].
//!
//! Nothing here is asynchronous or owns a thread: the caller (a server's engine thread, the chat command) calls
//! `admit` and `step`.

mod prefix;
mod seq;

use std::time::Instant;

use crate::models::Model;
use crate::ops::Cpu;
use crate::sample::SamplerConfig;
use crate::session::{Scratch, Session};
use crate::tokenizer::{ControlText, Tokenizer};
use crate::{Error, Result};

pub use prefix::{common_prefix, PrefixCache};
use seq::Seq;

/// Bounds of a batcher.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Context of each sequence (its KV cache length).
    pub n_ctx: usize,
    /// Sequences decoded together at most.
    pub n_seqs_max: usize,
    /// Finished sequences' sessions kept for prefix reuse at most.
    pub n_cached_max: usize,
    /// Tokens one forward step runs at most: every decoding sequence's next token, then prompt chunks.
    pub step_tokens_max: usize,
}

/// A constraint on what a sequence generates (a forced tool call): at each point it either forces tokens,
/// restricts the next sampled token, or says the sequence is complete.
pub trait Constraint: Send {
    /// What comes next.
    fn next(&mut self) -> ConstraintStep;
    /// For [`ConstraintStep::Sample`]: sets the logits of tokens that may not come next to -inf.
    fn mask(&self, logits: &mut [f32]);
    /// The token sampled after [`ConstraintStep::Sample`].
    fn accept(&mut self, id: u32);
}

/// See [`Constraint::next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConstraintStep {
    /// These tokens come next, without sampling.
    Force(Vec<u32>),
    /// The next token is sampled from the masked logits.
    Sample,
    /// The constrained text is complete: the sequence ends.
    Done,
}

/// One generation request.
pub struct SeqRequest {
    /// Prompt tokens (at least one, fewer than the context).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (0: evaluate the prompt only).
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop when the text contains one of these (not reported).
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Start from the prefix cache's best match and leave the state there at the end (`cache_prompt`).
    pub reuse_prefix: bool,
    pub constraint: Option<Box<dyn Constraint>>,
    /// Which control tokens the text shows (stop strings match the text shown).
    pub control_text: ControlText,
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Length,
    EndOfGeneration,
    StopString,
    ContextFull,
    /// Its [`Constraint`] completed.
    Constraint,
    /// The sink went away ([`SeqSink::cancelled`], or a refused piece of text).
    Cancelled,
}

/// What one sequence did.
#[derive(Clone, Debug)]
pub struct SeqStats {
    pub finish: Finish,
    pub n_prompt: usize,
    /// Prompt tokens whose state came from the prefix cache.
    pub n_prompt_reused: usize,
    pub n_generated: usize,
    /// From admission to the first generated token (the prompt's computation, shared steps included).
    pub first_token_secs: f64,
    /// From the first generated token to the end.
    pub decode_secs: f64,
    pub tokens: Vec<u32>,
    /// The stop string that ended it ([`Finish::StopString`]).
    pub stop_string: Option<String>,
}

/// Where a sequence's results go.
pub trait SeqSink: Send {
    /// A piece of generated text; returns false when nobody listens any more (the sequence is cancelled).
    fn text(&mut self, piece: &str) -> bool;
    /// The end: the sequence's statistics, or why it failed.
    fn done(&mut self, outcome: Result<SeqStats>);
    /// Polled before each step: true once the consumer went away (a disconnected client).
    fn cancelled(&self) -> bool {
        false
    }
}

/// Counters over every step.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchCounters {
    pub steps: u64,
    /// Tokens run through the model (prompt and generated).
    pub tokens_run: u64,
    pub prompt_tokens: u64,
    pub prompt_tokens_reused: u64,
    pub generated_tokens: u64,
    /// Seconds in forward passes.
    pub forward_secs: f64,
    /// Sequences in steps, summed (divided by `steps`: the mean batch).
    pub seqs_in_steps: u64,
}

/// Several sequences decoded together over one model.
pub struct Batcher<'m> {
    model: &'m Model,
    tokenizer: &'m Tokenizer,
    cfg: BatchConfig,
    active: Vec<Seq>,
    prefix: PrefixCache,
    scratch: Scratch,
    counters: BatchCounters,
}

impl<'m> Batcher<'m> {
    pub fn new(model: &'m Model, tokenizer: &'m Tokenizer, cfg: BatchConfig) -> Batcher<'m> {
        assert!(cfg.n_seqs_max >= 1 && cfg.step_tokens_max >= cfg.n_seqs_max, "batch bounds");
        Batcher {
            model,
            tokenizer,
            prefix: PrefixCache::new(cfg.n_cached_max),
            cfg,
            active: Vec::new(),
            scratch: Scratch::default(),
            counters: BatchCounters::default(),
        }
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Whether another sequence can join now.
    pub fn has_room(&self) -> bool {
        self.active.len() < self.cfg.n_seqs_max
    }

    pub fn n_active(&self) -> usize {
        self.active.len()
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_empty()
    }

    pub fn counters(&self) -> BatchCounters {
        self.counters
    }

    pub fn prefix_cache(&self) -> &PrefixCache {
        &self.prefix
    }

    /// Ends every sequence now (their sinks hear [`Finish::Cancelled`]).
    pub fn cancel_all(&mut self) {
        while !self.active.is_empty() {
            self.active[0].set_finish(Finish::Cancelled);
            self.finish(0);
        }
    }

    /// Forgets every kept prefix (a chat's `/reset`).
    pub fn clear_prefix_cache(&mut self) {
        self.prefix.clear();
    }

    /// Adds a sequence; it runs from the next step. Fails (nothing is reported to the sink) when the batch is
    /// full or the prompt is empty or does not fit the context.
    pub fn admit(&mut self, req: SeqRequest, sink: Box<dyn SeqSink>) -> Result<()> {
        if !self.has_room() {
            return Err(Error::Invalid(format!("{} sequences are running already", self.active.len())));
        }
        if req.prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if req.prompt.len() > self.cfg.n_ctx {
            return Err(Error::PromptTooLong { n_tokens: req.prompt.len(), n_ctx: self.cfg.n_ctx });
        }
        let n_vocab = self.model.info.n_vocab;
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::TokenOutOfRange { id, n_vocab });
        }
        let (session, n_reused) = self.session_for(&req);
        self.counters.prompt_tokens += req.prompt.len() as u64;
        self.counters.prompt_tokens_reused += n_reused as u64;
        self.active.push(Seq::new(req, sink, session, n_reused));
        Ok(())
    }

    /// A session for `req`: the prefix cache's best match rewound to the common prefix (at most all but the
    /// prompt's last token, whose logits are needed), or a new one; and how many prompt tokens it holds.
    fn session_for(&mut self, req: &SeqRequest) -> (Session, usize) {
        if req.reuse_prefix {
            if let Some((cached, lcp)) = self.prefix.take_longest(&req.prompt) {
                let mut session = cached.session;
                let reached = session.truncate(lcp.min(req.prompt.len() - 1));
                return (session, reached);
            }
        }
        (self.model.new_session(self.cfg.n_ctx), 0)
    }

    /// One forward step over every active sequence (nothing when there is none). A failed forward pass fails the
    /// sequences in it (their sinks get the error) and leaves the others running.
    pub fn step(&mut self, cpu: &Cpu) {
        self.drop_cancelled();
        let plan = self.plan_step();
        if plan.is_empty() {
            return;
        }
        let t0 = Instant::now();
        let n_vocab = self.model.info.n_vocab;
        let result = {
            let mut batch: Vec<(&mut Session, &[u32])> = Vec::with_capacity(plan.len());
            let mut it = self.active.iter_mut().enumerate();
            for &(i, n) in &plan {
                let seq = it.by_ref().find(|(j, _)| *j == i).map(|(_, s)| s).expect("planned sequences are active");
                let (session, tokens) = seq.feed(n);
                batch.push((session, tokens));
            }
            self.model.forward_multi(cpu, &mut batch, &mut self.scratch).map(<[f32]>::to_vec)
        };
        self.counters.steps += 1;
        self.counters.seqs_in_steps += plan.len() as u64;
        self.counters.tokens_run += plan.iter().map(|&(_, n)| n as u64).sum::<u64>();
        self.counters.forward_secs += t0.elapsed().as_secs_f64();
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                for &(i, _) in plan.iter().rev() {
                    let mut seq = self.active.remove(i);
                    seq.fail(Error::Invalid(msg.clone()));
                }
                return;
            }
        };
        let mut ended = Vec::new();
        for (j, &(i, n)) in plan.iter().enumerate() {
            let seq = &mut self.active[i];
            seq.fed(n);
            if seq.wants_logits() {
                let mut row = logits[j * n_vocab..(j + 1) * n_vocab].to_vec();
                let before = seq.n_generated();
                if seq.on_logits(&mut row, self.tokenizer, self.cfg.n_ctx) {
                    ended.push(i);
                }
                self.counters.generated_tokens += (seq.n_generated() - before) as u64;
            }
        }
        for i in ended.into_iter().rev() {
            self.finish(i);
        }
    }

    /// Which sequences run this step and how many tokens each: every decoding sequence's one token, then prompt
    /// (or forced) chunks in admission order while the step has room. `(index in active, n_tokens)`, ascending.
    fn plan_step(&self) -> Vec<(usize, usize)> {
        let mut room = self.cfg.step_tokens_max;
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, seq) in self.active.iter().enumerate() {
            if seq.n_pending() == 1 {
                plan.push((i, 1));
                room -= 1;
            }
        }
        for (i, seq) in self.active.iter().enumerate() {
            let n = seq.n_pending();
            if n > 1 && room > 0 {
                let take = n.min(room).min(crate::backend::native::N_BATCH);
                plan.push((i, take));
                room -= take;
            }
        }
        plan.sort_unstable();
        plan
    }

    /// Ends sequences whose consumers went away.
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].is_cancelled() {
                self.active[i].set_finish(Finish::Cancelled);
                self.finish(i);
            } else {
                i += 1;
            }
        }
    }

    /// Reports the end of sequence `i` and keeps its state for reuse.
    fn finish(&mut self, i: usize) {
        let seq = self.active.remove(i);
        if let Some((session, tokens)) = seq.end() {
            self.prefix.put(session, tokens);
        }
    }
}
