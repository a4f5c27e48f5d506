//! The Anthropic Messages API: `POST /v1/messages` (content blocks: text, tool_use, tool_result, thinking;
//! streamed as message_start, content_block_start/delta/stop per block, message_delta, message_stop) and
//! `POST /v1/messages/count_tokens`.

use std::sync::Arc;

use engine::chat::{Message, Piece, Tool, ToolCall};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, Flavor};
use crate::generation::{ending, render_chat, App, Ending, Generation, Out, Prepared};
use crate::http::{Reply, Sse};
use crate::openai::function;
use crate::params::{new_id, type_name, Fields, Sampling};

/// What a messages request renders into a prompt.
struct Conversation {
    messages: Vec<Message>,
    tools: Vec<Tool>,
    /// `tool_choice`: `None` for auto; `Some(None)` any tool; `Some(Some(name))` that one. `none` drops the tools.
    forced: Option<Option<String>>,
    vars: Map<String, Value>,
}

fn conversation(app: &App, f: &Fields<'_>) -> Result<Conversation, ApiError> {
    let limits = &app.cfg.limits;
    let raw = f.require("messages", f.array("messages"))?;
    if raw.is_empty() {
        return Err(ApiError::field("messages", "must not be empty"));
    }
    if raw.len() > limits.messages_max {
        return Err(ApiError::field("messages", format!("{} messages; at most {}", raw.len(), limits.messages_max)));
    }
    let mut messages = Vec::new();
    match f.get("system") {
        None => {}
        Some(Value::String(s)) => messages.push(Message::new("system", s.clone())),
        Some(Value::Array(blocks)) => messages.push(Message::new("system", text_blocks(blocks, "system")?)),
        Some(v) => {
            return Err(ApiError::field("system", format!("expected a string or text blocks, got {}", type_name(v))))
        }
    }
    for (i, m) in raw.iter().enumerate() {
        message(i, m, &mut messages)?;
    }
    let mut tools = Vec::new();
    let list = f.array("tools")?.map_or(&[][..], Vec::as_slice);
    if list.len() > limits.tools_max {
        return Err(ApiError::field("tools", format!("{} tools; at most {}", list.len(), limits.tools_max)));
    }
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}].");
        let tf = Fields::of(t, &path, &format!("tools[{i}]"))?;
        if let Some(ty) = tf.str("type")?.filter(|t| *t != "custom") {
            return Err(ApiError::field(&format!("{path}type"), format!("'{ty}' tools are not supported (custom)")));
        }
        tools.push(function(tf.map, &path, "input_schema")?);
    }
    let mut forced = None;
    if let Some(tc) = f.object("tool_choice")? {
        match tc.get("type").and_then(Value::as_str) {
            Some("auto") | None => {}
            Some("any") => forced = Some(None),
            Some("tool") => match tc.get("name").and_then(Value::as_str) {
                Some(n) => forced = Some(Some(n.to_string())),
                None => return Err(ApiError::field("tool_choice.name", "is required with type 'tool'")),
            },
            Some("none") => tools.clear(),
            Some(other) => {
                return Err(ApiError::field("tool_choice.type", format!("'{other}' is not auto, any, tool or none")))
            }
        }
    }
    let mut vars = Map::new();
    if let Some(t) = f.object("thinking")? {
        match t.get("type").and_then(Value::as_str) {
            Some("enabled") | Some("adaptive") => {
                vars.insert("enable_thinking".into(), json!(true));
            }
            Some("disabled") => {
                vars.insert("enable_thinking".into(), json!(false));
            }
            _ => return Err(ApiError::field("thinking.type", "expected 'enabled' or 'disabled'")),
        }
    }
    Ok(Conversation { messages, tools, forced, vars })
}

/// The text of text blocks, joined by newlines.
fn text_blocks(blocks: &[Value], path: &str) -> Result<String, ApiError> {
    let mut texts = Vec::new();
    for (k, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}[{k}].");
        let bf = Fields::of(b, &bpath, &format!("{path}[{k}]"))?;
        match bf.str("type")? {
            Some("text") => texts.push(bf.require("text", bf.str("text"))?.to_string()),
            Some(t) => {
                return Err(ApiError::field(&format!("{bpath}type"), format!("'{t}' blocks are not supported here")))
            }
            None => return Err(ApiError::field(&format!("{bpath}type"), "is required")),
        }
    }
    Ok(texts.join("\n"))
}

/// One Anthropic message: a user turn's tool results become tool messages (before its text); an assistant
/// turn's tool_use blocks become tool calls and its thinking its reasoning.
fn message(i: usize, v: &Value, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let path = format!("messages[{i}].");
    let f = Fields::of(v, &path, &format!("messages[{i}]"))?;
    let role = f.require("role", f.str("role"))?;
    if role != "user" && role != "assistant" {
        return Err(ApiError::field(&format!("{path}role"), format!("'{role}' is not user or assistant")));
    }
    let blocks = match f.get("content") {
        Some(Value::String(s)) => {
            out.push(Message::new(role, s.clone()));
            return Ok(());
        }
        Some(Value::Array(b)) => b,
        None => return Err(ApiError::field(&format!("{path}content"), "is required")),
        Some(v) => {
            return Err(ApiError::field(
                &format!("{path}content"),
                format!("expected a string or blocks, got {}", type_name(v)),
            ))
        }
    };
    let mut m = Message::new(role, "");
    let mut texts = Vec::new();
    for (k, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}content[{k}].");
        let bf = Fields::of(b, &bpath, &format!("{path}content[{k}]"))?;
        match (role, bf.require("type", bf.str("type"))?) {
            (_, "text") => texts.push(bf.require("text", bf.str("text"))?.to_string()),
            ("assistant", "thinking") => m.reasoning = Some(bf.str("thinking")?.unwrap_or("").to_string()),
            ("assistant", "redacted_thinking") => {}
            ("assistant", "tool_use") => m.tool_calls.push(ToolCall {
                id: bf.str("id")?.unwrap_or("").to_string(),
                name: bf.require("name", bf.str("name"))?.to_string(),
                arguments: bf.get("input").cloned().unwrap_or_else(|| json!({})),
            }),
            ("user", "tool_result") => {
                let content = match bf.get("content") {
                    None => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(c)) => text_blocks(c, &format!("{bpath}content"))?,
                    Some(v) => {
                        return Err(ApiError::field(
                            &format!("{bpath}content"),
                            format!("expected a string or text blocks, got {}", type_name(v)),
                        ))
                    }
                };
                let mut t = Message::new("tool", content);
                t.tool_call_id = bf.str("tool_use_id")?.map(str::to_string);
                out.push(t);
            }
            (_, t) => {
                return Err(ApiError::field(
                    &format!("{bpath}type"),
                    format!("'{t}' blocks are not supported in {role} messages"),
                ))
            }
        }
    }
    m.content = texts.join("\n");
    if role == "assistant" || !m.content.is_empty() || out.last().is_none_or(|l| l.role != "tool") {
        out.push(m);
    }
    Ok(())
}

/// `POST /v1/messages`.
pub async fn messages(app: &Arc<App>, body: &Value) -> Result<Reply, ApiError> {
    let f = Fields::of(body, "", "the request body")?;
    let limits = &app.cfg.limits;
    let max_tokens = f.require("max_tokens", f.max_tokens(&["max_tokens"], limits))?;
    let conv = conversation(app, &f)?;
    let (text, prompt) = render_chat(app, conv.messages, conv.tools.clone(), conv.vars).await?;
    let forced = match &conv.forced {
        Some(name) => {
            let fc = app.chat.forced_call(&app.rt.tokenizer, app.table.clone(), &text, &conv.tools, name.as_deref());
            Some(fc.map_err(|e| ApiError::field("tool_choice", e))?)
        }
        None => None,
    };
    let prepared = Prepared {
        prompt,
        max_tokens,
        sampler: Sampling::read(&f, 1.0)?.config(&app.recommended),
        stop: f.stop("stop_sequences", limits)?,
        reuse: f.bool("cache_prompt")?.unwrap_or(true),
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        parser: Some(app.chat.parser(&text, &conv.tools)),
        forced,
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let gen = app.submit(prepared)?;
    let id = new_id("msg_");
    if stream {
        let (sse, reply) = Sse::new();
        tokio::spawn(stream_message(gen, sse, id, app.cfg.model_name.clone()));
        return Ok(reply);
    }
    Ok(Reply::Json(200, collect_message(gen, id, &app.cfg.model_name).await?))
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens for these messages, system prompt and tools.
pub async fn count_tokens(app: &Arc<App>, body: &Value) -> Result<Reply, ApiError> {
    let f = Fields::of(body, "", "the request body")?;
    let conv = conversation(app, &f)?;
    let (_, prompt) = render_chat(app, conv.messages, conv.tools, conv.vars).await?;
    Ok(Reply::Json(200, json!({"input_tokens": prompt.len()})))
}

fn stop_reason(e: Ending) -> &'static str {
    match e {
        Ending::Stop => "end_turn",
        Ending::StopString => "stop_sequence",
        Ending::Length => "max_tokens",
        Ending::ToolCalls => "tool_use",
    }
}

fn usage(gen: &Generation, s: &engine::batch::SeqStats) -> Value {
    json!({"input_tokens": gen.n_prompt - s.n_prompt_reused, "output_tokens": s.n_generated,
           "cache_read_input_tokens": s.n_prompt_reused, "cache_creation_input_tokens": 0})
}

fn tool_use(c: &engine::chat::ParsedCall) -> Value {
    let input = if c.arguments.is_object() { c.arguments.clone() } else { json!({"value": c.arguments}) };
    json!({"type": "tool_use", "id": new_id("toolu_"), "name": c.name, "input": input})
}

async fn collect_message(mut gen: Generation, id: String, model: &str) -> Result<Value, ApiError> {
    let mut blocks: Vec<Value> = Vec::new();
    let stats = loop {
        let (pieces, end) = match gen.next().await {
            Out::Pieces(p) => (p, None),
            Out::End(p, r) => (p, Some(r)),
        };
        for p in pieces {
            let last = blocks.last_mut();
            match (p, last) {
                (Piece::Content(t), Some(b)) if b["type"] == "text" => append(b, "text", &t),
                (Piece::Content(t), _) => blocks.push(json!({"type": "text", "text": t})),
                (Piece::Reasoning(t), Some(b)) if b["type"] == "thinking" => append(b, "thinking", &t),
                (Piece::Reasoning(t), _) => blocks.push(json!({"type": "thinking", "thinking": t, "signature": ""})),
                (Piece::ToolCall(c), _) => blocks.push(tool_use(&c)),
            }
        }
        if let Some(r) = end {
            break r.map_err(ApiError::server)?;
        }
    };
    if blocks.is_empty() {
        blocks.push(json!({"type": "text", "text": ""}));
    }
    Ok(json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": blocks,
              "stop_reason": stop_reason(ending(&stats, gen.n_calls())), "stop_sequence": stats.stop_string,
              "usage": usage(&gen, &stats)}))
}

fn append(block: &mut Value, key: &str, t: &str) {
    let s = block[key].as_str().unwrap_or("").to_string() + t;
    block[key] = json!(s);
}

/// The open content block of a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
}

async fn stream_message(mut gen: Generation, sse: Sse, id: String, model: String) {
    let start = json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": gen.n_prompt, "output_tokens": 0}}});
    if !sse.event("message_start", &start) || !sse.event("ping", &json!({"type": "ping"})) {
        return;
    }
    let (mut open, mut index) = (Open::None, 0usize);
    let mut n_blocks = 0;
    loop {
        let (pieces, end) = match gen.next().await {
            Out::Pieces(p) => (p, None),
            Out::End(p, r) => (p, Some(r)),
        };
        for p in pieces {
            let want = match &p {
                Piece::Content(_) => Open::Text,
                Piece::Reasoning(_) => Open::Thinking,
                Piece::ToolCall(_) => Open::None,
            };
            if open != want && open != Open::None {
                close(&sse, open, index);
                index += 1;
                open = Open::None;
            }
            let sent = match p {
                Piece::Content(t) => {
                    if open == Open::None {
                        block_start(&sse, index, json!({"type": "text", "text": ""}));
                        open = Open::Text;
                        n_blocks += 1;
                    }
                    sse.event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": t}}),
                    )
                }
                Piece::Reasoning(t) => {
                    if open == Open::None {
                        block_start(&sse, index, json!({"type": "thinking", "thinking": "", "signature": ""}));
                        open = Open::Thinking;
                        n_blocks += 1;
                    }
                    sse.event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": t}}),
                    )
                }
                Piece::ToolCall(c) => {
                    let mut block = tool_use(&c);
                    let input = std::mem::replace(&mut block["input"], json!({}));
                    block_start(&sse, index, block);
                    sse.event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": input.to_string()}}),
                    );
                    n_blocks += 1;
                    let ok = sse.event("content_block_stop", &json!({"type": "content_block_stop", "index": index}));
                    index += 1;
                    ok
                }
            };
            if !sent {
                return;
            }
        }
        let Some(end) = end else { continue };
        if open != Open::None {
            close(&sse, open, index);
        } else if n_blocks == 0 {
            block_start(&sse, index, json!({"type": "text", "text": ""}));
            close(&sse, Open::Text, index);
        }
        match end {
            Ok(stats) => {
                sse.event("message_delta", &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(ending(&stats, gen.n_calls())), "stop_sequence": stats.stop_string},
                    "usage": usage(&gen, &stats)}));
                sse.event("message_stop", &json!({"type": "message_stop"}));
            }
            Err(e) => {
                sse.event("error", &ApiError::server(e).body(Flavor::Anthropic));
            }
        }
        return;
    }
}

fn block_start(sse: &Sse, index: usize, block: Value) {
    sse.event("content_block_start", &json!({"type": "content_block_start", "index": index, "content_block": block}));
}

fn close(sse: &Sse, open: Open, index: usize) {
    if open == Open::Thinking {
        sse.event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "signature_delta", "signature": ""}}),
        );
    }
    sse.event("content_block_stop", &json!({"type": "content_block_stop", "index": index}));
}
