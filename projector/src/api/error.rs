//! Read API errors, in the shapes Polar's SDK expects: `{"error": <Polar's
//! error name>, "detail": ...}`. Unknown routes and methods answer in the
//! same shape, so a client of the read API meets one shape only.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A failed read.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Unknown or deleted: Polar's `ResourceNotFound`.
    #[error("not found")]
    NotFound,
    /// The same, with Polar's own words for what was not found.
    #[error("not found: {0}")]
    NotFoundWith(&'static str),
    /// A route of Polar's API that hookstream does not serve (a write, the
    /// customer portal, license keys...): 501, never a 404 an SDK would
    /// read as "this object does not exist".
    #[error("not served: {method} {path}")]
    NotServed { method: String, path: String },
    /// Pydantic's own problems, as Polar's server lists them (422).
    #[error("invalid request")]
    Invalid(Vec<serde_json::Value>),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Too many wrong tokens from this client lately (429, with
    /// `Retry-After`); its token was not checked.
    #[error("too many failed attempts")]
    TooManyRequests { retry_after: std::time::Duration },
    /// The change feed no longer holds what was asked for (410).
    #[error("gone: {0}")]
    Gone(String),
    /// A known path asked with a method it does not answer.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Bad path or query parameters: Polar's `RequestValidationError` (422),
    /// one entry per problem: where (`query` or `path`), which, and why.
    #[error("invalid request")]
    Validation(Vec<(&'static str, String, String)>),
    /// Logged with its cause; the client sees only that something failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl ApiError {
    /// One validation problem with a query parameter.
    pub fn invalid(parameter: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![("query", parameter.to_owned(), message.into())])
    }

    /// One validation problem with the path.
    pub fn invalid_path(message: impl Into<String>) -> Self {
        Self::Validation(vec![("path", "path".to_owned(), message.into())])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "ResourceNotFound", "detail": "Not found"})),
            )
                .into_response(),
            Self::NotFoundWith(detail) => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "ResourceNotFound", "detail": detail})),
            )
                .into_response(),
            Self::NotServed { method, path } => (
                StatusCode::NOT_IMPLEMENTED,
                Json(json!({
                    "error": "NotServed",
                    "detail": format!("{method} {path} is served by Polar's API, not by hookstream"),
                })),
            )
                .into_response(),
            Self::Invalid(problems) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": "RequestValidationError", "detail": problems})),
            )
                .into_response(),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "Unauthorized", "detail": "Missing or invalid bearer token"})),
            )
                .into_response(),
            Self::TooManyRequests { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                [(
                    axum::http::header::RETRY_AFTER,
                    retry_after.as_secs().max(1).to_string(),
                )],
                Json(json!({
                    "error": "TooManyRequests",
                    "detail": "Too many requests with a wrong token from this address; retry later"
                })),
            )
                .into_response(),
            Self::Gone(detail) => (
                StatusCode::GONE,
                Json(json!({"error": "CursorExpired", "detail": detail})),
            )
                .into_response(),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"error": "MethodNotAllowed", "detail": "Method not allowed"})),
            )
                .into_response(),
            Self::Validation(problems) => {
                let detail: Vec<_> = problems
                    .into_iter()
                    .map(|(location, parameter, msg)| json!({"loc": [location, parameter], "msg": msg, "type": "value_error"}))
                    .collect();
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({ "error": "RequestValidationError", "detail": detail })),
                )
                    .into_response()
            }
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "read API failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": "InternalServerError", "detail": "The projector could not answer"})),
                )
                    .into_response()
            }
        }
    }
}
