//! The library's error type: every operating error a user can hit, with the context needed to act on it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every string in an error's message that may come from a file (names, values, messages quoting them) is shown
/// through [`printable`]: control characters escaped, long strings cut.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", shown_path(.path))]
    Io { path: PathBuf, source: std::io::Error },

    /// The file is not what it claims to be: bad magic, truncated, inconsistent header.
    #[error("{}: {}", shown_path(.path), printable(.msg, MESSAGE_CHARS_MAX))]
    Format { path: PathBuf, msg: String },

    #[error(
        "{}: tensor '{}' has type {} (id {type_id}), which flash-moe does not support",
        shown_path(.path), printable(.tensor, NAME_CHARS_MAX), printable(.type_name, NAME_CHARS_MAX)
    )]
    UnsupportedDType { path: PathBuf, tensor: String, type_id: u32, type_name: String },

    #[error("{}: tensor '{}' is missing", shown_path(.path), printable(.tensor, NAME_CHARS_MAX))]
    MissingTensor { path: PathBuf, tensor: String },

    #[error(
        "{}: tensor '{}' has shape {got:?}, but the model config implies {expected:?}",
        shown_path(.path), printable(.tensor, NAME_CHARS_MAX)
    )]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, got: Vec<usize> },

    #[error(
        "{}: tensor '{}' has type {}, which this layer cannot use: {}",
        shown_path(.path), printable(.tensor, NAME_CHARS_MAX), printable(.dtype, NAME_CHARS_MAX),
        printable(.msg, MESSAGE_CHARS_MAX)
    )]
    BadTensorType { path: PathBuf, tensor: String, dtype: String, msg: String },

    #[error(
        "{}: unknown architecture '{}' (supported: {supported})",
        shown_path(.path), printable(.arch, NAME_CHARS_MAX)
    )]
    UnknownArchitecture { path: PathBuf, arch: String, supported: String },

    /// A missing or contradictory model configuration value.
    #[error("{}: {}", shown_path(.path), printable(.msg, MESSAGE_CHARS_MAX))]
    Config { path: PathBuf, msg: String },

    #[error("tokenizer: {}", printable(.0, MESSAGE_CHARS_MAX))]
    Tokenizer(String),

    #[error("the prompt is empty: give some text with -p (or token ids with --tokens)")]
    EmptyPrompt,

    #[error("the prompt has {n_tokens} tokens but the context holds {n_ctx}: shorten the prompt or raise --ctx-size")]
    PromptTooLong { n_tokens: usize, n_ctx: usize },

    #[error("the context is full ({n_ctx} tokens): raise --ctx-size")]
    ContextFull { n_ctx: usize },

    #[error("token id {id} is outside the vocabulary (size {n_vocab})")]
    TokenOutOfRange { id: u32, n_vocab: usize },

    #[error("{}", printable(.0, MESSAGE_CHARS_MAX))]
    Invalid(String),
}

/// Characters shown of a name (tensor, architecture, type) in an error message.
pub const NAME_CHARS_MAX: usize = 200;
/// Characters shown of a whole message (which may quote names and values from a file).
pub const MESSAGE_CHARS_MAX: usize = 2000;

/// `s` as an error message shows it: control characters (a terminal's escape sequences, newlines, NULs) escaped
/// as `\u{1b}`, and cut after `chars_max` characters with the number of bytes left out, so that a hostile file can
/// neither drive the terminal nor flood it.
pub fn printable(s: &str, chars_max: usize) -> std::borrow::Cow<'_, str> {
    let long = s.chars().nth(chars_max).is_some();
    if !long && !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::new();
    for (shown, (i, c)) in s.char_indices().enumerate() {
        if shown == chars_max {
            out.push_str(&format!("... ({} more bytes)", s.len() - i));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A path as an error message shows it (see [`printable`]).
fn shown_path(path: &std::path::Path) -> String {
    printable(&path.display().to_string(), MESSAGE_CHARS_MAX).into_owned()
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::Format { path: path.into(), msg: msg.into() }
    }

    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::Config { path: path.into(), msg: msg.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_and_cuts_long_strings() {
        assert_eq!(printable("plain", 10), "plain");
        assert_eq!(printable("a\x1b[31mb\nc", 100), "a\\u{1b}[31mb\\u{a}c");
        assert_eq!(printable("abcdef", 3), "abc... (3 more bytes)");
        assert_eq!(printable("ééé", 1), "é... (4 more bytes)");
        let e = Error::UnknownArchitecture {
            path: PathBuf::from("m\x07.gguf"),
            arch: format!("\x1b[2J{}", "x".repeat(10_000)),
            supported: "llama".into(),
        };
        let text = e.to_string();
        assert!(!text.chars().any(char::is_control), "{text}");
        assert!(text.len() < 400 && text.contains("m\\u{7}.gguf") && text.contains("more bytes"), "{text}");
    }
}
