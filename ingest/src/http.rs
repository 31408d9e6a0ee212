//! The HTTP surface: `POST /webhooks/{source}`, health and readiness on the
//! webhook listener; metrics (with health and readiness again) on a
//! listener of their own, which need not be public.
//!
//! The webhook handler runs the checks in a fixed order (source, declared
//! size, signature headers, body, signature, content type, envelope, API
//! version header) and
//! reserves a slot or touches the database only for an event that passed
//! all of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::IntCounter;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use hookstream_shared::envelope;
use hookstream_shared::event_log::Appended;
use hookstream_shared::http::{error_response, healthz, metrics_response, readyz};

use crate::appender::Appender;
use crate::config::HttpSettings;
use crate::error::{IngestError, Result};
use crate::metrics::IngestMetrics;
use crate::signature::Verifier;

/// The header that names the API version a webhook's payload is written in.
pub const HEADER_API_VERSION: &str = "webhook-api-version";

/// One configured source: its verifier and the counters its accepted
/// requests bump (resolved once, not per request).
#[derive(Debug)]
pub struct Source {
    pub verifier: Verifier,
    accepted: IntCounter,
    duplicate: IntCounter,
}

impl Source {
    pub fn new(name: &str, verifier: Verifier, metrics: &IngestMetrics) -> Self {
        Self {
            verifier,
            accepted: metrics.requests.with_label_values(&[name, "accepted"]),
            duplicate: metrics.requests.with_label_values(&[name, "duplicate"]),
        }
    }
}

/// What every handler shares, behind one `Arc`.
#[derive(Debug)]
pub struct AppState {
    pub sources: HashMap<String, Source>,
    pub appender: Appender,
    pub pool: PgPool,
    pub metrics: IngestMetrics,
    pub limits: HttpSettings,
    /// Bounds verified webhooks waiting for their commit; when none is
    /// free, 503 at once.
    pub in_flight: Semaphore,
}

/// The webhook listener's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/{source}", post(receive_webhook))
        .merge(health_routes())
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

/// The metrics listener's routes: Prometheus text, and health for probes
/// that use this port.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState>>| async move { metrics_response(&s.metrics.registry) }),
        )
        .merge(health_routes())
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

fn health_routes() -> Router<Arc<AppState>> {
    Router::new().route("/healthz", get(healthz)).route(
        "/readyz",
        get(|State(s): State<Arc<AppState>>| async move { readyz(&s.pool).await }),
    )
}

/// The body of a 200: whether the event was new, and its place in the log.
#[derive(Debug, Serialize)]
struct Accepted {
    status: &'static str,
    seq: i64,
}

async fn receive_webhook(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // Unknown sources are counted under one label so a scan of random paths
    // cannot blow up the metric's cardinality.
    let source_label = if state.sources.contains_key(&source) {
        source.as_str()
    } else {
        "unknown"
    };
    match handle(&state, &source, &headers, body).await {
        Ok(appended) => {
            // Only a configured source gets this far.
            let counters = &state.sources[&source];
            let status = match appended {
                Appended::New { .. } => {
                    counters.accepted.inc();
                    "accepted"
                }
                Appended::Duplicate { seq, same_body } => {
                    counters.duplicate.inc();
                    if !same_body {
                        state.metrics.duplicate_body_mismatch.inc();
                        tracing::warn!(
                            source = %source,
                            seq,
                            webhook_id = %headers.get(crate::signature::HEADER_ID).and_then(|v| v.to_str().ok()).unwrap_or_default(),
                            "a correctly signed delivery of a logged webhook-id carries a different body: \
                             the signing secret may have leaked, or the sender reuses ids; the logged event stands"
                        );
                    }
                    "duplicate"
                }
            };
            state
                .metrics
                .request_seconds
                .observe(started.elapsed().as_secs_f64());
            tracing::debug!(source = %source, seq = appended.seq(), status, "webhook stored");
            (
                StatusCode::OK,
                axum::Json(Accepted {
                    status,
                    seq: appended.seq(),
                }),
            )
                .into_response()
        }
        Err(e) => {
            state
                .metrics
                .requests
                .with_label_values(&[source_label, e.outcome()])
                .inc();
            if let IngestError::Unverified(reason) = &e {
                state
                    .metrics
                    .verification_failures
                    .with_label_values(&[source_label, reason.reason()])
                    .inc();
            }
            tracing::debug!(source = %source_label, error = %e, "webhook refused");
            e.into_response()
        }
    }
}

/// The checks, cheapest and least trusting first. Nothing is reserved for
/// a request until it is proven to come from the source: its length is
/// declared within the limit, its signature headers are well formed and
/// fresh, its body arrived at a decent rate and its signature matches. Only
/// then does it take an in-flight slot, so an unauthenticated or slow client
/// costs a socket and never a commit slot.
async fn handle(
    state: &AppState,
    source: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Appended> {
    let verifier = &state
        .sources
        .get(source)
        .ok_or(IngestError::UnknownSource)?
        .verifier;
    let limit = state.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    let signed = verifier.check_headers(headers, unix_now())?;
    let deadline = state.limits.body_deadline(declared);
    let body = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Err(_) => return Err(IngestError::BodyTimeout),
        Ok(Err(e)) if is_length_limit(&e) => {
            return Err(IngestError::PayloadTooLarge { limit });
        }
        Ok(Err(_)) => return Err(IngestError::BodyUnreadable),
        Ok(Ok(bytes)) => bytes,
    };
    let webhook = signed.verify(body)?;

    if !is_json_content_type(headers) {
        return Err(IngestError::UnsupportedMediaType);
    }
    let mut envelope = envelope::parse(webhook.body())?;
    if let Some(version) = header_api_version(headers)? {
        envelope.api_version = Some(version);
    }
    let _slot = state
        .in_flight
        .try_acquire()
        .map_err(|_| IngestError::Overloaded)?;
    let span = tracing::debug_span!("append", webhook_id = %webhook.webhook_id(), event_type = %envelope.event_type);
    Ok(state
        .appender
        .append(source, webhook, envelope)
        .instrument(span)
        .await?)
}

/// The `webhook-api-version` Polar sends with every delivery (the
/// endpoint's API version), which is kept with the event. It is not signed,
/// so it is held to the shape of a version; absent, the body's
/// `api_version` is kept instead.
fn header_api_version(headers: &HeaderMap) -> Result<Option<String>> {
    let mut values = headers.get_all(HEADER_API_VERSION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(IngestError::BadApiVersion);
    }
    value
        .to_str()
        .ok()
        .and_then(envelope::usable_api_version)
        .map(|v| Some(v.to_owned()))
        .ok_or(IngestError::BadApiVersion)
}

/// A missing content type is tolerated (the signature already proves the
/// sender); a declared non-JSON one is refused.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return true;
    };
    if values.next().is_some() {
        return false;
    }
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
