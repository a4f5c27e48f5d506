//! Several sequences in one forward step (`Model::forward_multi`, continuous batching) give each sequence the
//! logits it gets alone, bit for bit: prompts of different lengths at once, prompt chunks beside decoded tokens,
//! sequences joining and leaving at different positions; for every family (attention-only and DeltaNet hybrids,
//! dense and MoE), with experts in RAM and streamed through a small cache (where each expert is read once per
//! step for all the sequences that chose it).

mod common;

use common::*;
use engine::experts::budget::Budget;
use engine::experts::cache::Prefetch;
use engine::formats::WeightIndex;
use engine::models::{ExpertResidency, LoadOptions, Logits, Model, StreamOptions};
use engine::ops::Cpu;
use engine::session::{Scratch, Session};

const MODELS: &[(&str, &str)] = &[
    ("llama-h64", "llama-h64-q8_0.gguf"),
    ("qwen3moe-h64", "qwen3moe-h64-q8_0.gguf"),
    ("qwen3moe-h256", "qwen3moe-h256-q4_k_m.gguf"),
    ("qwen3next-h64", "qwen3next-h64-q8_0.gguf"),
    ("qwen3next-h256", "qwen3next-h256-q4_k_m.gguf"),
    ("qwen35moe-h64", "qwen35moe-h64-q8_0.gguf"),
    ("mixtral-h64", "mixtral-h64-q4_k_m.gguf"),
];

const N_CTX: usize = 64;

fn prompt(seed: u32, len: usize, n_vocab: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + seed * 101 + 11) % n_vocab as u32).collect()
}

/// One sequence's script: a prompt, fed in chunks of `chunk`, then `n_steps` greedy tokens; joins the batch
/// at step `start`.
struct Script {
    prompt: Vec<u32>,
    chunk: usize,
    n_steps: usize,
    start: usize,
}

fn scripts(n_vocab: usize) -> Vec<Script> {
    vec![
        Script { prompt: prompt(1, 11, n_vocab), chunk: 64, n_steps: 9, start: 0 },
        Script { prompt: prompt(2, 5, n_vocab), chunk: 64, n_steps: 12, start: 0 },
        Script { prompt: prompt(3, 19, n_vocab), chunk: 4, n_steps: 6, start: 2 },
        Script { prompt: prompt(4, 1, n_vocab), chunk: 1, n_steps: 3, start: 5 },
    ]
}

/// The logits after each feed of a script, run alone: a prompt chunk's last token's logits, then each greedy step's.
fn alone(model: &Model, cpu: &Cpu, sc: &Script) -> Vec<Vec<f32>> {
    let mut s = model.new_session(N_CTX);
    let mut out = Vec::new();
    for c in sc.prompt.chunks(sc.chunk) {
        out.push(model.forward(cpu, &mut s, c, Logits::Last).expect("prompt").to_vec());
    }
    for _ in 0..sc.n_steps {
        let next = argmax(out.last().expect("logits"));
        out.push(model.forward(cpu, &mut s, &[next], Logits::Last).expect("step").to_vec());
    }
    out
}

/// The same scripts run together through `forward_multi`, each step feeding every sequence that has started and
/// not finished; returns each script's logits in order.
fn together(model: &Model, cpu: &Cpu, scs: &[Script]) -> Vec<Vec<Vec<f32>>> {
    let n_vocab = model.info.n_vocab;
    let mut sessions: Vec<Session> = scs.iter().map(|_| model.new_session(N_CTX)).collect();
    let mut fed = vec![0usize; scs.len()]; // prompt tokens fed so far
    let mut out: Vec<Vec<Vec<f32>>> = scs.iter().map(|_| Vec::new()).collect();
    let mut scratch = Scratch::default();
    for step in 0.. {
        let mut feeds: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, sc) in scs.iter().enumerate() {
            let n_feeds = sc.prompt.len().div_ceil(sc.chunk) + sc.n_steps;
            if step < sc.start || out[i].len() == n_feeds {
                continue;
            }
            let toks = if fed[i] < sc.prompt.len() {
                let c = sc.prompt[fed[i]..].iter().take(sc.chunk).copied().collect::<Vec<_>>();
                fed[i] += c.len();
                c
            } else {
                vec![argmax(out[i].last().expect("logits"))]
            };
            feeds.push((i, toks));
        }
        if feeds.is_empty() {
            if scs.iter().all(|sc| step >= sc.start) {
                break;
            }
            continue;
        }
        // Feeds are in script order, so sessions are taken in the same order.
        let mut batch: Vec<(&mut Session, &[u32])> = sessions
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| feeds.iter().find(|(j, _)| *j == i).map(|(_, t)| (s, t.as_slice())))
            .collect();
        let logits = model.forward_multi(cpu, &mut batch, &mut scratch).expect("forward_multi");
        assert_eq!(logits.len(), feeds.len() * n_vocab);
        for (j, (i, _)) in feeds.iter().enumerate() {
            out[*i].push(logits[j * n_vocab..(j + 1) * n_vocab].to_vec());
        }
    }
    out
}

fn check(model: &Model, what: &str) {
    let cpu = Cpu::new(2);
    let scs = scripts(model.info.n_vocab);
    let want: Vec<_> = scs.iter().map(|sc| alone(model, &cpu, sc)).collect();
    let got = together(model, &cpu, &scs);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.len(), g.len(), "{what}: sequence {i}: feeds");
        for (k, (a, b)) in w.iter().zip(g).enumerate() {
            assert!(a == b, "{what}: sequence {i}, feed {k}: batched logits differ from the sequence alone");
        }
    }
}

#[test]
fn batched_sequences_get_their_logits_alone_bitwise() {
    for (dir, file) in MODELS {
        check(&load(&fixture(dir).join(file)), &format!("{dir}/{file}"));
    }
}

#[test]
fn batched_sequences_streamed_through_a_small_cache_bitwise() {
    for (dir, file) in MODELS.iter().filter(|(d, _)| !d.starts_with("llama")) {
        let index = WeightIndex::open(&fixture(dir).join(file)).expect("open");
        let opts = LoadOptions {
            progress: false,
            kv: Default::default(),
            experts: ExpertResidency::Stream(StreamOptions {
                budget: Budget::Bytes(u64::MAX / 4),
                n_ctx: N_CTX,
                n_threads: 2,
                io_threads: 2,
                io_engine: None,
                n_slots: Some(4),
                prefetch: Prefetch::Off,
            }),
        };
        let model = Model::load(&index, &opts).expect("load streamed");
        check(&model, &format!("{dir}/{file} streamed"));
    }
}

#[test]
fn a_step_reads_each_expert_once_for_every_sequence() {
    // Four sequences decoding together read no more expert bytes than the one that needs most would alone, per
    // step, when each step's experts fit the cache; here simply: fewer bytes than the four alone.
    let path = fixture("qwen3moe-h256").join("qwen3moe-h256-q4_k_m.gguf");
    let index = WeightIndex::open(&path).expect("open");
    let streamed = |n_slots| {
        let opts = LoadOptions {
            progress: false,
            kv: Default::default(),
            experts: ExpertResidency::Stream(StreamOptions {
                budget: Budget::Bytes(u64::MAX / 4),
                n_ctx: N_CTX,
                n_threads: 2,
                io_threads: 1,
                io_engine: None,
                n_slots: Some(n_slots),
                prefetch: Prefetch::Off,
            }),
        };
        Model::load(&index, &opts).expect("load streamed")
    };
    let cpu = Cpu::new(2);
    // A cache of one layer's experts: every step rereads what the previous layer evicted.
    let (alone_model, batch_model) = (streamed(4), streamed(4));
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(i, 6, alone_model.info.n_vocab)).collect();
    for p in &prompts {
        let mut s = alone_model.new_session(N_CTX);
        alone_model.forward(&cpu, &mut s, p, Logits::Last).expect("alone");
    }
    let mut sessions: Vec<Session> = prompts.iter().map(|_| batch_model.new_session(N_CTX)).collect();
    let mut batch: Vec<(&mut Session, &[u32])> =
        sessions.iter_mut().zip(&prompts).map(|(s, p)| (s, p.as_slice())).collect();
    batch_model.forward_multi(&cpu, &mut batch, &mut Scratch::default()).expect("together");
    let (a, b) = (alone_model.cache_stats().expect("stats"), batch_model.cache_stats().expect("stats"));
    assert!(b.bytes_read < a.bytes_read, "together read {} bytes, alone {}", b.bytes_read, a.bytes_read);
}

#[test]
fn refusals() {
    let model = load(&fixture("qwen3moe-h64").join("qwen3moe-h64-q8_0.gguf"));
    let cpu = Cpu::new(1);
    let mut s = model.new_session(4);
    let mut scratch = Scratch::default();
    assert!(model.forward_multi(&cpu, &mut [(&mut s, &[][..])], &mut scratch).is_err(), "no tokens");
    let mut s = model.new_session(4);
    assert!(model.forward_multi(&cpu, &mut [(&mut s, &[1, 2, 3, 4, 5][..])], &mut scratch).is_err(), "no room");
    assert!(model.forward_multi(&cpu, &mut [], &mut scratch).expect("empty batch").is_empty());
}
