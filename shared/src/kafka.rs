//! Kafka plumbing both services share: settings, topic creation, the message
//! headers ingest writes and the projector reads, and the embedded broker.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;

use crate::config::{ConfigError, Settings};

/// The message format (DESIGN.md "Kafka message"), written by the relay and
/// read by the projector, in one place: the key is the partition key, the
/// value the raw body, and these headers.
pub mod message {
    use rdkafka::Message;
    use rdkafka::message::{Header, Headers, OwnedHeaders};

    /// The Standard Webhooks message id, unique per `source`.
    pub const WEBHOOK_ID: &str = "webhook-id";
    /// The envelope's `type`.
    pub const EVENT_TYPE: &str = "event-type";
    /// The ingest source the event came in on (`polar`).
    pub const SOURCE: &str = "source";
    /// The event's sequence number in the event log, decimal.
    pub const SEQ: &str = "seq";

    /// The headers of one event's message.
    pub fn headers(webhook_id: &str, event_type: &str, source: &str, seq: i64) -> OwnedHeaders {
        let seq = seq.to_string();
        OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: WEBHOOK_ID,
                value: Some(webhook_id),
            })
            .insert(Header {
                key: EVENT_TYPE,
                value: Some(event_type),
            })
            .insert(Header {
                key: SOURCE,
                value: Some(source),
            })
            .insert(Header {
                key: SEQ,
                value: Some(seq.as_str()),
            })
    }

    /// A header's value as text, if the message has it and it is UTF-8.
    pub fn header_text(message: &impl Message, name: &str) -> Option<String> {
        message
            .headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| String::from_utf8(h.value?.to_vec()).ok())
    }

    /// The log seq a message carries; `None` for a message hookstream's
    /// relay did not publish.
    pub fn seq(message: &impl Message) -> Option<i64> {
        header_text(message, SEQ)?.parse().ok()
    }
}

/// Prefix of variables passed through to librdkafka: `KAFKA_PROPERTY_SASL_MECHANISMS=PLAIN`
/// sets `sasl.mechanisms`. librdkafka property names never contain `_`, so the
/// mapping is unambiguous.
pub const PROPERTY_PREFIX: &str = "KAFKA_PROPERTY_";

/// Where the event topic lives and how clients reach it.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `KAFKA_BROKERS`: bootstrap servers; `None` asks for the embedded broker
    /// where a command supports it.
    pub brokers: Option<String>,
    /// `KAFKA_TOPIC` (`polar.events`).
    pub topic: String,
    /// `KAFKA_TOPIC_PARTITIONS` (6): used when the topic is created.
    pub partitions: i32,
    /// `KAFKA_TOPIC_REPLICATION` (1): used when the topic is created.
    pub replication: i32,
    /// `KAFKA_PROPERTY_*`: extra librdkafka properties (security, tuning).
    /// Values may be credentials, so `Debug` shows only the names.
    pub properties: Properties,
}

/// librdkafka properties whose values are never printed.
#[derive(Clone, Default)]
pub struct Properties(BTreeMap<String, String>);

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl KafkaSettings {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let topic = settings
            .get("KAFKA_TOPIC")?
            .unwrap_or_else(|| "polar.events".to_owned());
        validate_topic_name(&topic).map_err(|p| ConfigError::new("KAFKA_TOPIC", p))?;
        let partitions: i32 = settings.parse_or("KAFKA_TOPIC_PARTITIONS", 6)?;
        if partitions < 1 {
            return Err(ConfigError::new(
                "KAFKA_TOPIC_PARTITIONS",
                "must be at least 1",
            ));
        }
        let replication: i32 = settings.parse_or("KAFKA_TOPIC_REPLICATION", 1)?;
        if replication < 1 {
            return Err(ConfigError::new(
                "KAFKA_TOPIC_REPLICATION",
                "must be at least 1",
            ));
        }
        let mut properties = BTreeMap::new();
        for (suffix, value) in settings.vars_with_prefix(PROPERTY_PREFIX) {
            let name = suffix.to_ascii_lowercase().replace('_', ".");
            let mut probe = ClientConfig::new();
            probe.set(&name, value);
            probe.create_native_config().map_err(|e| {
                ConfigError::new(
                    format!("{PROPERTY_PREFIX}{suffix}"),
                    format!("librdkafka refuses `{name}`: {}", kafka_error_text(&e)),
                )
            })?;
            properties.insert(name, value.to_owned());
        }
        let brokers = settings.get("KAFKA_BROKERS")?;
        if let Some(b) = &brokers
            && b.split(',').any(|hp| hp.trim().is_empty())
        {
            return Err(ConfigError::new(
                "KAFKA_BROKERS",
                "expected host:port[,host:port...]",
            ));
        }
        Ok(Self {
            brokers,
            topic,
            partitions,
            replication,
            properties: Properties(properties),
        })
    }

    /// Settings for tests and tools: the given brokers and topic, defaults otherwise.
    pub fn for_brokers(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: Some(brokers.to_owned()),
            topic: topic.to_owned(),
            partitions: 6,
            replication: 1,
            properties: Properties::default(),
        }
    }

    /// The value of pass-through property `name` (`message.max.bytes`), if set.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.0.get(name).map(String::as_str)
    }

    /// A client config with the bootstrap servers and pass-through properties set.
    /// Callers add what their role needs (idempotence, group id).
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let brokers = self
            .brokers
            .as_deref()
            .context("KAFKA_BROKERS is not set and this command has no embedded broker")?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (k, v) in &self.properties.0 {
            config.set(k, v);
        }
        Ok(config)
    }
}

/// Kafka's own rule for topic names.
fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 || topic == "." || topic == ".." {
        return Err("must be 1 to 249 characters and not `.` or `..`".to_owned());
    }
    if !topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may contain only ASCII letters, digits, `.`, `_` and `-`".to_owned());
    }
    Ok(())
}

fn kafka_error_text(e: &KafkaError) -> String {
    e.to_string()
}

/// Bytes a message needs beyond its event's body: the key (at most 256
/// bytes, `envelope`'s bound), four headers (a webhook id of at most 256
/// bytes, a type of at most 128, a source of at most 64, a seq of at most 20,
/// and their names), and the record's and its batch's framing, under 200
/// bytes. Eight KiB leaves room to spare.
pub const MESSAGE_OVERHEAD_BYTES: usize = 8 * 1024;

/// The Kafka message limit (the producer's `message.max.bytes` and
/// `batch.size`, the least `max.message.bytes` the topic must take) for
/// event bodies of at most `max_body` bytes: every body accepted fits one
/// message, so whatever ingest acknowledges can be published.
pub const fn message_limit(max_body: usize) -> usize {
    max_body + MESSAGE_OVERHEAD_BYTES
}

/// The most bytes a message of the topic may have, as the broker reports
/// it (the topic's `max.message.bytes`, its own or the broker's default);
/// `None` when the broker cannot say (librdkafka's mock cluster implements
/// no DescribeConfigs).
pub async fn topic_message_limit(settings: &KafkaSettings) -> anyhow::Result<Option<usize>> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config()?
        .create()
        .context("cannot create a Kafka admin client")?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(5)));
    let topic = ResourceSpecifier::Topic(&settings.topic);
    let described = match admin.describe_configs([&topic], &options).await {
        Ok(described) => described,
        Err(KafkaError::AdminOp(
            RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedFeature,
        )) => return Ok(None),
        Err(e) => return Err(e).context("cannot read the topic's configuration"),
    };
    let resource = match described.into_iter().next() {
        Some(Ok(resource)) => resource,
        Some(Err(
            RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::UnknownTopicOrPartition,
        ))
        | None => return Ok(None),
        Some(Err(code)) => anyhow::bail!("cannot read the topic's configuration: {code}"),
    };
    Ok(resource
        .get("max.message.bytes")
        .and_then(|entry| entry.value.as_deref())
        .and_then(|value| value.parse().ok()))
}

/// Creates the topic if it does not exist, taking messages of at least
/// `max_message_bytes` when given. A topic that exists is left as it
/// is (no CreateTopics permission needed). A broker that does not implement
/// CreateTopics (librdkafka's mock cluster) is left to create it on first use;
/// that is logged.
pub async fn ensure_topic(
    settings: &KafkaSettings,
    max_message_bytes: Option<usize>,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config()?
        .create()
        .context("cannot create a Kafka admin client")?;
    // Listing all topics never triggers auto-creation, unlike asking for one.
    // librdkafka's metadata call blocks its thread for up to the timeout (a
    // broker that is down makes that the whole timeout), so it runs on the
    // blocking pool, never on a runtime worker.
    let (admin, exists) = {
        let topic = settings.topic.clone();
        tokio::task::spawn_blocking(move || {
            let exists = admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| m.topics().iter().any(|t| t.name() == topic));
            (admin, exists)
        })
        .await
        .context("metadata task")?
    };
    if exists.context("cannot read Kafka metadata")? {
        return Ok(());
    }
    let limit = max_message_bytes.map(|bytes| bytes.to_string());
    let mut topic = NewTopic::new(
        &settings.topic,
        settings.partitions,
        TopicReplication::Fixed(settings.replication),
    );
    if let Some(limit) = &limit {
        topic = topic.set("max.message.bytes", limit);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&topic], &options).await;
    let code = match results {
        Ok(results) => match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic = %settings.topic, partitions = settings.partitions, "created topic");
                return Ok(());
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => return Ok(()),
            Some(Err((_, code))) => code,
        },
        Err(KafkaError::AdminOp(code)) => code,
        Err(e) => return Err(e).context("cannot create the Kafka topic"),
    };
    if matches!(
        code,
        RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedFeature
    ) {
        tracing::info!(
            topic = %settings.topic,
            "the broker does not support CreateTopics; relying on it to create the topic on first use"
        );
        return Ok(());
    }
    anyhow::bail!("cannot create Kafka topic {}: {code}", settings.topic)
}

enum BrokerCommand {
    CreateTopic {
        topic: String,
        partitions: i32,
        reply: mpsc::Sender<Result<(), String>>,
    },
    SetBrokerUp {
        broker_id: i32,
        up: bool,
        reply: mpsc::Sender<Result<(), String>>,
    },
}

/// An in-process Kafka-protocol broker: librdkafka's mock cluster, listening on
/// localhost so other clients (and other processes) can use it like a real one.
/// It keeps everything in memory and is gone when this value is dropped.
///
/// The mock cluster handle is not `Send`, so a dedicated thread owns it and
/// this handle talks to that thread; that makes the broker usable from any task.
#[derive(Debug)]
pub struct EmbeddedKafka {
    bootstrap_servers: String,
    commands: Option<mpsc::Sender<BrokerCommand>>,
    owner: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a mock cluster of `brokers` brokers (ids `1..=brokers`).
    pub fn start(brokers: i32) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (commands, inbox) = mpsc::channel::<BrokerCommand>();
        let owner = std::thread::Builder::new()
            .name("embedded-kafka".to_owned())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Runs until every handle is dropped, then drops the cluster.
                for command in inbox {
                    match command {
                        BrokerCommand::CreateTopic {
                            topic,
                            partitions,
                            reply,
                        } => {
                            let _ = reply.send(
                                cluster
                                    .create_topic(&topic, partitions, 1)
                                    .map_err(|e| e.to_string()),
                            );
                        }
                        BrokerCommand::SetBrokerUp {
                            broker_id,
                            up,
                            reply,
                        } => {
                            let result = if up {
                                cluster.broker_up(broker_id)
                            } else {
                                cluster.broker_down(broker_id)
                            };
                            let _ = reply.send(result.map_err(|e| e.to_string()));
                        }
                    }
                }
            })
            .context("cannot start the embedded Kafka thread")?;
        let bootstrap_servers = ready_rx
            .recv()
            .context("embedded Kafka thread exited")?
            .map_err(|e| anyhow::anyhow!("cannot start the embedded Kafka broker: {e}"))?;
        Ok(Self {
            bootstrap_servers,
            commands: Some(commands),
            owner: Some(owner),
        })
    }

    /// `host:port` list to use as `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Creates a topic with the given partition count (the mock broker does not
    /// implement the CreateTopics request, so this goes around it).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.call(|reply| BrokerCommand::CreateTopic {
            topic: topic.to_owned(),
            partitions,
            reply,
        })
        .with_context(|| format!("cannot create topic {topic}"))
    }

    /// Takes one broker down (it stops answering) or brings it back.
    pub fn set_broker_up(&self, broker_id: i32, up: bool) -> anyhow::Result<()> {
        self.call(|reply| BrokerCommand::SetBrokerUp {
            broker_id,
            up,
            reply,
        })
        .with_context(|| format!("cannot change broker {broker_id}"))
    }

    fn call(
        &self,
        command: impl FnOnce(mpsc::Sender<Result<(), String>>) -> BrokerCommand,
    ) -> anyhow::Result<()> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .as_ref()
            .context("embedded Kafka stopped")?
            .send(command(reply))
            .ok()
            .context("embedded Kafka thread exited")?;
        answer
            .recv()
            .context("embedded Kafka thread exited")?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        // Closing the channel ends the owner thread's loop, which drops the cluster.
        self.commands.take();
        if let Some(owner) = self.owner.take() {
            let _ = owner.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_topic_names_are_refused_by_name() {
        for bad in ["", "a b", "ü", &"x".repeat(250)] {
            let s = Settings::from_vars([("KAFKA_TOPIC", bad)]).unwrap();
            // empty counts as unset and falls back to the default
            if bad.is_empty() {
                assert!(KafkaSettings::from_settings(&s).is_ok());
                continue;
            }
            assert_eq!(
                KafkaSettings::from_settings(&s).unwrap_err().setting,
                "KAFKA_TOPIC"
            );
        }
    }

    #[test]
    fn unknown_librdkafka_property_names_the_variable() {
        let s = Settings::from_vars([("KAFKA_PROPERTY_NOT_A_PROPERTY", "1")]).unwrap();
        let err = KafkaSettings::from_settings(&s).unwrap_err();
        assert_eq!(err.setting, "KAFKA_PROPERTY_NOT_A_PROPERTY");
    }

    #[test]
    fn pass_through_properties_map_to_dotted_names_and_hide_values() {
        let s = Settings::from_vars([("KAFKA_PROPERTY_SASL_PASSWORD", "hunter2")]).unwrap();
        let k = KafkaSettings::from_settings(&s).unwrap();
        assert_eq!(
            k.properties.0.get("sasl.password").map(String::as_str),
            Some("hunter2")
        );
        assert!(!format!("{k:?}").contains("hunter2"));
    }

    #[test]
    fn embedded_broker_starts_and_creates_topics() {
        let kafka = EmbeddedKafka::start(1).unwrap();
        assert!(kafka.bootstrap_servers().contains(':'));
        kafka.create_topic("t1", 3).unwrap();
        kafka.set_broker_up(1, false).unwrap();
        kafka.set_broker_up(1, true).unwrap();
        assert!(kafka.set_broker_up(7, false).is_err());
    }
}
