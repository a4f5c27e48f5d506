//! A forced tool call: the model must call a tool now. The call is a program of segments in the model's own
//! syntax: literal text (the markers, the argument names) is forced; the free parts (which tool, each argument's
//! value) are sampled from the model's logits restricted to tokens that keep the text inside the tool's JSON
//! schema: a name among the tools, a string without quotes, escapes or newlines, a number, one of an enum's
//! values. Every free part is bounded in length, so the call always ends.
//!
//! Schema coverage: objects (every `required` property, or every property when none is listed, in the schema's
//! order), strings (`maxLength`, else 64 bytes), integers and numbers (16 characters), booleans, null, `enum`,
//! `const`, and arrays (empty unless `minItems` asks for items). Anything else is written as a string.

use std::sync::Arc;

use serde_json::Value;

use super::{Tool, ToolSyntax};
use crate::batch::{Constraint, ConstraintStep};
use crate::tokenizer::Tokenizer;
use crate::Result;

/// Each token's bytes and whether it is a control token (never part of a free segment), for masking.
pub struct TokenTable {
    pieces: Vec<Vec<u8>>,
    control: Vec<bool>,
}

impl TokenTable {
    pub fn new(tokenizer: &Tokenizer) -> TokenTable {
        let n = tokenizer.n_vocab() as u32;
        TokenTable {
            pieces: (0..n).map(|id| tokenizer.token_bytes(id)).collect(),
            control: (0..n).map(|id| tokenizer.is_control(id)).collect(),
        }
    }
}

/// Bytes of a string value without `maxLength`, and of a number.
const STRING_MAX: usize = 64;
const NUMBER_MAX: usize = 16;
/// Nesting of objects and arrays written at most (deeper values are `null`).
const DEPTH_MAX: usize = 8;

/// One part of the call's text.
#[derive(Clone, Debug)]
enum Seg {
    /// Forced text: `tokens` encode all of it, `tail` all but its first byte (written by the free part before).
    Lit { text: String, tokens: Vec<u32>, tail: Vec<u32> },
    /// One of these byte strings, each ending with the next literal's first byte (so none is a prefix of
    /// another); `forced`: the tokens of the first, used when no token fits.
    Choice { alts: Vec<Vec<u8>>, forced: Vec<u32> },
    /// Free text of `kind`, at most `max` bytes, ended by `term` (the next literal's first byte).
    Free { kind: Free, max: usize, term: u8 },
    /// The chosen tool's arguments (replaced by its program once the name is chosen).
    Args,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Free {
    /// Inside a JSON string: no `"`, `\` or control characters.
    JsonString,
    /// A raw XML-style value: no newline, `<` or control characters.
    Raw,
    Integer,
    Number,
}

/// The constraint of a forced tool call (see the module doc).
pub struct ForcedCall {
    table: Arc<TokenTable>,
    segs: Vec<Seg>,
    /// Per tool, in the order of the name choice's alternatives: its arguments' program.
    args: Vec<Vec<Seg>>,
    at: usize,
    /// Bytes written of the current choice or free segment.
    matched: Vec<u8>,
    /// The current literal's first byte was written by the free part before it.
    skip_first: bool,
}

/// The literals around a call: before the name, between the name and the arguments, after the arguments.
fn frame(syntax: ToolSyntax) -> (&'static str, &'static str, &'static str) {
    match syntax {
        ToolSyntax::Hermes | ToolSyntax::None => {
            ("<tool_call>\n{\"name\": \"", "\", \"arguments\": ", "}\n</tool_call>")
        }
        ToolSyntax::Mistral => ("[TOOL_CALLS][{\"name\": \"", "\", \"arguments\": ", "}]"),
        ToolSyntax::QwenXml => ("<tool_call>\n<function=", ">\n", "</function>\n</tool_call>"),
        ToolSyntax::Glm => ("<tool_call>", "\n", "</tool_call>"),
        ToolSyntax::Harmony => (" to=functions.", "<|channel|>commentary json<|message|>", "<|call|>"),
        ToolSyntax::DeepSeek => {
            ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
        }
        ToolSyntax::Kimi => (
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.",
            ":0<|tool_call_argument_begin|>",
            "<|tool_call_end|><|tool_calls_section_end|>",
        ),
    }
}

impl ForcedCall {
    /// The call of one of `tools` in `syntax`; `in_thinking`: the prompt left the model inside `<think>`.
    pub fn new(
        tokenizer: &Tokenizer,
        table: Arc<TokenTable>,
        syntax: ToolSyntax,
        tools: &[&Tool],
        in_thinking: bool,
    ) -> Result<ForcedCall> {
        let (open, after_name, close) = frame(syntax);
        let mut segs = Vec::new();
        if in_thinking {
            segs.push(lit("</think>\n\n"));
        }
        segs.push(lit(open));
        segs.push(Seg::Choice { alts: tools.iter().map(|t| t.name.as_bytes().to_vec()).collect(), forced: vec![] });
        segs.push(lit(after_name));
        segs.push(Seg::Args);
        segs.push(lit(close));
        let mut args = Vec::new();
        for t in tools {
            let mut p = Vec::new();
            match syntax {
                ToolSyntax::QwenXml | ToolSyntax::Glm => xml_args(syntax, &t.parameters, &mut p),
                _ => json_object(&t.parameters, &mut p, 0),
            }
            args.push(finish(p, tokenizer)?);
        }
        Ok(ForcedCall { table, segs: finish(segs, tokenizer)?, args, at: 0, matched: Vec::new(), skip_first: false })
    }

    /// Whether token `id` may come next in the current choice or free segment.
    fn allows(&self, id: u32) -> bool {
        let i = id as usize;
        match (self.table.pieces.get(i), self.table.control.get(i)) {
            (Some(bytes), Some(false)) if !bytes.is_empty() => self.consume(bytes).is_some(),
            _ => false,
        }
    }

    /// The bytes matched after `bytes` and whether that completes the segment; `None` if `bytes` may not come.
    fn consume(&self, bytes: &[u8]) -> Option<(Vec<u8>, bool)> {
        let mut m = self.matched.clone();
        match self.segs.get(self.at)? {
            Seg::Choice { alts, .. } => {
                m.extend_from_slice(bytes);
                let mut consistent = alts.iter().filter(|a| a.starts_with(&m));
                match (consistent.next(), consistent.next()) {
                    (None, _) => None,
                    (Some(a), None) if a.len() == m.len() => Some((m, true)),
                    _ => Some((m, false)),
                }
            }
            Seg::Free { kind, max, term } => {
                for (k, &b) in bytes.iter().enumerate() {
                    if b == *term && k + 1 == bytes.len() && free_can_end(*kind, &m) {
                        return Some((m, true));
                    }
                    if !free_allows(*kind, &m, b, *max) {
                        return None;
                    }
                    m.push(b);
                }
                Some((m, false))
            }
            Seg::Lit { .. } | Seg::Args => None,
        }
    }

    /// Moves past the current segment; `by_term`: its last byte was the next literal's first. A chosen name puts
    /// its tool's arguments in place of [`Seg::Args`].
    fn advance(&mut self, by_term: bool) {
        if let Some(Seg::Choice { alts, .. }) = self.segs.get(self.at) {
            let chosen = alts.iter().position(|a| *a == self.matched).unwrap_or(0);
            let program = self.args.get(chosen).cloned().unwrap_or_default();
            if let Some(k) = self.segs.iter().position(|s| matches!(s, Seg::Args)) {
                self.segs.splice(k..=k, program);
            }
        }
        self.at += 1;
        self.matched.clear();
        self.skip_first = by_term;
    }

    fn any_allowed(&self) -> bool {
        (0..self.table.pieces.len() as u32).any(|id| self.allows(id))
    }
}

impl Constraint for ForcedCall {
    fn next(&mut self) -> ConstraintStep {
        while let Some(seg) = self.segs.get(self.at) {
            match seg {
                Seg::Lit { tokens, tail, .. } => {
                    let t = if self.skip_first { tail.clone() } else { tokens.clone() };
                    self.advance(false);
                    if !t.is_empty() {
                        return ConstraintStep::Force(t);
                    }
                }
                Seg::Args => self.advance(false),
                Seg::Choice { alts, forced } => {
                    if self.any_allowed() {
                        return ConstraintStep::Sample;
                    }
                    // No token fits (a vocabulary without the bytes): the first alternative, whole.
                    let forced = forced.clone();
                    self.matched = alts.first().cloned().unwrap_or_default();
                    self.advance(true);
                    if self.matched.is_empty() && !forced.is_empty() {
                        return ConstraintStep::Force(forced);
                    }
                }
                Seg::Free { max, .. } => {
                    if self.matched.len() < *max && self.any_allowed() {
                        return ConstraintStep::Sample;
                    }
                    // Long enough, or nothing fits: the next literal closes it.
                    self.advance(false);
                }
            }
        }
        ConstraintStep::Done
    }

    fn mask(&self, logits: &mut [f32]) {
        for (id, l) in logits.iter_mut().enumerate() {
            if !self.allows(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn accept(&mut self, id: u32) {
        let bytes = self.table.pieces.get(id as usize).cloned().unwrap_or_default();
        match self.consume(&bytes) {
            Some((m, done)) => {
                self.matched = m;
                if done {
                    self.advance(true);
                }
            }
            // Not allowed (the sampler had nothing else): end the segment; the next literal closes it.
            None => self.advance(false),
        }
    }
}

/// Whether byte `b` may follow `m` in a free segment of at most `max` bytes (a character must fit whole).
fn free_allows(kind: Free, m: &[u8], b: u8, max: usize) -> bool {
    let char_len = match b {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    };
    if m.len() + char_len > max {
        return false;
    }
    match kind {
        Free::JsonString => b != b'"' && b != b'\\' && b >= 0x20 && utf8_prefix(m, b),
        Free::Raw => b != b'\n' && b != b'<' && b >= 0x20 && utf8_prefix(m, b),
        // JSON numbers: no leading zeros.
        Free::Integer => (b.is_ascii_digit() && m != b"0" && m != b"-0") || (b == b'-' && m.is_empty()),
        Free::Number => {
            (b.is_ascii_digit() && m != b"0" && m != b"-0")
                || (b == b'-' && m.is_empty())
                || (b == b'.' && !m.contains(&b'.') && m.last().is_some_and(u8::is_ascii_digit))
        }
    }
}

/// Whether `m` (the start of valid UTF-8) followed by `b` still is.
fn utf8_prefix(m: &[u8], b: u8) -> bool {
    // Only the last character of `m`, perhaps incomplete, and `b` can be wrong.
    let start = (m.len().saturating_sub(3)..m.len()).rev().find(|&i| m[i] & 0xC0 != 0x80).unwrap_or(m.len());
    let mut tail = m[start..].to_vec();
    tail.push(b);
    match std::str::from_utf8(&tail) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

fn free_can_end(kind: Free, m: &[u8]) -> bool {
    match kind {
        Free::JsonString | Free::Raw => std::str::from_utf8(m).is_ok(),
        Free::Integer | Free::Number => m.last().is_some_and(u8::is_ascii_digit),
    }
}

fn lit(text: &str) -> Seg {
    Seg::Lit { text: text.to_string(), tokens: vec![], tail: vec![] }
}

/// Merges neighbouring literals, encodes them, and gives each choice and free segment the first byte of the
/// literal after it as its end.
fn finish(segs: Vec<Seg>, tokenizer: &Tokenizer) -> Result<Vec<Seg>> {
    let mut merged: Vec<Seg> = Vec::new();
    for s in segs {
        match (merged.last_mut(), s) {
            (Some(Seg::Lit { text: a, .. }), Seg::Lit { text: b, .. }) => a.push_str(&b),
            (_, Seg::Lit { text, .. }) if text.is_empty() => {}
            (_, s) => merged.push(s),
        }
    }
    let firsts: Vec<Option<u8>> = (0..merged.len())
        .map(|i| match merged.get(i + 1) {
            Some(Seg::Lit { text, .. }) => text.bytes().next(),
            _ => None,
        })
        .collect();
    for (s, first) in merged.iter_mut().zip(firsts) {
        match s {
            Seg::Lit { text, tokens, tail } => {
                *tokens = tokenizer.encode(text, false, true)?;
                *tail = match text.char_indices().nth(1) {
                    Some((i, _)) => tokenizer.encode(&text[i..], false, true)?,
                    None => vec![],
                };
            }
            Seg::Choice { alts, forced } => {
                *forced =
                    tokenizer.encode(&String::from_utf8_lossy(alts.first().map_or(&[][..], |a| a)), false, false)?;
                // Without a literal after it (never, for a program built here) a choice ends with its bytes.
                if let Some(t) = first {
                    alts.iter_mut().for_each(|a| a.push(t));
                }
            }
            Seg::Free { term, .. } => *term = first.unwrap_or(0),
            Seg::Args => {}
        }
    }
    Ok(merged)
}

/// A JSON object for the schema `s` (a tool's parameters): `{}` without properties.
fn json_object(s: &Value, out: &mut Vec<Seg>, depth: usize) {
    let Some(props) = s.get("properties").and_then(Value::as_object).filter(|p| !p.is_empty()) else {
        out.push(lit("{}"));
        return;
    };
    let keys: Vec<&str> = match s.get("required").and_then(Value::as_array) {
        Some(r) if !r.is_empty() => r.iter().filter_map(Value::as_str).collect(),
        _ => props.keys().map(String::as_str).collect(),
    };
    out.push(lit("{"));
    for (i, k) in keys.iter().enumerate() {
        let key = Value::String((*k).to_string()).to_string();
        out.push(lit(&format!("{}{key}: ", if i > 0 { ", " } else { "" })));
        json_value(props.get(*k).unwrap_or(&Value::Null), out, depth + 1);
    }
    out.push(lit("}"));
}

/// The schema's main type (the first of a list that is not "null").
fn schema_type(s: &Value) -> Option<&str> {
    match s.get("type") {
        Some(Value::String(t)) => Some(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => s.get("properties").map(|_| "object"),
    }
}

fn json_value(s: &Value, out: &mut Vec<Seg>, depth: usize) {
    if depth > DEPTH_MAX {
        out.push(lit("null"));
        return;
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array).filter(|e| !e.is_empty()) {
        out.push(Seg::Choice { alts: e.iter().map(|v| v.to_string().into_bytes()).collect(), forced: vec![] });
        return;
    }
    if let Some(c) = s.get("const") {
        out.push(lit(&c.to_string()));
        return;
    }
    let max = s.get("maxLength").and_then(Value::as_u64).map_or(STRING_MAX, |m| m.clamp(1, 4096) as usize);
    match schema_type(s) {
        Some("object") => json_object(s, out, depth),
        Some("integer") => out.push(Seg::Free { kind: Free::Integer, max: NUMBER_MAX, term: 0 }),
        Some("number") => out.push(Seg::Free { kind: Free::Number, max: NUMBER_MAX, term: 0 }),
        Some("boolean") => out.push(Seg::Choice { alts: vec![b"true".to_vec(), b"false".to_vec()], forced: vec![] }),
        Some("null") => out.push(lit("null")),
        Some("array") => {
            let n = s.get("minItems").and_then(Value::as_u64).unwrap_or(0).min(8) as usize;
            let item = s.get("items").cloned().unwrap_or(Value::Null);
            out.push(lit("["));
            for i in 0..n {
                if i > 0 {
                    out.push(lit(", "));
                }
                json_value(&item, out, depth + 1);
            }
            out.push(lit("]"));
        }
        _ => {
            out.push(lit("\""));
            out.push(Seg::Free { kind: Free::JsonString, max, term: 0 });
            out.push(lit("\""));
        }
    }
}

/// Qwen3-Coder's `<parameter=KEY>\nVALUE\n</parameter>\n` or GLM's `<arg_key>KEY</arg_key>\n<arg_value>VALUE
/// </arg_value>\n` per argument; string values raw, others as JSON.
fn xml_args(syntax: ToolSyntax, s: &Value, out: &mut Vec<Seg>) {
    let props = s.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
    let keys: Vec<String> = match s.get("required").and_then(Value::as_array) {
        Some(r) if !r.is_empty() => r.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => props.keys().cloned().collect(),
    };
    for k in keys {
        let (open, close) = match syntax {
            ToolSyntax::Glm => (format!("<arg_key>{k}</arg_key>\n<arg_value>"), "</arg_value>\n"),
            _ => (format!("<parameter={k}>\n"), "\n</parameter>\n"),
        };
        out.push(lit(&open));
        let p = props.get(&k).cloned().unwrap_or(Value::Null);
        let max = p.get("maxLength").and_then(Value::as_u64).map_or(STRING_MAX, |m| m.clamp(1, 4096) as usize);
        let enum_strings: Option<Vec<Vec<u8>>> = p
            .get("enum")
            .and_then(Value::as_array)
            .map(|e| e.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string).into_bytes()).collect());
        match (enum_strings, schema_type(&p)) {
            (Some(alts), _) if !alts.is_empty() => out.push(Seg::Choice { alts, forced: vec![] }),
            (_, Some("string") | None) => out.push(Seg::Free { kind: Free::Raw, max, term: 0 }),
            _ => json_value(&p, out, 1),
        }
        out.push(lit(close));
    }
}
