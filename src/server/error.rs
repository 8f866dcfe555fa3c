//! API errors in OpenAI's shape: a status code and `{"error": {"message", "type", "param",
//! "code"}}`, so the official clients raise their usual exception types.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

use serde::Serialize;

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<Cow<'static, str>>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400 for a request that cannot be served as written.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(Cow::Borrowed(param)),
            ..ApiError::bad_request(message)
        }
    }

    /// 400 naming a field known only at run time (an unknown field's name).
    pub fn invalid_owned(param: String, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(Cow::Owned(param)),
            ..ApiError::bad_request(message)
        }
    }

    /// 400 for prompt + max_tokens over the context window.
    pub fn context_length(prompt: usize, max_tokens: usize, ctx: usize) -> ApiError {
        ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                "max_tokens",
                format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({prompt} in the prompt, {max_tokens} for the completion).",
                    prompt + max_tokens
                ),
            )
        }
    }

    /// 400 for a prompt that alone fills the context: no `max_tokens` could make it fit, so
    /// the prompt is the field at fault.
    pub fn prompt_too_long(prompt: usize, ctx: usize) -> ApiError {
        ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                "prompt",
                format!(
                    "This model's maximum context length is {ctx} tokens. However, your prompt is {prompt} tokens, which leaves no room for a completion. Please reduce the length of the prompt."
                ),
            )
        }
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the {limit}-byte limit"),
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "a valid API key is required (Authorization: Bearer KEY)",
            )
        }
    }

    /// 429: the request queue is full; `Retry-After` goes with it.
    pub fn queue_full() -> ApiError {
        ApiError {
            code: Some("queue_full"),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "the server is busy: the request queue is full; retry shortly",
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 503: the engine is gone (shutting down or failed).
    pub fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine is not running",
        )
    }

    /// 503: the engine runs no more (a device fault it could not recover from).
    pub fn engine_failed(why: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!("the engine cannot run: {why}"),
        )
    }

    /// The JSON body, `{"error": {...}}`.
    pub fn to_json(&self) -> String {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        serde_json::to_string(&body)
            .unwrap_or_else(|_| r#"{"error":{"message":"error","type":"server_error"}}"#.into())
    }

    /// The inner object alone (for WebSocket error frames).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::json!({ "message": self.message, "type": self.kind, "param": self.param, "code": self.code })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}
