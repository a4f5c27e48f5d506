//! Splitting a model's streamed output into text, reasoning and tool calls.
//!
//! [`OutputParser::push`] takes each new piece of text and returns what is certain so far; text that might be the
//! start of a marker (`<think>`, `</think>`, a tool call's opening) is held back until it is decided, and a tool
//! call is returned whole once its closing marker arrives. A block that does not parse as a tool call is returned
//! as text: nothing the model wrote is lost. Whitespace between text and a tool call is dropped.

use serde_json::{Map, Value};

use super::{ChatFormat, ThinkSyntax, Tool, ToolSyntax};

/// A part of the model's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Content(String),
    Reasoning(String),
    ToolCall(ParsedCall),
}

/// A tool call as the model wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    /// Usually a JSON object.
    pub arguments: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Content,
    Reasoning,
    /// Inside a tool-call block (the buffer starts with its opening marker).
    Block,
    /// gpt-oss: a message header, up to `<|message|>`.
    HarmonyHeader,
    /// gpt-oss: a message body of this kind, up to its end marker.
    HarmonyBody(Body),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Reasoning,
    Content,
    Call,
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const HARMONY_ENDS: [&str; 3] = ["<|end|>", "<|call|>", "<|return|>"];
const HARMONY_MARKERS: [&str; 7] =
    ["<|start|>", "<|channel|>", "<|message|>", "<|constrain|>", HARMONY_ENDS[0], HARMONY_ENDS[1], HARMONY_ENDS[2]];
const GLM_ARGS: [&str; 4] = ["<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"];
/// A DeepSeek call's opening, separator and closing (inside its block).
const DEEPSEEK_CALL: [&str; 3] = ["<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"];
/// A Kimi call's opening, separator and closing (inside its block).
const KIMI_CALL: [&str; 3] = ["<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"];

/// The streamed-output parser of one reply.
pub struct OutputParser {
    format: ChatFormat,
    mode: Mode,
    buf: String,
    /// Non-whitespace text has been returned (so `<think>` no longer opens reasoning).
    said: bool,
    /// Strip newlines at the start of the current text or reasoning.
    at_start: bool,
    /// Whitespace held back: dropped before and after a tool call.
    ws: String,
    /// The last thing returned was a tool call.
    after_call: bool,
    /// gpt-oss: the current message's recipient (`functions.NAME`).
    recipient: Option<String>,
    n_calls: usize,
    /// Per tool: parameter name -> JSON type, to read XML-style values.
    param_types: Vec<(String, Map<String, Value>)>,
}

impl OutputParser {
    /// `thinking`: the prompt left the model inside its reasoning (a generation prompt ending in `<think>`).
    pub fn new(format: ChatFormat, thinking: bool, tools: &[Tool]) -> OutputParser {
        let mode = match (format.think, thinking) {
            (ThinkSyntax::Harmony, _) => Mode::HarmonyHeader,
            (ThinkSyntax::Tags, true) => Mode::Reasoning,
            _ => Mode::Content,
        };
        let param_types = tools
            .iter()
            .map(|t| {
                let props = t.parameters.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
                (t.name.clone(), props)
            })
            .collect();
        OutputParser {
            format,
            mode,
            buf: String::new(),
            said: false,
            at_start: true,
            ws: String::new(),
            after_call: false,
            recipient: None,
            n_calls: 0,
            param_types,
        }
    }

    /// How many tool calls were returned.
    pub fn n_calls(&self) -> usize {
        self.n_calls
    }

    /// The pieces `text` completes.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out, false) {}
        out
    }

    /// The end of the output: whatever is held back.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        while self.step(&mut out, true) {}
        if !self.after_call && !self.ws.is_empty() && self.said {
            out.push(Piece::Content(std::mem::take(&mut self.ws)));
        }
        out
    }

    /// Takes what the buffer decides in the current mode; true when the mode changed and another step may
    /// decide more.
    fn step(&mut self, out: &mut Vec<Piece>, end: bool) -> bool {
        match self.mode {
            Mode::Reasoning => self.reasoning(out, end),
            Mode::Content => self.content(out, end),
            Mode::Block => self.block(out, end),
            Mode::HarmonyHeader => self.harmony_header(out, end),
            Mode::HarmonyBody(kind) => self.harmony_body(kind, out, end),
        }
    }

    fn reasoning(&mut self, out: &mut Vec<Piece>, end: bool) -> bool {
        if self.at_start {
            let trimmed = self.buf.trim_start_matches('\n').len();
            self.buf.drain(..self.buf.len() - trimmed);
            if self.buf.is_empty() && !end {
                return false;
            }
        }
        if let Some(i) = self.buf.find(THINK_CLOSE) {
            let text = self.buf[..i].trim_end_matches('\n').to_string();
            self.buf.drain(..i + THINK_CLOSE.len());
            self.emit_reasoning(text, out);
            self.mode = Mode::Content;
            self.at_start = true;
            return true;
        }
        // Hold back a possible start of `</think>` and trailing newlines (dropped before it).
        let keep = if end { 0 } else { held_suffix(&self.buf, &[THINK_CLOSE], true) };
        let text: String = self.buf.drain(..self.buf.len() - keep).collect();
        let text = if end { text.trim_end_matches('\n').to_string() } else { text };
        self.emit_reasoning(text, out);
        false
    }

    fn emit_reasoning(&mut self, text: String, out: &mut Vec<Piece>) {
        if !text.is_empty() {
            self.at_start = false;
            out.push(Piece::Reasoning(text));
        }
    }

    fn content(&mut self, out: &mut Vec<Piece>, end: bool) -> bool {
        if self.at_start {
            let trimmed = self.buf.trim_start_matches('\n').len();
            self.buf.drain(..self.buf.len() - trimmed);
        }
        if self.format.think == ThinkSyntax::Tags && !self.said && self.n_calls == 0 {
            let t = self.buf.trim_start();
            if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                self.buf = rest.to_string();
                self.mode = Mode::Reasoning;
                self.at_start = true;
                return true;
            }
            if !end && !t.is_empty() && THINK_OPEN.starts_with(t) {
                return false;
            }
        }
        let opens = block_markers(self.format.tools).map(|(open, _)| open);
        if let Some(open) = opens {
            if let Some(i) = self.buf.find(open) {
                let text: String = self.buf.drain(..i).collect();
                self.emit_content(text, out, false);
                self.mode = Mode::Block;
                return true;
            }
        }
        let keep = if end { 0 } else { held_suffix(&self.buf, opens.as_slice(), false) };
        let text: String = self.buf.drain(..self.buf.len() - keep).collect();
        self.emit_content(text, out, end);
        false
    }

    /// Text: whitespace at its end is held back (dropped if a tool call follows).
    fn emit_content(&mut self, text: String, out: &mut Vec<Piece>, end: bool) {
        if text.is_empty() {
            return;
        }
        let body = text.trim_end();
        if body.is_empty() {
            self.ws.push_str(&text);
            return;
        }
        let mut piece = std::mem::take(&mut self.ws);
        let mut text_start = 0;
        if self.after_call {
            piece.clear();
            text_start = text.len() - text.trim_start().len();
        }
        piece.push_str(if end { &text[text_start..] } else { &body[text_start..] });
        self.ws = if end { String::new() } else { text[body.len()..].to_string() };
        self.said = true;
        self.at_start = false;
        self.after_call = false;
        out.push(Piece::Content(piece));
    }

    fn block(&mut self, out: &mut Vec<Piece>, end: bool) -> bool {
        let Some((open, close)) = block_markers(self.format.tools) else {
            self.mode = Mode::Content;
            return true;
        };
        let complete = match close {
            Some(close) => self.buf[open.len()..].find(close).map(|j| open.len() + j + close.len()),
            None => None,
        };
        let n = match (complete, end) {
            (Some(n), _) => n,
            (None, true) => self.buf.len(),
            (None, false) => return false,
        };
        let block: String = self.buf.drain(..n).collect();
        let inner = &block[open.len()..block.len() - close.filter(|c| block.ends_with(c)).map_or(0, str::len)];
        match self.parse_block(inner) {
            Some(calls) if !calls.is_empty() => {
                self.n_calls += calls.len();
                self.after_call = true;
                self.ws.clear();
                out.extend(calls.into_iter().map(Piece::ToolCall));
            }
            _ => self.emit_content(block, out, end),
        }
        self.mode = Mode::Content;
        self.at_start = false;
        true
    }

    fn harmony_header(&mut self, out: &mut Vec<Piece>, end: bool) -> bool {
        let t = self.buf.trim_start();
        let looks_like_header = ["<|channel|>", "to=", "<|constrain|>", "<|start|>"]
            .iter()
            .any(|h| t.starts_with(h) || (!end && h.starts_with(t)));
        if !looks_like_header && !t.is_empty() {
            // Not the harmony format after all: plain text from here on.
            self.format = ChatFormat { tools: ToolSyntax::None, think: ThinkSyntax::None };
            self.mode = Mode::Content;
            return true;
        }
        let Some(i) = self.buf.find("<|message|>") else {
            if end && !self.buf.trim().is_empty() {
                let text = std::mem::take(&mut self.buf);
                self.emit_content(text, out, true);
            }
            return false;
        };
        let header: String = self.buf.drain(..i + "<|message|>".len()).collect();
        let header = header.trim_start().trim_start_matches("<|start|>assistant");
        let channel = header.split("<|channel|>").nth(1).and_then(|c| c.split([' ', '<']).next()).unwrap_or("");
        self.recipient = header.split("to=").nth(1).and_then(|r| r.split([' ', '<']).next()).map(str::to_string);
        let kind = match (channel, &self.recipient) {
            ("analysis", _) => Body::Reasoning,
            (_, Some(r)) if r.starts_with("functions.") => Body::Call,
            _ => Body::Content,
        };
        self.mode = Mode::HarmonyBody(kind);
        self.at_start = true;
        true
    }

    fn harmony_body(&mut self, kind: Body, out: &mut Vec<Piece>, end: bool) -> bool {
        let found = HARMONY_ENDS.iter().filter_map(|m| self.buf.find(m).map(|i| (i, m.len()))).min();
        let (text, done) = match (found, kind) {
            (Some((i, len)), _) => {
                let text: String = self.buf.drain(..i).collect();
                self.buf.drain(..len);
                (text, true)
            }
            (None, Body::Call) if !end => return false,
            (None, _) => {
                let keep = if end { 0 } else { held_suffix(&self.buf, &HARMONY_ENDS, false) };
                (self.buf.drain(..self.buf.len() - keep).collect(), end)
            }
        };
        match kind {
            Body::Reasoning => self.emit_reasoning(text, out),
            Body::Content => self.emit_content(text, out, done),
            Body::Call => {
                let name = self.recipient.as_deref().unwrap_or("").trim_start_matches("functions.").to_string();
                match serde_json::from_str::<Value>(text.trim()) {
                    Ok(arguments) if !name.is_empty() => {
                        self.n_calls += 1;
                        self.after_call = true;
                        out.push(Piece::ToolCall(ParsedCall { name, arguments }));
                    }
                    _ => self.emit_content(text, out, done),
                }
            }
        }
        if done {
            self.mode = Mode::HarmonyHeader;
            // The next message starts with `<|start|>assistant`.
            return true;
        }
        false
    }

    /// The tool calls of one block (without its markers), or `None` when it is not one.
    fn parse_block(&self, inner: &str) -> Option<Vec<ParsedCall>> {
        match self.format.tools {
            ToolSyntax::Hermes => hermes(inner).map(|c| vec![c]),
            ToolSyntax::QwenXml => self.qwen_xml(inner),
            ToolSyntax::Glm => self.glm(inner).map(|c| vec![c]),
            ToolSyntax::DeepSeek => split_calls(inner, DEEPSEEK_CALL[0], DEEPSEEK_CALL[1], DEEPSEEK_CALL[2]),
            ToolSyntax::Kimi => split_calls(inner, KIMI_CALL[0], KIMI_CALL[1], KIMI_CALL[2])
                .map(|calls| calls.into_iter().map(kimi_name).collect()),
            ToolSyntax::Mistral => mistral(inner),
            ToolSyntax::None | ToolSyntax::Harmony => None,
        }
    }

    fn qwen_xml(&self, inner: &str) -> Option<Vec<ParsedCall>> {
        let mut calls = Vec::new();
        for f in inner.split("<function=").skip(1) {
            let (name, rest) = f.split_once('>')?;
            let body = rest.split("</function>").next()?;
            let mut args = Map::new();
            for p in body.split("<parameter=").skip(1) {
                let (key, value) = p.split_once('>')?;
                let value = value.split("</parameter>").next()?;
                let value = value.strip_prefix('\n').unwrap_or(value);
                let value = value.strip_suffix('\n').unwrap_or(value);
                args.insert(key.trim().to_string(), self.typed(name.trim(), key.trim(), value));
            }
            calls.push(ParsedCall { name: name.trim().to_string(), arguments: Value::Object(args) });
        }
        (!calls.is_empty()).then_some(calls)
    }

    fn glm(&self, inner: &str) -> Option<ParsedCall> {
        let (name, mut rest) = match inner.find("<arg_key>") {
            Some(i) => (inner[..i].trim(), &inner[i..]),
            None => (inner.trim(), ""),
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return None;
        }
        let mut args = Map::new();
        while let Some(k) = rest.find("<arg_key>") {
            let after = &rest[k + "<arg_key>".len()..];
            let (key, after) = after.split_once("</arg_key>")?;
            let v = after.find("<arg_value>")?;
            let (value, after) = after[v + "<arg_value>".len()..].split_once("</arg_value>")?;
            args.insert(key.trim().to_string(), self.typed(name, key.trim(), value));
            rest = after;
        }
        Some(ParsedCall { name: name.to_string(), arguments: Value::Object(args) })
    }

    /// An XML-style argument value: a string where the tool's schema says so, else JSON when it parses.
    fn typed(&self, tool: &str, key: &str, value: &str) -> Value {
        let ty = self
            .param_types
            .iter()
            .find(|(n, _)| n == tool)
            .and_then(|(_, props)| props.get(key))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str);
        if ty == Some("string") {
            return Value::String(value.to_string());
        }
        serde_json::from_str(value.trim()).unwrap_or_else(|_| Value::String(value.to_string()))
    }
}

impl ChatFormat {
    /// Every marker the output parser reads for this format: a control token with one of these texts stays in
    /// the generated text the parser sees (the others are dropped, as llama.cpp's server drops them).
    pub fn markers(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.think == ThinkSyntax::Tags {
            m.extend([THINK_OPEN, THINK_CLOSE]);
        }
        if let Some((open, close)) = block_markers(self.tools) {
            m.push(open);
            m.extend(close);
        }
        m.extend_from_slice(match self.tools {
            ToolSyntax::Glm => &GLM_ARGS[..],
            ToolSyntax::Harmony => &HARMONY_MARKERS[..],
            ToolSyntax::DeepSeek => &DEEPSEEK_CALL[..],
            ToolSyntax::Kimi => &KIMI_CALL[..],
            _ => &[],
        });
        m
    }
}

/// The opening and closing marker of a tool-call block (`None`: it runs to the end of the output).
fn block_markers(syntax: ToolSyntax) -> Option<(&'static str, Option<&'static str>)> {
    match syntax {
        ToolSyntax::Hermes | ToolSyntax::QwenXml | ToolSyntax::Glm => Some(("<tool_call>", Some("</tool_call>"))),
        ToolSyntax::DeepSeek => Some(("<｜tool▁calls▁begin｜>", Some("<｜tool▁calls▁end｜>"))),
        ToolSyntax::Kimi => Some(("<|tool_calls_section_begin|>", Some("<|tool_calls_section_end|>"))),
        ToolSyntax::Mistral => Some(("[TOOL_CALLS]", None)),
        ToolSyntax::None | ToolSyntax::Harmony => None,
    }
}

/// How many bytes at the end of `buf` to hold back: the longest suffix that is a proper prefix of a marker, and
/// with `newlines`, the newlines before it.
fn held_suffix(buf: &str, markers: &[&str], newlines: bool) -> usize {
    let mut keep = 0;
    for m in markers {
        for len in (1..m.len().min(buf.len() + 1)).rev() {
            let start = buf.len() - len;
            if buf.is_char_boundary(start) && m.starts_with(&buf[start..]) {
                keep = keep.max(len);
                break;
            }
        }
    }
    if newlines {
        keep += buf[..buf.len() - keep].len() - buf[..buf.len() - keep].trim_end_matches('\n').len();
    }
    keep
}

/// `{"name": ..., "arguments": {...}}` (arguments may be a JSON string; `parameters` is accepted too).
fn hermes(inner: &str) -> Option<ParsedCall> {
    let v: Value = serde_json::from_str(inner.trim()).ok()?;
    call_of_object(&v)
}

fn call_of_object(v: &Value) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Some(a) => a.clone(),
        None => Value::Object(Map::new()),
    };
    Some(ParsedCall { name, arguments })
}

/// Calls written `BEGIN name SEP arguments END`, one after another.
fn split_calls(inner: &str, begin: &str, sep: &str, end: &str) -> Option<Vec<ParsedCall>> {
    let mut calls = Vec::new();
    for c in inner.split(begin).skip(1) {
        let (name, rest) = c.split_once(sep)?;
        let args = rest.split(end).next()?;
        let arguments = serde_json::from_str(args.trim()).ok()?;
        calls.push(ParsedCall { name: name.trim().to_string(), arguments });
    }
    (!calls.is_empty()).then_some(calls)
}

/// Kimi names calls `functions.NAME:INDEX`.
fn kimi_name(mut c: ParsedCall) -> ParsedCall {
    let n = c.name.strip_prefix("functions.").unwrap_or(&c.name);
    c.name = n.rsplit_once(':').map_or(n, |(n, _)| n).to_string();
    c
}

/// `[{"name": ..., "arguments": {...}, "id": ...}, ...]`.
fn mistral(inner: &str) -> Option<Vec<ParsedCall>> {
    let v: Value = serde_json::from_str(inner.trim()).ok()?;
    let calls: Option<Vec<ParsedCall>> = v.as_array()?.iter().map(call_of_object).collect();
    calls.filter(|c| !c.is_empty())
}
