//! The ingest service as one value tests and `main` both run:
//! [`Application::build`] binds the port and starts the moving parts,
//! [`Application::run_until_stopped`] serves until the token is cancelled and
//! then shuts down in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hookstream_shared::db;
use hookstream_shared::server::serve;

use crate::appender::Appender;
use crate::config::IngestConfig;
use crate::http::{AppState, Source, metrics_router, router};
use crate::metrics::IngestMetrics;
use crate::reconcile::periodic::PeriodicReconcile;
use crate::relay::{Relay, check_topic_takes};
use crate::signature::{SigningKeys, Verifier};

/// A built, not yet serving, ingest service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    metrics_listener: TcpListener,
    metrics_address: SocketAddr,
    state: AppState,
    batcher: JoinHandle<()>,
    relay: Relay,
    /// The periodic reconcile, when `INGEST_RECONCILE_INTERVAL` is set.
    reconcile: Option<PeriodicReconcile>,
    config: IngestConfig,
    /// Whether the pool was made here (and so is closed here on shutdown).
    owns_pool: bool,
}

impl Application {
    /// Connects to Postgres (applying migrations), prepares the Kafka producer
    /// and binds the listen address (port 0 picks a free port).
    pub async fn build(config: IngestConfig) -> anyhow::Result<Self> {
        let pool = db::connect_and_migrate(&config.database, "hookstream-ingest").await?;
        let app = Self::build_with_pool(config, pool).await?;
        Ok(Self {
            owns_pool: true,
            ..app
        })
    }

    /// As [`Application::build`], on a pool the caller made (tests use one per test database).
    pub async fn build_with_pool(config: IngestConfig, pool: PgPool) -> anyhow::Result<Self> {
        let metrics = IngestMetrics::new();
        let mut sources = HashMap::new();
        for source in &config.sources {
            let keys = SigningKeys::derive(source.key_rule, &source.secrets)
                .map_err(|e| anyhow::anyhow!("source {}: {e}", source.name))?;
            let verifier = Verifier::new(keys, config.tolerance);
            sources.insert(
                source.name.clone(),
                Source::new(&source.name, verifier, &metrics),
            );
        }
        let (relay, fresh) = Relay::new(
            pool.clone(),
            // The relay holds its leader lock on a connection of its own, to
            // the same database as the pool.
            (*pool.connect_options())
                .clone()
                .application_name("hookstream-ingest-relay"),
            config.kafka.clone(),
            config.relay.clone(),
            metrics.clone(),
        )?;
        let reconcile = match &config.reconcile {
            Some(schedule) => Some(PeriodicReconcile::new(
                pool.clone(),
                (*pool.connect_options())
                    .clone()
                    .application_name("hookstream-ingest-reconcile"),
                schedule.clone(),
                metrics.clone(),
            )?),
            None => None,
        };
        let (appender, batcher) =
            Appender::start(pool.clone(), config.batch.clone(), metrics.clone(), fresh);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on INGEST_LISTEN={}", config.listen))?;
        let address = listener.local_addr()?;
        let metrics_listener = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on INGEST_METRICS_LISTEN={}",
                    config.metrics_listen
                )
            })?;
        let metrics_address = metrics_listener.local_addr()?;
        let state = AppState {
            sources,
            appender,
            pool,
            metrics,
            limits: config.http.clone(),
            in_flight: Semaphore::new(config.http.max_in_flight),
        };
        Ok(Self {
            listener,
            address,
            metrics_listener,
            metrics_address,
            state,
            batcher,
            relay,
            reconcile,
            config,
            owns_pool: false,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The metrics listener's bound address.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address
    }

    pub fn metrics(&self) -> IngestMetrics {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then: stops accepting, lets
    /// in-flight requests finish (their batches commit), lets the relay publish
    /// what it can, flushes the producer.
    ///
    /// Stops with an error, as soon as the broker says so, if the topic takes
    /// smaller messages than the events ingest accepts.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            address,
            metrics_listener,
            metrics_address,
            state,
            batcher,
            relay,
            reconcile,
            config,
            owns_pool,
        } = self;
        tracing::info!(%address, %metrics_address, sources = ?config.sources.iter().map(|s| &s.name).collect::<Vec<_>>(), "ingest listening");
        let pool = state.pool.clone();
        let relay_stop = CancellationToken::new();
        let relay_task = tokio::spawn(relay.run(relay_stop.clone(), config.shutdown_grace));
        // A reconcile in progress stops between pages; what it appended stays.
        let reconcile_task = reconcile.map(|r| tokio::spawn(r.run(shutdown.clone())));

        // Serving stops on shutdown, or when the topic is found too small.
        let stop_serving = shutdown.child_token();
        let topic_check = tokio::spawn({
            let kafka = config.kafka.clone();
            let limit = config.relay.message_limit;
            let stop_serving = stop_serving.clone();
            async move {
                let checked = check_topic_takes(&kafka, limit).await;
                if checked.is_err() {
                    stop_serving.cancel();
                }
                checked
            }
        });
        let state = Arc::new(state);
        tokio::join!(
            serve(
                listener,
                router(state.clone()),
                config.connections,
                stop_serving.clone(),
                config.shutdown_grace,
            ),
            serve(
                metrics_listener,
                metrics_router(state.clone()),
                config.connections,
                stop_serving.clone(),
                config.shutdown_grace,
            ),
        );
        // Every router and Appender clone is gone with `state`, so the
        // batcher drains its queue and returns once the last batch has
        // committed.
        drop(state);
        if tokio::time::timeout(config.shutdown_grace, batcher)
            .await
            .is_err()
        {
            tracing::warn!("batches still committing at the end of the grace period");
        }
        if let Some(task) = reconcile_task
            && task.await.is_err()
        {
            tracing::error!("periodic reconcile panicked");
        }
        relay_stop.cancel();
        if relay_task.await.is_err() {
            tracing::error!("relay task panicked");
        }
        let topic_too_small = if topic_check.is_finished() {
            topic_check.await.ok().and_then(Result::err)
        } else {
            topic_check.abort();
            None
        };
        if owns_pool {
            pool.close().await;
        }
        if let Some(e) = topic_too_small {
            return Err(e);
        }
        tracing::info!("ingest stopped");
        Ok(())
    }
}
