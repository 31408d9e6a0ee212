//! Starting the real ingest service for a test and talking to it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hookstream_ingest::metrics::IngestMetrics;
use hookstream_ingest::signature::{KeyRule, signature_header};
use hookstream_ingest::{Application, IngestConfig};
use hookstream_shared::config::{Secret, Settings};
use hookstream_shared::kafka::EmbeddedKafka;

pub const SECRET: &str = "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
pub const PARTITIONS: i32 = 3;

pub struct TestIngest {
    pub base_url: String,
    /// The metrics listener: `{metrics_url}/metrics`.
    pub metrics_url: String,
    pub pool: PgPool,
    pub kafka: EmbeddedKafka,
    pub topic: String,
    pub client: reqwest::Client,
    metrics: IngestMetrics,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestIngest {
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, &[]).await
    }

    /// Starts ingest with extra settings (`("INGEST_MAX_BATCH", "4")`).
    pub async fn spawn_with(pool: PgPool, extra: &[(&str, &str)]) -> Self {
        hookstream_shared::telemetry::init_for_tests();
        let kafka = EmbeddedKafka::start(1).expect("mock broker");
        let topic = format!("test-{}", uuid::Uuid::new_v4());
        kafka.create_topic(&topic, PARTITIONS).expect("topic");
        let mut vars: Vec<(String, String)> = vec![
            // build_with_pool uses the test's pool; the URL only has to be valid.
            (
                "DATABASE_URL".into(),
                "postgres://unused@127.0.0.1/unused".into(),
            ),
            ("KAFKA_BROKERS".into(), kafka.bootstrap_servers().to_owned()),
            ("KAFKA_TOPIC".into(), topic.clone()),
            ("POLAR_WEBHOOK_SECRET".into(), SECRET.into()),
            ("INGEST_LISTEN".into(), "127.0.0.1:0".into()),
            ("INGEST_METRICS_LISTEN".into(), "127.0.0.1:0".into()),
            ("RELAY_POLL_INTERVAL_MS".into(), "200".into()),
            ("RELAY_SWEEP_AFTER_MS".into(), "300".into()),
            ("KAFKA_MESSAGE_TIMEOUT_MS".into(), "3000".into()),
            ("SHUTDOWN_GRACE_SECS".into(), "5".into()),
        ];
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        let config = IngestConfig::from_settings(&Settings::from_vars(vars).expect("settings"))
            .expect("config");
        let app = Application::build_with_pool(config, pool.clone())
            .await
            .expect("ingest builds");
        let base_url = format!("http://{}", app.address());
        let metrics_url = format!("http://{}", app.metrics_address());
        let metrics = app.metrics();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            base_url,
            metrics_url,
            pool,
            kafka,
            topic,
            client: {
                hookstream_shared::tls::use_ring_provider();
                reqwest::Client::new()
            },
            metrics,
            shutdown,
            server: Some(server),
        }
    }

    /// The running service's metrics.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// A correctly signed Polar webhook for `body` under `id`.
    pub fn webhook(&self, id: &str, body: &str) -> reqwest::RequestBuilder {
        let ts = now();
        self.client
            .post(format!("{}/webhooks/polar", self.base_url))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(id, ts, body))
            .header("content-type", "application/json")
            .header("user-agent", "polar.sh webhooks")
            .body(body.to_owned())
    }

    /// Sends a correctly signed webhook and returns ingest's JSON answer.
    pub async fn answer(&self, id: &str, body: &str) -> serde_json::Value {
        self.webhook(id, body)
            .send()
            .await
            .expect("ingest answers")
            .json()
            .await
            .expect("a JSON answer")
    }

    pub async fn log_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from event_log")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    pub async fn unpublished_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from event_log_outbox")
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }

    /// Waits until the relay has marked every row published.
    pub async fn wait_all_published(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.unpublished_count().await > 0 {
            assert!(
                Instant::now() < deadline,
                "rows still unpublished after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every message on the topic, reading until `expected` arrived or `within` passed.
    pub async fn read_topic(&self, expected: usize, within: Duration) -> Vec<OwnedMessage> {
        read_topic(
            self.kafka.bootstrap_servers(),
            &self.topic,
            expected,
            within,
        )
        .await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("ingest task")
                .expect("ingest stops cleanly");
        }
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn sign(id: &str, ts: i64, body: &str) -> String {
    signature_header(
        KeyRule::Polar,
        &Secret::new(SECRET),
        id,
        ts,
        body.as_bytes(),
    )
}

/// A Polar-shaped event: `type`, `timestamp`, `api_version`, `data`.
pub fn polar_event(event_type: &str, data: serde_json::Value) -> String {
    serde_json::json!({
        "type": event_type,
        "timestamp": "2026-01-02T07:12:11.613683Z",
        "api_version": "2026-10",
        "data": data,
    })
    .to_string()
}

pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .expect("metadata");
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(&topic, partition.id(), Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + within;
        let mut messages = Vec::new();
        while messages.len() < expected && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                messages.push(message.expect("message").detach());
            }
        }
        // Anything beyond `expected` (duplicates) shows up in a short extra wait.
        let settle = Instant::now() + Duration::from_millis(300);
        while Instant::now() < settle {
            if let Some(message) = consumer.poll(Duration::from_millis(50)) {
                messages.push(message.expect("message").detach());
            }
        }
        messages
    })
    .await
    .expect("reader task")
}

pub fn header<'m>(message: &'m OwnedMessage, name: &str) -> Option<&'m str> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}
