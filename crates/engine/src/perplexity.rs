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
    let mut loss = Loss::default();
    for window in tokens.chunks(n_ctx.max(2)).filter(|w| w.len() >= 2) {
        session.reset();
        let n_vocab = model.info.n_vocab;
        let logits = model.forward(cpu, session, window, Logits::All)?;
        for (i, &target) in window.iter().enumerate().skip(1) {
            loss.nll_sum += token_nll(&logits[(i - 1) * n_vocab..i * n_vocab], target);
            loss.n_scored += 1;
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
