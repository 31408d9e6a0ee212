//! The whole pipeline in one process, for a laptop and for end-to-end tests:
//! ingest and projector, each exactly as deployed, around an embedded
//! Kafka-protocol broker (librdkafka's mock cluster) when no `KAFKA_BROKERS`
//! is given. Only Postgres is needed.

use std::net::SocketAddr;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hookstream_ingest::IngestConfig;
use hookstream_projector::ProjectorConfig;
use hookstream_shared::config::Settings;
use hookstream_shared::db::{self, DatabaseSettings};
use hookstream_shared::kafka::{EmbeddedKafka, KafkaSettings};

/// The local default: a `hookstream` database on the local server.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/hookstream";

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// `Some` when this process hosts the broker.
    pub kafka: Option<EmbeddedKafka>,
    pub ingest_address: SocketAddr,
    pub projector_address: SocketAddr,
    /// Where each service serves its metrics.
    pub ingest_metrics_address: SocketAddr,
    pub projector_metrics_address: SocketAddr,
    pub topic: String,
    stop: CancellationToken,
    ingest: JoinHandle<anyhow::Result<()>>,
    projector: JoinHandle<anyhow::Result<()>>,
}

impl Pipeline {
    /// Starts everything from `settings` (the same variables the services
    /// read), with local defaults: an embedded broker when `KAFKA_BROKERS` is
    /// unset, and the database created if it does not exist.
    pub async fn start(settings: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut settings = settings;
        set_default(&mut settings, "DATABASE_URL", DEFAULT_DATABASE_URL);
        let probe = Settings::from_vars(settings.clone())?;
        let database = DatabaseSettings::from_settings(&probe)?;
        create_database_if_missing(&database).await?;
        let pool = db::connect_and_migrate(&database, "hookstream-local").await?;
        Self::start_with_pool(settings, pool).await
    }

    /// As [`Pipeline::start`], on a pool the caller made (tests use one per test database).
    pub async fn start_with_pool(
        mut settings: Vec<(String, String)>,
        pool: PgPool,
    ) -> anyhow::Result<Self> {
        set_default(&mut settings, "DATABASE_URL", DEFAULT_DATABASE_URL);
        let probe = Settings::from_vars(settings.clone())?;
        let kafka_settings = KafkaSettings::from_settings(&probe)?;
        let kafka = match kafka_settings.brokers {
            Some(_) => None,
            None => {
                let kafka = EmbeddedKafka::start(1)?;
                // The mock broker has no CreateTopics; create it with the configured partitions.
                kafka.create_topic(&kafka_settings.topic, kafka_settings.partitions)?;
                settings.push((
                    "KAFKA_BROKERS".to_owned(),
                    kafka.bootstrap_servers().to_owned(),
                ));
                Some(kafka)
            }
        };
        let settings = Settings::from_vars(settings)?;
        let ingest_config = IngestConfig::from_settings(&settings)?;
        let projector_config = ProjectorConfig::from_settings(&settings)?;

        let projector =
            hookstream_projector::Application::build_with_pool(projector_config, pool.clone())
                .await?;
        let ingest = hookstream_ingest::Application::build_with_pool(ingest_config, pool).await?;
        let stop = CancellationToken::new();
        let pipeline = Self {
            kafka,
            ingest_address: ingest.address(),
            projector_address: projector.address(),
            ingest_metrics_address: ingest.metrics_address(),
            projector_metrics_address: projector.metrics_address(),
            topic: kafka_settings.topic,
            ingest: tokio::spawn(ingest.run_until_stopped(stop.clone())),
            projector: tokio::spawn(projector.run_until_stopped(stop.clone())),
            stop,
        };
        Ok(pipeline)
    }

    /// Stops both services (each shuts down as it would on SIGTERM) and the broker.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let ingest = self.ingest.await.context("ingest task")?;
        let projector = self.projector.await.context("projector task")?;
        drop(self.kafka);
        ingest.context("ingest")?;
        projector.context("projector")?;
        Ok(())
    }

    /// Resolves when either service stops on its own (a failure).
    pub async fn wait_for_failure(&mut self) -> anyhow::Result<()> {
        let (which, result) = tokio::select! {
            r = &mut self.ingest => ("ingest", r),
            r = &mut self.projector => ("projector", r),
        };
        match result {
            Ok(Ok(())) => anyhow::bail!("{which} stopped unexpectedly"),
            Ok(Err(e)) => Err(e.context(format!("{which} failed"))),
            Err(e) => Err(anyhow::Error::new(e).context(format!("{which} panicked"))),
        }
    }
}

fn set_default(settings: &mut Vec<(String, String)>, name: &str, value: &str) {
    if !settings.iter().any(|(k, v)| k == name && !v.is_empty()) {
        settings.push((name.to_owned(), value.to_owned()));
    }
}

/// Creates the database named in the URL if the server lacks it, by
/// connecting to the server's `postgres` database.
pub async fn create_database_if_missing(database: &DatabaseSettings) -> anyhow::Result<()> {
    let options: PgConnectOptions = database.connect_options("hookstream-local")?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    if options.clone().connect().await.is_ok() {
        return Ok(());
    }
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("cannot reach Postgres at DATABASE_URL (is it running?)")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        sqlx::raw_sql(&format!("create database {quoted}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        tracing::info!(database = %name, "created the database");
    }
    let _ = admin.close().await;
    Ok(())
}

/// A random credential for local runs, for settings the user did not give.
pub fn generated_credential(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
