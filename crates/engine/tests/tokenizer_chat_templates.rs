//! Every chat template in `tests/fixtures/chat-templates/` renders a
//! system + user + assistant + user conversation; Qwen3's output is checked exactly against ChatML.

use std::path::PathBuf;

use engine::tokenizer::{ChatMessage, ChatTemplate};

/// The real chat templates kept in the repository (tests/fixtures/chat-templates, from llama.cpp's MIT-licensed
/// models/templates; see the NOTICE there).
fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat-templates")
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "Hello!"),
        ChatMessage::new("assistant", "Hi! How can I help?"),
        ChatMessage::new("user", "What is 2+2?"),
    ]
}

fn render(name: &str, add_generation_prompt: bool) -> String {
    let path = templates_dir().join(name);
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let template = ChatTemplate::new(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
    template
        .render(&conversation(), add_generation_prompt, Some("<s>"), Some("</s>"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_template_renders_the_conversation() {
    let mut names: Vec<String> = std::fs::read_dir(templates_dir())
        .expect("read tests/fixtures/chat-templates")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jinja"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no .jinja files in tests/fixtures/chat-templates");
    let mut failures = Vec::new();
    for name in &names {
        let path = templates_dir().join(name);
        let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rendered = ChatTemplate::new(&src).and_then(|t| t.render(&conversation(), true, Some("<s>"), Some("</s>")));
        match rendered {
            Ok(text) => {
                for m in conversation() {
                    if m.role != "system" && !text.contains(&m.content) {
                        failures.push(format!("{name}: output lacks {:?}:\n{text}", m.content));
                    }
                }
                if !text.contains("What is 2+2?") {
                    failures.push(format!("{name}: last user turn missing"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} templates failed:\n{}", failures.len(), names.len(), failures.join("\n"));
}

#[test]
fn qwen3_renders_chatml_exactly() {
    let expected = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
                    <|im_start|>user\nHello!<|im_end|>\n\
                    <|im_start|>assistant\nHi! How can I help?<|im_end|>\n\
                    <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
                    <|im_start|>assistant\n";
    assert_eq!(render("Qwen-Qwen3-0.6B.jinja", true), expected);
    let without_prompt = render("Qwen-Qwen3-0.6B.jinja", false);
    assert_eq!(without_prompt, expected.strip_suffix("<|im_start|>assistant\n").expect("suffix"));
}

#[test]
fn extra_variables_reach_the_template() {
    let path = templates_dir().join("Qwen-Qwen3-0.6B.jinja");
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let template = ChatTemplate::new(&src).expect("compiles");
    let messages = [ChatMessage::new("user", "hi")];
    let extra = serde_json::json!({"enable_thinking": false, "add_generation_prompt": false});
    let text = template.render_with(&messages, true, None, None, &extra).expect("renders");
    assert_eq!(text, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    assert!(template.render_with(&messages, true, None, None, &serde_json::json!([1])).is_err());
}

/// Every shared template renders a conversation of 2,000 messages within the fuel and output limits of one render.
#[test]
fn every_shared_template_renders_a_long_conversation_within_the_limits() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(templates_dir())
        .expect("read shared/chat-templates")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
        .collect();
    names.sort();
    let messages: Vec<ChatMessage> = (0..2000)
        .map(|i| {
            let role = match i {
                0 => "system",
                _ if i % 2 == 1 => "user",
                _ => "assistant",
            };
            ChatMessage::new(role, format!("message {i}: {}", "some words ".repeat(50)))
        })
        .collect();
    for path in names {
        let src = std::fs::read_to_string(&path).expect("read");
        let template = ChatTemplate::new(&src).expect("compiles");
        let out = template.render(&messages, true, Some("<s>"), Some("</s>"));
        let out = out.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(out.contains("message 1999"), "{}", path.display());
    }
}
