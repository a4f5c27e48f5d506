//! Chat templates come with the model file: a hostile one (loops that do not end, output that grows without end)
//! stops with an error naming the template, quickly, instead of hanging or eating the memory.

use std::time::{Duration, Instant};

use engine::tokenizer::{ChatMessage, ChatTemplate};

/// Renders `src` for a short conversation on a thread of its own; the error text, and how long it took. Fails
/// the test if it takes more than `secs`.
fn render_err(src: &str, secs: u64) -> (String, Duration) {
    let src = src.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let t = ChatTemplate::named(&src, "the chat template of evil.gguf").expect("compiles");
        let r = t.render(&[ChatMessage::new("user", "hi")], true, None, None);
        let _ = tx.send((r, t0.elapsed()));
    });
    let (r, took) = rx.recv_timeout(Duration::from_secs(secs)).expect("the render did not stop in time");
    (r.expect_err("the render must fail").to_string(), took)
}

#[test]
fn a_loop_that_does_not_end_runs_out_of_fuel() {
    let (msg, took) =
        render_err("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", 60);
    assert!(msg.contains("the chat template of evil.gguf") && msg.contains("template steps"), "{msg}");
    eprintln!("nested loops stopped after {took:?}: {msg}");
    let (msg, _) = render_err("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", 60);
    assert!(msg.contains("evil.gguf"), "{msg}");
}

#[test]
fn output_that_grows_without_end_is_cut() {
    // 100 MB per iteration (minijinja's cap for one repeated string), 10^5 iterations.
    let (msg, took) = render_err("{% for i in range(100000) %}{{ 'x' * 100000000 }}{% endfor %}", 60);
    assert!(msg.contains("evil.gguf") && msg.contains("the prompt passed"), "{msg}");
    eprintln!("growing output stopped after {took:?}: {msg}");
    let (msg, _) = render_err(
        "{% for i in range(100000) %}{% for m in messages %}{{ m.content * 1000 }}{% endfor %}{% endfor %}",
        60,
    );
    assert!(msg.contains("the prompt passed"), "{msg}");
}

#[test]
fn a_long_conversation_fits_the_limits() {
    let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}\
               {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let t = ChatTemplate::new(src).expect("compiles");
    let long = "word ".repeat(20_000);
    let messages: Vec<ChatMessage> =
        (0..5000).map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, long.clone())).collect();
    let out = t.render(&messages, true, None, None).expect("renders");
    assert!(out.len() > 5000 * 100_000);
}
