//! The Postgres pool and the single migration set both services apply at start.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::{ConfigError, Secret, Settings};

/// `migrations/` at the workspace root, embedded into every binary that links
/// this crate. sqlx serialises concurrent runs with a Postgres advisory lock, so
/// several replicas starting at once apply each migration exactly once.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How to reach Postgres.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`: may carry a password, so it is never printed.
    pub url: Secret,
    /// `DATABASE_MAX_CONNECTIONS` (10).
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS` (2000): how long a query waits for a
    /// connection before the caller gets an error (ingest turns it into a 503).
    pub acquire_timeout: Duration,
    /// `DATABASE_STARTUP_TIMEOUT_SECS` (60): how long start-up keeps retrying an
    /// unreachable database before giving up.
    pub startup_timeout: Duration,
}

impl DatabaseSettings {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let url = settings.required("DATABASE_URL")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }
        // Parse now, so a malformed URL stops the service with the setting's
        // name. The URL is not echoed: it may hold a password.
        PgConnectOptions::from_str(&url).map_err(|e| {
            ConfigError::new(
                "DATABASE_URL",
                format!("not a valid Postgres URL ({})", error_kind(&e)),
            )
        })?;
        Ok(Self {
            url: Secret::new(url),
            max_connections: settings.positive_or("DATABASE_MAX_CONNECTIONS", 10)? as u32,
            acquire_timeout: settings.millis_or("DATABASE_ACQUIRE_TIMEOUT_MS", 2000)?,
            startup_timeout: settings.secs_or("DATABASE_STARTUP_TIMEOUT_SECS", 60)?,
        })
    }

    /// Settings for a given URL with the defaults, for tests and tools.
    pub fn for_url(url: &str) -> Self {
        Self {
            url: Secret::new(url),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(2),
            startup_timeout: Duration::from_secs(60),
        }
    }

    pub fn connect_options(&self, application_name: &str) -> anyhow::Result<PgConnectOptions> {
        Ok(PgConnectOptions::from_str(self.url.expose())
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {}", error_kind(&e)))?
            .application_name(application_name))
    }
}

/// Opens a connection of its own and tries to take the session advisory lock
/// `key` on it: `Some(connection)` holds the lock for as long as it stays
/// open, so a leader that crashes loses it with its connection. How one
/// replica leads a singleton job (the relay's sweep, the periodic reconcile).
pub async fn try_lead(
    connect: &PgConnectOptions,
    key: i64,
) -> anyhow::Result<Option<sqlx::PgConnection>> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect_with(connect).await?;
    let locked = sqlx::query_scalar!(r#"select pg_try_advisory_lock($1) as "locked!""#, key)
        .fetch_one(&mut connection)
        .await?;
    if locked {
        Ok(Some(connection))
    } else {
        let _ = connection.close().await;
        Ok(None)
    }
}

/// Whether an error says the database (or the way to it) is unwell rather
/// than that a particular write is unacceptable: a lost or refused
/// connection, a serialization failure or deadlock, a shutdown or
/// cancellation, exhausted resources, an I/O error on the server. Such an
/// error is worth retrying, as it is, until it goes away.
///
/// Everything else (a value out of range, a constraint, an index row too
/// large, a cast, an error raised by a trigger, a bug in a statement) would
/// fail the same way however often it is retried: a write that fails so is
/// refused, never retried forever.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// The SQLSTATE classes and codes [`is_transient`] retries.
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(
        code.get(..2),
        // connection exception, transaction rollback (serialization
        // failure, deadlock), insufficient resources (disk full, out of
        // memory, too many connections), system error (I/O)
        Some("08" | "40" | "53" | "58")
    ) || matches!(
        code,
        // admin shutdown, crash shutdown, cannot connect now, database
        // dropped, query canceled (statement timeout, pg_cancel_backend)
        "57P01" | "57P02" | "57P03" | "57P04" | "57014"
        // lock not available (lock_timeout), object in use
        | "55P03" | "55006"
    )
}

/// Describes a URL parse error without quoting the URL back.
fn error_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Configuration(_) => "bad scheme, host, port or option",
        _ => "unparseable",
    }
}

/// Connects (retrying while the database is unreachable, up to the start-up
/// timeout) and applies pending migrations.
pub async fn connect_and_migrate(
    settings: &DatabaseSettings,
    application_name: &str,
) -> anyhow::Result<PgPool> {
    let options = settings.connect_options(application_name)?;
    let pool_options = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout);
    let retry = backoff::ExponentialBackoff {
        initial_interval: Duration::from_millis(200),
        max_interval: Duration::from_secs(5),
        max_elapsed_time: Some(settings.startup_timeout),
        ..Default::default()
    };
    let pool = backoff::future::retry_notify(
        retry,
        || async {
            pool_options
                .clone()
                .connect_with(options.clone())
                .await
                .map_err(backoff::Error::transient)
        },
        |e: sqlx::Error, wait: Duration| {
            tracing::warn!(error = %e, retry_in = ?wait, "database not reachable yet");
        },
    )
    .await
    .context("cannot connect to the database at DATABASE_URL")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("cannot apply database migrations")?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_url_is_refused_without_echoing_it() {
        let settings =
            Settings::from_vars([("DATABASE_URL", "mysql://user:hunter2@host/db")]).unwrap();
        let err = DatabaseSettings::from_settings(&settings).unwrap_err();
        assert_eq!(err.setting, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn health_errors_are_transient_and_data_errors_are_not() {
        for code in [
            "08006", "40001", "40P01", "53100", "57P01", "57014", "55P03", "58030",
        ] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        // numeric out of range, unique violation, index row too large,
        // raised by a trigger, undefined column, internal error
        for code in ["22003", "23505", "54000", "P0001", "42703", "XX000"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn missing_url_names_the_setting() {
        let settings = Settings::from_vars(Vec::<(String, String)>::new()).unwrap();
        let err = DatabaseSettings::from_settings(&settings).unwrap_err();
        assert_eq!(err.setting, "DATABASE_URL");
    }
}
