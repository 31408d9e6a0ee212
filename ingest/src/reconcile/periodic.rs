//! The periodic reconcile inside the ingest service
//! (`INGEST_RECONCILE_INTERVAL`). One replica leads, as the relay does: it
//! holds a Postgres advisory lock on a connection of its own, and a crashed
//! leader's lock dies with its connection.
//!
//! The leader runs a full reconcile (failed deliveries, then the scan) when
//! the interval has passed since the last successful run recorded in
//! `reconcile_runs` (so a restart does not rescan Polar), and retries a failed
//! run after a backoff. With `POLAR_WEBHOOK_ENDPOINT_ID` set it also reads
//! the endpoint every `INGEST_ENDPOINT_CHECK_INTERVAL`: while Polar has it
//! disabled, Polar creates no events for it at all, so the leader says so
//! (metric and error line) and reconciles at once, once per disablement.

use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use hookstream_shared::db;
use hookstream_shared::progress::{ProgressMode, ProgressReport};
use hookstream_shared::retry::Retry;

use super::polar_api::PolarApi;
use super::{ReconcileOptions, Reconciler};
use crate::config::ReconcileSchedule;
use crate::metrics::IngestMetrics;

/// Advisory lock key of the reconcile leader ("hookreco" in ASCII).
const LEADER_LOCK_KEY: i64 = 0x686f_6f6b_7265_636f;
/// How often a standby replica tries to lead.
const STANDBY_RETRY: Duration = Duration::from_secs(10);
/// How long the leader waits before retrying a failed run (doubling).
const FIRST_RETRY: Duration = Duration::from_secs(30);

/// The periodic reconcile of one ingest replica.
#[derive(Debug)]
pub struct PeriodicReconcile {
    reconciler: Reconciler,
    connect: PgConnectOptions,
    schedule: ReconcileSchedule,
    metrics: IngestMetrics,
}

impl PeriodicReconcile {
    pub fn new(
        pool: PgPool,
        connect: PgConnectOptions,
        schedule: ReconcileSchedule,
        metrics: IngestMetrics,
    ) -> anyhow::Result<Self> {
        let api = PolarApi::new(&schedule.polar)?;
        Ok(Self {
            reconciler: Reconciler::new(api, pool, schedule.polar.endpoint_id.clone()),
            connect,
            schedule,
            metrics,
        })
    }

    /// Campaigns and, while leading, reconciles on schedule, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(interval = ?self.schedule.interval, endpoint_watched = self.schedule.polar.endpoint_id.is_some(), "periodic reconcile on");
        while !stop.is_cancelled() {
            match db::try_lead(&self.connect, LEADER_LOCK_KEY).await {
                Ok(Some(lock)) => {
                    self.metrics.reconcile.leader.set(1);
                    tracing::info!("this replica leads the periodic reconcile");
                    let outcome = self.lead(lock, &stop).await;
                    self.metrics.reconcile.leader.set(0);
                    if let Err(e) = outcome {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "the reconcile leader lost its database connection; campaigning again"
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "the periodic reconcile cannot reach the database"
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(STANDBY_RETRY) => {}
                () = stop.cancelled() => {}
            }
        }
    }

    /// Leads until stopped (then `Ok`) or until the lock's connection fails.
    async fn lead(&self, mut lock: PgConnection, stop: &CancellationToken) -> anyhow::Result<()> {
        let pool = self.reconciler.pool.clone();
        let mut failures = 0u32;
        // Never longer than the interval itself between tries.
        let mut retry = Retry::new(FIRST_RETRY, self.schedule.interval.max(FIRST_RETRY));
        let mut retry_at: Option<tokio::time::Instant> = None;
        // Once per disablement: the endpoint must be seen enabled again
        // before another disablement triggers another run.
        let mut disabled_handled = false;
        let mut next_check = tokio::time::Instant::now();
        loop {
            sqlx::query("select 1").execute(&mut lock).await?;
            let mut due = self.due(&pool).await?;
            if let Some(at) = retry_at {
                due = tokio::time::Instant::now() >= at;
            }
            if self.schedule.polar.endpoint_id.is_some()
                && tokio::time::Instant::now() >= next_check
            {
                next_check = tokio::time::Instant::now() + self.schedule.endpoint_check;
                match self.endpoint_enabled().await {
                    Ok(true) => {
                        self.metrics.reconcile.endpoint_enabled.set(1);
                        disabled_handled = false;
                    }
                    Ok(false) => {
                        self.metrics.reconcile.endpoint_enabled.set(0);
                        if !disabled_handled {
                            tracing::error!(
                                endpoint_id = self
                                    .schedule
                                    .polar
                                    .endpoint_id
                                    .as_deref()
                                    .unwrap_or_default(),
                                "Polar has disabled the webhook endpoint and creates no events for it while it stays disabled: \
                                 fix what failed (ingest down, TLS, the secret), re-enable it in Polar (Settings → Webhooks), \
                                 and hookstream reconciles from Polar's API meanwhile (now)"
                            );
                            disabled_handled = true;
                            due = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "cannot read the webhook endpoint's state"
                        );
                    }
                }
            }
            if due && !stop.is_cancelled() {
                match self.run_once(stop).await {
                    Ok(()) => {
                        failures = 0;
                        retry.reset();
                        retry_at = None;
                    }
                    Err(e) => {
                        failures += 1;
                        let wait = retry.after_failure();
                        tracing::error!(error = format!("{e:#}"), failures, retry_in = ?wait, "reconcile failed");
                        retry_at = Some(tokio::time::Instant::now() + wait);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1).min(self.schedule.endpoint_check)) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
    }

    /// Whether the interval has passed since the last successful run.
    async fn due(&self, pool: &PgPool) -> anyhow::Result<bool> {
        let last = super::runs::last_success(pool).await?;
        Ok(last.is_none_or(|at| {
            (Utc::now() - at).to_std().unwrap_or_default() >= self.schedule.interval
        }))
    }

    async fn run_once(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let mut progress = ProgressReport::counting(ProgressMode::Quiet, "reconcile", "objects");
        let options = ReconcileOptions {
            scan: true,
            deliveries: true,
        };
        let reconcile = &self.metrics.reconcile;
        let rate_limited_before = self.reconciler.api().stats.rate_limited();
        let outcome = self
            .reconciler
            .run_recorded(options, &mut progress, stop)
            .await;
        reconcile
            .rate_limited
            .inc_by(self.reconciler.api().stats.rate_limited() - rate_limited_before);
        match outcome {
            Ok(summary) => {
                reconcile.runs.with_label_values(&["ok"]).inc();
                reconcile.objects_seen.inc_by(summary.objects());
                reconcile
                    .events_appended
                    .inc_by(summary.appended + summary.deliveries.appended);
                reconcile.objects_removed.inc_by(summary.removed);
                reconcile.last_success.set(Utc::now().timestamp() as f64);
                tracing::info!("{summary}");
                Ok(())
            }
            Err(e) => {
                reconcile.runs.with_label_values(&["failed"]).inc();
                Err(e)
            }
        }
    }

    /// Reads `GET /v1/webhooks/endpoints/{id}`: `enabled`.
    async fn endpoint_enabled(&self) -> anyhow::Result<bool> {
        #[derive(Deserialize)]
        struct Endpoint {
            enabled: bool,
        }
        let id = self
            .schedule
            .polar
            .endpoint_id
            .as_deref()
            .unwrap_or_default();
        let path = format!("/v1/webhooks/endpoints/{id}");
        let answer = self.reconciler.api().get(&path).await?;
        anyhow::ensure!(
            answer.status == reqwest::StatusCode::OK,
            super::polar_api::refused(&path, &answer)
        );
        let endpoint: Endpoint = serde_json::from_slice(&answer.body)
            .map_err(|e| anyhow::anyhow!("{path}: not a webhook endpoint ({e})"))?;
        // For the projector's console, which cannot see ingest's metrics;
        // failing to record it must not hide what was read.
        let recorded = sqlx::query!(
            "insert into polar_endpoint_state (endpoint_id, enabled) values ($1, $2)
             on conflict (endpoint_id) do update set enabled = excluded.enabled, checked_at = now()",
            id,
            endpoint.enabled
        )
        .execute(self.reconciler.pool())
        .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "cannot record the webhook endpoint's state");
        }
        Ok(endpoint.enabled)
    }
}
