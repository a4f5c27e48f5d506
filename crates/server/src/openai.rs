//! The OpenAI API: `POST /v1/chat/completions` (messages, tools, tool calls, reasoning as `reasoning_content`),
//! `POST /v1/completions` (plain text) and `GET /v1/models`, streamed as server-sent events or not.

use std::sync::Arc;

use engine::chat::{Message, Piece, Tool, ToolCall};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::generation::{ending, render_chat, App, Ending, Generation, Out, Prepared};
use crate::http::{Reply, Sse};
use crate::params::{new_id, type_name, unix_now, Fields, Sampling};

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(app: &Arc<App>, body: &Value) -> Result<Reply, ApiError> {
    let f = Fields::of(body, "", "the request body")?;
    let limits = &app.cfg.limits;
    check_unsupported(&f)?;
    let raw = f.require("messages", f.array("messages"))?;
    if raw.is_empty() {
        return Err(ApiError::field("messages", "must not be empty"));
    }
    if raw.len() > limits.messages_max {
        return Err(ApiError::field("messages", format!("{} messages; at most {}", raw.len(), limits.messages_max)));
    }
    let messages = raw.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
    let tools = tools(&f, limits.tools_max)?;
    let choice = tool_choice(&f)?;
    let mut vars = f.object("chat_template_kwargs")?.cloned().unwrap_or_default();
    if let Some(effort) = f.str("reasoning_effort")? {
        vars.insert("reasoning_effort".into(), json!(effort));
    }
    let offered = if choice == ToolChoice::None { vec![] } else { tools.clone() };
    let (text, prompt) = render_chat(app, messages, offered.clone(), vars).await?;
    let forced = match &choice {
        ToolChoice::Required | ToolChoice::Named(_) => {
            let name = if let ToolChoice::Named(n) = &choice { Some(n.as_str()) } else { None };
            let f = app.chat.forced_call(&app.rt.tokenizer, app.table.clone(), &text, &offered, name);
            Some(f.map_err(|e| ApiError::field("tool_choice", e))?)
        }
        _ => None,
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.object("stream_options")? {
        Some(o) => Fields { map: o, path: "stream_options." }.bool("include_usage")?.unwrap_or(false),
        None => false,
    };
    let prepared = Prepared {
        prompt,
        max_tokens: f.max_tokens(&["max_completion_tokens", "max_tokens"], limits)?.unwrap_or(limits.max_tokens_max),
        sampler: Sampling::read(&f, 2.0)?.config(&app.recommended),
        stop: f.stop("stop", limits)?,
        reuse: f.bool("cache_prompt")?.unwrap_or(true),
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        parser: Some(app.chat.parser(&text, &offered)),
        forced,
    };
    let gen = app.submit(prepared)?;
    let meta = Meta { id: new_id("chatcmpl-"), created: unix_now(), model: app.cfg.model_name.clone() };
    if stream {
        let (sse, reply) = Sse::new();
        tokio::spawn(stream_chat(gen, sse, meta, include_usage));
        Ok(reply)
    } else {
        Ok(Reply::Json(200, collect_chat(gen, meta).await?))
    }
}

/// Fields this server refuses rather than silently ignoring (they change what a client gets).
fn check_unsupported(f: &Fields<'_>) -> Result<(), ApiError> {
    f.integer("n", 1, 1).map_err(|_| ApiError::field("n", "only 1 choice per request is supported"))?;
    if f.bool("logprobs")? == Some(true) {
        return Err(ApiError::field("logprobs", "log probabilities are not supported"));
    }
    if let Some(rf) = f.object("response_format")? {
        match rf.get("type").and_then(Value::as_str) {
            None | Some("text") => {}
            Some(t) => return Err(ApiError::field("response_format", format!("'{t}' is not supported (only 'text')"))),
        }
    }
    Ok(())
}

/// One OpenAI message.
fn message(i: usize, v: &Value) -> Result<Message, ApiError> {
    let path = format!("messages[{i}].");
    let f = Fields::of(v, &path, &format!("messages[{i}]"))?;
    let role = f.require("role", f.str("role"))?;
    let role = match role {
        "system" | "developer" => "system",
        "user" | "assistant" => role,
        "tool" | "function" => "tool",
        other => return Err(ApiError::field(&format!("{path}role"), format!("'{other}' is not a role"))),
    };
    let mut m = Message::new(role, content(&f, "content")?);
    if role == "assistant" {
        m.reasoning = f.str("reasoning_content")?.map(str::to_string);
        for (j, c) in f.array("tool_calls")?.into_iter().flatten().enumerate() {
            m.tool_calls.push(tool_call(&format!("{path}tool_calls[{j}]."), c)?);
        }
    }
    if role == "tool" {
        m.tool_call_id = f.str("tool_call_id")?.map(str::to_string);
        m.name = f.str("name")?.map(str::to_string);
    }
    Ok(m)
}

/// Message content: a string, text parts (joined by newlines), or null.
pub fn content(f: &Fields<'_>, key: &str) -> Result<String, ApiError> {
    let name = format!("{}{key}", f.path);
    match f.get(key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (k, p) in parts.iter().enumerate() {
                let pf = Fields::of(p, "", &format!("{name}[{k}]"))?;
                match pf.str("type")? {
                    Some("text") | None => texts.push(pf.str("text")?.unwrap_or("").to_string()),
                    Some(t) => {
                        return Err(ApiError::field(
                            &format!("{name}[{k}]"),
                            format!("'{t}' parts are not supported (text only)"),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(v) => Err(ApiError::field(&name, format!("expected a string or an array of parts, got {}", type_name(v)))),
    }
}

fn tool_call(path: &str, v: &Value) -> Result<ToolCall, ApiError> {
    let f = Fields::of(v, path, path.trim_end_matches('.'))?;
    let func = f.require("function", f.object("function"))?;
    let ff = Fields { map: func, path: &format!("{path}function.") };
    let name = ff.require("name", ff.str("name"))?.to_string();
    // Arguments come as a JSON string; templates read an object.
    let arguments = match ff.get("arguments") {
        None => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Some(v) => v.clone(),
    };
    Ok(ToolCall { id: f.str("id")?.unwrap_or("").to_string(), name, arguments })
}

fn tools(f: &Fields<'_>, max: usize) -> Result<Vec<Tool>, ApiError> {
    let Some(list) = f.array("tools")? else { return Ok(vec![]) };
    if list.len() > max {
        return Err(ApiError::field("tools", format!("{} tools; at most {max}", list.len())));
    }
    let mut out = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}].");
        let tf = Fields::of(t, &path, &format!("tools[{i}]"))?;
        if let Some(ty) = tf.str("type")?.filter(|t| *t != "function") {
            return Err(ApiError::field(&format!("{path}type"), format!("'{ty}' tools are not supported (function)")));
        }
        let func = tf.require("function", tf.object("function"))?;
        out.push(function(func, &format!("{path}function."), "parameters")?);
    }
    Ok(out)
}

/// A function's name, description and schema (`schema_key`: `parameters`, or Anthropic's `input_schema`).
pub fn function(map: &Map<String, Value>, path: &str, schema_key: &str) -> Result<Tool, ApiError> {
    let ff = Fields { map, path };
    let name = ff.require("name", ff.str("name"))?;
    if name.is_empty() || name.len() > 256 {
        return Err(ApiError::field(&format!("{path}name"), "must be 1 to 256 characters"));
    }
    let parameters = match ff.object(schema_key)? {
        Some(p) => Value::Object(p.clone()),
        None => json!({"type": "object", "properties": {}}),
    };
    Ok(Tool { name: name.to_string(), description: ff.str("description")?.map(str::to_string), parameters })
}

fn tool_choice(f: &Fields<'_>) -> Result<ToolChoice, ApiError> {
    match f.get("tool_choice") {
        None => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::field("tool_choice", format!("'{other}' is not auto, none or required"))),
        },
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
            name.map(|n| ToolChoice::Named(n.to_string())).ok_or_else(|| {
                ApiError::field("tool_choice", "expected {\"type\": \"function\", \"function\": {\"name\": ...}}")
            })
        }
        Some(v) => Err(ApiError::field("tool_choice", format!("expected a string or an object, got {}", type_name(v)))),
    }
}

/// What every chunk of one reply repeats.
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

fn finish_reason(e: Ending) -> &'static str {
    match e {
        Ending::Stop | Ending::StopString => "stop",
        Ending::Length => "length",
        Ending::ToolCalls => "tool_calls",
    }
}

fn usage(gen: &Generation, s: &engine::batch::SeqStats) -> Value {
    json!({"prompt_tokens": gen.n_prompt, "completion_tokens": s.n_generated,
           "total_tokens": gen.n_prompt + s.n_generated,
           "prompt_tokens_details": {"cached_tokens": s.n_prompt_reused}})
}

/// llama.cpp's `timings`: prompt tokens reused (`cache_n`) and computed (`prompt_n`), the time from admission to
/// the first generated token (`prompt_ms`), and the generated tokens and their time.
fn timings(gen: &Generation, s: &engine::batch::SeqStats) -> Value {
    json!({"cache_n": s.n_prompt_reused, "prompt_n": gen.n_prompt - s.n_prompt_reused,
           "prompt_ms": s.first_token_secs * 1e3, "predicted_n": s.n_generated, "predicted_ms": s.decode_secs * 1e3})
}

fn openai_call(c: &engine::chat::ParsedCall) -> Value {
    json!({"id": new_id("call_"), "type": "function",
           "function": {"name": c.name, "arguments": c.arguments.to_string()}})
}

async fn collect_chat(mut gen: Generation, meta: Meta) -> Result<Value, ApiError> {
    let (mut content, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
    let stats = loop {
        let (pieces, end) = match gen.next().await {
            Out::Pieces(p) => (p, None),
            Out::End(p, r) => (p, Some(r)),
        };
        for p in pieces {
            match p {
                Piece::Content(t) => content.push_str(&t),
                Piece::Reasoning(t) => reasoning.push_str(&t),
                Piece::ToolCall(c) => calls.push(openai_call(&c)),
            }
        }
        if let Some(r) = end {
            break r.map_err(ApiError::server)?;
        }
    };
    let mut message = json!({"role": "assistant",
        "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { json!(content) }});
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(json!({"id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish_reason(ending(&stats, gen.n_calls()))}],
        "usage": usage(&gen, &stats), "timings": timings(&gen, &stats), "system_fingerprint": "flash-moe"}))
}

async fn stream_chat(mut gen: Generation, sse: Sse, meta: Meta, include_usage: bool) {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
               "system_fingerprint": "flash-moe",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    if !sse.data(&chunk(json!({"role": "assistant", "content": ""}), Value::Null)) {
        return;
    }
    let mut n_calls = 0;
    loop {
        let (pieces, end) = match gen.next().await {
            Out::Pieces(p) => (p, None),
            Out::End(p, r) => (p, Some(r)),
        };
        for p in pieces {
            let delta = match p {
                Piece::Content(t) => json!({"content": t}),
                Piece::Reasoning(t) => json!({"reasoning_content": t}),
                Piece::ToolCall(c) => {
                    let mut call = openai_call(&c);
                    call["index"] = json!(n_calls);
                    n_calls += 1;
                    json!({"tool_calls": [call]})
                }
            };
            if !sse.data(&chunk(delta, Value::Null)) {
                return;
            }
        }
        match end {
            None => continue,
            Some(Ok(stats)) => {
                let mut last = chunk(json!({}), json!(finish_reason(ending(&stats, gen.n_calls()))));
                last["timings"] = timings(&gen, &stats);
                sse.data(&last);
                if include_usage {
                    let mut u = chunk(json!({}), Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&gen, &stats);
                    sse.data(&u);
                }
            }
            Some(Err(e)) => {
                sse.data(&ApiError::server(e).body(crate::error::Flavor::OpenAi));
            }
        }
        sse.done();
        return;
    }
}

/// `POST /v1/completions`: a plain text prompt (a string, or token ids), no chat template.
pub async fn completions(app: &Arc<App>, body: &Value) -> Result<Reply, ApiError> {
    let f = Fields::of(body, "", "the request body")?;
    let limits = &app.cfg.limits;
    check_unsupported(&f)?;
    if f.bool("echo")? == Some(true) {
        return Err(ApiError::field("echo", "echoing the prompt is not supported"));
    }
    if f.str("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::field("suffix", "a suffix (fill-in-the-middle) is not supported"));
    }
    let prompt = completion_prompt(app, &f).await?;
    let prepared = Prepared {
        prompt,
        // OpenAI's default for this endpoint.
        max_tokens: f.max_tokens(&["max_tokens"], limits)?.unwrap_or(16),
        sampler: Sampling::read(&f, 2.0)?.config(&app.recommended),
        stop: f.stop("stop", limits)?,
        reuse: f.bool("cache_prompt")?.unwrap_or(true),
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        parser: None,
        forced: None,
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = f.object("stream_options")?.and_then(|o| o.get("include_usage")).and_then(Value::as_bool);
    let gen = app.submit(prepared)?;
    let meta = Meta { id: new_id("cmpl-"), created: unix_now(), model: app.cfg.model_name.clone() };
    if stream {
        let (sse, reply) = Sse::new();
        tokio::spawn(stream_completion(gen, sse, meta, include_usage.unwrap_or(false)));
        return Ok(reply);
    }
    let mut gen = gen;
    let mut text = String::new();
    let stats = loop {
        match gen.next().await {
            Out::Pieces(p) => p.into_iter().for_each(|p| text.push_str(piece_text(&p))),
            Out::End(p, r) => {
                p.into_iter().for_each(|p| text.push_str(piece_text(&p)));
                break r.map_err(ApiError::server)?;
            }
        }
    };
    Ok(Reply::Json(
        200,
        json!({"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
               "choices": [{"text": text, "index": 0, "logprobs": null,
                            "finish_reason": finish_reason(ending(&stats, 0))}],
               "usage": usage(&gen, &stats), "timings": timings(&gen, &stats)}),
    ))
}

fn piece_text(p: &Piece) -> &str {
    match p {
        Piece::Content(t) | Piece::Reasoning(t) => t,
        Piece::ToolCall(_) => "",
    }
}

/// `prompt`: a string, an array of one string, token ids, or an array of one list of token ids.
async fn completion_prompt(app: &Arc<App>, f: &Fields<'_>) -> Result<Vec<u32>, ApiError> {
    let v = f.get("prompt").ok_or_else(|| ApiError::field("prompt", "is required"))?;
    let one = match v {
        Value::Array(a) if a.len() == 1 && !a[0].is_number() => &a[0],
        Value::Array(a) if a.len() > 1 && !a[0].is_number() => {
            return Err(ApiError::field("prompt", "only one prompt per request is supported"))
        }
        v => v,
    };
    match one {
        Value::String(s) => {
            let (app, s) = (app.clone(), s.clone());
            tokio::task::spawn_blocking(move || app.rt.tokenizer.encode(&s, true, true))
                .await
                .map_err(|e| ApiError::server(e.to_string()))?
                .map_err(|e| ApiError::field("prompt", e))
        }
        Value::Array(ids) => {
            let n_vocab = app.rt.model.info.n_vocab as u64;
            ids.iter()
                .map(|x| x.as_u64().filter(|&id| id < n_vocab).map(|id| id as u32))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| ApiError::field("prompt", format!("token ids must be integers below {n_vocab}")))
        }
        v => Err(ApiError::field("prompt", format!("expected a string or token ids, got {}", type_name(v)))),
    }
}

async fn stream_completion(mut gen: Generation, sse: Sse, meta: Meta, include_usage: bool) {
    let chunk = |text: &str, finish: Value| {
        json!({"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
               "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
    };
    loop {
        let (pieces, end) = match gen.next().await {
            Out::Pieces(p) => (p, None),
            Out::End(p, r) => (p, Some(r)),
        };
        for p in &pieces {
            if !sse.data(&chunk(piece_text(p), Value::Null)) {
                return;
            }
        }
        match end {
            None => continue,
            Some(Ok(stats)) => {
                sse.data(&chunk("", json!(finish_reason(ending(&stats, 0)))));
                if include_usage {
                    let mut u = chunk("", Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&gen, &stats);
                    sse.data(&u);
                }
            }
            Some(Err(e)) => {
                sse.data(&ApiError::server(e).body(crate::error::Flavor::OpenAi));
            }
        }
        sse.done();
        return;
    }
}

/// `GET /v1/models`: the one model, in OpenAI's shape with Anthropic's fields too, and its context per request.
pub fn models(app: &App) -> Value {
    let name = &app.cfg.model_name;
    json!({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "flash-moe",
                                       "type": "model", "display_name": name, "created_at": "1970-01-01T00:00:00Z",
                                       "context_length": app.cfg.n_ctx}],
           "has_more": false, "first_id": name, "last_id": name})
}
