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
//! - **Versions.** Every request asks for one API version
//!   (`POLAR_API_VERSION`), and every event a scan writes says so in its
//!   envelope's `api_version`, as a webhook of that version would.
//! - **Members.** Polar's flat `GET /v1/members/` is deprecated (polar-sdk
//!   1.0.x has no call for it). When it answers 404, members are read per
//!   listed customer (`GET /v1/customers/{id}/members`): one more request per
//!   customer, which at Polar's 500 a minute is the slow part of a scan.
//! - **Absences.** Polar does not list deleted customers, discounts or
//!   members. One the live projection holds that the full list no longer
//!   returns is looked up on its own (`GET /v1/customers/{id}`, ...), since
//!   offset pages over a list that changes during the scan can skip an item.
//!   Only a 404 makes it absent, and the absence is recorded as a `*.deleted`
//!   event whose version is the scan's start by Polar's clock. Why that is
//!   safe beside concurrent webhooks: the object was seen absent after the
//!   scan began, so every version it had before the start is superseded, and
//!   any version written after the start (a webhook racing the scan, or one
//!   delivered late) is newer than the absence and wins over it. An absence
//!   found by a scan is in the log like any event, so it survives replay.
//! - **Deliveries.** Failed deliveries still hold their payload for 90
//!   days. They are appended under source `polar` and the webhook-id Polar
//!   sent, the same `(source, webhook_id)` dedup as a live delivery: a
//!   redelivery, or a delivery that did land after all, is a duplicate.
//!
//! Nothing here is half-written in a way a rerun cannot fix: appends are
//! idempotent, and absences are only recorded after the list was read to its
//! end.

pub mod periodic;
pub mod polar_api;
pub mod runs;

use std::collections::{BTreeMap, HashMap, HashSet};
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
/// Pages whose events wait to be appended while the next pages are read.
const APPEND_QUEUE_PAGES: usize = 8;

/// An object family Polar lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Product,
    Benefit,
    Discount,
    Meter,
    Customer,
    Member,
    Subscription,
    BenefitGrant,
    Order,
    /// Seats of seat-based subscriptions and orders: no list of their own,
    /// read per subscription and order that has seats.
    Seat,
    Refund,
    Checkout,
}

impl Kind {
    /// The scan's order: what others refer to first, customers before the
    /// objects that embed them.
    pub const ALL: [Kind; 12] = [
        Kind::Product,
        Kind::Benefit,
        Kind::Discount,
        Kind::Meter,
        Kind::Customer,
        Kind::Member,
        Kind::Subscription,
        Kind::BenefitGrant,
        Kind::Order,
        Kind::Seat,
        Kind::Refund,
        Kind::Checkout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Product => "product",
            Kind::Benefit => "benefit",
            Kind::Discount => "discount",
            Kind::Meter => "meter",
            Kind::Customer => "customer",
            Kind::Member => "member",
            Kind::Subscription => "subscription",
            Kind::BenefitGrant => "benefit_grant",
            Kind::Order => "order",
            Kind::Seat => "customer_seat",
            Kind::Refund => "refund",
            Kind::Checkout => "checkout",
        }
    }

    fn list_path(self) -> &'static str {
        match self {
            Kind::Product => "/v1/products/",
            Kind::Benefit => "/v1/benefits/",
            Kind::Discount => "/v1/discounts/",
            Kind::Meter => "/v1/meters/",
            Kind::Customer => "/v1/customers/",
            Kind::Member => "/v1/members/",
            Kind::Subscription => "/v1/subscriptions/",
            Kind::BenefitGrant => "/v1/benefit-grants/",
            Kind::Order => "/v1/orders/",
            Kind::Seat => "/v1/customer-seats",
            Kind::Refund => "/v1/refunds/",
            Kind::Checkout => "/v1/checkouts/",
        }
    }

    /// The webhook type whose envelope carries this snapshot of this kind.
    /// Meters have no webhooks; `meter.updated` is hookstream's own, and the
    /// projector takes it as it would Polar's. Seats have no `updated`: a
    /// seat comes as the event that leaves it in its status.
    fn event_type(self, item: &RawValue) -> anyhow::Result<String> {
        if self != Kind::Seat {
            return Ok(format!("{}.updated", self.name()));
        }
        #[derive(Deserialize)]
        struct Status<'a> {
            status: &'a str,
        }
        let seat: Status<'_> =
            serde_json::from_str(item.get()).context("a seat without its status")?;
        Ok(match seat.status {
            "pending" => "customer_seat.assigned",
            "claimed" => "customer_seat.claimed",
            "revoked" => "customer_seat.revoked",
            other => anyhow::bail!("a seat of unknown status {other:?}"),
        }
        .to_owned())
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
    /// Objects recorded as deleted (absent from the full list, 404 alone).
    pub removed: u64,
    /// The same, by kind (customer, discount, member).
    pub removed_by_kind: BTreeMap<&'static str, u64>,
    /// Objects the list missed that turned out to exist (pages shifted).
    pub missed_by_pages: u64,
    /// Whether members were read per customer (the flat list is gone).
    pub members_per_customer: bool,
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
            "  events appended {}, unchanged {}, removed {} {:?}, missed by paging and refreshed {}",
            self.appended, self.unchanged, self.removed, self.removed_by_kind, self.missed_by_pages
        )?;
        if self.members_per_customer {
            writeln!(f, "  members read per customer (no flat list)")?;
        }
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
        let mut scan = ScanState::default();
        for kind in Kind::ALL {
            let listed = if kind == Kind::Member {
                self.scan_members(&mut scan, queue, summary, progress, stop)
                    .await?
            } else if kind == Kind::Seat {
                self.scan_seats(&mut scan, queue, summary, stop).await?;
                None
            } else {
                let listed = self
                    .scan_list(
                        kind,
                        kind.list_path(),
                        &mut scan,
                        queue,
                        summary,
                        progress,
                        stop,
                    )
                    .await?;
                Some(listed.with_context(|| {
                    format!("{} answered 404, and Polar always has it", kind.list_path())
                })?)
            };
            let Some(listed) = listed else {
                // No member list at all (the organization has no member
                // model): nothing to tell absences from.
                continue;
            };
            // What the projection holds that the list lacks is looked up
            // now, before webhooks arriving during the scan add more.
            if let Some(absences) = Absences::of(kind) {
                let rows = live_rows(&self.pool, absences).await?;
                self.look_up_unlisted(absences, rows, &listed, &mut scan, queue, summary)
                    .await?;
                scan.listed.insert(kind, listed);
            }
        }
        // Objects the scan saw embedded but not listed may be new to the
        // projection (created and deleted while webhooks were missed).
        for (kind, listed) in std::mem::take(&mut scan.listed) {
            let absences = Absences::of(kind).expect("only kinds that can be absent are kept");
            let mut rows = scan.embedded_only(kind, &listed);
            let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
            let deleted = deleted_rows(&self.pool, absences, &ids).await?;
            rows.retain(|row| !deleted.contains(&row.id));
            self.look_up_unlisted(absences, rows, &listed, &mut scan, queue, summary)
                .await?;
        }
        self.record_absences(&mut scan, queue, summary).await
    }

    /// Every page of one list into the log; the ids listed, or `None` when
    /// the list answered 404 (a route Polar does not have).
    #[allow(clippy::too_many_arguments)]
    async fn scan_list(
        &self,
        kind: Kind,
        path: &str,
        scan: &mut ScanState,
        queue: &mpsc::Sender<Batch>,
        summary: &mut Summary,
        progress: &mut ProgressReport,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<HashSet<String>>> {
        let mut listed = HashSet::new();
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
            let fetched = match self.api.page(path, "", page).await {
                Err(ApiError::Refused { status: 404, .. }) if page == 1 => return Ok(None),
                other => other?,
            };
            // The scan's start by Polar's clock: its first answer.
            scan.started.get_or_insert(fetched.answered_at);
            if page == 1 {
                progress.set_total(progress.events() + fetched.total_count);
            }
            let events = fetched
                .items
                .iter()
                .map(|item| {
                    let object = Versioned::of(item)
                        .with_context(|| format!("an item of {path} (page {page})"))?;
                    scan.note_embedded(kind, &object.id, item);
                    listed.insert(object.id.clone());
                    snapshot_event(self.api.version(), kind, &object, item, fetched.answered_at)
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
            scan.live_customers.clone_from(&listed);
        }
        Ok(Some(listed))
    }

    /// The seats of every subscription and order the scan saw with seats
    /// (`GET /v1/customer-seats?subscription_id=` or `order_id=`, one request
    /// each: Polar has no list of all seats).
    async fn scan_seats(
        &self,
        scan: &mut ScanState,
        queue: &mpsc::Sender<Batch>,
        summary: &mut Summary,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        #[derive(Deserialize)]
        struct SeatsList {
            seats: Vec<Box<RawValue>>,
        }
        for (owner, id) in std::mem::take(&mut scan.seat_owners) {
            if stop.is_cancelled() {
                anyhow::bail!("stopped before the scan was complete");
            }
            let path = format!("{}?{owner}={id}", Kind::Seat.list_path());
            let answer = self.api.get(&path).await?;
            match answer.status.as_u16() {
                200 => {}
                // Gone since it was listed: the next scan has it right.
                404 => continue,
                _ => return Err(polar_api::refused(&path, &answer).into()),
            }
            let list: SeatsList =
                serde_json::from_slice(&answer.body).map_err(|e| ApiError::Malformed {
                    path: path.clone(),
                    reason: format!("not a list of seats ({e})"),
                })?;
            let events = list
                .seats
                .iter()
                .map(|seat| {
                    let object = Versioned::of(seat).with_context(|| path.clone())?;
                    scan.note_embedded(Kind::Seat, &object.id, seat);
                    snapshot_event(
                        self.api.version(),
                        Kind::Seat,
                        &object,
                        seat,
                        answer.answered_at,
                    )
                })
                .collect::<anyhow::Result<Vec<NewEvent>>>()?;
            *summary.seen.entry(Kind::Seat.name()).or_default() += events.len() as u64;
            send(queue, Batch::Scan(events)).await?;
        }
        Ok(())
    }

    /// Members from the flat list where Polar still has it, else customer
    /// by customer (each listed customer's `/members`); `None` when no list
    /// of members answered at all.
    async fn scan_members(
        &self,
        scan: &mut ScanState,
        queue: &mpsc::Sender<Batch>,
        summary: &mut Summary,
        progress: &mut ProgressReport,
        stop: &CancellationToken,
    ) -> anyhow::Result<Option<HashSet<String>>> {
        let flat = self
            .scan_list(
                Kind::Member,
                Kind::Member.list_path(),
                scan,
                queue,
                summary,
                progress,
                stop,
            )
            .await?;
        if flat.is_some() {
            return Ok(flat);
        }
        tracing::info!("no flat member list: reading members customer by customer");
        summary.members_per_customer = true;
        let mut customers: Vec<String> = scan.live_customers.iter().cloned().collect();
        customers.sort();
        let mut listed: Option<HashSet<String>> = None;
        for customer in customers {
            let path = format!("/v1/customers/{customer}/members");
            match self
                .scan_list(Kind::Member, &path, scan, queue, summary, progress, stop)
                .await?
            {
                Some(members) => listed.get_or_insert_with(HashSet::new).extend(members),
                // Deleted since the customer list was read: its members go
                // with it, and the next scan finds the customer absent.
                None => {
                    scan.live_customers.remove(&customer);
                }
            }
        }
        Ok(listed)
    }

    /// Looks up each of `rows` the complete list did not return, on its
    /// own: a 404 makes it absent (recorded once the scan is read, see
    /// [`Reconciler::record_absences`]); an answer refreshes it (the pages
    /// had shifted under the scan).
    async fn look_up_unlisted(
        &self,
        absences: Absences,
        rows: Vec<LiveRow>,
        listed: &HashSet<String>,
        scan: &mut ScanState,
        queue: &mpsc::Sender<Batch>,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let kind = absences.kind;
        let mut refreshed = Vec::new();
        for row in rows {
            if listed.contains(&row.id) || !scan.looked_up.insert((kind, row.id.clone())) {
                continue;
            }
            // A member is looked up under its customer; one whose customer
            // Polar no longer lists goes with the customer's deletion.
            if kind == Kind::Member && !scan.live_customers.contains(&row.owner) {
                continue;
            }
            let path = (absences.get_path)(&row);
            let answer = self.api.get(&path).await?;
            match answer.status.as_u16() {
                404 => scan.absent.push((kind, row)),
                200 => {
                    let item: Box<RawValue> =
                        serde_json::from_slice(&answer.body).map_err(|e| ApiError::Malformed {
                            path: path.clone(),
                            reason: format!("not a {} ({e})", kind.name()),
                        })?;
                    let object = Versioned::of(&item).with_context(|| path.clone())?;
                    refreshed.push(snapshot_event(
                        self.api.version(),
                        kind,
                        &object,
                        &item,
                        answer.answered_at,
                    )?);
                    summary.missed_by_pages += 1;
                }
                _ => return Err(polar_api::refused(&path, &answer).into()),
            }
        }
        if !refreshed.is_empty() {
            send(queue, Batch::Scan(refreshed)).await?;
        }
        Ok(())
    }

    /// The deletions of what was found absent, once the whole scan is read:
    /// a deleted customer whose last snapshot came embedded in a
    /// subscription, order, grant or checkout is left to that snapshot (it
    /// says when, which an absence cannot); a member's or discount's
    /// deletion supersedes the newest snapshot seen, so that no embedded
    /// copy outranks it.
    async fn record_absences(
        &self,
        scan: &mut ScanState,
        queue: &mpsc::Sender<Batch>,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let since = scan.started.unwrap_or_else(Utc::now);
        let mut events = Vec::new();
        for (kind, mut row) in std::mem::take(&mut scan.absent) {
            *summary.removed_by_kind.entry(kind.name()).or_default() += 1;
            summary.removed += 1;
            if kind == Kind::Customer && scan.seen_deleted_customers.contains(&row.id) {
                continue;
            }
            if let Some(newer) = scan.newer_embedded(kind, &row) {
                row.snapshot = newer;
            }
            events.push(absence_event(self.api.version(), kind, &row, since)?);
        }
        if !events.is_empty() {
            send(queue, Batch::Absences(events)).await?;
        }
        Ok(())
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

/// What one scan has learnt that later kinds need.
#[derive(Debug, Default)]
struct ScanState {
    /// The scan's start by Polar's clock: its first answer.
    started: Option<DateTime<Utc>>,
    /// The ids each kind that can be absent was listed with.
    listed: BTreeMap<Kind, HashSet<String>>,
    /// What was looked up on its own, not to ask twice.
    looked_up: HashSet<(Kind, String)>,
    /// What Polar answered 404 for: deleted.
    absent: Vec<(Kind, LiveRow)>,
    /// The customers the complete customer list returned, less any that
    /// vanished while their members were read.
    live_customers: HashSet<String>,
    /// Customers seen embedded, deleted, in what the scan read.
    seen_deleted_customers: HashSet<String>,
    /// The newest snapshot of each member and discount seen embedded in
    /// what the scan read, with its version.
    embedded: HashMap<(Kind, String), (DateTime<Utc>, String)>,
    /// What has seats: (`subscription_id` or `order_id`, its id).
    seat_owners: Vec<(&'static str, String)>,
}

impl ScanState {
    /// Rows for the objects of `kind` seen embedded that were neither
    /// listed nor looked up already.
    fn embedded_only(&self, kind: Kind, listed: &HashSet<String>) -> Vec<LiveRow> {
        #[derive(Deserialize)]
        struct Owner {
            #[serde(default)]
            customer_id: Option<String>,
        }
        self.embedded
            .iter()
            .filter(|((embedded_kind, id), _)| {
                *embedded_kind == kind
                    && !listed.contains(id)
                    && !self.looked_up.contains(&(kind, id.clone()))
            })
            .map(|((_, id), (_, snapshot))| LiveRow {
                id: id.clone(),
                owner: serde_json::from_str::<Owner>(snapshot)
                    .ok()
                    .and_then(|o| o.customer_id)
                    .unwrap_or_default(),
                snapshot: snapshot.clone(),
            })
            .collect()
    }

    /// A snapshot of `row`'s object seen embedded during the scan that is
    /// newer than the projection's.
    fn newer_embedded(&self, kind: Kind, row: &LiveRow) -> Option<String> {
        let (version, snapshot) = self.embedded.get(&(kind, row.id.clone()))?;
        let held = serde_json::from_str::<Box<RawValue>>(&row.snapshot)
            .ok()
            .and_then(|raw| Versioned::of(&raw).ok());
        match held {
            Some(held) if held.version >= *version => None,
            _ => Some(snapshot.clone()),
        }
    }

    /// Notes, from one listed object, what later steps need: a deleted
    /// customer embedded in it; a subscription with seats, or an order with
    /// seats of its own (one bought once, not a subscription's order: that
    /// subscription's seats are read under the subscription).
    fn note_embedded(&mut self, kind: Kind, id: &str, item: &RawValue) {
        #[derive(Deserialize)]
        struct Embeds<'a> {
            #[serde(default)]
            seats: Option<i64>,
            #[serde(borrow, default)]
            subscription_id: Option<&'a str>,
            #[serde(borrow, default)]
            customer: Option<EmbeddedCustomer<'a>>,
            #[serde(borrow, default)]
            member: Option<&'a RawValue>,
            #[serde(borrow, default)]
            discount: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct EmbeddedCustomer<'a> {
            id: &'a str,
            #[serde(borrow, default)]
            deleted_at: Option<&'a str>,
        }
        if !matches!(
            kind,
            Kind::Subscription | Kind::Order | Kind::BenefitGrant | Kind::Checkout | Kind::Seat
        ) {
            return;
        }
        let Ok(embeds) = serde_json::from_str::<Embeds<'_>>(item.get()) else {
            return;
        };
        if let Some(customer) = embeds.customer.filter(|c| c.deleted_at.is_some()) {
            self.seen_deleted_customers.insert(customer.id.to_owned());
        }
        for (embedded_kind, raw) in [
            (Kind::Member, embeds.member),
            (Kind::Discount, embeds.discount),
        ] {
            let Some(raw) = raw.filter(|r| r.get() != "null") else {
                continue;
            };
            let Ok(object) = Versioned::of(raw) else {
                continue;
            };
            let newest = self
                .embedded
                .entry((embedded_kind, object.id))
                .or_insert_with(|| (object.version, raw.get().to_owned()));
            if object.version > newest.0 {
                *newest = (object.version, raw.get().to_owned());
            }
        }
        if embeds.seats.is_none() {
            return;
        }
        match kind {
            Kind::Subscription => self.seat_owners.push(("subscription_id", id.to_owned())),
            Kind::Order if embeds.subscription_id.is_none() => {
                self.seat_owners.push(("order_id", id.to_owned()));
            }
            _ => {}
        }
    }
}

/// How the deletion of a kind Polar stops listing is found.
#[derive(Debug, Clone, Copy)]
struct Absences {
    kind: Kind,
    /// Its table in the live projection, and the column that names a row's
    /// owner (a member's customer; else the row itself).
    table: &'static str,
    owner: &'static str,
    /// The lookup that answers 404 once the object is gone.
    get_path: fn(&LiveRow) -> String,
}

impl Absences {
    /// The kinds Polar deletes without a trace in its lists. (Products and
    /// benefits are archived or soft-deleted and stay listed; subscriptions,
    /// orders and grants are never deleted.)
    fn of(kind: Kind) -> Option<Self> {
        let (table, owner, get_path): (_, _, fn(&LiveRow) -> String) = match kind {
            Kind::Customer => ("customers", "id", |row| format!("/v1/customers/{}", row.id)),
            Kind::Discount => ("discounts", "id", |row| format!("/v1/discounts/{}", row.id)),
            Kind::Member => ("members", "customer_id", |row| {
                format!("/v1/customers/{}/members/{}", row.owner, row.id)
            }),
            _ => return None,
        };
        Some(Self {
            kind,
            table,
            owner,
            get_path,
        })
    }
}

/// A live row of the projection: its id, its owner (a member's customer)
/// and its last snapshot.
#[derive(Debug, sqlx::FromRow)]
struct LiveRow {
    id: String,
    owner: String,
    snapshot: String,
}

/// The event that carries one scanned snapshot.
fn snapshot_event(
    api_version: &str,
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
    envelope_event(
        api_version,
        &kind.event_type(item)?,
        &webhook_id,
        item.get(),
        answered_at,
    )
}

/// A `*.deleted` for an object Polar no longer has, built from its last
/// snapshot as Polar builds one. A customer's is versioned `since`, with
/// `deleted_at` set and its external id cleared (kept in
/// `metadata.__external_id`), as Polar's soft delete does. A discount's or
/// member's keeps the last snapshot as it is (other objects embed it, and
/// Polar serves it there as it last was) and wins over that snapshot by its
/// later envelope time (`since`): a webhook with a newer version still wins.
/// Its webhook-id names the version it supersedes, so two scans that both
/// find the absence before it is projected append it once.
fn absence_event(
    api_version: &str,
    kind: Kind,
    last: &LiveRow,
    since: DateTime<Utc>,
) -> anyhow::Result<NewEvent> {
    let id = &last.id;
    let mut snapshot: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&last.snapshot)
            .with_context(|| format!("the projection's {} {id}", kind.name()))?;
    let superseded = snapshot
        .get("modified_at")
        .filter(|v| !v.is_null())
        .or_else(|| snapshot.get("created_at"))
        .and_then(|v| v.as_str())
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(|| "unknown".to_owned(), |t| instant(t.with_timezone(&Utc)));
    let at = serde_json::Value::String(instant(since));
    if kind == Kind::Customer {
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
    }
    let data = serde_json::to_string(&snapshot)?;
    let name = kind.name();
    let webhook_id = format!("{SCAN_SOURCE}:{name}:{id}:absent-after:{superseded}");
    envelope_event(
        api_version,
        &format!("{name}.deleted"),
        &webhook_id,
        &data,
        since,
    )
}

fn envelope_event(
    api_version: &str,
    event_type: &str,
    webhook_id: &str,
    data: &str,
    timestamp: DateTime<Utc>,
) -> anyhow::Result<NewEvent> {
    let body = format!(
        r#"{{"type":"{event_type}","timestamp":"{}","api_version":"{api_version}","data":{data}}}"#,
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

/// The rows of `absences`' table the live projection holds and has not
/// seen deleted. Empty when no projector has made the projection yet.
async fn live_rows(pool: &PgPool, absences: Absences) -> anyhow::Result<Vec<LiveRow>> {
    if !projection_exists(pool).await? {
        if absences.kind == Kind::Customer {
            tracing::warn!(
                "no projection yet: deleted objects cannot be told from absent ones this time"
            );
        }
        return Ok(Vec::new());
    }
    let Absences { table, owner, .. } = absences;
    sqlx::query_as(&format!(
        "select id, {owner} as owner, snapshot::text as snapshot
         from projection.{table} where deleted_at is null"
    ))
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the live projection's {table}"))
}

/// Which of `ids` the live projection already holds as deleted (none when
/// there is no projection yet).
async fn deleted_rows(
    pool: &PgPool,
    absences: Absences,
    ids: &[&str],
) -> anyhow::Result<HashSet<String>> {
    if ids.is_empty() || !projection_exists(pool).await? {
        return Ok(HashSet::new());
    }
    let table = absences.table;
    let deleted: Vec<String> = sqlx::query_scalar(&format!(
        "select id from projection.{table} where id = any($1) and deleted_at is not null"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the live projection's {table}"))?;
    Ok(deleted.into_iter().collect())
}

async fn projection_exists(pool: &PgPool) -> anyhow::Result<bool> {
    Ok(
        sqlx::query_scalar("select to_regclass('projection.customers') is not null")
            .fetch_one(pool)
            .await?,
    )
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
    /// Snapshots read from the lists: a duplicate is an unchanged object.
    Scan(Vec<NewEvent>),
    /// Deletions found: a duplicate is one an earlier run found (and no
    /// projector has applied yet), not an object seen.
    Absences(Vec<NewEvent>),
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
                let events = match &batch {
                    Batch::Scan(events) | Batch::Absences(events) | Batch::Deliveries(events) => {
                        events
                    }
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
                match batch {
                    Batch::Scan(_) => {
                        written.scan_appended += new;
                        written.scan_duplicates += duplicates;
                    }
                    Batch::Absences(_) => written.scan_appended += new,
                    Batch::Deliveries(_) => {
                        written.deliveries_appended += new;
                        written.deliveries_duplicates += duplicates;
                    }
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
            "2026-10",
            Kind::Subscription,
            &Versioned::of(&a).unwrap(),
            &a,
            t("2026-03-01T00:00:00Z"),
        )
        .unwrap();
        let eb = snapshot_event(
            "2026-10",
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
        let last = LiveRow {
            id: "c1".into(),
            owner: "c1".into(),
            snapshot: last.into(),
        };
        let event =
            absence_event("2027-01", Kind::Customer, &last, t("2026-02-01T00:00:00Z")).unwrap();
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
        assert_eq!(body["api_version"], "2027-01");
    }

    #[test]
    fn a_vanished_member_is_deleted_as_it_was_and_keeps_its_external_id() {
        let last = LiveRow {
            id: "m1".into(),
            owner: "c1".into(),
            snapshot: r#"{"id":"m1","customer_id":"c1","created_at":"2026-01-01T00:00:00Z","modified_at":null,"external_id":"u1","email":"a@b.c","role":"member"}"#.into(),
        };
        let event =
            absence_event("2026-10", Kind::Member, &last, t("2026-02-01T00:00:00Z")).unwrap();
        assert_eq!(event.event_type, "member.deleted");
        assert_eq!(
            event.webhook_id,
            "polar-api:member:m1:absent-after:2026-01-01T00:00:00.000000Z"
        );
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert!(body["data"]["modified_at"].is_null());
        assert_eq!(body["timestamp"], "2026-02-01T00:00:00.000000Z");
        assert_eq!(body["data"]["external_id"], "u1");
        assert!(body["data"].get("deleted_at").is_none());
        assert_eq!(
            (Absences::of(Kind::Member).unwrap().get_path)(&last),
            "/v1/customers/c1/members/m1"
        );
        assert!(Absences::of(Kind::Subscription).is_none());
    }
}
