//! Rendering Hugging Face chat templates (Jinja) with `minijinja`.
//!
//! The environment mimics transformers' `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, Python string
//! methods (`.strip()`, `.startswith()`, `.split()`, ...) through minijinja-contrib's pycompat callback,
//! `raise_exception(msg)`, `strftime_now(fmt)` (UTC), loop controls (`break`/`continue`), and transformers' `tojson`
//! (Python's `json.dumps`: `", "` and `": "` separators, keys in their given order, non-ASCII kept unless
//! `ensure_ascii`, `indent`), so that tool schemas render as transformers renders them. The context holds
//! `messages` (plain [`ChatMessage`]s, or any JSON with tool calls and reasoning: [`ChatTemplate::render_json`]),
//! `add_generation_prompt`, `bos_token`, `eos_token`, and extra variables (`tools`, `enable_thinking`, ...).
//!
//! A template comes with the model file, so it is untrusted code: one render runs at most [`render_fuel`] template
//! instructions and writes at most [`render_bytes_max`] bytes, and an error names the template. (A template can
//! still build large strings in few instructions, by doubling one in a loop or a recursive macro: minijinja caps a
//! repeated string at 100 MB but not a concatenation; see docs/hardening.md.)

use minijinja::{context, Environment, ErrorKind, Value};
use serde::Serialize;

use crate::error::{Error, Result};

/// Template source bytes allowed.
pub const TEMPLATE_BYTES_MAX: usize = 1 << 20;

/// Template instructions one render may run: a fixed allowance and one per message. The ten templates of
/// shared/chat-templates (Qwen, GLM, DeepSeek, Kimi, gpt-oss, Mistral) take 150-370 for a four-message
/// conversation and 30-75 per further message; running out of 2 million takes about 0.15 s.
pub const RENDER_FUEL_BASE: u64 = 2_000_000;
pub const RENDER_FUEL_PER_MESSAGE: u64 = 2_000;
/// Bytes one render may write: a fixed allowance and a multiple of the input (messages and extra variables).
pub const RENDER_BYTES_BASE: usize = 4 << 20;
pub const RENDER_BYTES_PER_INPUT_BYTE: usize = 8;

/// The instructions a render of `n_messages` messages may run.
pub fn render_fuel(n_messages: usize) -> u64 {
    RENDER_FUEL_BASE.saturating_add(RENDER_FUEL_PER_MESSAGE.saturating_mul(n_messages as u64))
}

/// The bytes a render of input of `input_bytes` may write.
pub fn render_bytes_max(input_bytes: usize) -> usize {
    RENDER_BYTES_BASE.saturating_add(RENDER_BYTES_PER_INPUT_BYTE.saturating_mul(input_bytes))
}

const NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant", "tool".
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for errors ("the chat template of model.gguf").
    origin: String,
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`.
fn tojson(value: &Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(usize::try_from(v)?),
        None => None,
    };
    let mut json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e))?;
    if sort_keys == Some(true) {
        sort_json_keys(&mut json);
    }
    let mut out = String::new();
    super::pyjson::write(&json, indent, ensure_ascii.unwrap_or(false), 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn sort_json_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.sort_keys();
            m.values_mut().for_each(sort_json_keys);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(sort_json_keys),
        _ => {}
    }
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A `strftime` subset for UTC: %Y %y %m %d %e %B %b %A %a %H %M %S %j %%; other specifiers are kept verbatim.
fn strftime_utc(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = days_before + day + i64::from(leap && month > 2);
    let month_name = MONTHS[(month - 1) as usize];
    let weekday = DAYS[(days % 7) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{:02}", secs_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs_of_day % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

fn template_error_of(origin: &str, e: minijinja::Error) -> Error {
    use std::fmt::Write;
    let mut msg = format!("{origin}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    Error::Tokenizer(msg)
}

impl ChatTemplate {
    /// Compiles a template; syntax errors are reported here, not at render time.
    pub fn new(source: &str) -> Result<ChatTemplate> {
        Self::named(source, "chat template")
    }

    /// [`ChatTemplate::new`], naming the template `origin` in errors ("the chat template of model.gguf").
    pub fn named(source: &str, origin: &str) -> Result<ChatTemplate> {
        if source.len() > TEMPLATE_BYTES_MAX {
            return Err(Error::Tokenizer(format!(
                "chat template is {} bytes, more than the {TEMPLATE_BYTES_MAX} allowed",
                source.len()
            )));
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |format: String| strftime_utc(&format, now_secs()));
        env.add_filter("tojson", tojson);
        // Python's `iter()` refuses None (minijinja iterates it as empty): `tools is iterable` must be false when
        // no tools are given.
        env.add_test("iterable", |v: Value| {
            use minijinja::value::ValueKind;
            matches!(
                v.kind(),
                ValueKind::String | ValueKind::Bytes | ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
            )
        });
        env.add_template_owned(NAME, source.to_string()).map_err(|e| template_error_of(origin, e))?;
        Ok(ChatTemplate { env, origin: origin.to_string() })
    }

    /// Makes `strftime_now` tell the time `unix_secs` (UTC) instead of the current time (reproducible renders).
    pub fn set_clock(&mut self, unix_secs: u64) {
        self.env.add_function("strftime_now", move |format: String| strftime_utc(&format, unix_secs));
    }

    /// Renders `messages` into the prompt text the model was trained on.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String> {
        self.render_with(messages, add_generation_prompt, bos_token, eos_token, &serde_json::Value::Null)
    }

    /// [`ChatTemplate::render`] with extra template variables from a JSON object (`{"enable_thinking": false}`,
    /// `{"tools": [...]}`); `null` adds none. The fixed variables win over extras of the same name.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        extra: &serde_json::Value,
    ) -> Result<String> {
        let messages = serde_json::to_value(messages).map_err(|e| Error::Tokenizer(format!("messages: {e}")))?;
        self.render_json(&messages, add_generation_prompt, bos_token, eos_token, extra)
    }

    /// [`ChatTemplate::render_with`] for messages given as JSON (an array of objects with `role`, `content` and
    /// whatever else the template reads: `tool_calls`, `reasoning_content`, `tool_call_id`, ...), keys in their
    /// given order.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        extra: &serde_json::Value,
    ) -> Result<String> {
        if !(extra.is_null() || extra.is_object()) {
            return Err(Error::Tokenizer(format!("chat template variables must be a JSON object, not {extra}")));
        }
        let input_bytes = messages.to_string().len() + if extra.is_null() { 0 } else { extra.to_string().len() };
        let n_messages = messages.as_array().map_or(1, Vec::len);
        let fuel = render_fuel(n_messages);
        let mut out = BoundedOutput { bytes: Vec::new(), max: render_bytes_max(input_bytes), overflowed: false };
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let template = env.get_template(NAME).map_err(|e| template_error_of(&self.origin, e))?;
        let rendered = template.render_captured_to(
            context! {
                messages => Value::from_serialize(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token.unwrap_or(""),
                eos_token => eos_token.unwrap_or(""),
                ..Value::from_serialize(extra)
            },
            &mut out,
        );
        match rendered {
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|_| Error::Tokenizer(format!("{}: the rendered prompt is not UTF-8", self.origin))),
            Err(_) if out.overflowed => Err(Error::Tokenizer(format!(
                "{}: rendering stopped: the prompt passed {} bytes (for {input_bytes} bytes of messages); a \
                 template that repeats its output without end?",
                self.origin, out.max
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::Tokenizer(format!(
                "{}: rendering stopped after {fuel} template steps (for {n_messages} messages); a loop that does not \
                 end?",
                self.origin
            ))),
            Err(e) => Err(template_error_of(&self.origin, e)),
        }
    }
}

/// The render's output, refusing to grow past `max` bytes.
struct BoundedOutput {
    bytes: Vec<u8>,
    max: usize,
    overflowed: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.max {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendered prompt is too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime_utc("%Y-%m-%d %H:%M:%S %a %j", 0), "1970-01-01 00:00:00 Thu 001");
        // 2024-02-29 12:34:56 UTC, a Thursday, day 60.
        assert_eq!(strftime_utc("%d %B %Y %A %j %b %%", 1_709_210_096), "29 February 2024 Thursday 060 Feb %");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'é' | tojson }}|{{ 'é' | tojson(ensure_ascii=True) }}",
        )
        .expect("compiles");
        let x = serde_json::json!({"b": [1, 2.5, true, null], "a": "q\"<"});
        let out =
            t.render_json(&serde_json::json!([]), false, None, None, &serde_json::json!({"x": x})).expect("renders");
        assert_eq!(
            out,
            "{\"b\": [1, 2.5, true, null], \"a\": \"q\\\"<\"}|{\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"a\": \"q\\\"<\"\n}|\"é\"|\"\\u00e9\""
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}").expect("compiles");
        let e = t.render(&[], false, None, None).expect_err("must fail");
        assert!(e.to_string().contains("no system role"), "{e}");
    }

    #[test]
    fn python_string_methods_and_loop_controls() {
        let src = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}\
                   {{ m.content.strip().upper() }}|{{ m.role.startswith('us') }}{% endfor %}";
        let t = ChatTemplate::new(src).expect("compiles");
        let out = t.render(&[ChatMessage::new("user", "  hi "), ChatMessage::new("user", "x")], false, None, None);
        assert_eq!(out.expect("renders"), "HI|True");
    }
}
