//! Multi-turn reuse through the server: each turn of a conversation continues from the state the previous turn
//! left (`cache_prompt`, on by default), computing only its new tokens, and every turn's reply equals a fresh run
//! over the whole conversation (`cache_prompt: false`); for a KV-cache model and a DeltaNet hybrid (whose recurrent
//! state rewinds to the checkpoint at the end of the previous prompt or reply).

mod common;

use common::server::*;
use serde_json::{json, Value};

fn turn(s: &Server, messages: &[Value], reuse: bool) -> Value {
    let r = s.post(
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 12, "temperature": 0, "cache_prompt": reuse}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[test]
fn every_turn_reuses_the_conversation_and_equals_a_fresh_run() {
    let next = repo().join("tests/fixtures/qwen3next-h64/qwen3next-h64-q8_0.gguf").to_string_lossy().into_owned();
    let setups = [
        (fixture_model(), template("Qwen-Qwen3-0.6B.jinja")),
        (next, template("Qwen3-Coder.jinja")),
        (fixture_model(), template("openai-gpt-oss-120b.jinja")),
    ];
    for (model, tpl) in setups {
        let s = Server::start(&["-m", &model, "--chat-template", &tpl, "-c", "4096", "--no-log"]);
        let mut messages = vec![json!({"role": "system", "content": "Answer briefly."})];
        let mut prev_prompt = 0;
        for t in 0..8 {
            messages.push(json!({"role": "user", "content": format!("Question {t}: what comes after {}?", t * 7)}));
            let reused = turn(&s, &messages, true);
            let fresh = turn(&s, &messages, false);
            let what = format!("{model} with {tpl}, turn {t}");
            assert_eq!(reused["choices"][0]["message"], fresh["choices"][0]["message"], "{what}");
            assert_eq!(reused["choices"][0]["finish_reason"], fresh["choices"][0]["finish_reason"], "{what}");
            let cached = reused["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
            let prompt = reused["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
            assert_eq!(fresh["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "{what}");
            if t > 0 {
                // At least the whole previous prompt came from the kept state.
                assert!(
                    cached >= prev_prompt && cached < prompt,
                    "{what}: {cached} cached of {prompt} (previous {prev_prompt})"
                );
                assert_eq!(reused["timings"]["prompt_n"].as_u64(), Some(prompt - cached), "{what}");
            }
            prev_prompt = prompt;
            let content = reused["choices"][0]["message"]["content"].as_str().unwrap_or("").to_string();
            messages.push(json!({"role": "assistant", "content": content}));
        }
    }
}
