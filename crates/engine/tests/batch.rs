//! Continuous batching (`engine::batch::Batcher`): requests decoded together, joining at different steps, with
//! prompts cut into chunks, each give the text, tokens and stop reason of `generate` run alone; the prefix cache
//! continues a conversation from the kept state with outputs equal to a fresh run; a cancelled sequence ends
//! without disturbing the others.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use engine::batch::{BatchConfig, Batcher, Finish, SeqRequest, SeqSink, SeqStats};
use engine::formats::WeightIndex;
use engine::generate::{self, GenerateParams, StopReason};
use engine::models::{LoadOptions, Model};
use engine::ops::Cpu;
use engine::sample::SamplerConfig;
use engine::tokenizer::{ControlText, Tokenizer};

const N_CTX: usize = 96;

fn open(dir: &str, file: &str) -> (Model, Tokenizer) {
    let index = WeightIndex::open(&fixture(dir).join(file)).expect("open");
    let tokenizer = generate::load_tokenizer(&index).expect("tokenizer");
    (Model::load(&index, &LoadOptions::default()).expect("load"), tokenizer)
}

#[derive(Default)]
struct Out {
    text: String,
    stats: Option<SeqStats>,
    error: Option<String>,
}

/// Collects a sequence's text; cancels after `cancel_after` pieces when set.
struct Collect {
    out: Arc<Mutex<Out>>,
    pieces: usize,
    cancel_after: Option<usize>,
}

impl SeqSink for Collect {
    fn text(&mut self, piece: &str) -> bool {
        self.out.lock().expect("lock").text.push_str(piece);
        self.pieces += 1;
        true
    }
    fn done(&mut self, outcome: engine::Result<SeqStats>) {
        let mut o = self.out.lock().expect("lock");
        match outcome {
            Ok(s) => o.stats = Some(s),
            Err(e) => o.error = Some(e.to_string()),
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.pieces >= n)
    }
}

struct Case {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampler: SamplerConfig,
    stop: Vec<String>,
    /// The step before which it joins.
    join: usize,
}

fn cases(n_vocab: usize) -> Vec<Case> {
    let p = |seed: u32, len: u32| (0..len).map(|i| (i * 31 + seed * 7 + 3) % n_vocab as u32).collect::<Vec<_>>();
    let sampled = |seed| SamplerConfig { seed, repeat_penalty: 1.1, presence_penalty: 0.2, ..SamplerConfig::default() };
    vec![
        Case { prompt: p(1, 13), max_tokens: 20, sampler: SamplerConfig::greedy(), stop: vec![], join: 0 },
        Case { prompt: p(2, 3), max_tokens: 14, sampler: sampled(7), stop: vec![], join: 0 },
        Case { prompt: p(3, 40), max_tokens: 9, sampler: sampled(8), stop: vec![], join: 1 },
        Case { prompt: p(4, 1), max_tokens: 25, sampler: sampled(9), stop: vec!["e".into()], join: 3 },
        Case { prompt: p(5, 7), max_tokens: 0, sampler: SamplerConfig::greedy(), stop: vec![], join: 4 },
        Case { prompt: p(6, 90), max_tokens: 30, sampler: SamplerConfig::greedy(), stop: vec![], join: 4 },
    ]
}

fn alone(model: &Model, tok: &Tokenizer, c: &Case) -> (String, generate::GenerateStats) {
    let cpu = Cpu::new(2);
    let mut s = model.new_session(N_CTX);
    let params = GenerateParams {
        n_predict: c.max_tokens,
        sampler: c.sampler,
        ignore_eos: false,
        stop: c.stop.clone(),
        interrupt: None,
        control_text: ControlText::Hidden,
    };
    let mut text = String::new();
    let st = generate::generate(model, &cpu, tok, &mut s, &c.prompt, &params, &mut |t| text.push_str(t)).expect("gen");
    (text, st)
}

fn same_reason(a: StopReason, b: Finish) -> bool {
    matches!(
        (a, b),
        (StopReason::Length, Finish::Length)
            | (StopReason::EndOfGeneration, Finish::EndOfGeneration)
            | (StopReason::StopString, Finish::StopString)
            | (StopReason::ContextFull, Finish::ContextFull)
    )
}

fn request(c: &Case, reuse: bool) -> SeqRequest {
    SeqRequest {
        prompt: c.prompt.clone(),
        max_tokens: c.max_tokens,
        sampler: c.sampler,
        stop: c.stop.clone(),
        ignore_eos: false,
        reuse_prefix: reuse,
        constraint: None,
        control_text: ControlText::Hidden,
    }
}

fn sink(out: &Arc<Mutex<Out>>, cancel_after: Option<usize>) -> Box<dyn SeqSink> {
    Box::new(Collect { out: out.clone(), pieces: 0, cancel_after })
}

fn config(step_tokens_max: usize) -> BatchConfig {
    BatchConfig { n_ctx: N_CTX, n_seqs_max: 6, n_cached_max: 4, step_tokens_max }
}

#[test]
fn requests_decoded_together_equal_each_alone() {
    for (dir, file) in [("qwen3moe-h64", "qwen3moe-h64-q8_0.gguf"), ("qwen3next-h64", "qwen3next-h64-q8_0.gguf")] {
        let (model, tok) = open(dir, file);
        let cs = cases(model.info.n_vocab);
        let want: Vec<_> = cs.iter().map(|c| alone(&model, &tok, c)).collect();
        assert!(want.iter().filter(|(_, st)| st.n_generated >= 8).count() >= 3, "{dir}: the cases generate");
        for step_tokens_max in [6, 64] {
            let cpu = Cpu::new(2);
            let mut b = Batcher::new(&model, &tok, config(step_tokens_max));
            let outs: Vec<_> = cs.iter().map(|_| Arc::new(Mutex::new(Out::default()))).collect();
            for step in 0.. {
                for (c, o) in cs.iter().zip(&outs).filter(|(c, _)| c.join == step) {
                    b.admit(request(c, false), sink(o, None)).expect("admit");
                }
                if b.is_idle() && cs.iter().all(|c| c.join <= step) {
                    break;
                }
                b.step(&cpu);
            }
            assert!(b.counters().seqs_in_steps > b.counters().steps, "{dir}: sequences shared steps");
            for (i, ((text, st), o)) in want.iter().zip(&outs).enumerate() {
                let o = o.lock().expect("lock");
                let got = o.stats.as_ref().unwrap_or_else(|| panic!("{dir} case {i}: {:?}", o.error));
                assert_eq!(&got.tokens, &st.tokens, "{dir} case {i} (step {step_tokens_max}): tokens");
                assert_eq!(&o.text, text, "{dir} case {i}: text");
                assert!(same_reason(st.stop, got.finish), "{dir} case {i}: {:?} vs {:?}", st.stop, got.finish);
            }
        }
    }
}

/// Runs one request alone through a batcher and returns (text, stats).
fn run(b: &mut Batcher<'_>, cpu: &Cpu, c: &Case, reuse: bool) -> (String, SeqStats) {
    let out = Arc::new(Mutex::new(Out::default()));
    b.admit(request(c, reuse), sink(&out, None)).expect("admit");
    while !b.is_idle() {
        b.step(cpu);
    }
    let o = out.lock().expect("lock");
    (o.text.clone(), o.stats.clone().expect("stats"))
}

#[test]
fn a_conversation_continues_from_the_kept_state_with_fresh_outputs() {
    for (dir, file) in [("qwen3moe-h64", "qwen3moe-h64-q8_0.gguf"), ("qwen3next-h64", "qwen3next-h64-q8_0.gguf")] {
        let (model, tok) = open(dir, file);
        let cpu = Cpu::new(2);
        let n_vocab = model.info.n_vocab as u32;
        let mut b = Batcher::new(&model, &tok, config(64));
        let mut fresh = Batcher::new(&model, &tok, config(64));
        let mut prompt: Vec<u32> = (0..9).map(|i| (i * 13 + 5) % n_vocab).collect();
        let mut first_turn = Vec::new();
        for turn in 0..4u32 {
            let c =
                Case { prompt: prompt.clone(), max_tokens: 6, sampler: SamplerConfig::greedy(), stop: vec![], join: 0 };
            let (text, st) = run(&mut b, &cpu, &c, true);
            let (want_text, want) = run(&mut fresh, &cpu, &c, false);
            assert_eq!((&text, &st.tokens), (&want_text, &want.tokens), "{dir} turn {turn}");
            if turn > 0 {
                assert!(st.n_prompt_reused > 0 && st.n_prompt_reused < prompt.len(), "{dir} turn {turn}: reuse");
            }
            if turn == 0 {
                first_turn = prompt.clone();
            }
            // The next turn: this turn's prompt and reply, then new tokens.
            prompt.extend_from_slice(&st.tokens);
            prompt.extend((0..5).map(|i| (i * 17 + turn * 3 + 1) % n_vocab));
        }
        // An edited conversation: only its first tokens are shared; a KV model reuses them, a DeltaNet model
        // rewinds to its latest checkpoint at or before them (here none: it starts over), and the output is fresh.
        let mut edited = first_turn[..4].to_vec();
        edited.extend([7, 8, 9]);
        let c = Case { prompt: edited, max_tokens: 6, sampler: SamplerConfig::greedy(), stop: vec![], join: 0 };
        let (text, st) = run(&mut b, &cpu, &c, true);
        let (want_text, want) = run(&mut fresh, &cpu, &c, false);
        assert_eq!((&text, &st.tokens), (&want_text, &want.tokens), "{dir}: edited conversation");
        let rewinds_anywhere = model.new_session(1).rewinds_anywhere();
        assert_eq!(st.n_prompt_reused, if rewinds_anywhere { 4 } else { 0 }, "{dir}: edited conversation reuse");
    }
}

#[test]
fn a_cancelled_sequence_ends_and_the_others_do_not_notice() {
    let (model, tok) = open("qwen3moe-h64", "qwen3moe-h64-q8_0.gguf");
    let cs = cases(model.info.n_vocab);
    let want = alone(&model, &tok, &cs[0]);
    let cpu = Cpu::new(2);
    let mut b = Batcher::new(&model, &tok, config(64));
    let (keep, cancel) = (Arc::new(Mutex::new(Out::default())), Arc::new(Mutex::new(Out::default())));
    b.admit(request(&cs[0], true), sink(&keep, None)).expect("admit");
    b.admit(request(&cs[5], true), sink(&cancel, Some(2))).expect("admit");
    while !b.is_idle() {
        b.step(&cpu);
    }
    let c = cancel.lock().expect("lock");
    assert_eq!(c.stats.as_ref().map(|s| s.finish), Some(Finish::Cancelled));
    assert_eq!(keep.lock().expect("lock").text, want.0);
    assert_eq!(b.prefix_cache().len(), 2, "a cancelled sequence's state is kept too");
}

#[test]
fn admission_refusals() {
    let (model, tok) = open("qwen3moe-h64", "qwen3moe-h64-q8_0.gguf");
    let mut b =
        Batcher::new(&model, &tok, BatchConfig { n_ctx: 8, n_seqs_max: 1, n_cached_max: 0, step_tokens_max: 8 });
    let out = Arc::new(Mutex::new(Out::default()));
    let c = |prompt: Vec<u32>| Case { prompt, max_tokens: 1, sampler: SamplerConfig::greedy(), stop: vec![], join: 0 };
    assert!(b.admit(request(&c(vec![]), true), sink(&out, None)).is_err(), "empty");
    assert!(b.admit(request(&c(vec![1; 9]), true), sink(&out, None)).is_err(), "too long");
    assert!(b.admit(request(&c(vec![100_000]), true), sink(&out, None)).is_err(), "out of the vocabulary");
    b.admit(request(&c(vec![1; 8]), true), sink(&out, None)).expect("fits exactly");
    assert!(b.admit(request(&c(vec![1]), true), sink(&out, None)).is_err(), "full");
}
