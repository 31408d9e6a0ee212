//! Reconcile: converge on Polar's truth through its REST API, by way of the
//! event log, for what webhooks never brought (an organization's history
//! before hookstream, and everything while Polar kept the endpoint disabled).
//!
//! - **Scan.** Every list endpoint is read in full. Each object becomes an
//!   event of source `polar-api`: the envelope of its own `*.updated` type
//!   with the snapshot as `data`, stamped with the time Polar answered. The
//!   projector applies it by the same newest-wins rule as a webhook (the
//!   object's `modified_at`, else `created_at`, decides), so a scan never
//!   overwrites a newer webhook, and a later webhook always wins. The
//!   webhook-id is `polar-api:<kind>:<id>:<version>`, so a version already
//!   logged by an earlier scan is a duplicate and a rerun appends nothing.
//! - **Absences.** Polar does not list deleted customers. A customer the
//!   live projection holds that the full list no longer returns is looked up
//!   on its own (`GET /v1/customers/{id}`), since offset pages over a list
//!   that changes during the scan can skip an item. Only a 404 makes it
//!   absent, and the absence is recorded as a `customer.deleted` event whose
//!   version is the scan's start by Polar's clock. Why that is safe beside
//!   concurrent webhooks: the customer was seen absent after the scan began,
//!   so every version it had before the start is superseded, and any version
//!   written after the start (a webhook racing the scan, or one delivered
//!   late) is newer than the absence and wins over it. An absence found by a
//!   scan is in the log like any event, so it survives replay.
//! - **Deliveries.** Failed deliveries still hold their payload for 90
//!   days. They are appended under source `polar` and the webhook-id Polar
//!   sent, the same `(source, webhook_id)` dedup as a live delivery: a
//!   redelivery, or a delivery that did land after all, is a duplicate.
//!
//! Nothing here is half-written in a way a rerun cannot fix: appends are
//! idempotent, and absences are only recorded after the customer list was
//! read to its end.

pub mod periodic;
pub mod polar_api;
pub mod runs;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use hookstream_shared::envelope;
use hookstream_shared::event_log::{self, Appended, NewEvent};
use hookstream_shared::progress::ProgressReport;

use polar_api::{ApiError, PolarApi};

/// The source of events a scan appends.
pub const SCAN_SOURCE: &str = "polar-api";
/// The source live webhooks come in on, which pulled deliveries share.
pub const WEBHOOK_SOURCE: &str = "polar";
/// The API version whose shapes are read and written.
const API_VERSION: &str = "2026-10";
/// Pages whose events wait to be appended while the next pages are read.
const APPEND_QUEUE_PAGES: usize = 8;

/// An object family Polar lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Product,
    Benefit,
    Customer,
    Member,
    Subscription,
    BenefitGrant,
    Order,
    Checkout,
}

impl Kind {
    /// The scan's order: what others refer to first, customers before the
    /// objects that embed them.
    pub const ALL: [Kind; 8] = [
        Kind::Product,
        Kind::Benefit,
        Kind::Customer,
        Kind::Member,
        Kind::Subscription,
        Kind::BenefitGrant,
        Kind::Order,
        Kind::Checkout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Product => "product",
            Kind::Benefit => "benefit",
            Kind::Customer => "customer",
            Kind::Member => "member",
            Kind::Subscription => "subscription",
            Kind::BenefitGrant => "benefit_grant",
            Kind::Order => "order",
            Kind::Checkout => "checkout",
        }
    }

    fn list_path(self) -> &'static str {
        match self {
            Kind::Product => "/v1/products/",
            Kind::Benefit => "/v1/benefits/",
            Kind::Customer => "/v1/customers/",
            Kind::Member => "/v1/members/",
            Kind::Subscription => "/v1/subscriptions/",
            Kind::BenefitGrant => "/v1/benefit-grants/",
            Kind::Order => "/v1/orders/",
            Kind::Checkout => "/v1/checkouts/",
        }
    }

    /// The webhook type whose envelope carries a snapshot of this kind.
    fn event_type(self) -> String {
        format!("{}.updated", self.name())
    }

    /// Members are listed only where Polar's member model is on; a 404 there
    /// means there is nothing to scan, not a failure.
    fn may_be_absent(self) -> bool {
        self == Kind::Member
    }
}

/// What to do in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Read every list and append what changed, and the absences.
    pub scan: bool,
    /// Pull failed deliveries' payloads first.
    pub deliveries: bool,
}

/// What a run found and did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Objects read, by kind.
    pub seen: BTreeMap<&'static str, u64>,
    /// Events new to the log.
    pub appended: u64,
    /// Objects whose version an earlier scan had logged already.
    pub unchanged: u64,
    /// Customers recorded as deleted (absent from the full list, 404 alone).
    pub removed: u64,
    /// Customers the list missed that turned out to exist (pages shifted).
    pub missed_by_pages: u64,
    pub deliveries: DeliveriesSummary,
    pub requests: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub elapsed: Duration,
    /// Time spent waiting for Polar's answers, and appending to the log: the
    /// second should be far below the first (the log is not the bottleneck).
    pub request_time: Duration,
    pub append_time: Duration,
}

/// What the deliveries pull found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveriesSummary {
    /// Failed delivery attempts listed.
    pub attempts: u64,
    /// Distinct events among them.
    pub events: u64,
    pub appended: u64,
    /// Already in the log (delivered after all, or redelivered).
    pub already_logged: u64,
    /// Older than Polar keeps payloads: only a full scan recovers them.
    pub archived: u64,
    /// Payloads that are not a webhook envelope (skipped, logged).
    pub malformed: u64,
}

impl Summary {
    pub fn objects(&self) -> u64 {
        self.seen.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            self.objects() as f64 / seconds
        } else {
            0.0
        };
        writeln!(
            f,
            "reconcile: {} objects seen in {} requests ({} waits for 429, {} retries) in {seconds:.1} s ({rate:.0} objects/s)",
            self.objects(),
            self.requests,
            self.rate_limited,
            self.retries
        )?;
        writeln!(
            f,
            "  events appended {}, unchanged {}, customers removed {}, missed by paging and refreshed {}",
            self.appended, self.unchanged, self.removed, self.missed_by_pages
        )?;
        let kinds: Vec<String> = self.seen.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if !kinds.is_empty() {
            writeln!(f, "  seen: {}", kinds.join(", "))?;
        }
        let d = &self.deliveries;
        if d.attempts > 0 || d.events > 0 {
            writeln!(
                f,
                "  failed deliveries: {} attempts of {} events: appended {}, already logged {}, archived {}, malformed {}",
                d.attempts, d.events, d.appended, d.already_logged, d.archived, d.malformed
            )?;
        }
        write!(
            f,
            "  time waiting for Polar {:.1} s, appending to the log {:.1} s",
            self.request_time.as_secs_f64(),
            self.append_time.as_secs_f64()
        )
    }
}

/// Runs reconciles against one organization.
#[derive(Debug)]
pub struct Reconciler {
    api: PolarApi,
    pool: PgPool,
    endpoint_id: Option<String>,
}

impl Reconciler {
    pub fn new(api: PolarApi, pool: PgPool, endpoint_id: Option<String>) -> Self {
        Self {
            api,
            pool,
            endpoint_id,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn api(&self) -> &PolarApi {
        &self.api
    }

    /// [`Reconciler::run`], recorded in `reconcile_runs`.
    pub async fn run_recorded(
        &self,
        options: ReconcileOptions,
        progress: &mut ProgressReport,
        stop: &CancellationToken,
    ) -> anyhow::Result<Summary> {
        let id = runs::start(&self.pool)
            .await
            .context("cannot record the run in reconcile_runs")?;
        let outcome = self.run(options, progress, stop).await;
        let recorded = outcome
            .as_ref()
            .map(Clone::clone)
            .map_err(|e| format!("{e:#}"));
        if let Err(e) = runs::finish(&self.pool, id, &recorded).await {
            tracing::warn!(error = %e, "cannot record how the reconcile ended");
        }
        outcome
    }

    /// One run: deliveries first (exact webhooks), then the scan.
    pub async fn run(
        &self,
        options: ReconcileOptions,
        progress: &mut ProgressReport,
        stop: &CancellationToken,
    ) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let before = (
            self.api.stats.requests(),
            self.api.stats.rate_limited(),
            self.api.stats.retries(),
            self.api.stats.request_time(),
        );
        let (writer, queue) = LogWriter::start(self.pool.clone());
        let mut summary = Summary::default();
        let outcome = async {
            if options.deliveries {
                progress.set_message("reconcile: failed deliveries");
                summary.deliveries = self.pull_deliveries(&queue, stop).await?;
            }
            if options.scan {
                self.scan(&queue, &mut summary, progress, stop).await?;
            }
            anyhow::Ok(())
        }
        .await;
        drop(queue);
        let written = writer.finish().await;
        outcome?;
        let written = written?;
        summary.appended = written.scan_appended;
        summary.unchanged = written.scan_duplicates;
        summary.deliveries.appended = written.deliveries_appended;
        summary.deliveries.already_logged = written.deliveries_duplicates;
        summary.append_time = written.append_time;
        summary.requests = self.api.stats.requests() - before.0;
        summary.rate_limited = self.api.stats.rate_limited() - before.1;
        summary.retries = self.api.stats.retries() - before.2;
        summary.request_time = self.api.stats.request_time().saturating_sub(before.3);
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    async fn scan(
        &self,
        queue: &mpsc::Sender<Batch>,
        summary: &mut Summary,
        progress: &mut ProgressReport,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut scan_started: Option<DateTime<Utc>> = None;
        let mut listed_customers = HashSet::new();
        for kind in Kind::ALL {
            let mut page = 1u64;
            loop {
                if stop.is_cancelled() {
                    anyhow::bail!("stopped before the scan was complete");
                }
                progress.set_message(&format!(
                    "reconcile: {}s page {page}, {} requests, {} waits for 429",
                    kind.name(),
                    self.api.stats.requests(),
                    self.api.stats.rate_limited()
                ));
                let fetched = match self.api.page(kind.list_path(), "", page).await {
                    Err(ApiError::Refused { status: 404, .. }) if kind.may_be_absent() => {
                        tracing::info!(
                            kind = kind.name(),
                            "not listed by this organization; skipped"
                        );
                        break;
                    }
                    other => other?,
                };
                // The scan's start by Polar's clock: its first answer.
                scan_started.get_or_insert(fetched.answered_at);
                if page == 1 {
                    progress.set_total(progress.events() + fetched.total_count);
                }
                let events = fetched
                    .items
                    .iter()
                    .map(|item| {
                        let object = Versioned::of(item).with_context(|| {
                            format!("an item of {} (page {page})", kind.list_path())
                        })?;
                        if kind == Kind::Customer {
                            listed_customers.insert(object.id.clone());
                        }
                        snapshot_event(kind, &object, item, fetched.answered_at)
                    })
                    .collect::<anyhow::Result<Vec<NewEvent>>>()?;
                let count = events.len() as u64;
                *summary.seen.entry(kind.name()).or_default() += count;
                progress.advance(count);
                send(queue, Batch::Scan(events)).await?;
                if page >= fetched.max_page || fetched.items.is_empty() {
                    break;
                }
                page += 1;
            }
            if kind == Kind::Customer {
                let since = scan_started.unwrap_or_else(Utc::now);
                let (removed, missed) = self
                    .record_absent_customers(&listed_customers, since, queue)
                    .await?;
                summary.removed = removed;
                summary.missed_by_pages = missed;
            }
        }
        Ok(())
    }

    /// Customers the live projection holds that the complete list did not
    /// return: each is looked up; a 404 records its deletion as of `since`,
    /// an answer refreshes it (the pages had shifted under the scan).
    async fn record_absent_customers(
        &self,
        listed: &HashSet<String>,
        since: DateTime<Utc>,
        queue: &mpsc::Sender<Batch>,
    ) -> anyhow::Result<(u64, u64)> {
        let known = live_customers(&self.pool).await?;
        let (mut removed, mut missed) = (0, 0);
        let mut events = Vec::new();
        for (id, snapshot) in known {
            if listed.contains(&id) {
                continue;
            }
            let path = format!("/v1/customers/{id}");
            let answer = self.api.get(&path).await?;
            match answer.status.as_u16() {
                404 => {
                    events.push(absence_event(&id, &snapshot, since)?);
                    removed += 1;
                }
                200 => {
                    let item: Box<RawValue> =
                        serde_json::from_slice(&answer.body).map_err(|e| ApiError::Malformed {
                            path: path.clone(),
                            reason: format!("not a customer ({e})"),
                        })?;
                    let object = Versioned::of(&item).with_context(|| path.clone())?;
                    events.push(snapshot_event(
                        Kind::Customer,
                        &object,
                        &item,
                        answer.answered_at,
                    )?);
                    missed += 1;
                }
                _ => return Err(polar_api::refused(&path, &answer).into()),
            }
        }
        if !events.is_empty() {
            send(queue, Batch::Scan(events)).await?;
        }
        Ok((removed, missed))
    }

    /// Every failed delivery's payload, once per event, for the log.
    async fn pull_deliveries(
        &self,
        queue: &mpsc::Sender<Batch>,
        stop: &CancellationToken,
    ) -> anyhow::Result<DeliveriesSummary> {
        let mut query = "succeeded=false".to_owned();
        if let Some(endpoint) = &self.endpoint_id {
            query.push_str("&endpoint_id=");
            query.push_str(endpoint);
        }
        let mut summary = DeliveriesSummary::default();
        let mut seen = HashSet::new();
        let mut page = 1u64;
        loop {
            if stop.is_cancelled() {
                anyhow::bail!("stopped while pulling deliveries");
            }
            let fetched = self
                .api
                .page("/v1/webhooks/deliveries", &query, page)
                .await?;
            let mut events = Vec::new();
            for item in &fetched.items {
                summary.attempts += 1;
                let delivery: Delivery =
                    serde_json::from_str(item.get()).map_err(|e| ApiError::Malformed {
                        path: "/v1/webhooks/deliveries".to_owned(),
                        reason: format!("a delivery without its webhook_event ({e})"),
                    })?;
                let event = delivery.webhook_event;
                if !seen.insert(event.id.clone()) {
                    continue;
                }
                summary.events += 1;
                let Some(payload) = event.payload else {
                    summary.archived += 1;
                    continue;
                };
                match envelope::parse(payload.as_bytes()) {
                    Ok(parsed) => events.push(NewEvent::from_envelope(
                        WEBHOOK_SOURCE,
                        &event.id,
                        parsed,
                        bytes::Bytes::from(payload),
                    )),
                    Err(e) => {
                        summary.malformed += 1;
                        tracing::warn!(webhook_id = %event.id, error = %e, "a failed delivery's payload is not a webhook envelope; skipped");
                    }
                }
            }
            send(queue, Batch::Deliveries(events)).await?;
            if page >= fetched.max_page || fetched.items.is_empty() {
                break;
            }
            page += 1;
        }
        if summary.archived > 0 {
            tracing::warn!(
                archived = summary.archived,
                "failed deliveries older than Polar keeps payloads (90 days); only the full scan recovers them"
            );
        }
        Ok(summary)
    }
}

/// The fields every Polar object has that decide its version.
#[derive(Debug)]
struct Versioned {
    id: String,
    version: DateTime<Utc>,
}

impl Versioned {
    fn of(item: &RawValue) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct Fields {
            id: String,
            created_at: DateTime<Utc>,
            modified_at: Option<DateTime<Utc>>,
        }
        let fields: Fields = serde_json::from_str(item.get())
            .context("an object without id, created_at and modified_at")?;
        Ok(Self {
            id: fields.id,
            version: fields.modified_at.unwrap_or(fields.created_at),
        })
    }
}

/// The event that carries one scanned snapshot.
fn snapshot_event(
    kind: Kind,
    object: &Versioned,
    item: &RawValue,
    answered_at: DateTime<Utc>,
) -> anyhow::Result<NewEvent> {
    let webhook_id = format!(
        "{SCAN_SOURCE}:{}:{}:{}",
        kind.name(),
        object.id,
        instant(object.version)
    );
    envelope_event(&kind.event_type(), &webhook_id, item.get(), answered_at)
}

/// A `customer.deleted` for a customer Polar no longer has, built from its
/// last snapshot as Polar builds one: `deleted_at` set, the external id
/// cleared (kept in `metadata.__external_id`), versioned `since`. Its
/// webhook-id names the version it supersedes, so two scans that both find
/// the absence before it is projected append it once.
fn absence_event(id: &str, last: &str, since: DateTime<Utc>) -> anyhow::Result<NewEvent> {
    let mut snapshot: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(last).with_context(|| format!("the projection's customer {id}"))?;
    let superseded = snapshot
        .get("modified_at")
        .filter(|v| !v.is_null())
        .or_else(|| snapshot.get("created_at"))
        .and_then(|v| v.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(|| "unknown".to_owned(), |t| instant(t.with_timezone(&Utc)));
    let at = serde_json::Value::String(instant(since));
    if let Some(external) = snapshot
        .get("external_id")
        .cloned()
        .filter(|v| !v.is_null())
    {
        let metadata = snapshot
            .entry("metadata")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.insert("__external_id".to_owned(), external);
        }
    }
    snapshot.insert("external_id".to_owned(), serde_json::Value::Null);
    snapshot.insert("deleted_at".to_owned(), at.clone());
    snapshot.insert("modified_at".to_owned(), at);
    let data = serde_json::to_string(&snapshot)?;
    let webhook_id = format!("{SCAN_SOURCE}:customer:{id}:absent-after:{superseded}");
    envelope_event("customer.deleted", &webhook_id, &data, since)
}

fn envelope_event(
    event_type: &str,
    webhook_id: &str,
    data: &str,
    timestamp: DateTime<Utc>,
) -> anyhow::Result<NewEvent> {
    let body = format!(
        r#"{{"type":"{event_type}","timestamp":"{}","api_version":"{API_VERSION}","data":{data}}}"#,
        instant(timestamp)
    );
    let parsed = envelope::parse(body.as_bytes())
        .with_context(|| format!("the event built for {webhook_id}"))?;
    Ok(NewEvent::from_envelope(
        SCAN_SOURCE,
        webhook_id,
        parsed,
        bytes::Bytes::from(body),
    ))
}

/// An instant as Polar writes one, always with microseconds, so one version
/// has one spelling whatever fraction Polar's text had.
fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Customers the live projection holds and has not seen deleted, with their
/// snapshots. Empty when no projector has made the projection yet.
async fn live_customers(pool: &PgPool) -> anyhow::Result<Vec<(String, String)>> {
    let exists: bool = sqlx::query_scalar("select to_regclass('projection.customers') is not null")
        .fetch_one(pool)
        .await?;
    if !exists {
        tracing::warn!(
            "no projection yet: deleted customers cannot be told from absent ones this time"
        );
        return Ok(Vec::new());
    }
    sqlx::query_as("select id, snapshot::text from projection.customers where deleted_at is null")
        .fetch_all(pool)
        .await
        .context("cannot read the live projection's customers")
}

#[derive(Deserialize)]
struct Delivery {
    webhook_event: DeliveredEvent,
}

#[derive(Deserialize)]
struct DeliveredEvent {
    /// The `webhook-id` Polar sent.
    id: String,
    /// The exact body, or `null` once archived.
    payload: Option<String>,
}

/// Events for the log, by where they came from (counted apart).
enum Batch {
    Scan(Vec<NewEvent>),
    Deliveries(Vec<NewEvent>),
}

async fn send(queue: &mpsc::Sender<Batch>, batch: Batch) -> anyhow::Result<()> {
    queue
        .send(batch)
        .await
        .map_err(|_| anyhow::anyhow!("the event log writer stopped"))
}

/// Appends what the scan hands it while the scan reads on.
struct LogWriter {
    task: tokio::task::JoinHandle<anyhow::Result<Written>>,
}

#[derive(Debug, Default)]
struct Written {
    scan_appended: u64,
    scan_duplicates: u64,
    deliveries_appended: u64,
    deliveries_duplicates: u64,
    append_time: Duration,
}

impl LogWriter {
    fn start(pool: PgPool) -> (Self, mpsc::Sender<Batch>) {
        let (queue, mut batches) = mpsc::channel::<Batch>(APPEND_QUEUE_PAGES);
        let task = tokio::spawn(async move {
            let mut written = Written::default();
            while let Some(batch) = batches.recv().await {
                let (events, is_scan) = match &batch {
                    Batch::Scan(events) => (events, true),
                    Batch::Deliveries(events) => (events, false),
                };
                if events.is_empty() {
                    continue;
                }
                let started = Instant::now();
                let outcomes = event_log::append_batch(&pool, events)
                    .await
                    .context("cannot append to the event log")?;
                written.append_time += started.elapsed();
                let new = outcomes
                    .iter()
                    .filter(|o| matches!(o, Appended::New { .. }))
                    .count() as u64;
                let duplicates = outcomes.len() as u64 - new;
                if is_scan {
                    written.scan_appended += new;
                    written.scan_duplicates += duplicates;
                } else {
                    written.deliveries_appended += new;
                    written.deliveries_duplicates += duplicates;
                }
            }
            Ok(written)
        });
        (Self { task }, queue)
    }

    /// Waits for everything handed over to be appended.
    async fn finish(self) -> anyhow::Result<Written> {
        self.task.await.context("the event log writer panicked")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn one_version_has_one_webhook_id_however_polar_spells_the_time() {
        let a = RawValue::from_string(
            r#"{"id":"s1","created_at":"2026-01-01T00:00:00Z","modified_at":"2026-01-02T00:00:00Z","status":"active"}"#.into(),
        )
        .unwrap();
        let b = RawValue::from_string(
            r#"{"id":"s1","created_at":"2026-01-01T00:00:00Z","modified_at":"2026-01-02T00:00:00.000000Z","status":"active"}"#.into(),
        )
        .unwrap();
        let ea = snapshot_event(
            Kind::Subscription,
            &Versioned::of(&a).unwrap(),
            &a,
            t("2026-03-01T00:00:00Z"),
        )
        .unwrap();
        let eb = snapshot_event(
            Kind::Subscription,
            &Versioned::of(&b).unwrap(),
            &b,
            t("2026-03-02T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(ea.webhook_id, eb.webhook_id);
        assert_eq!(
            ea.webhook_id,
            "polar-api:subscription:s1:2026-01-02T00:00:00.000000Z"
        );
        assert_eq!(ea.event_type, "subscription.updated");
        assert_eq!(ea.source, SCAN_SOURCE);
        // A never-modified object is versioned by its creation.
        let c = RawValue::from_string(
            r#"{"id":"c1","created_at":"2026-01-01T00:00:00Z","modified_at":null}"#.into(),
        )
        .unwrap();
        assert_eq!(
            Versioned::of(&c).unwrap().version,
            t("2026-01-01T00:00:00Z")
        );
    }

    #[test]
    fn an_absence_is_polars_deletion_of_the_last_snapshot_as_of_the_scan() {
        let last = r#"{"id":"c1","created_at":"2026-01-01T00:00:00Z","modified_at":"2026-01-05T00:00:00Z","external_id":"usr_1","metadata":{"plan":"x"},"deleted_at":null}"#;
        let event = absence_event("c1", last, t("2026-02-01T00:00:00Z")).unwrap();
        assert_eq!(event.event_type, "customer.deleted");
        assert_eq!(
            event.webhook_id,
            "polar-api:customer:c1:absent-after:2026-01-05T00:00:00.000000Z"
        );
        assert_eq!(event.partition_key, "c1");
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        let data = &body["data"];
        assert_eq!(data["deleted_at"], "2026-02-01T00:00:00.000000Z");
        assert_eq!(data["modified_at"], "2026-02-01T00:00:00.000000Z");
        assert!(data["external_id"].is_null());
        assert_eq!(data["metadata"]["__external_id"], "usr_1");
        assert_eq!(data["metadata"]["plan"], "x");
        assert_eq!(body["api_version"], API_VERSION);
    }
}
