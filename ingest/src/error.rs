//! Every way a webhook request can fail, with its status and stable code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use hookstream_shared::envelope::{EnvelopeError, MAX_API_VERSION_LEN};
use hookstream_shared::http::error_response;

use crate::appender::AppendError;
use crate::signature::VerifyError;

/// `Retry-After` when the queue is full: the backlog clears in well under a second.
const RETRY_AFTER_OVERLOADED: &str = "1";
/// `Retry-After` when the database cannot take writes: give it a moment.
const RETRY_AFTER_UNAVAILABLE: &str = "5";

pub type Result<T, E = IngestError> = std::result::Result<T, E>;

/// A refused webhook. Nothing was stored for any of these.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no webhook source is configured at this path")]
    UnknownSource,
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("body was not received in time")]
    BodyTimeout,
    #[error("body could not be read")]
    BodyUnreadable,
    #[error("signature verification failed: {0}")]
    Unverified(#[from] VerifyError),
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    InvalidPayload(#[from] EnvelopeError),
    #[error(
        "webhook-api-version must be sent once, as 1 to {MAX_API_VERSION_LEN} visible ASCII characters"
    )]
    BadApiVersion,
    #[error("too many webhooks in flight; retry shortly")]
    Overloaded,
    #[error("the event log cannot take the write right now; retry shortly")]
    LogUnavailable,
}

impl From<AppendError> for IngestError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::QueueFull => Self::Overloaded,
            AppendError::Unavailable => Self::LogUnavailable,
        }
    }
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSource => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyUnreadable | Self::InvalidPayload(_) | Self::BadApiVersion => {
                StatusCode::BAD_REQUEST
            }
            Self::Unverified(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Overloaded | Self::LogUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable code in the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BodyUnreadable => "body_unreadable",
            Self::Unverified(e) => e.reason(),
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::BadApiVersion => "invalid_api_version",
            Self::Overloaded => "overloaded",
            Self::LogUnavailable => "event_log_unavailable",
        }
    }

    /// The `outcome` label in the requests metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::PayloadTooLarge { .. } => "too_large",
            Self::BodyTimeout
            | Self::BodyUnreadable
            | Self::InvalidPayload(_)
            | Self::BadApiVersion => "bad_request",
            Self::Unverified(_) => "unauthorized",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Overloaded => "overloaded",
            Self::LogUnavailable => "unavailable",
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut response = error_response(self.status(), self.code(), self.to_string());
        let retry_after = match self {
            Self::Overloaded => Some(RETRY_AFTER_OVERLOADED),
            Self::LogUnavailable => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}
