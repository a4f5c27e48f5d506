//! The library's error type: every operating error a user can hit, with the context needed to act on it.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// The file is not what it claims to be: bad magic, truncated, inconsistent header.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    #[error("{path}: tensor '{tensor}' has type {type_name} (id {type_id}), which flash-moe does not support")]
    UnsupportedDType { path: PathBuf, tensor: String, type_id: u32, type_name: String },

    #[error("{path}: tensor '{tensor}' is missing")]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{path}: tensor '{tensor}' has shape {got:?}, but the model config implies {expected:?}")]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, got: Vec<usize> },

    #[error("{path}: tensor '{tensor}' has type {dtype}, which this layer cannot use: {msg}")]
    BadTensorType { path: PathBuf, tensor: String, dtype: String, msg: String },

    #[error("{path}: unknown architecture '{arch}' (supported: {supported})")]
    UnknownArchitecture { path: PathBuf, arch: String, supported: String },

    /// A missing or contradictory model configuration value.
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("the prompt is empty: give some text with -p (or token ids with --tokens)")]
    EmptyPrompt,

    #[error("the prompt has {n_tokens} tokens but the context holds {n_ctx}: shorten the prompt or raise --ctx-size")]
    PromptTooLong { n_tokens: usize, n_ctx: usize },

    #[error("the context is full ({n_ctx} tokens): raise --ctx-size")]
    ContextFull { n_ctx: usize },

    #[error("token id {id} is outside the vocabulary (size {n_vocab})")]
    TokenOutOfRange { id: u32, n_vocab: usize },

    #[error("{0}")]
    Invalid(String),
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
