//! Ingest's typed configuration, validated at start.

use std::net::SocketAddr;
use std::time::Duration;

use hookstream_shared::config::{ConfigError, Secret, Settings};
use hookstream_shared::db::DatabaseSettings;
use hookstream_shared::kafka::{self, KafkaSettings};
use hookstream_shared::server::ConnectionLimits;
use hookstream_shared::telemetry::LogSettings;

use crate::appender::Linger;
use crate::signature::{KeyRule, SigningKeys};

/// Everything ingest needs, read once at start.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `INGEST_LISTEN` (`0.0.0.0:8080`): the webhook endpoint, which Polar
    /// must reach.
    pub listen: SocketAddr,
    /// `INGEST_METRICS_LISTEN` (`127.0.0.1:9090`): Prometheus metrics, which
    /// show business volume, on a listener of their own; loopback unless
    /// the scraper needs more.
    pub metrics_listen: SocketAddr,
    /// `INGEST_HEADER_TIMEOUT` (`10s`): for both listeners' connections.
    pub connections: ConnectionLimits,
    pub database: DatabaseSettings,
    pub kafka: KafkaSettings,
    /// The webhook sources, each at `POST /webhooks/{name}`.
    pub sources: Vec<SourceConfig>,
    /// `WEBHOOK_TOLERANCE_SECS` (300): how far `webhook-timestamp` may be from now.
    pub tolerance: Duration,
    pub http: HttpSettings,
    pub batch: BatchSettings,
    pub relay: RelaySettings,
    pub log: LogSettings,
    /// `SHUTDOWN_GRACE_SECS` (20): how long shutdown waits for in-flight
    /// batches and the relay's last publish before giving up.
    pub shutdown_grace: Duration,
    /// Periodic reconcile, when `INGEST_RECONCILE_INTERVAL` is set.
    pub reconcile: Option<ReconcileSchedule>,
}

/// Reading Polar's REST API (reconcile), in the names Polar's SDKs use.
#[derive(Debug, Clone)]
pub struct PolarApiSettings {
    /// `POLAR_ACCESS_TOKEN`: an organization access token. Never printed.
    pub access_token: Secret,
    /// `POLAR_API_URL`, else from `POLAR_SERVER` (`production`:
    /// `https://api.polar.sh`, `sandbox`: `https://sandbox-api.polar.sh`).
    pub base_url: String,
    /// `POLAR_API_RATE_LIMIT` (450 in production, 90 in sandbox): requests a
    /// minute at most, nine tenths of what Polar allows (500 and 100).
    pub requests_per_minute: u32,
    /// `POLAR_API_TIMEOUT_MS` (30000): one request's timeout.
    pub timeout: Duration,
    /// `POLAR_API_RETRY_SECS` (120): how long one request's transient
    /// failures (5xx, timeouts, connection errors) are retried.
    pub retry_for: Duration,
    /// `POLAR_WEBHOOK_ENDPOINT_ID`: the webhook endpoint to watch; its
    /// deliveries are the ones pulled, and the periodic mode checks that
    /// Polar has not disabled it.
    pub endpoint_id: Option<String>,
    /// `POLAR_API_VERSION` (`2026-10`): the `Polar-Version` every request
    /// sends, so what reconcile reads does not change when Polar changes its
    /// default (2026-04 until January 2027, then 2027-01).
    pub api_version: String,
}

/// The API versions reconcile can read (polar-sdk 1.0.x's).
const API_VERSIONS: [&str; 3] = ["2026-04", "2026-10", "2027-01"];

/// When the ingest service reconciles by itself.
#[derive(Debug, Clone)]
pub struct ReconcileSchedule {
    /// `INGEST_RECONCILE_INTERVAL` (off): time between full scans, as
    /// seconds or with a unit (`90s`, `30m`, `6h`). `0` or `off` disables.
    pub interval: Duration,
    /// `INGEST_ENDPOINT_CHECK_INTERVAL` (`60s`): how often the webhook
    /// endpoint's state is read, when `POLAR_WEBHOOK_ENDPOINT_ID` is set.
    pub endpoint_check: Duration,
    pub polar: PolarApiSettings,
}

/// `ingest reconcile`: the database and Polar's API, nothing of the service.
#[derive(Debug, Clone)]
pub struct ReconcileCommandConfig {
    pub database: DatabaseSettings,
    pub polar: PolarApiSettings,
    pub log: LogSettings,
}

impl ReconcileCommandConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::from_settings(settings)?,
            polar: PolarApiSettings::from_settings(settings)?,
            log: LogSettings::from_settings(settings)?,
        })
    }
}

impl PolarApiSettings {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let token = settings.get("POLAR_ACCESS_TOKEN")?.unwrap_or_default();
        if token.trim().is_empty() {
            return Err(ConfigError::new(
                "POLAR_ACCESS_TOKEN",
                "is required to read Polar's API: an organization access token (Polar: Settings → Developers)",
            ));
        }
        let server = settings
            .get("POLAR_SERVER")?
            .unwrap_or_else(|| "production".to_owned());
        let (server_url, default_rate) = match server.as_str() {
            "production" => ("https://api.polar.sh", 450),
            "sandbox" => ("https://sandbox-api.polar.sh", 90),
            _ => {
                return Err(ConfigError::new(
                    "POLAR_SERVER",
                    "must be `production` or `sandbox` (or set POLAR_API_URL)",
                ));
            }
        };
        let base_url = match settings.get("POLAR_API_URL")? {
            Some(url) => {
                let valid = (url.starts_with("https://") || url.starts_with("http://"))
                    && reqwest::Url::parse(&url).is_ok_and(|u| u.host().is_some());
                if !valid {
                    return Err(ConfigError::new(
                        "POLAR_API_URL",
                        "must be an http:// or https:// URL with a host",
                    ));
                }
                url
            }
            None => server_url.to_owned(),
        };
        let requests_per_minute = settings.positive_or("POLAR_API_RATE_LIMIT", default_rate)?;
        let endpoint_id = settings.get("POLAR_WEBHOOK_ENDPOINT_ID")?;
        if let Some(id) = &endpoint_id
            && !(id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(ConfigError::new(
                "POLAR_WEBHOOK_ENDPOINT_ID",
                "must be the endpoint's id as Polar shows it (a UUID)",
            ));
        }
        let api_version = settings
            .get("POLAR_API_VERSION")?
            .unwrap_or_else(|| "2026-10".to_owned());
        if !API_VERSIONS.contains(&api_version.as_str()) {
            return Err(ConfigError::new(
                "POLAR_API_VERSION",
                format!("must be one of {}", API_VERSIONS.join(", ")),
            ));
        }
        Ok(Self {
            access_token: Secret::new(token.trim()),
            api_version,
            base_url,
            requests_per_minute: u32::try_from(requests_per_minute).unwrap_or(u32::MAX),
            timeout: settings.millis_or("POLAR_API_TIMEOUT_MS", 30_000)?,
            retry_for: settings.secs_or("POLAR_API_RETRY_SECS", 120)?,
            endpoint_id,
        })
    }
}

impl ReconcileSchedule {
    /// `None` unless `INGEST_RECONCILE_INTERVAL` turns it on; then the Polar
    /// settings are required.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, ConfigError> {
        let Some(interval) = settings.duration("INGEST_RECONCILE_INTERVAL")? else {
            return Ok(None);
        };
        let endpoint_check = settings
            .duration("INGEST_ENDPOINT_CHECK_INTERVAL")?
            .unwrap_or(Duration::from_secs(60));
        Ok(Some(Self {
            interval,
            endpoint_check,
            polar: PolarApiSettings::from_settings(settings)?,
        }))
    }
}

/// A duration written as seconds (`900`) or with a unit (`90s`, `30m`,
/// `6h`, `1d`); unset, `0` and `off` are `None`.
/// One webhook source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The path segment, e.g. `polar`.
    pub name: String,
    pub key_rule: KeyRule,
    /// Several during a rotation; a signature by any of them is accepted.
    pub secrets: Vec<Secret>,
}

/// Limits on each webhook request.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `INGEST_MAX_BODY_BYTES` (983040, 960 KiB): larger bodies get 413.
    /// Kafka's message limits are derived from it
    /// ([`hookstream_shared::kafka::message_limit`]): the default keeps them
    /// within Kafka's and librdkafka's own defaults (1,000,000 bytes), so a
    /// topic made with the broker's defaults takes every accepted event.
    pub max_body_bytes: usize,
    /// `INGEST_MAX_IN_FLIGHT` (2048): verified webhooks waiting for their
    /// commit; more get 503 at once. A request takes a slot only once its
    /// signature matched.
    pub max_in_flight: usize,
    /// `INGEST_BODY_TIMEOUT_MS` (10000): a body not fully received by then gets 408.
    pub body_timeout: Duration,
    /// `INGEST_BODY_MIN_RATE` (65536, bytes a second; 0 turns it off): a
    /// body of declared length gets a second plus the time it takes at
    /// this rate (and never more than the body timeout), so a client
    /// trickling a body holds its socket for a second, not ten.
    pub body_min_rate: u64,
}

impl HttpSettings {
    /// How long a body of `declared` bytes may take to arrive.
    pub fn body_deadline(&self, declared: Option<u64>) -> Duration {
        match declared {
            Some(bytes) if self.body_min_rate > 0 => self.body_timeout.min(
                Duration::from_secs(1)
                    + Duration::from_secs_f64(bytes as f64 / self.body_min_rate as f64),
            ),
            _ => self.body_timeout,
        }
    }
}

/// Group commit: how requests are coalesced into batches.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// `INGEST_MAX_BATCH` (512): events per insert.
    pub max_batch: usize,
    /// How long a batch with a free commit slot waits for more events:
    /// `INGEST_BATCH_LINGER_US` (1000) at most, until it holds
    /// `INGEST_BATCH_TARGET` (64) events, and only while traffic brings at
    /// least one event per linger, unless `INGEST_BATCH_LINGER_ADAPTIVE`
    /// (true) is false. The defaults come from `loadgen ingest --sweep`
    /// (BENCHMARKS.md "Group commit defaults").
    pub linger: Linger,
    /// `INGEST_COMMIT_CONCURRENCY` (2): batches committing at once.
    pub commit_concurrency: usize,
    /// `INGEST_QUEUE_CAPACITY` (8192): events waiting for a batch; when full,
    /// requests get 503 with `Retry-After`.
    pub queue_capacity: usize,
    /// `INGEST_APPEND_TIMEOUT_MS` (5000): a request waiting longer for its
    /// commit gets 503 (Polar retries; the event is deduplicated if it landed).
    pub append_timeout: Duration,
}

/// Publishing the log to Kafka.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `RELAY_BATCH_SIZE` (1000): rows read and published per round.
    pub batch_size: usize,
    /// `RELAY_POLL_INTERVAL_MS` (500): how often the leader sweeps the outbox.
    pub poll_interval: Duration,
    /// `RELAY_SWEEP_AFTER_MS` (5000): how long a queued event is left to the
    /// replica that appended it (which publishes it within milliseconds)
    /// before the leader's sweep publishes it instead.
    pub sweep_after: Duration,
    /// `RELAY_STANDBY_RETRY_MS` (2000): how often a standby replica tries to lead.
    pub standby_retry: Duration,
    /// `KAFKA_MESSAGE_TIMEOUT_MS` (30000): librdkafka's delivery timeout.
    pub message_timeout: Duration,
    /// The producer's `message.max.bytes` and `batch.size`, and the least
    /// `max.message.bytes` the topic must take: derived from
    /// `INGEST_MAX_BODY_BYTES`, never set on its own.
    pub message_limit: usize,
}

/// `INGEST_MAX_BODY_BYTES` by default: see [`HttpSettings::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 960 * 1024;
/// The largest `INGEST_MAX_BODY_BYTES`: a consumer receives at most
/// librdkafka's `receive.message.max.bytes` (100 MB) in one response.
const MAX_MAX_BODY_BYTES: usize = 64 << 20;

impl IngestConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let listen = settings.parse_or("INGEST_LISTEN", SocketAddr::from(([0, 0, 0, 0], 8080)))?;
        let kafka = KafkaSettings::from_settings(settings)?;
        if kafka.brokers.is_none() {
            return Err(ConfigError::new(
                "KAFKA_BROKERS",
                "is required by `ingest` (the local launcher `hookstream` starts an embedded broker)",
            ));
        }
        let message_timeout = settings.millis_or("KAFKA_MESSAGE_TIMEOUT_MS", 30_000)?;
        if message_timeout < Duration::from_millis(1000) {
            return Err(ConfigError::new(
                "KAFKA_MESSAGE_TIMEOUT_MS",
                "must be at least 1000",
            ));
        }
        let max_body_bytes =
            settings.positive_or("INGEST_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?;
        if max_body_bytes > MAX_MAX_BODY_BYTES {
            return Err(ConfigError::new(
                "INGEST_MAX_BODY_BYTES",
                format!("must be at most {MAX_MAX_BODY_BYTES}"),
            ));
        }
        // The producer's limits follow the body limit; set by hand, they
        // could refuse an event ingest has acknowledged.
        for property in ["message.max.bytes", "batch.size"] {
            if kafka.property(property).is_some() {
                return Err(ConfigError::new(
                    format!(
                        "{}{}",
                        kafka::PROPERTY_PREFIX,
                        property.to_ascii_uppercase().replace('.', "_")
                    ),
                    format!(
                        "is derived from INGEST_MAX_BODY_BYTES ({property} = the body limit + {} bytes); set INGEST_MAX_BODY_BYTES instead",
                        kafka::MESSAGE_OVERHEAD_BYTES
                    ),
                ));
            }
        }
        Ok(Self {
            listen,
            metrics_listen: settings.parse_or(
                "INGEST_METRICS_LISTEN",
                SocketAddr::from(([127, 0, 0, 1], 9090)),
            )?,
            connections: ConnectionLimits::from_settings(settings, "INGEST")?,
            database: DatabaseSettings::from_settings(settings)?,
            kafka,
            sources: sources_from_settings(settings)?,
            tolerance: settings.secs_or("WEBHOOK_TOLERANCE_SECS", 300)?,
            http: HttpSettings {
                max_body_bytes,
                max_in_flight: settings.positive_or("INGEST_MAX_IN_FLIGHT", 2048)?,
                body_timeout: settings.millis_or("INGEST_BODY_TIMEOUT_MS", 10_000)?,
                body_min_rate: settings.parse_or("INGEST_BODY_MIN_RATE", 64 * 1024)?,
            },
            batch: BatchSettings {
                max_batch: settings.positive_or("INGEST_MAX_BATCH", 512)?,
                linger: Linger {
                    max: Duration::from_micros(settings.parse_or("INGEST_BATCH_LINGER_US", 1000)?),
                    target: settings.positive_or("INGEST_BATCH_TARGET", 64)?,
                    adaptive: settings.parse_or("INGEST_BATCH_LINGER_ADAPTIVE", true)?,
                },
                commit_concurrency: settings.positive_or("INGEST_COMMIT_CONCURRENCY", 2)?,
                queue_capacity: settings.positive_or("INGEST_QUEUE_CAPACITY", 8192)?,
                append_timeout: settings.millis_or("INGEST_APPEND_TIMEOUT_MS", 5000)?,
            },
            relay: RelaySettings {
                batch_size: settings.positive_or("RELAY_BATCH_SIZE", 1000)?,
                poll_interval: settings.millis_or("RELAY_POLL_INTERVAL_MS", 500)?,
                sweep_after: settings.millis_or("RELAY_SWEEP_AFTER_MS", 5000)?,
                standby_retry: settings.millis_or("RELAY_STANDBY_RETRY_MS", 2000)?,
                message_timeout,
                message_limit: kafka::message_limit(max_body_bytes),
            },
            log: LogSettings::from_settings(settings)?,
            shutdown_grace: settings.secs_or("SHUTDOWN_GRACE_SECS", 20)?,
            reconcile: ReconcileSchedule::from_settings(settings)?,
        })
    }
}

/// `polar` from `POLAR_WEBHOOK_SECRET`, others from the file's `[sources.<name>]`
/// tables (`key_rule`, and `secrets = [...]` or `secrets_env = "VAR"`).
fn sources_from_settings(settings: &Settings) -> Result<Vec<SourceConfig>, ConfigError> {
    let mut sources = Vec::new();
    let polar_secrets = settings.list("POLAR_WEBHOOK_SECRET")?;
    if !polar_secrets.is_empty() {
        let key_rule = settings.parse_or("POLAR_WEBHOOK_KEY_RULE", KeyRule::Polar)?;
        sources.push(checked_source(
            "polar",
            key_rule,
            polar_secrets,
            "POLAR_WEBHOOK_SECRET",
        )?);
    }
    if let Some(table) = settings.file_table("sources") {
        for (name, spec) in table {
            let setting = format!("sources.{name}");
            if name == "polar" && !sources.is_empty() {
                return Err(ConfigError::new(
                    setting,
                    "`polar` is already configured by POLAR_WEBHOOK_SECRET",
                ));
            }
            let spec = spec
                .as_table()
                .ok_or_else(|| ConfigError::new(&setting, "must be a table"))?;
            let key_rule = match spec.get("key_rule") {
                None => KeyRule::Standard,
                Some(v) => v
                    .as_str()
                    .ok_or_else(|| {
                        ConfigError::new(format!("{setting}.key_rule"), "must be a string")
                    })?
                    .parse()
                    .map_err(|e| ConfigError::new(format!("{setting}.key_rule"), e))?,
            };
            let (secrets, secrets_setting) = match (spec.get("secrets"), spec.get("secrets_env")) {
                (Some(list), None) => {
                    let items = list.as_array().ok_or_else(|| {
                        ConfigError::new(format!("{setting}.secrets"), "must be a list of strings")
                    })?;
                    let secrets = items
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| {
                            ConfigError::new(
                                format!("{setting}.secrets"),
                                "must be a list of strings",
                            )
                        })?;
                    (secrets, format!("{setting}.secrets"))
                }
                (None, Some(var)) => {
                    let var = var.as_str().ok_or_else(|| {
                        ConfigError::new(
                            format!("{setting}.secrets_env"),
                            "must be a variable name",
                        )
                    })?;
                    (settings.list(var)?, var.to_owned())
                }
                _ => {
                    return Err(ConfigError::new(
                        setting,
                        "needs exactly one of `secrets` or `secrets_env`",
                    ));
                }
            };
            sources.push(checked_source(name, key_rule, secrets, &secrets_setting)?);
        }
    }
    if sources.is_empty() {
        return Err(ConfigError::new(
            "POLAR_WEBHOOK_SECRET",
            "is required: the Polar endpoint secret (several comma-separated during a rotation)",
        ));
    }
    Ok(sources)
}

fn checked_source(
    name: &str,
    key_rule: KeyRule,
    secrets: Vec<String>,
    setting: &str,
) -> Result<SourceConfig, ConfigError> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid_name {
        return Err(ConfigError::new(
            format!("sources.{name}"),
            "source names use 1 to 64 of a-z, 0-9, `_` and `-`",
        ));
    }
    let secrets: Vec<Secret> = secrets.into_iter().map(Secret::new).collect();
    SigningKeys::derive(key_rule, &secrets)
        .map_err(|problem| ConfigError::new(setting, problem))?;
    Ok(SourceConfig {
        name: name.to_owned(),
        key_rule,
        secrets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(String, String)> {
        [
            ("DATABASE_URL", "postgres://localhost/x"),
            ("KAFKA_BROKERS", "localhost:9092"),
            (
                "POLAR_WEBHOOK_SECRET",
                "polar_whs_abc, whsec_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn with(overrides: &[(&str, &str)]) -> Result<IngestConfig, ConfigError> {
        let mut vars = base();
        for (k, v) in overrides {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.to_string()));
        }
        IngestConfig::from_settings(&Settings::from_vars(vars).unwrap())
    }

    #[test]
    fn defaults_and_rotation() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sources[0].name, "polar");
        assert_eq!(c.sources[0].secrets.len(), 2);
        assert_eq!(c.http.max_body_bytes, 960 * 1024);
        assert_eq!(c.relay.message_limit, 960 * 1024 + 8192);
        assert!(
            c.relay.message_limit <= 1_000_000,
            "within Kafka's and librdkafka's default limits"
        );
        assert_eq!(c.tolerance, Duration::from_secs(300));
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.connections.header_timeout, Some(Duration::from_secs(10)));
        assert!(!format!("{c:?}").contains("polar_whs_abc"));
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (name, value) in [
            ("INGEST_LISTEN", "localhost"),
            ("KAFKA_BROKERS", ""),
            ("POLAR_WEBHOOK_SECRET", ""),
            ("POLAR_WEBHOOK_KEY_RULE", "hmac"),
            ("WEBHOOK_TOLERANCE_SECS", "-1"),
            ("INGEST_MAX_BODY_BYTES", "0"),
            ("INGEST_MAX_BODY_BYTES", "1000000000"),
            ("KAFKA_PROPERTY_MESSAGE_MAX_BYTES", "2000000"),
            ("KAFKA_PROPERTY_BATCH_SIZE", "16384"),
            ("INGEST_MAX_BATCH", "many"),
            ("INGEST_METRICS_LISTEN", "localhost"),
            ("INGEST_HEADER_TIMEOUT", "soon"),
            ("INGEST_BODY_MIN_RATE", "-1"),
            ("KAFKA_MESSAGE_TIMEOUT_MS", "10"),
            ("LOG_FORMAT", "xml"),
            ("DATABASE_URL", "http://x"),
        ] {
            let err = with(&[(name, value)]).unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}: {err}");
        }
    }

    #[test]
    fn periodic_reconcile_is_off_by_default_and_needs_a_token_when_on() {
        assert!(with(&[]).unwrap().reconcile.is_none());
        assert!(
            with(&[("INGEST_RECONCILE_INTERVAL", "off")])
                .unwrap()
                .reconcile
                .is_none()
        );
        let err = with(&[("INGEST_RECONCILE_INTERVAL", "30m")]).unwrap_err();
        assert_eq!(err.setting, "POLAR_ACCESS_TOKEN");
        let c = with(&[
            ("INGEST_RECONCILE_INTERVAL", "30m"),
            ("POLAR_ACCESS_TOKEN", "polar_oat_secret_value"),
            ("POLAR_SERVER", "sandbox"),
        ])
        .unwrap();
        let schedule = c.reconcile.unwrap();
        assert_eq!(schedule.interval, Duration::from_secs(1800));
        assert_eq!(schedule.endpoint_check, Duration::from_secs(60));
        assert_eq!(schedule.polar.base_url, "https://sandbox-api.polar.sh");
        assert_eq!(schedule.polar.requests_per_minute, 90);
        assert!(!format!("{schedule:?}").contains("polar_oat_secret_value"));
    }

    #[test]
    fn each_bad_polar_api_setting_is_named() {
        for (name, value) in [
            ("INGEST_RECONCILE_INTERVAL", "soon"),
            ("INGEST_RECONCILE_INTERVAL", "5w"),
            ("INGEST_ENDPOINT_CHECK_INTERVAL", "-1"),
            ("POLAR_SERVER", "staging"),
            ("POLAR_API_URL", "api.polar.sh"),
            ("POLAR_API_RATE_LIMIT", "0"),
            ("POLAR_API_TIMEOUT_MS", "soon"),
            ("POLAR_API_RETRY_SECS", "-5"),
            ("POLAR_WEBHOOK_ENDPOINT_ID", "not an id!"),
            ("POLAR_API_VERSION", "2025-01"),
        ] {
            let err = with(&[
                ("INGEST_RECONCILE_INTERVAL", "1h"),
                ("POLAR_ACCESS_TOKEN", "t"),
                (name, value),
            ])
            .unwrap_err();
            assert_eq!(err.setting, name, "{name}={value}: {err}");
        }
    }

    #[test]
    fn standard_rule_needs_base64_secret() {
        let err = with(&[
            ("POLAR_WEBHOOK_KEY_RULE", "standard"),
            ("POLAR_WEBHOOK_SECRET", "polar_whs_abc"),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "POLAR_WEBHOOK_SECRET");
        assert!(!err.to_string().contains("polar_whs_abc"));
    }

    #[test]
    fn sources_from_file() {
        let path =
            std::env::temp_dir().join(format!("ingest-sources-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            "[sources.acme]\nkey_rule = \"standard\"\nsecrets_env = \"ACME_SECRETS\"\n[sources.other]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
        )
        .unwrap();
        let path_str = path.to_str().unwrap().to_owned();
        let c = with(&[
            ("HOOKSTREAM_CONFIG", &path_str),
            ("ACME_SECRETS", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
        ])
        .unwrap();
        let names: Vec<&str> = c.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["polar", "acme", "other"]);
        let err = with(&[("HOOKSTREAM_CONFIG", &path_str)]).unwrap_err();
        assert_eq!(err.setting, "ACME_SECRETS");
        std::fs::remove_file(path).unwrap();
    }
}
