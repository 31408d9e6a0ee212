//! Pushing the change feed to the app: every change is POSTed to
//! `PROJECTOR_NOTIFY_URL`, signed with Standard Webhooks under
//! `PROJECTOR_NOTIFY_SECRET` (a `whsec_` key), so the app verifies it with
//! the library it uses for Polar's webhooks, and a serverless app needs no
//! long-lived process to hear about changes.
//!
//! - One replica delivers at a time (a session advisory lock held on a
//!   connection of its own: a leader that dies loses it with its connection).
//! - In cursor order, so in order per customer; at least once: the position
//!   (`projection_push_position`) moves only after a 2xx, so a crash
//!   resends what was in flight (same `webhook-id`: `change_<cursor>`).
//! - Retried with exponential backoff on a non-2xx, a timeout or a refused
//!   connection. After `PROJECTOR_NOTIFY_PARK_AFTER` failures in a row the
//!   delivery is parked: a log line and `push_parked` say so, and it keeps
//!   trying at the longest interval, so it resumes by itself when the app
//!   answers again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookstream_shared::config::{ConfigError, Secret, Settings};
use hookstream_shared::retry::Retry;
use hookstream_shared::{db, signing};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

use crate::api::waiters::Waiters;
use crate::feed::{self, Change, ReadError};
use crate::metrics::ProjectorMetrics;

/// Session advisory lock held by the replica that delivers.
const PUSH_LEADER_KEY: i64 = 0x686f_6f6b_7075_7368; // "hookpush"
/// Changes read from the feed at a time.
const PAGE: i64 = 100;
/// Longest pause between two attempts at one change (and a parked one's).
const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Where and how changes are pushed.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// `PROJECTOR_NOTIFY_URL`: the app's endpoint; push is off without it.
    pub url: String,
    /// `PROJECTOR_NOTIFY_SECRET`: a Standard Webhooks secret (`whsec_` and
    /// base64). Never logged; its key is decoded where it signs.
    pub secret: Secret,
    /// `PROJECTOR_NOTIFY_TIMEOUT_MS` (10000): how long one attempt may take.
    pub timeout: Duration,
    /// `PROJECTOR_NOTIFY_PARK_AFTER` (10): failures in a row before a
    /// delivery is reported parked.
    pub park_after: u32,
}

impl PushSettings {
    /// `None` unless `PROJECTOR_NOTIFY_URL` is set; then the secret is required.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, ConfigError> {
        let Some(url) = settings.get("PROJECTOR_NOTIFY_URL")? else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(&url)
            .map_err(|_| ConfigError::new("PROJECTOR_NOTIFY_URL", "must be an http(s) URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "PROJECTOR_NOTIFY_URL",
                "must be an http(s) URL",
            ));
        }
        let secret = settings.required("PROJECTOR_NOTIFY_SECRET")?;
        if signing::standard_key(&secret).is_none() {
            return Err(ConfigError::new(
                "PROJECTOR_NOTIFY_SECRET",
                "must be a Standard Webhooks secret: whsec_ followed by base64",
            ));
        }
        Ok(Some(Self {
            url,
            secret: Secret::new(&secret),
            timeout: settings.millis_or("PROJECTOR_NOTIFY_TIMEOUT_MS", 10_000)?,
            park_after: settings
                .parse_or("PROJECTOR_NOTIFY_PARK_AFTER", 10u32)?
                .max(1),
        }))
    }
}

/// Delivers until `stop`: leads when it can, else waits to.
pub async fn run(
    pool: PgPool,
    connect: PgConnectOptions,
    settings: PushSettings,
    waiters: Arc<Waiters>,
    metrics: ProjectorMetrics,
    stop: CancellationToken,
) {
    hookstream_shared::tls::use_ring_provider();
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the push client; changes are not pushed");
            return;
        }
    };
    let pusher = Pusher {
        pool,
        settings,
        waiters,
        metrics,
        client,
        stop,
    };
    while !pusher.stop.is_cancelled() {
        match db::try_lead(&connect, PUSH_LEADER_KEY).await {
            Ok(Some(lock)) => {
                tracing::info!("pushing changes to PROJECTOR_NOTIFY_URL");
                if let Err(e) = pusher.deliver_while_leading().await {
                    tracing::warn!(error = %e, "change push interrupted; will lead again");
                }
                drop(lock);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot try to lead the change push"),
        }
        tokio::select! {
            () = pusher.stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

struct Pusher {
    pool: PgPool,
    settings: PushSettings,
    waiters: Arc<Waiters>,
    metrics: ProjectorMetrics,
    client: reqwest::Client,
    stop: CancellationToken,
}

impl Pusher {
    async fn deliver_while_leading(&self) -> anyhow::Result<()> {
        loop {
            if self.stop.is_cancelled() {
                return Ok(());
            }
            let changed = self.waiters.any_change();
            let position = self.position().await?;
            let page = match feed::read(&self.pool, position, PAGE).await {
                Ok(page) => page,
                Err(ReadError::Gone { pruned_through, .. }) => {
                    // The app was unreachable for longer than the retention.
                    tracing::error!(
                        from = position,
                        to = pruned_through,
                        "changes were pruned before they could be pushed; the app must resync"
                    );
                    self.metrics
                        .push_lost
                        .inc_by((pruned_through - position).max(0) as u64);
                    self.advance(pruned_through).await?;
                    continue;
                }
                Err(ReadError::Database(e)) => return Err(e.into()),
            };
            self.metrics
                .push_backlog
                .set(page.last().map_or(0, |c| c.cursor - position));
            if page.is_empty() {
                tokio::select! {
                    () = changed => {}
                    () = self.stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            for change in &page {
                if !self.deliver(change).await {
                    return Ok(()); // stopping
                }
                self.advance(change.cursor).await?;
            }
        }
    }

    async fn position(&self) -> sqlx::Result<i64> {
        let cursor: Option<i64> = sqlx::query_scalar("select cursor from projection_push_position")
            .fetch_optional(&self.pool)
            .await?;
        Ok(cursor.unwrap_or(0))
    }

    async fn advance(&self, cursor: i64) -> sqlx::Result<()> {
        sqlx::query(
            "insert into projection_push_position (singleton, cursor) values (true, $1)
             on conflict (singleton) do update set cursor = excluded.cursor, updated_at = now()",
        )
        .bind(cursor)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sends one change until the app answers 2xx; `false` if stopped first.
    async fn deliver(&self, change: &Change) -> bool {
        let body = match serde_json::to_vec(change) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(error = %e, cursor = change.cursor, "cannot encode a change; skipping it");
                return true;
            }
        };
        let id = format!("change_{}", change.cursor);
        let key = signing::standard_key(self.settings.secret.expose()).unwrap_or_default();
        let mut retry = Retry::new(Duration::from_millis(200), MAX_RETRY_INTERVAL);
        let mut failures = 0u32;
        loop {
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            let signature = signing::signature_header(&key, &id, &timestamp, &body);
            let sent = self
                .client
                .post(&self.settings.url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", &timestamp)
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await;
            let outcome = match sent {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("answered {}", response.status().as_u16())),
                Err(e) if e.is_timeout() => Some("timed out".to_owned()),
                Err(e) if e.is_connect() => Some("refused the connection".to_owned()),
                Err(_) => Some("failed".to_owned()),
            };
            let Some(why) = outcome else {
                self.metrics.pushed.inc();
                if failures >= self.settings.park_after {
                    tracing::info!(
                        cursor = change.cursor,
                        "the app answers again; change push resumed"
                    );
                }
                self.metrics.push_parked.set(0);
                return true;
            };
            failures += 1;
            self.metrics.push_failures.inc();
            if failures == self.settings.park_after {
                self.metrics.push_parked.set(1);
                tracing::warn!(
                    cursor = change.cursor,
                    failures,
                    why,
                    "change push parked: the app keeps failing; retrying every {}s",
                    MAX_RETRY_INTERVAL.as_secs()
                );
            } else if failures < self.settings.park_after {
                tracing::debug!(
                    cursor = change.cursor,
                    failures,
                    why,
                    "change push failed; retrying"
                );
            }
            let pause = if failures >= self.settings.park_after {
                MAX_RETRY_INTERVAL
            } else {
                retry.after_failure()
            };
            tokio::select! {
                () = self.stop.cancelled() => return false,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
