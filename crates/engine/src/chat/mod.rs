//! Conversations with a chat model: messages (with tool calls, tool results and reasoning) rendered through the
//! model's chat template into prompt tokens, and the model's output taken apart again into text, reasoning and
//! tool calls, in the syntax the template teaches the model.
//!
//! [`Chat`] holds the template and what it implies ([`ChatFormat`]: how the model writes tool calls and where it
//! puts its reasoning, detected from the template's text); [`Chat::render`] turns [`Message`]s and [`Tool`]s
//! into the prompt; [`OutputParser`] splits generated text, streamed, into [`Piece`]s; [`ForcedCall`] makes the
//! model call a tool (OpenAI `tool_choice: "required"` or a named function, Anthropic `any`/`tool`) by forcing the
//! call's syntax and constraining its arguments to the tool's JSON schema.
//!
//! A model file without a chat template gets a ChatML template with tool calls as Qwen2.5 writes them
//! (`chatml.jinja`), as llama.cpp falls back to ChatML.

mod forced;
mod parse;

use serde_json::{json, Map, Value};

use crate::tokenizer::{ChatTemplate, ControlText, Tokenizer};
use crate::{Error, Result};

pub use forced::{ForcedCall, TokenTable};
pub use parse::{OutputParser, ParsedCall, Piece};

/// The template used when the model file has none.
pub const CHATML_TEMPLATE: &str = include_str!("chatml.jinja");

/// How a model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolSyntax {
    /// The template knows no tool calls.
    None,
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (Qwen2.5, Qwen3, Hermes).
    Hermes,
    /// `<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n</function>\n</tool_call>`
    /// (Qwen3-Coder, Qwen3.5).
    QwenXml,
    /// `<tool_call>NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value></tool_call>` (GLM-4.5 and later).
    Glm,
    /// gpt-oss: `<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>`.
    Harmony,
    /// `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜><｜tool▁calls▁end｜>`
    /// (DeepSeek V3.1).
    DeepSeek,
    /// `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{...}
    /// <|tool_call_end|><|tool_calls_section_end|>` (Kimi K2).
    Kimi,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}]` (Mistral).
    Mistral,
}

/// Where a model puts its reasoning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThinkSyntax {
    None,
    /// Between `<think>` and `</think>` (Qwen3, GLM, DeepSeek), opened by the model or by the generation prompt.
    Tags,
    /// gpt-oss's `analysis` channel.
    Harmony,
}

/// What a chat template implies about the model's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatFormat {
    pub tools: ToolSyntax,
    pub think: ThinkSyntax,
}

impl ChatFormat {
    /// Detects the syntaxes from the markers the template writes.
    pub fn detect(template: &str) -> ChatFormat {
        let has = |s: &str| template.contains(s);
        let tools = if has("<|channel|>") {
            ToolSyntax::Harmony
        } else if has("<｜tool▁calls▁begin｜>") {
            ToolSyntax::DeepSeek
        } else if has("<|tool_calls_section_begin|>") {
            ToolSyntax::Kimi
        } else if has("[TOOL_CALLS]") {
            ToolSyntax::Mistral
        } else if has("<arg_key>") {
            ToolSyntax::Glm
        } else if has("<function=") && has("<parameter=") {
            ToolSyntax::QwenXml
        } else if has("<tool_call>") {
            ToolSyntax::Hermes
        } else {
            ToolSyntax::None
        };
        let think = if tools == ToolSyntax::Harmony {
            ThinkSyntax::Harmony
        } else if has("<think>") {
            ThinkSyntax::Tags
        } else {
            ThinkSyntax::None
        };
        ChatFormat { tools, think }
    }
}

/// A tool call in a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments, a JSON object (or whatever JSON the model wrote).
    pub arguments: Value,
}

/// One turn of a conversation, as a chat template reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// "system", "user", "assistant" or "tool".
    pub role: String,
    pub content: String,
    /// An assistant's reasoning (`reasoning_content`; gpt-oss's `thinking`).
    pub reasoning: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// A tool result: the call it answers, and the tool's name.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message { role: role.to_string(), content: content.into(), ..Message::default() }
    }

    /// The object a chat template reads: transformers' conventions (tool-call arguments as objects).
    fn to_template(&self, format: ChatFormat) -> Value {
        let mut m = Map::new();
        m.insert("role".into(), json!(self.role));
        m.insert("content".into(), json!(self.content));
        if let Some(r) = &self.reasoning {
            m.insert("reasoning_content".into(), json!(r));
            if format.think == ThinkSyntax::Harmony {
                m.insert("thinking".into(), json!(r));
            }
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(
                    |c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}),
                )
                .collect();
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), json!(id));
        }
        if let Some(n) = &self.name {
            m.insert("name".into(), json!(n));
        }
        Value::Object(m)
    }
}

/// A tool offered to the model: a function with a JSON-schema for its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON schema (`{"type": "object", "properties": ...}`).
    pub parameters: Value,
}

impl Tool {
    /// OpenAI's shape, which chat templates read: `{"type": "function", "function": {...}}`.
    fn to_template(&self) -> Value {
        let mut f = Map::new();
        f.insert("name".into(), json!(self.name));
        if let Some(d) = &self.description {
            f.insert("description".into(), json!(d));
        }
        f.insert("parameters".into(), self.parameters.clone());
        json!({"type": "function", "function": Value::Object(f)})
    }
}

/// A model's chat template, compiled, with its format and special tokens.
pub struct Chat {
    template: ChatTemplate,
    pub format: ChatFormat,
    /// Where the template came from: "the model file", a path, or "built-in ChatML".
    pub source: String,
    bos: Option<String>,
    eos: Option<String>,
    /// The control tokens among the format's markers ([`ChatFormat::markers`]).
    marker_ids: Vec<u32>,
}

impl Chat {
    /// The template given (`source` names where it came from), else the tokenizer's, else ChatML.
    pub fn new(tokenizer: &Tokenizer, template: Option<(&str, &str)>) -> Result<Chat> {
        let (text, source) = match (template, tokenizer.chat_template()) {
            (Some((t, s)), _) => (t, s.to_string()),
            (None, Some(t)) => (t, "the model file".to_string()),
            (None, None) => (CHATML_TEMPLATE, "built-in ChatML (the model file has no chat template)".to_string()),
        };
        let format = ChatFormat::detect(text);
        Ok(Chat {
            template: ChatTemplate::new(text)?,
            format,
            source,
            bos: tokenizer.bos_token(),
            eos: tokenizer.eos_token(),
            marker_ids: tokenizer.control_ids(&format.markers()),
        })
    }

    /// The prompt for the assistant's next turn: `messages` and `tools` through the template, with extra
    /// template variables (`enable_thinking`, `reasoning_effort`, ...) from `vars`.
    pub fn render(&self, messages: &[Message], tools: &[Tool], vars: &Map<String, Value>) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::Invalid("no messages".into()));
        }
        let msgs = Value::Array(messages.iter().map(|m| m.to_template(self.format)).collect());
        let mut extra = vars.clone();
        extra.insert(
            "tools".into(),
            if tools.is_empty() { Value::Null } else { tools.iter().map(Tool::to_template).collect() },
        );
        extra.insert("documents".into(), Value::Null);
        self.template.render_json(&msgs, true, self.bos.as_deref(), self.eos.as_deref(), &Value::Object(extra))
    }

    /// The rendered prompt's tokens: control-token text becomes control tokens, and BOS is added unless the
    /// template wrote it.
    pub fn tokens(&self, tokenizer: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
        let add_special = !self.bos.as_ref().is_some_and(|b| !b.is_empty() && prompt.starts_with(b.as_str()));
        tokenizer.encode(prompt, add_special, true)
    }

    /// The control tokens a reply's text keeps: those the output parser reads. Others (a stray `<|im_start|>`)
    /// are dropped from the text.
    pub fn control_text(&self) -> ControlText {
        ControlText::Only(self.marker_ids.clone())
    }

    /// A parser for the output that follows `prompt` (which may leave the model inside its reasoning).
    pub fn parser(&self, prompt: &str, tools: &[Tool]) -> OutputParser {
        let thinking = self.format.think == ThinkSyntax::Tags && prompt.trim_end().ends_with("<think>");
        OutputParser::new(self.format, thinking, tools)
    }

    /// A constraint that makes the model call one of `tools` (`name`: that one) right after `prompt`.
    pub fn forced_call(
        &self,
        tokenizer: &Tokenizer,
        table: std::sync::Arc<TokenTable>,
        prompt: &str,
        tools: &[Tool],
        name: Option<&str>,
    ) -> Result<ForcedCall> {
        let tools: Vec<&Tool> = tools.iter().filter(|t| name.is_none_or(|n| t.name == n)).collect();
        if tools.is_empty() {
            return Err(Error::Invalid(match name {
                Some(n) => format!("tool_choice names '{n}', which is not among the tools"),
                None => "tool_choice requires a tool call but no tools were given".into(),
            }));
        }
        let in_thinking = self.format.think == ThinkSyntax::Tags && prompt.trim_end().ends_with("<think>");
        ForcedCall::new(tokenizer, table, self.format.tools, &tools, in_thinking)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_of_the_shared_templates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat-templates");
        let want = [
            ("GLM-4.6.jinja", ToolSyntax::Glm, ThinkSyntax::Tags),
            ("GLM-4.7-Flash.jinja", ToolSyntax::Glm, ThinkSyntax::Tags),
            ("Qwen-Qwen2.5-7B-Instruct.jinja", ToolSyntax::Hermes, ThinkSyntax::None),
            ("Qwen-Qwen3-0.6B.jinja", ToolSyntax::Hermes, ThinkSyntax::Tags),
            ("Qwen3-Coder.jinja", ToolSyntax::QwenXml, ThinkSyntax::None),
            ("Qwen3.5-4B.jinja", ToolSyntax::QwenXml, ThinkSyntax::Tags),
            ("deepseek-ai-DeepSeek-V3.1.jinja", ToolSyntax::DeepSeek, ThinkSyntax::Tags),
            ("mistralai-Mistral-Nemo-Instruct-2407.jinja", ToolSyntax::Mistral, ThinkSyntax::None),
            ("moonshotai-Kimi-K2.jinja", ToolSyntax::Kimi, ThinkSyntax::None),
            ("openai-gpt-oss-120b.jinja", ToolSyntax::Harmony, ThinkSyntax::Harmony),
        ];
        for (file, tools, think) in want {
            let text = std::fs::read_to_string(dir.join(file)).expect("template");
            assert_eq!(ChatFormat::detect(&text), ChatFormat { tools, think }, "{file}");
        }
        assert_eq!(ChatFormat::detect(CHATML_TEMPLATE).tools, ToolSyntax::Hermes);
    }

    /// Markers that are control tokens (GLM, gpt-oss, DeepSeek and Kimi declare theirs so) stay in a reply's text
    /// with the format's `control_text`, and a control token the parser does not read (a stray `<|im_start|>`)
    /// goes.
    #[test]
    fn replies_keep_the_control_tokens_their_parser_reads() {
        use crate::tokenizer::{token_type, GgufTokenizerData, StreamDecoder};
        let f = |tools, think| ChatFormat { tools, think };
        let cases = [
            (f(ToolSyntax::Hermes, ThinkSyntax::Tags), "<think>Hm.</think>Hi<tool_call>{}</tool_call>"),
            (
                f(ToolSyntax::Glm, ThinkSyntax::Tags),
                "<tool_call>f<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>",
            ),
            (
                f(ToolSyntax::Harmony, ThinkSyntax::Harmony),
                "<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>commentary to=functions.f \
                 <|constrain|>json<|message|>{}<|call|>",
            ),
            (
                f(ToolSyntax::DeepSeek, ThinkSyntax::Tags),
                "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>f<｜tool▁sep｜>{}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            ),
            (
                f(ToolSyntax::Kimi, ThinkSyntax::None),
                "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}\
                 <|tool_call_end|><|tool_calls_section_end|>",
            ),
            (f(ToolSyntax::Mistral, ThinkSyntax::None), "[TOOL_CALLS][{}]"),
        ];
        let v = crate::synth::vocab::build(300).expect("vocab");
        let (mut tokens, mut types) = (v.tokens, v.types);
        for m in cases.iter().flat_map(|(format, _)| format.markers()) {
            if !tokens.iter().any(|t| t == m) {
                tokens.push(m.to_string());
                types.push(token_type::CONTROL);
            }
        }
        let tok = Tokenizer::from_gguf(GgufTokenizerData {
            model: "gpt2".into(),
            pre: Some("qwen2".into()),
            tokens,
            token_types: Some(types),
            merges: v.merges,
            bos_id: Some(v.bos_id),
            eos_id: Some(v.eos_id),
            add_bos: Some(false),
            ..GgufTokenizerData::default()
        })
        .expect("tokenizer");
        for (format, reply) in cases {
            let ids = tok.encode(&format!("<|im_start|>{reply}"), false, true).expect("encode");
            let shown = |c: ControlText| {
                let mut s = StreamDecoder::showing(c);
                let text: String = ids.iter().map(|&id| s.push(&tok, id).expect("in vocabulary")).collect();
                text + &s.flush()
            };
            let markers = ControlText::Only(tok.control_ids(&format.markers()));
            assert_eq!(shown(markers), reply, "{format:?}");
            assert_eq!(shown(ControlText::Shown), format!("<|im_start|>{reply}"), "{format:?}");
            let hidden = shown(ControlText::Hidden);
            assert!(format.markers().iter().all(|m| !hidden.contains(m)), "{format:?}: {hidden}");
        }
    }
}
