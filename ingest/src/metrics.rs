//! Ingest's Prometheus metrics. One registry per running service, so several
//! instances in one test process do not collide.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use hookstream_shared::http::{BATCH_SIZE_BUCKETS, LATENCY_BUCKETS};

/// Every metric ingest exports, registered in `registry`.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    pub registry: Registry,
    /// Webhook requests by source and outcome (`accepted`, `duplicate`,
    /// `unauthorized`, `bad_request`, `too_large`, `overloaded`, `unavailable`...).
    pub requests: IntCounterVec,
    /// Signature verification failures by source and reason.
    pub verification_failures: IntCounterVec,
    /// Time from request start to answer, for accepted and duplicate webhooks.
    pub request_seconds: Histogram,
    /// Events per group-commit batch.
    pub batch_size: Histogram,
    /// Time one batch insert (and commit) takes.
    pub commit_seconds: Histogram,
    /// Events waiting for a batch.
    pub queue_depth: IntGauge,
    /// Batches that failed and were answered 503.
    pub commit_failures: IntCounter,
    /// 1 while this replica's relay holds the leader lock.
    pub relay_leader: IntGauge,
    /// Unpublished rows in the log, as last measured by the leader.
    pub relay_backlog: IntGauge,
    /// Age in seconds of the oldest unpublished row (0 when none).
    pub relay_lag_seconds: Gauge,
    /// Events Kafka acknowledged.
    pub relay_published: IntCounter,
    /// Of those, events the leader's sweep published (their own replica did
    /// not): non-zero after crashes and Kafka outages, near zero otherwise.
    pub relay_swept: IntCounter,
    /// Events Kafka did not acknowledge (retried later).
    pub relay_publish_errors: IntCounter,
    /// Events Kafka refuses for good (the message itself), parked: the
    /// projector applies them from the log; the console lists them.
    pub relay_parked: IntCounter,
    /// Deliveries of a logged webhook-id whose body differs from the logged
    /// one: answered `duplicate` like any copy, but only someone holding the
    /// signing secret can send one, so it means a forgery attempt with a
    /// leaked secret, or a sender that reuses ids.
    pub duplicate_body_mismatch: IntCounter,
    pub reconcile: ReconcileMetrics,
}

/// The periodic reconcile (`INGEST_RECONCILE_INTERVAL`).
#[derive(Debug, Clone)]
pub struct ReconcileMetrics {
    /// 1 while this replica leads the periodic reconcile.
    pub leader: IntGauge,
    /// Finished runs by outcome (`ok`, `failed`).
    pub runs: IntCounterVec,
    /// Objects read from Polar's lists.
    pub objects_seen: IntCounter,
    /// Events a run added to the log (scan and deliveries).
    pub events_appended: IntCounter,
    /// Customers, discounts and members recorded as deleted (absent from
    /// Polar's list, 404 alone).
    pub objects_removed: IntCounter,
    /// `429`s from Polar (each waited out).
    pub rate_limited: IntCounter,
    /// Unix time of the last successful run's end.
    pub last_success: Gauge,
    /// The webhook endpoint as last read: 1 enabled, 0 disabled by Polar,
    /// -1 unknown (not configured, or not read yet).
    pub endpoint_enabled: IntGauge,
}

impl ReconcileMetrics {
    fn new(registry: &Registry) -> Self {
        let metrics = Self {
            leader: IntGauge::new(
                "reconcile_leader",
                "1 while this replica leads the periodic reconcile",
            )
            .expect("metric"),
            runs: IntCounterVec::new(
                Opts::new("reconcile_runs_total", "Reconcile runs by outcome"),
                &["outcome"],
            )
            .expect("metric"),
            objects_seen: IntCounter::new(
                "reconcile_objects_seen_total",
                "Objects read from Polar's lists",
            )
            .expect("metric"),
            events_appended: IntCounter::new(
                "reconcile_events_appended_total",
                "Events reconcile added to the log",
            )
            .expect("metric"),
            objects_removed: IntCounter::new(
                "reconcile_objects_removed_total",
                "Customers, discounts and members recorded as deleted by reconcile",
            )
            .expect("metric"),
            rate_limited: IntCounter::new(
                "reconcile_rate_limited_total",
                "429 answers from Polar's API, each waited out",
            )
            .expect("metric"),
            last_success: Gauge::new(
                "reconcile_last_success_timestamp_seconds",
                "Unix time the last successful reconcile ended",
            )
            .expect("metric"),
            endpoint_enabled: IntGauge::new(
                "polar_endpoint_enabled",
                "1 if Polar has the webhook endpoint enabled, 0 if disabled, -1 unknown",
            )
            .expect("metric"),
        };
        metrics.endpoint_enabled.set(-1);
        for collector in [
            Box::new(metrics.leader.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.runs.clone()),
            Box::new(metrics.objects_seen.clone()),
            Box::new(metrics.events_appended.clone()),
            Box::new(metrics.objects_removed.clone()),
            Box::new(metrics.rate_limited.clone()),
            Box::new(metrics.last_success.clone()),
            Box::new(metrics.endpoint_enabled.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        metrics
    }
}

impl IngestMetrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("hookstream_ingest".to_owned()), None)
            .expect("valid metric prefix");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Webhook requests by source and outcome"),
            &["source", "outcome"],
        )
        .expect("metric");
        let verification_failures = IntCounterVec::new(
            Opts::new(
                "verification_failures_total",
                "Signature verification failures by reason",
            ),
            &["source", "reason"],
        )
        .expect("metric");
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "request_seconds",
                "Time to answer an accepted or duplicate webhook",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("batch_size", "Events per group-commit batch")
                .buckets(BATCH_SIZE_BUCKETS.to_vec()),
        )
        .expect("metric");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new("commit_seconds", "Time to insert and commit one batch")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        let queue_depth =
            IntGauge::new("queue_depth", "Events waiting for a batch").expect("metric");
        let commit_failures = IntCounter::new(
            "commit_failures_total",
            "Batches that could not be committed",
        )
        .expect("metric");
        let relay_leader =
            IntGauge::new("relay_leader", "1 while this replica leads the relay").expect("metric");
        let relay_backlog =
            IntGauge::new("relay_backlog_events", "Unpublished events in the log").expect("metric");
        let relay_lag_seconds =
            Gauge::new("relay_lag_seconds", "Age of the oldest unpublished event").expect("metric");
        let relay_published =
            IntCounter::new("relay_published_total", "Events acknowledged by Kafka")
                .expect("metric");
        let relay_swept = IntCounter::new(
            "relay_swept_total",
            "Events published by the leader's sweep of the outbox",
        )
        .expect("metric");
        let relay_publish_errors = IntCounter::new(
            "relay_publish_errors_total",
            "Events Kafka did not acknowledge (retried)",
        )
        .expect("metric");
        let relay_parked = IntCounter::new(
            "relay_parked_total",
            "Events Kafka refuses for good, parked and applied from the log",
        )
        .expect("metric");
        let duplicate_body_mismatch = IntCounter::new(
            "duplicate_body_mismatch_total",
            "Duplicate webhook-ids delivered with a different body",
        )
        .expect("metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(verification_failures.clone()),
            Box::new(request_seconds.clone()),
            Box::new(batch_size.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(commit_failures.clone()),
            Box::new(relay_leader.clone()),
            Box::new(relay_backlog.clone()),
            Box::new(relay_lag_seconds.clone()),
            Box::new(relay_published.clone()),
            Box::new(relay_swept.clone()),
            Box::new(relay_publish_errors.clone()),
            Box::new(relay_parked.clone()),
            Box::new(duplicate_body_mismatch.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        let reconcile = ReconcileMetrics::new(&registry);
        Self {
            registry,
            reconcile,
            requests,
            verification_failures,
            request_seconds,
            batch_size,
            commit_seconds,
            queue_depth,
            commit_failures,
            relay_leader,
            relay_backlog,
            relay_lag_seconds,
            relay_published,
            relay_swept,
            relay_publish_errors,
            relay_parked,
            duplicate_body_mismatch,
        }
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
