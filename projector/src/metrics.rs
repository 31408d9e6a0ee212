//! The projector's Prometheus metrics, one registry per running service.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use hookstream_shared::http::{BATCH_SIZE_BUCKETS, LATENCY_BUCKETS};

/// Polar's event types; anything else is counted as `other`, so a stream of
/// odd types cannot blow up label cardinality.
const KNOWN_EVENT_TYPES: &[&str] = &[
    "checkout.created",
    "checkout.updated",
    "checkout.expired",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.state_changed",
    "customer_seat.assigned",
    "customer_seat.claimed",
    "customer_seat.revoked",
    "member.created",
    "member.updated",
    "member.deleted",
    "order.created",
    "order.updated",
    "order.paid",
    "order.refunded",
    "subscription.created",
    "subscription.updated",
    "subscription.active",
    "subscription.canceled",
    "subscription.uncanceled",
    "subscription.cycled",
    "subscription.revoked",
    "subscription.past_due",
    "subscription.paused",
    "subscription.resumed",
    "refund.created",
    "refund.updated",
    "product.created",
    "product.updated",
    "discount.created",
    "discount.updated",
    "discount.deleted",
    "benefit.created",
    "benefit.updated",
    "benefit_grant.created",
    "benefit_grant.cycled",
    "benefit_grant.updated",
    "benefit_grant.revoked",
    "organization.updated",
];

/// Whether Polar sends this event type (as of API 2026-10).
pub fn is_known_event_type(event_type: &str) -> bool {
    KNOWN_EVENT_TYPES.contains(&event_type)
}

/// The label value for an event type.
pub fn event_type_label(event_type: &str) -> &str {
    if is_known_event_type(event_type) {
        event_type
    } else {
        "other"
    }
}

/// Every metric the projector exports.
#[derive(Debug, Clone)]
pub struct ProjectorMetrics {
    pub registry: Registry,
    /// Messages behind the head of each partition.
    pub consumer_lag: IntGaugeVec,
    /// Events per applied batch.
    pub batch_size: Histogram,
    /// Time to apply and commit one batch.
    pub apply_seconds: Histogram,
    /// Events applied, by type.
    pub applied: IntCounterVec,
    /// Well-formed events no projection uses, by type.
    pub ignored: IntCounterVec,
    /// Events recorded in the failures table.
    pub failures: IntCounter,
    /// Batches that failed (database errors) and were retried.
    pub batch_errors: IntCounter,
    /// Messages without the headers the projector needs (not from hookstream's relay).
    pub foreign_messages: IntCounter,
    /// Attempts to seek partitions back to their stored offsets that failed
    /// (the offsets could not be read, or the seek itself failed).
    pub rewind_errors: IntCounter,
    /// Batches refused before applying because a partition did not start at
    /// its stored offset.
    pub batches_refused: IntCounter,
    /// Read API requests by route and status.
    pub api_requests: IntCounterVec,
    /// Read API latency by route.
    pub api_seconds: HistogramVec,
    /// Partitions found to have lost messages the projector never applied.
    pub offset_gaps: IntCounter,
    /// Re-applications of the event log to repair such gaps.
    pub backfills: IntCounter,
    /// Partitions found recreated under their stored offsets (a broker that
    /// lost its data), started over from their beginning.
    pub topic_restarts: IntCounter,
    /// Entitlement checks answered from the cache.
    pub cache_hits: IntCounter,
    /// Entitlement checks that read Postgres.
    pub cache_misses: IntCounter,
    /// Entitlement checks waiting for their answer to change (`wait_for`).
    pub waiters: IntGauge,
    /// Open change-feed streams (`/v1/changes/stream`).
    pub sse_clients: IntGauge,
    /// Changes the app answered 2xx for (`PROJECTOR_NOTIFY_URL`).
    pub pushed: IntCounter,
    /// Failed push attempts (non-2xx, timeouts, refused connections).
    pub push_failures: IntCounter,
    /// 1 while a push is parked (the app keeps failing).
    pub push_parked: IntGauge,
    /// Changes in the feed not yet pushed, as of the page being delivered.
    pub push_backlog: IntGauge,
    /// Changes pruned before they could be pushed.
    pub push_lost: IntCounter,
    /// For the last batch, seconds from ingest accepting its oldest event to
    /// its changes being in the feed.
    pub feed_lag_seconds: Gauge,
}

impl ProjectorMetrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("hookstream_projector".to_owned()), None).expect("prefix");
        let consumer_lag = IntGaugeVec::new(
            Opts::new("consumer_lag", "Messages behind the head of the partition"),
            &["partition"],
        )
        .expect("metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("batch_size", "Events per applied batch")
                .buckets(BATCH_SIZE_BUCKETS.to_vec()),
        )
        .expect("metric");
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new("apply_seconds", "Time to apply and commit one batch")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        let applied = IntCounterVec::new(
            Opts::new("events_applied_total", "Events applied by type"),
            &["event_type"],
        )
        .expect("metric");
        let ignored = IntCounterVec::new(
            Opts::new("events_ignored_total", "Events of types no projection uses"),
            &["event_type"],
        )
        .expect("metric");
        let failures = IntCounter::new("apply_failures_total", "Events that could not be applied")
            .expect("metric");
        let batch_errors = IntCounter::new(
            "batch_errors_total",
            "Batches that hit a database error and were retried",
        )
        .expect("metric");
        let foreign_messages = IntCounter::new(
            "foreign_messages_total",
            "Messages skipped for lacking hookstream's seq header",
        )
        .expect("metric");
        let rewind_errors = IntCounter::new(
            "rewind_errors_total",
            "Failed attempts to seek partitions back to their stored offsets",
        )
        .expect("metric");
        let batches_refused = IntCounter::new(
            "batches_refused_total",
            "Batches refused because a partition did not start at its stored offset",
        )
        .expect("metric");
        let api_requests = IntCounterVec::new(
            Opts::new(
                "api_requests_total",
                "Read API requests by route and status",
            ),
            &["route", "status"],
        )
        .expect("metric");
        let api_seconds = HistogramVec::new(
            HistogramOpts::new("api_request_seconds", "Read API latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("metric");
        let offset_gaps = IntCounter::new(
            "offset_gaps_total",
            "Partitions found to have lost messages the projector never applied",
        )
        .expect("metric");
        let backfills = IntCounter::new(
            "backfills_total",
            "Re-applications of the event log to repair gaps",
        )
        .expect("metric");
        let topic_restarts = IntCounter::new(
            "topic_restarts_total",
            "Partitions found recreated under their stored offsets and started over",
        )
        .expect("metric");
        let cache_hits = IntCounter::new(
            "entitlement_cache_hits_total",
            "Entitlement checks answered from the cache",
        )
        .expect("metric");
        let cache_misses = IntCounter::new(
            "entitlement_cache_misses_total",
            "Entitlement checks that read Postgres",
        )
        .expect("metric");
        let waiters = IntGauge::new(
            "entitlement_waiters",
            "Entitlement checks waiting for their answer to change (wait_for)",
        )
        .expect("metric");
        let sse_clients = IntGauge::new(
            "change_stream_clients",
            "Open change-feed streams (/v1/changes/stream)",
        )
        .expect("metric");
        let pushed = IntCounter::new("changes_pushed_total", "Changes the app answered 2xx for")
            .expect("metric");
        let push_failures = IntCounter::new(
            "change_push_failures_total",
            "Failed push attempts (non-2xx, timeouts, refused connections)",
        )
        .expect("metric");
        let push_parked = IntGauge::new(
            "change_push_parked",
            "1 while the push is parked because the app keeps failing",
        )
        .expect("metric");
        let push_backlog = IntGauge::new(
            "change_push_backlog",
            "Changes in the feed not yet pushed, as of the page being delivered",
        )
        .expect("metric");
        let feed_lag_seconds = Gauge::new(
            "change_feed_lag_seconds",
            "For the last batch, seconds from ingest accepting its oldest event to its changes being in the feed",
        )
        .expect("metric");
        // Unknown until a batch writes the feed.
        feed_lag_seconds.set(f64::NAN);
        let push_lost = IntCounter::new(
            "change_push_lost_total",
            "Changes pruned by retention before they could be pushed",
        )
        .expect("metric");
        for collector in [
            Box::new(cache_hits.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(waiters.clone()),
            Box::new(sse_clients.clone()),
            Box::new(pushed.clone()),
            Box::new(push_failures.clone()),
            Box::new(push_parked.clone()),
            Box::new(push_backlog.clone()),
            Box::new(push_lost.clone()),
            Box::new(feed_lag_seconds.clone()),
            Box::new(cache_misses.clone()),
            Box::new(offset_gaps.clone()),
            Box::new(backfills.clone()),
            Box::new(topic_restarts.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(batch_size.clone()),
            Box::new(apply_seconds.clone()),
            Box::new(applied.clone()),
            Box::new(ignored.clone()),
            Box::new(failures.clone()),
            Box::new(batch_errors.clone()),
            Box::new(foreign_messages.clone()),
            Box::new(rewind_errors.clone()),
            Box::new(batches_refused.clone()),
            Box::new(api_requests.clone()),
            Box::new(api_seconds.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
            consumer_lag,
            batch_size,
            apply_seconds,
            applied,
            ignored,
            failures,
            batch_errors,
            foreign_messages,
            rewind_errors,
            batches_refused,
            api_requests,
            api_seconds,
            cache_hits,
            cache_misses,
            waiters,
            sse_clients,
            pushed,
            push_failures,
            push_parked,
            push_backlog,
            push_lost,
            feed_lag_seconds,
            offset_gaps,
            backfills,
            topic_restarts,
        }
    }

    /// Counts one applied batch.
    pub fn record_batch(&self, outcome: &crate::projection::BatchOutcome, seconds: f64) {
        self.batch_size.observe(outcome.events() as f64);
        self.apply_seconds.observe(seconds);
        for (event_type, n) in &outcome.applied {
            self.applied
                .with_label_values(&[event_type_label(event_type)])
                .inc_by(*n);
        }
        for (event_type, n) in &outcome.ignored {
            self.ignored
                .with_label_values(&[event_type_label(event_type)])
                .inc_by(*n);
        }
        self.failures.inc_by(outcome.failed);
    }
}

impl Default for ProjectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One unit of a gauge, held for as long as the value lives: counts what is
/// in progress (a parked waiter, an open stream), however it ends.
#[derive(Debug)]
pub struct InProgress(IntGauge);

impl InProgress {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}
