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
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
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
        }
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
