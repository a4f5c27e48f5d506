//! One sequence in a batch: the tokens still to feed (the rest of its prompt, a forced chunk, or its last
//! sampled token), its sampler, stop rules and streamed text. The rules after each set of logits are those of
//! [`crate::generate::generate`], in the same order, so a sequence ends exactly where a run of it alone ends.

use std::time::Instant;

use super::{Constraint, ConstraintStep, Finish, SeqRequest, SeqSink, SeqStats};
use crate::sample::{Sampler, StopMatcher};
use crate::session::Session;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::Error;

pub(super) struct Seq {
    session: Session,
    /// The tokens the session's state holds (`session.pos == fed.len()`).
    fed: Vec<u32>,
    /// Tokens to run next: the rest of the prompt, forced tokens, or the last sampled token.
    pending: Vec<u32>,
    /// Prompt and generated tokens (what the penalties look at).
    history: Vec<u32>,
    n_prompt: usize,
    n_reused: usize,
    prompt_done: bool,
    generated: Vec<u32>,
    max_tokens: usize,
    ignore_eos: bool,
    reuse_prefix: bool,
    sampler: Sampler,
    stream: StreamDecoder,
    stops: StopMatcher,
    constraint: Option<Box<dyn Constraint>>,
    sink: Box<dyn SeqSink>,
    finish: Option<Finish>,
    t_admit: Instant,
    t_first: Option<Instant>,
}

impl Seq {
    pub(super) fn new(req: SeqRequest, sink: Box<dyn SeqSink>, session: Session, n_reused: usize) -> Seq {
        Seq {
            session,
            fed: req.prompt[..n_reused].to_vec(),
            pending: req.prompt[n_reused..].to_vec(),
            history: req.prompt.clone(),
            n_prompt: req.prompt.len(),
            n_reused,
            prompt_done: false,
            generated: Vec::new(),
            max_tokens: req.max_tokens,
            ignore_eos: req.ignore_eos,
            reuse_prefix: req.reuse_prefix,
            sampler: Sampler::new(req.sampler),
            stream: StreamDecoder::showing(req.control_text),
            stops: StopMatcher::new(&req.stop),
            constraint: req.constraint,
            sink,
            finish: None,
            t_admit: Instant::now(),
            t_first: None,
        }
    }

    pub(super) fn n_pending(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn n_generated(&self) -> usize {
        self.generated.len()
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.sink.cancelled()
    }

    pub(super) fn set_finish(&mut self, f: Finish) {
        self.finish = Some(f);
    }

    /// The session and the next `n` pending tokens, for a forward step.
    pub(super) fn feed(&mut self, n: usize) -> (&mut Session, &[u32]) {
        (&mut self.session, &self.pending[..n])
    }

    /// The step ran the first `n` pending tokens.
    pub(super) fn fed(&mut self, n: usize) {
        self.fed.extend(self.pending.drain(..n));
    }

    /// Whether the last step's logits are this sequence's next-token logits (nothing left to feed).
    pub(super) fn wants_logits(&self) -> bool {
        self.pending.is_empty()
    }

    /// Chooses what follows the fed tokens from their `logits`; returns true when the sequence has ended.
    pub(super) fn on_logits(&mut self, logits: &mut [f32], tok: &Tokenizer, n_ctx: usize) -> bool {
        if !self.prompt_done {
            self.prompt_done = true;
            // A recurrent state can be rewound here later (the next turn of a conversation starts with this prompt).
            self.session.checkpoint();
        }
        if self.max_tokens == 0 {
            // Like `-n 0`: the prompt is evaluated, nothing is generated.
            return self.ends(Finish::Length);
        }
        let next = match self.constraint.as_mut().map(|c| c.next()) {
            None => self.sampler.sample(logits, &self.history),
            Some(ConstraintStep::Sample) => {
                let c = self.constraint.as_mut().expect("a constraint");
                c.mask(logits);
                let id = self.sampler.sample(logits, &self.history);
                c.accept(id);
                id
            }
            Some(ConstraintStep::Force(ids)) => return self.force(ids, tok, n_ctx),
            Some(ConstraintStep::Done) => return self.ends(Finish::Constraint),
        };
        if self.constraint.is_none() && !self.ignore_eos && tok.is_eog(next) {
            return self.ends(Finish::EndOfGeneration);
        }
        if let Some(f) = self.emit(next, tok, n_ctx, 1) {
            return self.ends(f);
        }
        self.pending.push(next);
        false
    }

    /// Forced tokens: reported as generated, then fed together.
    fn force(&mut self, ids: Vec<u32>, tok: &Tokenizer, n_ctx: usize) -> bool {
        for (k, &id) in ids.iter().enumerate() {
            if let Some(f) = self.emit(id, tok, n_ctx, k + 1) {
                return self.ends(f);
            }
        }
        self.pending = ids;
        false
    }

    /// A generated token: counted, its text reported (unless a stop string ends the sequence first). Returns why
    /// the sequence ends after it, if it does; `n_to_feed` is how many tokens, this one included, remain to feed.
    fn emit(&mut self, id: u32, tok: &Tokenizer, n_ctx: usize, n_to_feed: usize) -> Option<Finish> {
        if self.t_first.is_none() {
            self.t_first = Some(Instant::now());
        }
        self.generated.push(id);
        self.history.push(id);
        // Ids outside the vocabulary never come from the sampler (logits are one per id).
        let piece = self.stream.push(tok, id).unwrap_or_default();
        let out = if self.stream.shows(tok, id) {
            self.stops.push(&piece)
        } else {
            self.stops.push_hidden(&String::from_utf8_lossy(tok.piece(id).unwrap_or_default()))
        };
        if !out.text.is_empty() && !self.sink.text(&out.text) {
            return Some(Finish::Cancelled);
        }
        if out.stopped {
            return Some(Finish::StopString);
        }
        if self.generated.len() >= self.max_tokens {
            return Some(Finish::Length);
        }
        if self.fed.len() + n_to_feed > n_ctx {
            return Some(Finish::ContextFull);
        }
        None
    }

    fn ends(&mut self, f: Finish) -> bool {
        self.finish = Some(f);
        true
    }

    /// Reports the end (the held-back text, then the statistics) and returns the session with the tokens it
    /// holds, for the prefix cache, when the request allows reuse.
    pub(super) fn end(mut self) -> Option<(Session, Vec<u32>)> {
        let finish = self.finish.unwrap_or(Finish::Cancelled);
        if !matches!(finish, Finish::StopString | Finish::Cancelled) {
            let mut rest = self.stream.flush();
            rest = self.stops.push(&rest).text + &self.stops.flush();
            if !rest.is_empty() {
                self.sink.text(&rest);
            }
        }
        let now = Instant::now();
        let t_first = self.t_first.unwrap_or(now);
        self.sink.done(Ok(SeqStats {
            finish,
            n_prompt: self.n_prompt,
            n_prompt_reused: self.n_reused,
            n_generated: self.generated.len(),
            first_token_secs: t_first.duration_since(self.t_admit).as_secs_f64(),
            decode_secs: now.duration_since(t_first).as_secs_f64(),
            tokens: std::mem::take(&mut self.generated),
            stop_string: self.stops.matched().map(str::to_string),
        }));
        if !self.reuse_prefix {
            return None;
        }
        self.session.checkpoint();
        Some((self.session, self.fed))
    }

    /// Reports a failure; the state is dropped (it may be half-updated).
    pub(super) fn fail(&mut self, e: Error) {
        self.sink.done(Err(e));
    }
}
