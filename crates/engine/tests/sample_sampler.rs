//! Sampler and StopMatcher behaviour: greedy, top-k/top-p/min-p cuts, penalties, determinism, stop strings.

use engine::sample::{Sampler, SamplerConfig, StopMatcher, StopOutput};

fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-5.0f32..5.0)).collect()
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Only temperature: no cuts.
fn plain(temperature: f32, seed: u64) -> SamplerConfig {
    SamplerConfig { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, seed, ..SamplerConfig::default() }
}

fn histogram(cfg: SamplerConfig, logits: &[f32], n_draws: usize) -> Vec<usize> {
    let mut s = Sampler::new(cfg);
    let mut h = vec![0; logits.len()];
    for _ in 0..n_draws {
        h[s.sample(logits, &[]) as usize] += 1;
    }
    h
}

#[test]
fn defaults_are_llama_cpps() {
    let c = SamplerConfig::default();
    assert_eq!((c.temperature, c.top_k, c.top_p, c.min_p), (0.8, 40, 0.95, 0.05));
    assert_eq!((c.repeat_penalty, c.repeat_last_n), (1.0, 64));
    assert_eq!((c.presence_penalty, c.frequency_penalty), (0.0, 0.0));
    assert_eq!(SamplerConfig::greedy().temperature, 0.0);
}

#[test]
fn greedy_picks_argmax_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplerConfig::greedy());
    for seed in 0..20 {
        let logits = random_logits(1000, seed);
        assert_eq!(s.sample(&logits, &[]), argmax(&logits));
    }
    assert_eq!(s.sample(&[1.0, 3.0, 3.0, 2.0], &[]), 1);
    assert_eq!(s.sample(&[f32::NAN, 0.5, f32::NAN], &[]), 1);
}

#[test]
fn top_k_1_is_greedy_at_any_temperature() {
    for (i, temperature) in [0.1f32, 0.8, 1.5, 10.0].into_iter().enumerate() {
        let cfg = SamplerConfig { temperature, top_k: 1, seed: i as u64, ..SamplerConfig::default() };
        let mut s = Sampler::new(cfg);
        for seed in 0..10 {
            let logits = random_logits(500, seed * 31 + i as u64);
            assert_eq!(s.sample(&logits, &[]), argmax(&logits), "temperature {temperature}");
        }
        assert_eq!(s.sample(&[2.0, 5.0, 5.0], &[]), 1, "ties go to the lowest id");
    }
}

#[test]
fn same_seed_same_sequence_other_seed_differs() {
    let run = |seed| {
        let mut s = Sampler::new(SamplerConfig { seed, temperature: 1.5, ..plain(1.5, seed) });
        (0..200).map(|i| s.sample(&random_logits(64, i), &[])).collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn sampling_follows_the_softmax() {
    // p = softmax([ln 1, ln 2, ln 3, ln 4]) = [0.1, 0.2, 0.3, 0.4].
    let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
    let n = 40_000;
    let h = histogram(plain(1.0, 9), &logits, n);
    for (i, &count) in h.iter().enumerate() {
        let p = count as f64 / n as f64;
        let want = (i + 1) as f64 / 10.0;
        assert!((p - want).abs() < 0.015, "token {i}: {p} vs {want}");
    }
    // Temperature 0.5 squares the odds: p ~ [1, 4, 9, 16] / 30.
    let h = histogram(plain(0.5, 9), &logits, n);
    let p3 = h[3] as f64 / n as f64;
    assert!((p3 - 16.0 / 30.0).abs() < 0.015, "{p3}");
}

#[test]
fn top_k_cuts_to_k_best() {
    let logits = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let h = histogram(SamplerConfig { top_k: 2, ..plain(5.0, 1) }, &logits, 5000);
    assert_eq!(&h[..4], &[0, 0, 0, 0]);
    assert!(h[4] > 0 && h[5] > 0);
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    // p = [0.4, 0.3, 0.2, 0.1] (sorted by id here).
    let logits: Vec<f32> = [4.0f32, 3.0, 2.0, 1.0].iter().map(|x| x.ln()).collect();
    // 0.4 + 0.3 = 0.7 >= 0.65: ids 0 and 1 only.
    let h = histogram(SamplerConfig { top_p: 0.65, ..plain(1.0, 3) }, &logits, 5000);
    assert_eq!(&h[2..], &[0, 0]);
    assert!(h[0] > 0 && h[1] > 0);
    // 0.7 < 0.75: id 2 too.
    let h = histogram(SamplerConfig { top_p: 0.75, ..plain(1.0, 3) }, &logits, 5000);
    assert!(h[2] > 0);
    assert_eq!(h[3], 0);
    // A tiny p still keeps one token.
    let h = histogram(SamplerConfig { top_p: 0.01, ..plain(1.0, 3) }, &logits, 100);
    assert_eq!(h[0], 100);
}

#[test]
fn min_p_keeps_tokens_above_a_fraction_of_the_best() {
    // p relative to the best: [1, 0.5, 0.25, 0.1].
    let logits: Vec<f32> = [1.0f32, 0.5, 0.25, 0.1].iter().map(|x| x.ln()).collect();
    let h = histogram(SamplerConfig { min_p: 0.3, ..plain(1.0, 5) }, &logits, 5000);
    assert!(h[0] > 0 && h[1] > 0);
    assert_eq!(&h[2..], &[0, 0]);
    let h = histogram(SamplerConfig { min_p: 0.2, ..plain(1.0, 5) }, &logits, 5000);
    assert!(h[2] > 0);
    assert_eq!(h[3], 0);
}

#[test]
fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
    let cfg = SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() };
    let mut s = Sampler::new(cfg);
    // Token 0 (3.0) seen -> 1.5 < token 1 (2.0).
    assert_eq!(s.sample(&[3.0, 2.0], &[0]), 1);
    assert_eq!(s.sample(&[3.0, 2.0], &[]), 0);
    // Negative: token 0 (-1.0) seen -> -2.0 < token 1 (-1.5).
    assert_eq!(s.sample(&[-1.0, -1.5], &[0]), 1);
    // Outside the window of repeat_last_n it does not count.
    let mut s = Sampler::new(SamplerConfig { repeat_last_n: 2, ..cfg });
    assert_eq!(s.sample(&[3.0, 2.0], &[0, 1, 1]), 0);
    // Ids outside the vocabulary are ignored, not a panic.
    assert_eq!(s.sample(&[3.0, 2.0], &[7, 99]), 0);
}

#[test]
fn presence_and_frequency_penalties_subtract() {
    let logits = [5.0f32, 4.0, 3.5];
    // presence 1.5: token 0 -> 3.5, ties with token 2? no: token 1 (4.0) wins.
    let mut s = Sampler::new(SamplerConfig { presence_penalty: 1.5, ..SamplerConfig::greedy() });
    assert_eq!(s.sample(&logits, &[0, 0, 0]), 1);
    // frequency 0.4 x 3 occurrences = 1.2: token 0 -> 3.8 < 4.0; with 2 occurrences 4.2 > 4.0.
    let mut s = Sampler::new(SamplerConfig { frequency_penalty: 0.4, ..SamplerConfig::greedy() });
    assert_eq!(s.sample(&logits, &[0, 0, 0]), 1);
    assert_eq!(s.sample(&logits, &[0, 0]), 0);
    // Penalties do not leak between calls.
    assert_eq!(s.sample(&logits, &[]), 0);
}

fn feed(m: &mut StopMatcher, chunks: &[&str]) -> (String, bool) {
    let mut out = String::new();
    for c in chunks {
        let StopOutput { text, stopped } = m.push(c);
        out.push_str(&text);
        if stopped {
            return (out, true);
        }
    }
    out.push_str(&m.flush());
    (out, false)
}

#[test]
fn stop_matcher_across_chunks() {
    let mut m = StopMatcher::new(&["<|im_end|>", "\n\nUser:"]);
    assert_eq!(m.push("Hello <|im"), StopOutput { text: "Hello ".into(), stopped: false });
    assert_eq!(m.push("_en"), StopOutput { text: String::new(), stopped: false });
    assert_eq!(m.push("d|> tail"), StopOutput { text: String::new(), stopped: true });
    assert!(m.stopped());
    assert_eq!(m.push("more"), StopOutput { text: String::new(), stopped: true });

    let mut m = StopMatcher::new(&["<|im_end|>"]);
    assert_eq!(feed(&mut m, &["a <", "b", " <|", "x"]), ("a <b <|x".to_string(), false));
    let mut m = StopMatcher::new(&["\n\nUser:"]);
    assert_eq!(feed(&mut m, &["Sure.\n", "\nUs", "er: hi"]), ("Sure.".to_string(), true));
    // The earliest stop wins, even when a later-listed one is found first in the list.
    let mut m = StopMatcher::new(&["world", "lo"]);
    assert_eq!(feed(&mut m, &["hello world"]), ("hel".to_string(), true));
    // Multi-byte text and stop strings split mid-character are handled at char boundaries.
    let mut m = StopMatcher::new(&["終わり"]);
    assert_eq!(feed(&mut m, &["日本語", "終", "わ", "り!"]), ("日本語".to_string(), true));
    // Empty stop strings are ignored.
    let mut m = StopMatcher::new(&[""]);
    assert_eq!(feed(&mut m, &["abc"]), ("abc".to_string(), false));
}

/// A control token the text leaves out still ends it when its text is a stop string; others add nothing.
#[test]
fn stop_matcher_stops_at_a_hidden_control_token() {
    let mut m = StopMatcher::new(&["<|im_end|>", "ab"]);
    assert_eq!(m.push("xa"), StopOutput { text: "x".into(), stopped: false });
    assert_eq!(m.push_hidden("<|im_start|>"), StopOutput::default());
    assert_eq!(m.push_hidden("<|im_end|>"), StopOutput { text: "a".into(), stopped: true });
    assert_eq!(m.matched(), Some("<|im_end|>"));
    assert_eq!(m.push("more"), StopOutput { text: String::new(), stopped: true });
    assert_eq!(m.push_hidden("<|im_end|>"), StopOutput { text: String::new(), stopped: true });
}
