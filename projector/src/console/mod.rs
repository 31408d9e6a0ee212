//! The operator console, `/console/`: why a customer has or lacks access,
//! what came in, and what failed, on server-rendered pages in the
//! projector's own process (off with `PROJECTOR_CONSOLE=false`).
//!
//! - `overview`: traffic, lag, backlog, failures, reconcile, generations.
//! - `customers`: search, a customer's state and timeline, the benefit
//!   check with its reasons.
//! - `events`: one logged event and where it went.
//! - `failures`: apply failures, and re-applying them.
//! - `evidence`: what an event did to the projection (which rows, and
//!   whether its version is still the current one), for the timeline and
//!   the event page.
//! - `session`: login and CSRF; `layout`: the page shell.
//!
//! Every page needs a login with one of the console's tokens. Nothing
//! secret is rendered: ingest keeps no signature, and tokens never leave
//! the login form.

mod customers;
mod events;
mod evidence;
mod failures;
mod layout;
mod overview;
mod session;

pub use session::prune_ended as prune_ended_sessions;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use hookstream_shared::config::Secret;

use crate::api::{ApiState, FailureThrottle};

/// Where the console is mounted; every link is built from it.
pub const PREFIX: &str = "/console/";

/// What console handlers share.
#[derive(Debug, Clone)]
pub struct ConsoleState(Arc<ConsoleShared>);

#[derive(Debug)]
pub struct ConsoleShared {
    /// The read API's state: the pool, the metrics, the entitlement check.
    pub api: ApiState,
    /// The tokens a login accepts.
    pub tokens: Vec<Secret>,
    /// The consumer's topic and group, for positions and lag.
    pub topic: String,
    pub group: String,
    /// Whether the change feed is written (re-applying announces into it).
    pub feed_on: bool,
    /// Slows down clients that keep trying wrong tokens at the login.
    pub throttle: FailureThrottle,
}

impl ConsoleState {
    pub fn new(shared: ConsoleShared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for ConsoleState {
    type Target = ConsoleShared;

    fn deref(&self) -> &ConsoleShared {
        &self.0
    }
}

pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent(PREFIX) }))
        .route("/console/", get(overview::page))
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/assets/console.css", get(layout::stylesheet))
        .route("/console/customers", get(customers::search))
        .route("/console/customers/{customer_id}", get(customers::page))
        .route("/console/events/{seq}", get(events::page))
        .route("/console/failures", get(failures::page))
        .route("/console/failures/reapply", post(failures::reapply))
        .route("/console/{*rest}", get(not_found))
        .layer(middleware::from_fn(console_headers))
        .layer(middleware::from_fn(refuse_nul))
        .with_state(state)
}

async fn not_found(_: session::Operator) -> Response {
    ConsoleError::NotFound("No such page.").into_response()
}

/// Headers every console answer carries: no caching of customer data, no
/// framing, no scripts or foreign resources, and the server time the page
/// took (`Server-Timing`, which the console benchmark reads).
async fn console_headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let is_asset = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/css"));
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(timing) = HeaderValue::from_str(&format!(
        "app;dur={:.2}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        headers.insert("server-timing", timing);
    }
    response
}

/// Postgres text cannot hold NUL; a search for it is refused, not a 500.
async fn refuse_nul(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if uri.path().contains("%00") || uri.query().is_some_and(|q| q.contains("%00")) {
        return ConsoleError::BadRequest("The address contains a NUL character (%00).".to_owned())
            .into_response();
    }
    next.run(request).await
}

/// Why a console page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    /// Logged with its cause; the page says only that something failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ConsoleError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound(what) => (
                StatusCode::NOT_FOUND,
                layout::message_page("Not found", what),
            )
                .into_response(),
            Self::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                layout::message_page("Bad request", &why),
            )
                .into_response(),
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    layout::message_page(
                        "Something failed",
                        "The page could not be built; the projector's log says why.",
                    ),
                )
                    .into_response()
            }
        }
    }
}
