//! Errors a request can get, and their bodies in each API's shape: OpenAI's `{"error": {"message", "type",
//! "param", "code"}}` and Anthropic's `{"type": "error", "error": {"type", "message"}}`.

use serde_json::{json, Value};

/// Which API's error shape to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Anthropic,
}

/// A request's failure: an HTTP status and a message for the client.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status} {message}")]
pub struct ApiError {
    pub status: u16,
    pub kind: Kind,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
}

/// What went wrong, as both APIs name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    InvalidRequest,
    Authentication,
    NotFound,
    TooLarge,
    RateLimit,
    Overloaded,
    Server,
}

impl ApiError {
    pub fn new(status: u16, kind: Kind, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), param: None }
    }

    /// 400: the request is wrong.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, Kind::InvalidRequest, message)
    }

    /// 400 about one field.
    pub fn field(param: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError { param: Some(param.to_string()), ..ApiError::invalid(format!("{param}: {message}")) }
    }

    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError::new(500, Kind::Server, message)
    }

    /// The body in `flavor`'s shape.
    pub fn body(&self, flavor: Flavor) -> Value {
        match flavor {
            Flavor::OpenAi => {
                let kind = match self.kind {
                    Kind::InvalidRequest | Kind::TooLarge => "invalid_request_error",
                    Kind::Authentication => "authentication_error",
                    Kind::NotFound => "not_found_error",
                    Kind::RateLimit | Kind::Overloaded => "rate_limit_error",
                    Kind::Server => "server_error",
                };
                json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}})
            }
            Flavor::Anthropic => {
                let kind = match self.kind {
                    Kind::InvalidRequest => "invalid_request_error",
                    Kind::Authentication => "authentication_error",
                    Kind::NotFound => "not_found_error",
                    Kind::TooLarge => "request_too_large",
                    Kind::RateLimit => "rate_limit_error",
                    Kind::Overloaded => "overloaded_error",
                    Kind::Server => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": self.message}})
            }
        }
    }
}

/// Errors of starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
