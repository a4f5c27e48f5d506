//! Held-out loss: the mean negative log-likelihood of each token given the ones before it, as llama.cpp's
//! `llama-perplexity` and transformers' `labels=` loss define it.
//!
//! The text is cut into windows of `n_ctx` tokens, each evaluated from an empty KV cache; every position of a
//! window but the first is scored. Sums are kept in f64 so that the loss does not depend on how windows are split
//! into forward calls.

use crate::models::{Logits, Model};
use crate::ops::Cpu;
use crate::session::Session;
use crate::Result;

/// `log sum exp(logits)`, in f64 (the normaliser of a softmax).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln()
}

/// `-log softmax(logits)[target]`, in f64.
pub fn token_nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// Loss over windows of a token stream.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Loss {
    pub nll_sum: f64,
    pub n_scored: usize,
    pub n_windows: usize,
}

impl Loss {
    pub fn mean(&self) -> f64 {
        self.nll_sum / self.n_scored.max(1) as f64
    }

    pub fn perplexity(&self) -> f64 {
        self.mean().exp()
    }
}

/// Scores `tokens` in windows of `n_ctx` (the last, shorter window too when it has two tokens or more).
pub fn evaluate(model: &Model, cpu: &Cpu, session: &mut Session, tokens: &[u32], n_ctx: usize) -> Result<Loss> {
    evaluate_with_progress(model, cpu, session, tokens, n_ctx, &mut |_, _| {})
}

/// Tokens per forward call within a window: a window is fed in pieces (prefill in chunks is bit-identical to one
/// call), so that `progress` hears of long windows as they go.
const PIECE_TOKENS: usize = 256;

/// [`evaluate`], calling `progress(loss so far, tokens evaluated)` after every piece of every window.
pub fn evaluate_with_progress(
    model: &Model,
    cpu: &Cpu,
    session: &mut Session,
    tokens: &[u32],
    n_ctx: usize,
    progress: &mut dyn FnMut(&Loss, usize),
) -> Result<Loss> {
    let mut loss = Loss::default();
    let n_vocab = model.info.n_vocab;
    let mut n_done = 0;
    for window in tokens.chunks(n_ctx.max(2)) {
        if window.len() < 2 {
            break;
        }
        session.reset();
        let mut start = 0;
        while start < window.len() {
            let piece = &window[start..window.len().min(start + PIECE_TOKENS)];
            let logits = model.forward(cpu, session, piece, Logits::All)?;
            // Position j of the piece predicts window token start + j + 1.
            for (j, &target) in window[start + 1..].iter().take(piece.len()).enumerate() {
                loss.nll_sum += token_nll(&logits[j * n_vocab..(j + 1) * n_vocab], target);
                loss.n_scored += 1;
            }
            start += piece.len();
            n_done += piece.len();
            progress(&loss, n_done);
        }
        loss.n_windows += 1;
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_of_uniform_logits_is_log_vocab() {
        let nll = token_nll(&[3.0; 8], 5);
        assert!((nll - 8f64.ln()).abs() < 1e-12, "{nll}");
        // A confident right answer costs almost nothing, a confident wrong one a lot.
        assert!(token_nll(&[0.0, 30.0], 1) < 1e-12);
        assert!((token_nll(&[0.0, 30.0], 0) - 30.0).abs() < 1e-9);
    }
}
