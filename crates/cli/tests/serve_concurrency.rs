//! Several users at once: requests sent together are decoded together (the forward steps hold several
//! sequences), and each client's reply is identical to its reply when served alone, token for token; for a
//! KV-cache model, a DeltaNet hybrid, and the bundled model streaming its experts through a quarter-size cache.

mod common;

use common::server::*;
use serde_json::{json, Value};

/// Six different requests: prompts, sampling, seeds, lengths, both APIs, streamed or not.
fn requests() -> Vec<(&'static str, Value)> {
    let chat = |i: u64, temp: f64, n: u64, stream: bool| {
        json!({"messages": [{"role": "user", "content": format!("Client {i}: tell me about number {}", i * 13)}],
               "max_tokens": n, "temperature": temp, "seed": 100 + i, "stream": stream, "ignore_eos": true,
               "cache_prompt": false})
    };
    vec![
        ("/v1/chat/completions", chat(0, 0.0, 48, false)),
        ("/v1/chat/completions", chat(1, 0.8, 40, true)),
        ("/v1/chat/completions", chat(2, 1.2, 56, false)),
        (
            "/v1/completions",
            json!({"prompt": "def merge(a, b):", "max_tokens": 50, "temperature": 0.7, "seed": 7,
                                   "ignore_eos": true, "stream": true}),
        ),
        (
            "/v1/messages",
            json!({"messages": [{"role": "user", "content": "Client 4"}], "max_tokens": 44,
                                "temperature": 0.9, "seed": 9, "ignore_eos": true}),
        ),
        (
            "/v1/messages",
            json!({"system": "Be brief.", "messages": [{"role": "user", "content": "Client 5"}],
                                "max_tokens": 36, "temperature": 0.5, "seed": 11, "ignore_eos": true, "stream": true}),
        ),
    ]
}

/// The generated text of a reply, whatever its API and streaming.
fn text_of(r: &Response) -> String {
    assert_eq!(r.status, 200, "{r:?}");
    if r.headers.contains("text/event-stream") {
        return r
            .events()
            .iter()
            .map(|e| {
                let d = &e["choices"][0];
                let t = d["delta"]["content"].as_str().or(d["text"].as_str()).or(e["delta"]["text"].as_str());
                t.unwrap_or("").to_string()
            })
            .collect();
    }
    let v = r.json();
    let openai = v["choices"][0]["message"]["content"].as_str().or(v["choices"][0]["text"].as_str());
    openai
        .map(str::to_string)
        .unwrap_or_else(|| v["content"].as_array().into_iter().flatten().filter_map(|b| b["text"].as_str()).collect())
}

#[test]
fn each_client_gets_its_reply_alone_while_decoded_together() {
    let next = repo().join("tests/fixtures/qwen3next-h64/qwen3next-h64-q8_0.gguf").to_string_lossy().into_owned();
    let (fixture, qwen3) = (fixture_model(), template("Qwen-Qwen3-0.6B.jinja"));
    let setups: Vec<Vec<&str>> =
        vec![vec!["-m", &fixture, "--chat-template", &qwen3, "-c", "1024"], vec!["-m", &next, "-c", "1024"], vec![]];
    for args in setups {
        let mut all = args.clone();
        all.extend(["--parallel", "6", "--no-log"]);
        let s = Server::start(&all);
        let reqs = requests();
        let alone: Vec<String> = reqs.iter().map(|(p, b)| text_of(&s.post(p, b))).collect();
        let (steps0, seqs0) = (s.metric("forward_steps_total"), s.metric("forward_sequences_total"));
        let together: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = reqs.iter().map(|(p, b)| scope.spawn(|| text_of(&s.post(p, b)))).collect();
            handles.into_iter().map(|h| h.join().expect("client")).collect()
        });
        let mean = (s.metric("forward_sequences_total") - seqs0) / (s.metric("forward_steps_total") - steps0);
        eprintln!("{args:?}: {:.2} sequences per step on average while together", mean);
        assert!(mean > 1.5, "{args:?}: the requests were not decoded together (mean batch {mean:.2})");
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert!(!a.is_empty(), "{args:?}: client {i} got no text");
            assert_eq!(a, t, "{args:?}: client {i}'s reply differs when served with others");
        }
    }
}
