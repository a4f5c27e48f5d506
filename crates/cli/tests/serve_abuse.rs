//! The server under abuse: malformed JSON, wrong types, unknown fields, empty and oversized requests (a 100 MB
//! body, declared or streamed), invalid UTF-8, bad methods and paths, missing keys, 100 connections at once,
//! clients that vanish mid-stream, a reader that stalls. Each gets a clear error or a complete answer; afterwards
//! the server is up, answers /health and a normal request, and its peak resident memory stayed within the
//! memory budget.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::server::*;
use serde_json::{json, Value};

const KEY: &str = "abuse-key";
const BUDGET_MIB: u64 = 400;

fn start() -> Server {
    let budget = format!("{BUDGET_MIB}MiB");
    Server::start(&["--memory-budget", &budget, "--api-key", KEY, "--parallel", "4", "--queue", "8"])
}

fn auth() -> [(&'static str, &'static str); 2] {
    [("Authorization", "Bearer abuse-key"), ("Content-Type", "application/json")]
}

fn post_raw(s: &Server, path: &str, body: &[u8]) -> Response {
    http(&s.addr, "POST", path, &auth(), body).expect("request")
}

fn chat(max_tokens: u64, stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "def parse(argv):"}], "max_tokens": max_tokens, "stream": stream,
           "temperature": 0})
}

/// A 4xx with a JSON error body whose message contains `needle`.
#[track_caller]
fn assert_error(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let v = r.json();
    let msg = v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error message: {v}"));
    assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
}

#[test]
fn abuse_leaves_the_server_up_and_within_its_budget() {
    let mut s = start();
    bad_requests(&s);
    oversized(&s);
    concurrent(&s);
    vanishing_clients(&s);
    stalled_reader(&s);
    // Still up, still right.
    assert!(s.alive(), "the server died:\n{}", s.log());
    assert_eq!(s.get("/health").status, 200);
    let r = post_raw(&s, "/v1/chat/completions", chat(8, false).to_string().as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0);
    wait_idle(&s);
    let (rss, peak) = s.rss();
    eprintln!("resident {} MiB now, {} MiB at peak; budget {BUDGET_MIB} MiB", rss >> 20, peak >> 20);
    assert!(peak <= BUDGET_MIB << 20, "peak resident memory {} MiB beyond the budget", peak >> 20);
}

/// Waits until no request is in flight (queued or decoding); fails after 60 s.
fn wait_idle(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.metric("requests_in_flight") > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.metric("requests_in_flight"), 0.0, "requests left in flight:\n{}", s.get("/metrics").body);
}

fn bad_requests(s: &Server) {
    let p = "/v1/chat/completions";
    assert_error(&post_raw(s, p, b"{\"messages\": ["), 400, "not valid JSON");
    assert_error(&post_raw(s, p, b""), 400, "empty");
    assert_error(&post_raw(s, p, b"[1, 2]"), 400, "JSON object");
    assert_error(&post_raw(s, p, b"null"), 400, "JSON object");
    assert_error(&post_raw(s, p, br#"{"messages": "hi"}"#), 400, "messages");
    assert_error(&post_raw(s, p, br#"{"messages": []}"#), 400, "messages");
    assert_error(&post_raw(s, p, br#"{"messages": [{"role": "user", "content": 5}]}"#), 400, "messages[0].content");
    assert_error(&post_raw(s, p, br#"{"messages": [{"role": "wizard", "content": "x"}]}"#), 400, "role");
    assert_error(&post_raw(s, p, br#"{"messages": [{"content": "x"}]}"#), 400, "messages[0].role");
    let m = r#""messages": [{"role": "user", "content": "x"}]"#;
    for (field, needle) in [
        (r#""max_tokens": "ten""#, "max_tokens"),
        (r#""max_tokens": 0"#, "max_tokens"),
        (r#""max_tokens": 1000000000000"#, "max_tokens"),
        (r#""max_tokens": 2.5"#, "max_tokens"),
        (r#""temperature": "hot""#, "temperature"),
        (r#""temperature": -1"#, "temperature"),
        (r#""top_p": 7"#, "top_p"),
        (r#""stop": [1, 2]"#, "stop[0]"),
        (r#""stream": "yes""#, "stream"),
        (r#""n": 3"#, "n"),
        (r#""tools": [{"type": "function", "function": {}}]"#, "tools[0].function.name"),
        (r#""tool_choice": "sometimes""#, "tool_choice"),
        (r#""tool_choice": {"type": "function", "function": {"name": "nope"}}"#, "tool_choice"),
        (r#""seed": "x""#, "seed"),
    ] {
        assert_error(&post_raw(s, p, format!("{{{m}, {field}}}").as_bytes()), 400, needle);
    }
    // Unknown fields are ignored: a complete answer.
    let r =
        post_raw(s, p, format!("{{{m}, \"frobnicate\": {{\"a\": 1}}, \"user\": \"u\", \"max_tokens\": 3}}").as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    // Invalid UTF-8 inside a string.
    let mut body = br#"{"messages": [{"role": "user", "content": "ab"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0x80]);
    body.extend_from_slice(br#""}], "max_tokens": 2}"#);
    assert_error(&post_raw(s, p, &body), 400, "not valid JSON");
    // The prompt against the context, too many messages.
    let long = "word ".repeat(20_000);
    assert_error(&s_post(s, p, &json!({"messages": [{"role": "user", "content": long}]})), 400, "context");
    let many: Vec<Value> = (0..5000).map(|_| json!({"role": "user", "content": "x"})).collect();
    assert_error(&s_post(s, p, &json!({"messages": many})), 400, "messages");
    // Anthropic's shape of errors.
    let r = post_raw(s, "/v1/messages", br#"{"messages": [{"role": "user", "content": "x"}]}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("max_tokens")), "{r:?}");
    // Keys, methods, paths.
    let no_key = http(&s.addr, "POST", p, &[], chat(2, false).to_string().as_bytes()).expect("request");
    assert_error(&no_key, 401, "API key");
    let wrong = http(&s.addr, "GET", "/v1/models", &[("x-api-key", "nope")], b"").expect("request");
    assert_eq!(wrong.status, 401);
    assert_eq!(http(&s.addr, "GET", "/health", &[], b"").expect("request").status, 200);
    assert_eq!(http(&s.addr, "GET", p, &auth(), b"").expect("request").status, 405);
    assert_eq!(http(&s.addr, "GET", "/v2/nothing", &auth(), b"").expect("request").status, 404);
}

fn s_post(s: &Server, path: &str, v: &Value) -> Response {
    post_raw(s, path, v.to_string().as_bytes())
}

/// A 100 MB body, declared: refused from its Content-Length before it is read; streamed in chunks without a
/// length: refused once past the limit.
fn oversized(s: &Server) {
    let t0 = Instant::now();
    let mut c = connect(&s.addr).expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100000000\r\n\r\n"
    );
    c.write_all(head.as_bytes()).expect("write");
    let _ = c.write_all(&vec![b' '; 1 << 20]);
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let r = parse_response(&raw);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "the refusal took {:?}", t0.elapsed());
    let mut c = connect(&s.addr).expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    c.write_all(head.as_bytes()).expect("write");
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, " ".repeat(1 << 20));
    for _ in 0..100 {
        if c.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    assert_eq!(parse_response(&raw).status, 413);
}

/// 100 connections at once, each a small request: every one gets an answer or a clear 429 (busy).
fn concurrent(s: &Server) {
    let addr = s.addr.clone();
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = json!({"messages": [{"role": "user", "content": format!("request {i}")}], "max_tokens": 8,
                                  "stream": i % 2 == 0});
                http(&addr, "POST", "/v1/chat/completions", &auth(), body.to_string().as_bytes())
            })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for t in threads {
        let r = t.join().expect("thread").expect("response");
        match r.status {
            200 if r.headers.contains("text/event-stream") => assert!(r.body.ends_with("data: [DONE]\n\n"), "{r:?}"),
            200 => assert!(r.json()["choices"][0]["finish_reason"].is_string(), "{r:?}"),
            429 => assert!(r.json()["error"]["message"].as_str().is_some_and(|m| m.contains("busy"))),
            _ => panic!("{r:?}"),
        }
        *by_status.entry(r.status).or_insert(0) += 1;
    }
    eprintln!("100 connections at once: {by_status:?}");
    assert!(by_status.get(&200).is_some_and(|&n| n >= 4), "{by_status:?}");
    wait_idle(s);
}

/// Clients that go away (streams after a little reading, whole answers before it comes): their sequences stop.
fn vanishing_clients(s: &Server) {
    let before = s.metric("generated_tokens_total");
    for i in 0..12 {
        let mut c = connect(&s.addr).expect("connect");
        // Streamed and not: a client waiting for a whole answer that goes away cancels it too.
        let body = chat(100_000, i % 2 == 0).to_string();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).expect("write");
        c.write_all(body.as_bytes()).expect("write");
        if i % 2 == 0 {
            let mut buf = [0u8; 300];
            let _ = c.read(&mut buf);
        } else {
            // Nothing comes before the whole answer: give the engine time to start it.
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(c);
    }
    wait_idle(s);
    let generated = s.metric("generated_tokens_total") - before;
    eprintln!("12 vanished clients generated {generated} tokens");
    // Each stops within a few tokens of its client's going away, never running to its length (about 500 each).
    assert!(generated < 12.0 * 100.0, "{generated} tokens for 12 vanished clients");
}

/// A client that stalls mid-stream (reads nothing for a while) gets its whole answer in the end, and others are
/// served meanwhile.
fn stalled_reader(s: &Server) {
    let mut c = connect(&s.addr).expect("connect");
    let body = json!({"messages": [{"role": "user", "content": "stall"}], "max_tokens": 200, "stream": true,
                      "temperature": 0, "ignore": "x"})
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).expect("write");
    c.write_all(body.as_bytes()).expect("write");
    let mut first = [0u8; 64];
    let n = c.read(&mut first).expect("read");
    // Stalled: nothing read while another request is served.
    let t0 = Instant::now();
    let other = post_raw(s, "/v1/chat/completions", chat(8, false).to_string().as_bytes());
    assert_eq!(other.status, 200, "{other:?}\n{}", s.log());
    eprintln!("another request answered in {:?} while a reader stalled", t0.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    // Then slowly, in small reads.
    let mut raw = first[..n].to_vec();
    let mut buf = [0u8; 512];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => raw.extend_from_slice(&buf[..k]),
            Err(e) => panic!("reading: {e}"),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = parse_response(&raw);
    assert!(r.body.ends_with("data: [DONE]\n\n"), "incomplete stream: {r:?}");
    let last = r.events().into_iter().rev().find(|e| e["choices"][0]["finish_reason"].is_string()).expect("a finish");
    assert!(["stop", "length"].contains(&last["choices"][0]["finish_reason"].as_str().unwrap_or("")));
}

/// A client that goes away while its reply streams must never kill the server: a write to a socket the peer has
/// closed raises SIGPIPE, whose default action ends the process silently (the CLI's other commands take that default
/// so that `flash-moe inspect M | head` ends quietly; the server must keep it ignored). Seen as a server that
/// vanished without a word in about one run in ten of the Python client tests' cancelled stream.
#[test]
fn the_server_ignores_sigpipe() {
    let s = start();
    let ignored = u64::from_str_radix(&s.status_line("SigIgn"), 16).expect("SigIgn is a hex mask");
    assert!(ignored & (1 << (libc::SIGPIPE - 1)) != 0, "SIGPIPE is not ignored (SigIgn {ignored:#x}):\n{}", s.log());
}
