//! The projector's typed configuration, validated at start.

use std::net::SocketAddr;
use std::time::Duration;

use crate::push::PushSettings;
use hookstream_shared::config::{ConfigError, Secret, Settings};
use hookstream_shared::db::DatabaseSettings;
use hookstream_shared::kafka::KafkaSettings;
use hookstream_shared::server::ConnectionLimits;
use hookstream_shared::telemetry::LogSettings;

/// Shortest accepted token (API and console): 32 random characters are
/// beyond guessing at any rate; a short one is refused at start. The local
/// launcher generates its own, long enough.
pub const MIN_TOKEN_LEN: usize = 32;

/// What `projector` (the service) needs.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// `PROJECTOR_LISTEN` (`0.0.0.0:8081`): the read API (and the console).
    pub listen: SocketAddr,
    /// `PROJECTOR_METRICS_LISTEN` (`127.0.0.1:9091`): Prometheus metrics, on
    /// a listener of their own; loopback unless the scraper needs more.
    pub metrics_listen: SocketAddr,
    /// `PROJECTOR_HEADER_TIMEOUT` (`10s`): for both listeners' connections.
    pub connections: ConnectionLimits,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    /// `PROJECTOR_API_TOKENS`: bearer tokens the read API accepts, comma-separated.
    pub api_tokens: Vec<Secret>,
    pub consumer: ConsumerSettings,
    /// `PROJECTOR_CACHE_ENTRIES` (100000): entitlement-check cache size; 0 turns it off.
    pub cache_entries: usize,
    /// `PROJECTOR_CACHE_TTL_SECS` (60): the longest a cached answer is kept,
    /// as a backstop to change notifications.
    pub cache_ttl: Duration,
    pub log: LogSettings,
    /// `SHUTDOWN_GRACE_SECS` (20): how long shutdown waits for open read API
    /// connections (change streams, waiting reads) before closing them.
    pub shutdown_grace: Duration,
    /// Pushing the change feed to the app (`PROJECTOR_NOTIFY_URL`), if set.
    pub push: Option<PushSettings>,
    /// The operator console at `/console/`, unless `PROJECTOR_CONSOLE=false`.
    pub console: Option<ConsoleSettings>,
}

/// Who may log in to the operator console.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// `PROJECTOR_CONSOLE_TOKENS`, else `PROJECTOR_API_TOKENS`: the tokens a
    /// login accepts. A session lasts while its token is still configured.
    pub tokens: Vec<Secret>,
}

/// How the consumer batches.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// `PROJECTOR_GROUP_ID` (`hookstream-projector`): the Kafka consumer group,
    /// also the key of the offsets stored in Postgres.
    pub group_id: String,
    /// `PROJECTOR_BATCH_SIZE` (20000): most events applied in one transaction.
    /// Only a backlog fills a batch; the bigger it is, the more events about
    /// one object it reduces to one row write (BENCHMARKS.md: a million-event
    /// drain at 9,945, 14,094 and 15,255 events/s with 5,000, 10,000 and
    /// 20,000; 50,000 gained nothing).
    pub batch_size: usize,
    /// `PROJECTOR_BATCH_WAIT_MS` (0): how long a batch waits for more events
    /// after its first, beyond those already fetched; bounds the added
    /// latency. At 0 a batch is what arrived while the last one was applied.
    pub batch_wait: Duration,
    /// `PROJECTOR_SESSION_TIMEOUT_MS` (10000): how soon the group notices a
    /// projector that died, and hands its partitions to the others.
    pub session_timeout: Duration,
    /// `PROJECTOR_CHANGES_RETENTION` (`7d`): how long the change feed keeps
    /// a change (`90s`, `30m`, `6h`, `7d`); `off` does not write the feed.
    pub changes_retention: Option<Duration>,
}

impl ProjectorConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let kafka = KafkaSettings::from_settings(settings)?;
        if kafka.brokers.is_none() {
            return Err(ConfigError::new(
                "KAFKA_BROKERS",
                "is required by the projector service (the local launcher `hookstream` starts an embedded broker)",
            ));
        }
        let api_tokens = tokens(settings, "PROJECTOR_API_TOKENS")?;
        if api_tokens.is_empty() {
            return Err(ConfigError::new(
                "PROJECTOR_API_TOKENS",
                "is required: the bearer tokens the read API accepts, comma-separated",
            ));
        }
        let console = if settings.parse_or("PROJECTOR_CONSOLE", true)? {
            let own = tokens(settings, "PROJECTOR_CONSOLE_TOKENS")?;
            Some(ConsoleSettings {
                tokens: if own.is_empty() {
                    api_tokens.clone()
                } else {
                    own
                },
            })
        } else {
            None
        };
        Ok(Self {
            listen: settings
                .parse_or("PROJECTOR_LISTEN", SocketAddr::from(([0, 0, 0, 0], 8081)))?,
            metrics_listen: settings.parse_or(
                "PROJECTOR_METRICS_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 9091)),
            )?,
            connections: ConnectionLimits::from_settings(settings, "PROJECTOR")?,
            database: DatabaseSettings::from_settings(settings)?,
            kafka,
            api_tokens,
            consumer: ConsumerSettings::from_settings(settings)?,
            cache_entries: settings.parse_or("PROJECTOR_CACHE_ENTRIES", 100_000)?,
            cache_ttl: settings.secs_or("PROJECTOR_CACHE_TTL_SECS", 60)?,
            log: LogSettings::from_settings(settings)?,
            shutdown_grace: settings.secs_or("SHUTDOWN_GRACE_SECS", 20)?,
            push: PushSettings::from_settings(settings)?,
            console,
        })
    }
}

/// A comma-separated token list, each at least [`MIN_TOKEN_LEN`] long.
fn tokens(settings: &Settings, name: &str) -> Result<Vec<Secret>, ConfigError> {
    let tokens: Vec<Secret> = settings.list(name)?.into_iter().map(Secret::new).collect();
    if let Some(position) = tokens.iter().position(|t| t.expose().len() < MIN_TOKEN_LEN) {
        return Err(ConfigError::new(
            name,
            format!(
                "token #{} is shorter than {MIN_TOKEN_LEN} characters",
                position + 1
            ),
        ));
    }
    Ok(tokens)
}

impl ConsumerSettings {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let group_id = settings
            .get("PROJECTOR_GROUP_ID")?
            .unwrap_or_else(|| "hookstream-projector".to_owned());
        let session_timeout = settings.millis_or("PROJECTOR_SESSION_TIMEOUT_MS", 10_000)?;
        if session_timeout < Duration::from_millis(1000) {
            return Err(ConfigError::new(
                "PROJECTOR_SESSION_TIMEOUT_MS",
                "must be at least 1000",
            ));
        }
        Ok(Self {
            group_id,
            batch_size: settings.positive_or("PROJECTOR_BATCH_SIZE", 20_000)?,
            batch_wait: settings.millis_or("PROJECTOR_BATCH_WAIT_MS", 0)?,
            session_timeout,
            changes_retention: match settings.get("PROJECTOR_CHANGES_RETENTION")? {
                None => Some(Duration::from_secs(7 * 86_400)),
                Some(_) => settings.duration("PROJECTOR_CHANGES_RETENTION")?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(overrides: &[(&str, &str)]) -> Result<ProjectorConfig, ConfigError> {
        let mut vars: Vec<(String, String)> = [
            ("DATABASE_URL", "postgres://localhost/x"),
            ("KAFKA_BROKERS", "localhost:9092"),
            (
                "PROJECTOR_API_TOKENS",
                "token-one-0123456789abcdef0123456789,token-two-0123456789abcdef0123456789",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in overrides {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        ProjectorConfig::from_settings(&Settings::from_vars(vars).unwrap())
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen.port(), 8081);
        assert_eq!(c.api_tokens.len(), 2);
        assert_eq!(c.kafka.topic, "polar.events");
        assert!(!format!("{c:?}").contains("token-one"));
        let console = c.console.expect("the console is on by default");
        assert_eq!(console.tokens.len(), 2, "it takes the API's tokens");
    }

    #[test]
    fn the_console_can_have_its_own_tokens_or_be_off() {
        let operator = "operator-token-0123456789abcdef0123";
        let c = with(&[("PROJECTOR_CONSOLE_TOKENS", operator)]).unwrap();
        let tokens = c.console.unwrap().tokens;
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].expose(), operator);
        assert!(
            with(&[("PROJECTOR_CONSOLE", "false")])
                .unwrap()
                .console
                .is_none()
        );
    }

    #[test]
    fn push_is_off_by_default_and_its_settings_are_checked() {
        assert!(with(&[]).unwrap().push.is_none());
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let c = with(&[
            (
                "PROJECTOR_NOTIFY_URL",
                "https://app.example/hooks/hookstream",
            ),
            ("PROJECTOR_NOTIFY_SECRET", secret),
        ])
        .unwrap();
        assert!(c.push.is_some());
        assert!(
            !format!("{c:?}").contains("MfKQ9r8"),
            "the secret is not in Debug"
        );
        for (settings, named) in [
            (
                vec![("PROJECTOR_NOTIFY_URL", "https://app.example/h")],
                "PROJECTOR_NOTIFY_SECRET",
            ),
            (
                vec![
                    ("PROJECTOR_NOTIFY_URL", "https://app.example/h"),
                    ("PROJECTOR_NOTIFY_SECRET", "polar_whs_notbase64!"),
                ],
                "PROJECTOR_NOTIFY_SECRET",
            ),
            (
                vec![
                    ("PROJECTOR_NOTIFY_URL", "ftp://app.example/h"),
                    ("PROJECTOR_NOTIFY_SECRET", secret),
                ],
                "PROJECTOR_NOTIFY_URL",
            ),
            (
                vec![("PROJECTOR_CHANGES_RETENTION", "a week")],
                "PROJECTOR_CHANGES_RETENTION",
            ),
        ] {
            let err = with(&settings).unwrap_err();
            assert_eq!(err.setting, named);
            assert!(!err.to_string().contains("notbase64"), "{err}");
        }
        assert!(
            with(&[("PROJECTOR_CHANGES_RETENTION", "off")])
                .unwrap()
                .consumer
                .changes_retention
                .is_none()
        );
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (name, value) in [
            ("PROJECTOR_LISTEN", "8081"),
            ("PROJECTOR_API_TOKENS", ""),
            (
                "PROJECTOR_API_TOKENS",
                "ok-token-1-0123456789abcdef012345678,short",
            ),
            // 31 characters: one short of the least.
            ("PROJECTOR_API_TOKENS", "0123456789abcdef0123456789abcde"),
            ("PROJECTOR_BATCH_SIZE", "0"),
            ("PROJECTOR_CONSOLE", "maybe"),
            (
                "PROJECTOR_CONSOLE_TOKENS",
                "ok-token-1-0123456789abcdef012345678,short",
            ),
            ("PROJECTOR_METRICS_LISTEN", "9091"),
            ("PROJECTOR_HEADER_TIMEOUT", "soon"),
            ("PROJECTOR_SESSION_TIMEOUT_MS", "5"),
            ("KAFKA_BROKERS", ""),
            ("KAFKA_TOPIC_PARTITIONS", "0"),
            ("DATABASE_URL", ""),
        ] {
            let err = with(&[(name, value)]).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}: {err}");
            assert!(!err.to_string().contains("ok-token-1"));
        }
    }
}
