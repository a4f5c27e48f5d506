//! The model's output taken apart (engine::chat::OutputParser): text, reasoning and tool calls in every family's
//! syntax, the same whether the text arrives whole or a character at a time; and forced tool calls
//! (engine::chat::ForcedCall) that a real model run through the batcher writes in each syntax, parsed back into a
//! call whose arguments follow the tool's schema.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use engine::batch::{BatchConfig, Batcher, Finish, SeqRequest, SeqSink, SeqStats};
use engine::chat::{
    Chat, ChatFormat, Message, OutputParser, ParsedCall, Piece, ThinkSyntax, TokenTable, Tool, ToolSyntax,
};
use engine::formats::WeightIndex;
use engine::models::{LoadOptions, Model};
use engine::ops::Cpu;
use engine::sample::SamplerConfig;
use serde_json::{json, Map, Value};

fn tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "get_weather".into(),
            description: Some("The weather in a city".into()),
            parameters: json!({"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "alerts": {"type": "boolean"}}, "required": ["city", "unit", "days", "alerts"]}),
        },
        Tool {
            name: "get_time".into(),
            description: Some("The time".into()),
            parameters: json!({"type": "object", "properties": {}}),
        },
    ]
}

/// Pieces merged: consecutive text and consecutive reasoning joined.
fn merged(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    for p in pieces {
        match (out.last_mut(), p) {
            (Some(Piece::Content(a)), Piece::Content(b)) => a.push_str(&b),
            (Some(Piece::Reasoning(a)), Piece::Reasoning(b)) => a.push_str(&b),
            (_, p) => out.push(p),
        }
    }
    out
}

/// Parses `text` whole and one character at a time; both must agree.
fn parse(format: ChatFormat, thinking: bool, text: &str) -> Vec<Piece> {
    let mut whole = OutputParser::new(format, thinking, &tools());
    let mut a = whole.push(text);
    a.extend(whole.finish());
    let mut chars = OutputParser::new(format, thinking, &tools());
    let mut b = Vec::new();
    for c in text.chars() {
        b.extend(chars.push(&c.to_string()));
    }
    b.extend(chars.finish());
    let (a, b) = (merged(a), merged(b));
    assert_eq!(a, b, "whole vs char by char: {text:?}");
    a
}

fn fmt(tools: ToolSyntax, think: ThinkSyntax) -> ChatFormat {
    ChatFormat { tools, think }
}

fn call(name: &str, arguments: Value) -> Piece {
    Piece::ToolCall(ParsedCall { name: name.into(), arguments })
}

fn text(s: &str) -> Piece {
    Piece::Content(s.into())
}

#[test]
fn tool_calls_in_every_syntax() {
    let paris = json!({"city": "Paris", "days": 2});
    let cases: Vec<(ToolSyntax, &str)> = vec![
        (ToolSyntax::Hermes, "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>"),
        (ToolSyntax::QwenXml, "Checking.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>"),
        (ToolSyntax::Glm, "Checking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"),
        (ToolSyntax::DeepSeek, "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\", \"days\": 2}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
        (ToolSyntax::Kimi, "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\", \"days\": 2}<|tool_call_end|><|tool_calls_section_end|>"),
        (ToolSyntax::Mistral, "Checking.[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}, \"id\": \"abcdef123\"}]"),
    ];
    for (syntax, out) in cases {
        let got = parse(fmt(syntax, ThinkSyntax::None), false, out);
        assert_eq!(got, vec![text("Checking."), call("get_weather", paris.clone())], "{syntax:?}");
    }
    // XML values: a string where the schema says so, even when it looks like a number.
    let got = parse(
        fmt(ToolSyntax::QwenXml, ThinkSyntax::None),
        false,
        "<tool_call>\n<function=get_weather>\n<parameter=city>\n75001\n</parameter>\n<parameter=extra>\n{\"a\": [1]}\n</parameter>\n</function>\n</tool_call>",
    );
    assert_eq!(got, vec![call("get_weather", json!({"city": "75001", "extra": {"a": [1]}}))]);
    // Two calls, text after them.
    let two = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}\n</tool_call>\nDone.";
    let got = parse(fmt(ToolSyntax::Hermes, ThinkSyntax::None), false, two);
    assert_eq!(got, vec![call("get_time", json!({})), call("get_weather", json!({"city": "Oslo"})), text("Done.")]);
}

#[test]
fn harmony_channels() {
    let f = fmt(ToolSyntax::Harmony, ThinkSyntax::Harmony);
    let out = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
    let want = vec![Piece::Reasoning("Need the weather.".into()), call("get_weather", json!({"city": "Paris"}))];
    assert_eq!(parse(f, false, out), want);
    let forced_style = " to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}<|call|>";
    assert_eq!(parse(f, false, forced_style), vec![call("get_weather", json!({"city": "Paris"}))]);
    let answer =
        "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>Hello there.<|return|>";
    assert_eq!(parse(f, false, answer), vec![Piece::Reasoning("Easy.".into()), text("Hello there.")]);
    // Not harmony at all (a model that ignores the format): plain text, nothing lost.
    assert_eq!(parse(f, false, "just <b>text</b>"), vec![text("just <b>text</b>")]);
}

#[test]
fn reasoning_in_think_tags() {
    let f = fmt(ToolSyntax::Hermes, ThinkSyntax::Tags);
    let out = "<think>\nThe user greets.\n\n</think>\n\nHello!\n";
    assert_eq!(parse(f, false, out), vec![Piece::Reasoning("The user greets.".into()), text("Hello!\n")]);
    // Opened by the generation prompt.
    let out = "Short.\n</think>\n\nHi.<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    assert_eq!(parse(f, true, out), vec![Piece::Reasoning("Short.".into()), text("Hi."), call("get_time", json!({}))]);
    // Cut off while thinking.
    assert_eq!(parse(f, true, "Still thinking\n"), vec![Piece::Reasoning("Still thinking".into())]);
    // `<think>` later in the text is text.
    assert_eq!(parse(f, false, "A <think> tag"), vec![text("A <think> tag")]);
}

#[test]
fn text_that_is_not_a_call_is_kept() {
    let f = fmt(ToolSyntax::Hermes, ThinkSyntax::None);
    assert_eq!(
        parse(f, false, "a <tool_call>not json</tool_call> b"),
        vec![text("a <tool_call>not json</tool_call> b")]
    );
    assert_eq!(parse(f, false, "x < y and <tool"), vec![text("x < y and <tool")]);
    assert_eq!(parse(f, false, "open <tool_call>{\"name\""), vec![text("open <tool_call>{\"name\"")]);
    assert_eq!(parse(fmt(ToolSyntax::None, ThinkSyntax::None), false, "  plain\n"), vec![text("  plain\n")]);
}

#[derive(Default)]
struct Out {
    text: String,
    stats: Option<SeqStats>,
}

struct Collect(Arc<Mutex<Out>>);

impl SeqSink for Collect {
    fn text(&mut self, piece: &str) -> bool {
        self.0.lock().expect("lock").text.push_str(piece);
        true
    }
    fn done(&mut self, outcome: engine::Result<SeqStats>) {
        self.0.lock().expect("lock").stats = Some(outcome.expect("no error"));
    }
}

/// Checks `args` against get_weather's schema.
fn check_weather(args: &Value, what: &str) {
    let a: &Map<String, Value> = args.as_object().unwrap_or_else(|| panic!("{what}: arguments {args}"));
    let city = a["city"].as_str().unwrap_or_else(|| panic!("{what}: city {args}"));
    assert!(city.len() <= 12 && !city.contains('"'), "{what}: city {city:?}");
    assert!(["celsius", "fahrenheit"].contains(&a["unit"].as_str().unwrap_or("")), "{what}: unit {args}");
    assert!(a["days"].is_i64(), "{what}: days {args}");
    assert!(a["alerts"].is_boolean(), "{what}: alerts {args}");
}

#[test]
fn forced_calls_in_every_syntax_parse_back_within_the_schema() {
    let index = WeightIndex::open(&fixture("qwen3moe-h64").join("qwen3moe-h64-q8_0.gguf")).expect("open");
    let tok = engine::generate::load_tokenizer(&index).expect("tokenizer");
    let model = Model::load(&index, &LoadOptions::default()).expect("load");
    let table = Arc::new(TokenTable::new(&tok));
    let cpu = Cpu::new(2);
    let dir = fixture("chat-templates");
    let templates = [
        "Qwen-Qwen3-0.6B.jinja",
        "Qwen3-Coder.jinja",
        "Qwen3.5-4B.jinja",
        "GLM-4.7-Flash.jinja",
        "openai-gpt-oss-120b.jinja",
        "deepseek-ai-DeepSeek-V3.1.jinja",
        "moonshotai-Kimi-K2.jinja",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    ];
    for file in templates {
        let src = std::fs::read_to_string(dir.join(file)).expect("template");
        let chat = Chat::new(&tok, Some((&src, file))).expect("chat");
        let messages = [Message::new("user", "Weather in Paris?")];
        let prompt_text = chat.render(&messages, &tools(), &Map::new()).expect("render");
        let prompt = chat.tokens(&tok, &prompt_text).expect("tokens");
        for (seed, name) in [(1u64, Some("get_weather")), (2, None)] {
            let forced = chat.forced_call(&tok, table.clone(), &prompt_text, &tools(), name).expect("forced");
            let mut b = Batcher::new(
                &model,
                &tok,
                BatchConfig { n_ctx: prompt.len() + 400, n_seqs_max: 1, n_cached_max: 0, step_tokens_max: 64 },
            );
            let out = Arc::new(Mutex::new(Out::default()));
            let sampler = SamplerConfig { seed, ..SamplerConfig::default() };
            let req = SeqRequest {
                prompt: prompt.clone(),
                max_tokens: 300,
                sampler,
                stop: vec![],
                ignore_eos: false,
                reuse_prefix: false,
                constraint: Some(Box::new(forced)),
                // What the server keeps: the markers this template's parser reads.
                control_text: chat.control_text(),
            };
            b.admit(req, Box::new(Collect(out.clone()))).expect("admit");
            while !b.is_idle() {
                b.step(&cpu);
            }
            let o = out.lock().expect("lock");
            let what = format!("{file} ({name:?}): {:?}", o.text);
            assert_eq!(o.stats.as_ref().map(|s| s.finish), Some(Finish::Constraint), "{what}");
            let mut parser = chat.parser(&prompt_text, &tools());
            let mut pieces = parser.push(&o.text);
            pieces.extend(parser.finish());
            let calls: Vec<&ParsedCall> =
                pieces.iter().filter_map(|p| if let Piece::ToolCall(c) = p { Some(c) } else { None }).collect();
            assert_eq!(calls.len(), 1, "{what}: {pieces:?}");
            match calls[0].name.as_str() {
                "get_weather" => check_weather(&calls[0].arguments, &what),
                "get_time" => assert!(name.is_none() && calls[0].arguments == json!({}), "{what}"),
                other => panic!("{what}: called {other}"),
            }
        }
    }
}
