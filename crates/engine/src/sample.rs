//! Choosing the next token from logits, and stopping on stop strings.
//!
//! [`Sampler`] follows llama.cpp's default chain: repetition/presence/frequency penalties -> top-k -> top-p -> min-p
//! -> temperature -> softmax -> a draw from a seeded PRNG (xoshiro256++), so a seed reproduces a sequence. A
//! temperature <= 0 is greedy: argmax after penalties, the lowest id winning ties. Scratch buffers live in the
//! sampler: after the first call, `sample` does not allocate (for a fixed vocabulary size).
//!
//! [`StopMatcher`] scans streamed text for stop strings, holding back any suffix that could still become one.

/// Sampling settings; [`Default`] is llama.cpp's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// <= 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// >= 1 disables.
    pub top_p: f32,
    /// <= 0 disables; keeps tokens with probability >= min_p * the top probability.
    pub min_p: f32,
    /// 1 disables; > 1 discourages tokens seen in the last `repeat_last_n`.
    pub repeat_penalty: f32,
    /// How many of the latest history tokens the penalties look at (0 disables them).
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token seen.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token seen.
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0x5EED,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token.
    pub fn greedy() -> SamplerConfig {
        SamplerConfig { temperature: 0.0, ..SamplerConfig::default() }
    }

    fn penalties_on(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0)
    }
}

/// xoshiro256++ seeded through SplitMix64: small, fast, reproducible across platforms.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// One candidate token.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// A candidate as one integer whose ascending order is higher logit first, then lower id (`f32::total_cmp`'s order
/// reversed, the id below it): a total order, so results never depend on sort stability, and sorting plain integers
/// is several times faster than sorting with a comparator (a 152k vocabulary, sorted whole at `top_k` 0, took 3 ms
/// a token with one).
fn sort_key(c: &Candidate) -> u64 {
    let bits = c.logit.to_bits();
    // f32::total_cmp's order as an unsigned integer: negative values flipped whole, positive ones above them.
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 0x8000_0000 };
    (u64::from(!ascending) << 32) | u64::from(c.id)
}

/// Picks tokens; one per sequence (it owns the PRNG state and scratch buffers).
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    /// [n_vocab] candidates, sorted and cut in place each call.
    candidates: Vec<Candidate>,
    /// The candidates' [`sort_key`]s, and the kept candidates in their order (scratch of `top_k`).
    keys: Vec<u64>,
    sorted: Vec<Candidate>,
    /// [n_vocab] occurrences of each id in the penalty window; only `seen` entries are non-zero.
    counts: Vec<u32>,
    /// Ids with a non-zero count.
    seen: Vec<u32>,
    /// [n_candidates] probabilities of the kept candidates.
    probs: Vec<f32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        Sampler {
            cfg,
            rng: Rng::new(cfg.seed),
            candidates: Vec::new(),
            keys: Vec::new(),
            sorted: Vec::new(),
            counts: Vec::new(),
            seen: Vec::new(),
            probs: Vec::new(),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The next token for `logits` (`[n_vocab]`); `history` is the sequence so far (prompt and generated), used by the
    /// penalties. Ids in `history` outside the vocabulary are ignored. NaN logits are never chosen unless all are NaN.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        assert!(!logits.is_empty(), "sample: empty logits");
        assert!(logits.len() <= u32::MAX as usize, "sample: vocabulary larger than u32");
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(id, &logit)| Candidate {
            id: id as u32,
            logit: if logit.is_nan() { f32::NEG_INFINITY } else { logit },
        }));
        if self.cfg.penalties_on() {
            self.apply_penalties(history);
        }
        if self.cfg.temperature <= 0.0 {
            return self.argmax();
        }
        self.top_k();
        self.top_p();
        self.min_p();
        let inv_temp = 1.0 / self.cfg.temperature;
        for c in &mut self.candidates {
            c.logit *= inv_temp;
        }
        self.softmax();
        self.draw()
    }

    fn argmax(&self) -> u32 {
        let mut best = self.candidates[0];
        for &c in &self.candidates[1..] {
            if c.logit > best.logit {
                best = c;
            }
        }
        best.id
    }

    /// llama.cpp's `penalties` sampler: divide positive (multiply negative) logits by `repeat_penalty`, then subtract
    /// `count * frequency_penalty + presence_penalty` for each token in the last `repeat_last_n`.
    fn apply_penalties(&mut self, history: &[u32]) {
        let n_vocab = self.candidates.len();
        self.counts.resize(n_vocab, 0);
        let window = &history[history.len().saturating_sub(self.cfg.repeat_last_n)..];
        for &id in window {
            let Some(count) = self.counts.get_mut(id as usize) else {
                continue;
            };
            if *count == 0 {
                self.seen.push(id);
            }
            *count += 1;
        }
        let SamplerConfig { repeat_penalty, presence_penalty, frequency_penalty, .. } = self.cfg;
        for &id in &self.seen {
            let count = self.counts[id as usize];
            // Candidates are still in id order here.
            let logit = &mut self.candidates[id as usize].logit;
            if *logit <= 0.0 {
                *logit *= repeat_penalty;
            } else {
                *logit /= repeat_penalty;
            }
            *logit -= count as f32 * frequency_penalty + presence_penalty;
        }
        for &id in &self.seen {
            self.counts[id as usize] = 0;
        }
        self.seen.clear();
    }

    /// Keeps the `top_k` best, sorted best first (all of them, sorted, when top_k is 0).
    fn top_k(&mut self) {
        let n = self.candidates.len();
        let k = if self.cfg.top_k == 0 { n } else { self.cfg.top_k.min(n) };
        self.keys.clear();
        self.keys.extend(self.candidates.iter().map(sort_key));
        if k < n {
            self.keys.select_nth_unstable(k - 1);
            self.keys.truncate(k);
        }
        self.keys.sort_unstable();
        // The candidates are still in id order here: each key's low half indexes them.
        self.sorted.clear();
        self.sorted.extend(self.keys.iter().map(|&key| self.candidates[(key & 0xffff_ffff) as usize]));
        // Copied back rather than swapped, so that each buffer keeps its capacity (no allocation after the first
        // call).
        self.candidates.clear();
        self.candidates.extend_from_slice(&self.sorted);
    }

    /// Probabilities of the (sorted) candidates at temperature 1, into `probs`.
    fn softmax(&mut self) {
        let max = self.candidates[0].logit;
        self.probs.clear();
        let mut sum = 0.0f32;
        for c in &self.candidates {
            let p = (c.logit - max).exp();
            sum += p;
            self.probs.push(p);
        }
        if !(sum > 0.0 && sum.is_finite()) {
            // Every logit is -inf (or the best is +inf): only the first candidate is possible.
            self.probs.iter_mut().for_each(|p| *p = 0.0);
            self.probs[0] = 1.0;
            return;
        }
        self.probs.iter_mut().for_each(|p| *p /= sum);
    }

    /// Keeps the smallest prefix whose probability reaches `top_p` (at least one).
    fn top_p(&mut self) {
        if self.cfg.top_p >= 1.0 {
            return;
        }
        self.softmax();
        let mut cum = 0.0f32;
        let mut keep = self.candidates.len();
        for (i, p) in self.probs.iter().enumerate() {
            cum += p;
            if cum >= self.cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        self.candidates.truncate(keep.max(1));
    }

    /// Keeps candidates with probability >= min_p * the best one's (at least one).
    fn min_p(&mut self) {
        if self.cfg.min_p <= 0.0 {
            return;
        }
        let threshold = self.candidates[0].logit + self.cfg.min_p.ln();
        let keep = self.candidates.iter().take_while(|c| c.logit >= threshold).count();
        self.candidates.truncate(keep.max(1));
    }

    fn draw(&mut self) -> u32 {
        let u = self.rng.next_f64() as f32;
        let mut cum = 0.0f32;
        for (c, &p) in self.candidates.iter().zip(&self.probs) {
            cum += p;
            if u < cum {
                return c.id;
            }
        }
        // Rounding left the total just under u: the last candidate with any probability.
        let last = self.probs.iter().rposition(|&p| p > 0.0).unwrap_or(0);
        self.candidates[last].id
    }
}

/// What [`StopMatcher::push`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutput {
    /// Text that is safe to show now (never part of a stop string).
    pub text: String,
    /// A stop string was found; `text` ends just before it and generation should end.
    pub stopped: bool,
}

/// Finds stop strings in streamed text; holds back a suffix that could be the start of one.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
    /// The stop string found (the first in the text).
    matched: Option<String>,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new<S: AsRef<str>>(stops: &[S]) -> StopMatcher {
        let stops = stops.iter().map(|s| s.as_ref().to_string()).filter(|s| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new(), stopped: false, matched: None }
    }

    /// Adds a chunk. After a stop, further chunks return nothing.
    pub fn push(&mut self, chunk: &str) -> StopOutput {
        if self.stopped {
            return StopOutput { text: String::new(), stopped: true };
        }
        self.held.push_str(chunk);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str()).map(|p| (p, s))).min();
        if let Some((pos, stop)) = first_stop {
            self.matched = Some(stop.clone());
            self.held.truncate(pos);
            self.stopped = true;
            return StopOutput { text: std::mem::take(&mut self.held), stopped: true };
        }
        let keep = self.partial_suffix_len();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopOutput { text, stopped: false }
    }

    /// A control token the text leaves out (see [`crate::tokenizer::ControlText`]), whose own text is
    /// `token_text`: it ends the text when that is one of the stop strings, so that `--stop "<|im_end|>"` still
    /// stops where the model writes that token (the text held back so far comes out); otherwise it adds nothing.
    pub fn push_hidden(&mut self, token_text: &str) -> StopOutput {
        if self.stopped {
            return StopOutput { text: String::new(), stopped: true };
        }
        match self.stops.iter().find(|s| s.as_str() == token_text) {
            Some(stop) => {
                self.matched = Some(stop.clone());
                self.stopped = true;
                StopOutput { text: std::mem::take(&mut self.held), stopped: true }
            }
            None => StopOutput::default(),
        }
    }

    /// Ends the stream without a stop: the held-back text.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The stop string that ended the text, once one has.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// The longest suffix of `held` that is a proper prefix of some stop string.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for stop in &self.stops {
            let max = (stop.len() - 1).min(held.len());
            for len in (best + 1..=max).rev() {
                let start = held.len() - len;
                if held.is_char_boundary(start) && stop.starts_with(&held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    /// The integer keys sort exactly as "higher logit (`total_cmp`) first, then lower id" does.
    #[test]
    fn sort_keys_order_as_logit_then_id() {
        let specials = [f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0, f32::MIN_POSITIVE, -f32::MIN_POSITIVE, 1e-45];
        let mut rng = Rng::new(3);
        let mut cands: Vec<Candidate> = (0..5000u32)
            .map(|id| {
                let r = rng.next_u64();
                let logit = match r % 4 {
                    0 => specials[(r >> 8) as usize % specials.len()],
                    1 => ((r >> 8) % 7) as f32 - 3.0, // many ties
                    _ => f32::from_bits((r >> 16) as u32 & !(0xff << 23) | (((r >> 48) % 254 + 1) as u32) << 23),
                };
                Candidate { id, logit }
            })
            .collect();
        let mut by_keys = cands.clone();
        by_keys.sort_unstable_by_key(sort_key);
        cands.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id)));
        let ids = |v: &[Candidate]| v.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(&by_keys), ids(&cands));
    }
}
