//! A client for Polar's REST API, pinned to one API version
//! (`POLAR_API_VERSION`, sent as `Polar-Version` on every request), that is
//! polite by construction: one pacer for every request, so the client stays under the
//! configured rate; a `429` stops every request until its `Retry-After`
//! window is over (so no second 429 lands in the same window); transient
//! failures (5xx, timeouts, connection errors) are retried with backoff.
//! Errors name their cause and never carry the token.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, DATE, RETRY_AFTER};
use serde::Deserialize;
use serde_json::value::RawValue;

use hookstream_shared::retry::Retry;

use crate::config::PolarApiSettings;

/// Polar's largest page.
pub const PAGE_LIMIT: u32 = 100;
/// A `Retry-After` longer than this is taken as this (Polar sends the
/// window, 60 s); a broken header cannot park the client for hours.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How much of an error body an error message quotes.
const QUOTED_BODY: usize = 200;

/// Why a request to Polar failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "Polar refused POLAR_ACCESS_TOKEN ({status} on {path}): check the token and its scopes"
    )]
    Unauthorized { status: u16, path: String },
    #[error("Polar's API at {base} cannot be reached ({path}): {reason}")]
    Unreachable {
        base: String,
        path: String,
        reason: String,
    },
    #[error("Polar answered {status} to {path}: {body}")]
    Refused {
        status: u16,
        path: String,
        body: String,
    },
    #[error("Polar's answer to {path} is not what its API sends: {reason}")]
    Malformed { path: String, reason: String },
}

/// One page of a list endpoint.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Box<RawValue>>,
    pub total_count: u64,
    pub max_page: u64,
    /// When Polar answered, by its own clock (the `Date` header).
    pub answered_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct PageBody {
    items: Vec<Box<RawValue>>,
    pagination: Pagination,
}

#[derive(Deserialize)]
struct Pagination {
    total_count: u64,
    max_page: u64,
}

/// An answer with a body, as received.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: bytes::Bytes,
    pub answered_at: DateTime<Utc>,
}

/// What the client did, for progress lines, the summary and metrics.
#[derive(Debug, Default)]
pub struct ApiStats {
    pub requests: AtomicU64,
    /// `429`s answered, each followed by a wait of its `Retry-After`.
    pub rate_limited: AtomicU64,
    /// Transient failures retried.
    pub retries: AtomicU64,
    /// Microseconds spent waiting for answers (not for the pacer).
    pub request_micros: AtomicU64,
}

impl ApiStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    pub fn request_time(&self) -> Duration {
        Duration::from_micros(self.request_micros.load(Ordering::Relaxed))
    }
}

/// Polar's REST API for one organization token.
pub struct PolarApi {
    http: reqwest::Client,
    base: String,
    authorization: String,
    /// The earliest moment the next request may start.
    next_slot: Mutex<Instant>,
    spacing: Duration,
    /// How long one request's transient failures are retried.
    retry_for: Duration,
    /// The `Polar-Version` every request sends.
    version: String,
    pub stats: ApiStats,
}

impl std::fmt::Debug for PolarApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolarApi")
            .field("base", &self.base)
            .field("spacing", &self.spacing)
            .finish_non_exhaustive()
    }
}

/// Outcome of one attempt, before retries.
enum Attempt {
    Done(Answer),
    /// 429: wait this long, then try again.
    RateLimited(Duration),
    /// Worth trying again after a backoff.
    Transient(String),
    Failed(ApiError),
}

impl PolarApi {
    pub fn new(settings: &PolarApiSettings) -> anyhow::Result<Self> {
        hookstream_shared::tls::use_ring_provider();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            // Polar answers a missing trailing slash with a redirect; the
            // paths here are exact, and a redirect off the API host is never
            // followed with the token.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookstream/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: settings.base_url.trim_end_matches('/').to_owned(),
            authorization: format!("Bearer {}", settings.access_token.expose()),
            next_slot: Mutex::new(Instant::now()),
            spacing: Duration::from_secs_f64(60.0 / f64::from(settings.requests_per_minute)),
            retry_for: settings.retry_for,
            version: settings.api_version.clone(),
            stats: ApiStats::default(),
        })
    }

    /// The API version every request asks for.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// One page (from 1) of a list endpoint such as `/v1/customers/`, with
    /// `query` (already encoded, without `page` and `limit`) added.
    pub async fn page(&self, path: &str, query: &str, page: u64) -> Result<Page, ApiError> {
        let separator = if query.is_empty() { "" } else { "&" };
        let target = format!("{path}?{query}{separator}page={page}&limit={PAGE_LIMIT}");
        let answer = self.get(&target).await?;
        if answer.status != StatusCode::OK {
            return Err(refused(&target, &answer));
        }
        let body: PageBody =
            serde_json::from_slice(&answer.body).map_err(|e| ApiError::Malformed {
                path: target.clone(),
                reason: format!("not a page of items ({e})"),
            })?;
        Ok(Page {
            items: body.items,
            total_count: body.pagination.total_count,
            max_page: body.pagination.max_page,
            answered_at: answer.answered_at,
        })
    }

    /// `GET path`: any final answer (2xx or 4xx other than 401/403) after
    /// pacing, 429 waits and retries.
    pub async fn get(&self, path: &str) -> Result<Answer, ApiError> {
        let mut backoff = Retry::within(
            Duration::from_millis(500),
            Duration::from_secs(10),
            self.retry_for,
        );
        loop {
            self.wait_for_slot().await;
            match self.attempt(path).await {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Failed(e) => return Err(e),
                Attempt::RateLimited(wait) => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        path,
                        wait_s = wait.as_secs_f64(),
                        "Polar asked to slow down (429); waiting"
                    );
                    self.hold_all_requests(wait);
                }
                Attempt::Transient(reason) => match backoff.next_delay() {
                    Some(delay) => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(path, %reason, retry_in = ?delay, "Polar's API failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        return Err(ApiError::Unreachable {
                            base: self.base.clone(),
                            path: path.to_owned(),
                            reason,
                        });
                    }
                },
            }
        }
    }

    async fn attempt(&self, path: &str) -> Attempt {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let sent = self
            .http
            .get(format!("{}{path}", self.base))
            .header(AUTHORIZATION, &self.authorization)
            .header("polar-version", &self.version)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Attempt::Transient(transport_reason(&e)),
        };
        let status = response.status();
        let answered_at = response
            .headers()
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await;
        self.stats
            .request_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let body = match body {
            Ok(body) => body,
            Err(e) => return Attempt::Transient(transport_reason(&e)),
        };
        match status.as_u16() {
            429 => Attempt::RateLimited(
                retry_after
                    .unwrap_or(Duration::from_secs(60))
                    .min(LONGEST_RETRY_AFTER),
            ),
            401 | 403 => Attempt::Failed(ApiError::Unauthorized {
                status: status.as_u16(),
                path: path.to_owned(),
            }),
            500.. => Attempt::Transient(format!("{status}")),
            _ => Attempt::Done(Answer {
                status,
                body,
                answered_at,
            }),
        }
    }

    /// Waits for this request's turn: requests start at least `spacing` apart.
    async fn wait_for_slot(&self) {
        let wait = {
            let mut next = self.next_slot.lock().expect("pacer lock");
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + self.spacing;
            start - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// After a 429, no request of this client starts before `wait` is over.
    fn hold_all_requests(&self, wait: Duration) {
        let mut next = self.next_slot.lock().expect("pacer lock");
        *next = (*next).max(Instant::now() + wait);
    }
}

/// A final answer that is not what the caller needs, as an error.
pub fn refused(path: &str, answer: &Answer) -> ApiError {
    let text = String::from_utf8_lossy(&answer.body);
    let mut body: String = text.chars().take(QUOTED_BODY).collect();
    if text.chars().count() > QUOTED_BODY {
        body.push('…');
    }
    ApiError::Refused {
        status: answer.status.as_u16(),
        path: path.to_owned(),
        body,
    }
}

/// What went wrong below HTTP, without the URL (reqwest's own message
/// repeats it, and a query string could one day carry something private).
fn transport_reason(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}
