//! The projector service as one value tests and `main` both run: the Kafka
//! consumer feeding the live generation, and the read API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hookstream_shared::server::serve;
use hookstream_shared::{db, kafka};

use crate::api::{self, ApiShared, ApiState, EntitlementCache, FailureThrottle};
use crate::changes::CHANGES_CHANNEL;
use crate::config::ProjectorConfig;
use crate::console::{self, ConsoleShared, ConsoleState};
use crate::consumer;
use crate::metrics::ProjectorMetrics;
use crate::projection::generation;
use crate::rebuild::reapply;
use crate::{applied, feed, push};

/// A built, not yet running, projector.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    metrics_listener: TcpListener,
    metrics_address: SocketAddr,
    state: ApiState,
    config: ProjectorConfig,
    /// Whether the pool was made here (and so is closed here on shutdown).
    owns_pool: bool,
}

impl Application {
    /// Connects to Postgres (applying migrations), makes sure a live
    /// generation exists, and binds the read API's address (port 0 picks one).
    pub async fn build(config: ProjectorConfig) -> anyhow::Result<Self> {
        let pool = db::connect_and_migrate(&config.database, "hookstream-projector").await?;
        let app = Self::build_with_pool(config, pool).await?;
        Ok(Self {
            owns_pool: true,
            ..app
        })
    }

    /// As [`Application::build`], on a pool the caller made.
    pub async fn build_with_pool(config: ProjectorConfig, pool: PgPool) -> anyhow::Result<Self> {
        let live = generation::ensure_live(&pool).await?;
        tracing::info!(generation = %live, "live projections");
        if let Err(e) = kafka::ensure_topic(&config.kafka, None).await {
            // The consumer connects by itself once the broker is reachable.
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot ensure the Kafka topic exists yet"
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on PROJECTOR_LISTEN={}", config.listen))?;
        let address = listener.local_addr()?;
        let metrics_listener = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on PROJECTOR_METRICS_LISTEN={}",
                    config.metrics_listen
                )
            })?;
        let metrics_address = metrics_listener.local_addr()?;
        let state = ApiState::new(ApiShared {
            pool,
            tokens: config.api_tokens.clone(),
            metrics: ProjectorMetrics::new(),
            cache: Arc::new(EntitlementCache::new(
                config.cache_entries,
                config.cache_ttl,
            )),
            throttle: FailureThrottle::new(),
        });
        Ok(Self {
            listener,
            address,
            metrics_listener,
            metrics_address,
            state,
            config,
            owns_pool: false,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The metrics listener's bound address.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics_address
    }

    pub fn metrics(&self) -> ProjectorMetrics {
        self.state.metrics.clone()
    }

    /// Consumes and serves until `shutdown` is cancelled (or the consumer
    /// dies, which is an error so an orchestrator restarts the process). On
    /// the way out: stop serving, finish the batch in hand, store the
    /// position, leave the consumer group.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            address,
            metrics_listener,
            metrics_address,
            state,
            config,
            owns_pool,
        } = self;
        let pool = state.pool.clone();
        let consumer_stop = CancellationToken::new();
        // If this future is dropped instead of finishing (its task aborted, the
        // runtime shutting down after a panic), the consumer thread must still
        // stop: the runtime waits for the blocking task that joins it.
        let _stop_consumer_when_dropped = consumer_stop.clone().drop_guard();
        let consumer_exited = CancellationToken::new();
        let consumer = consumer::spawn(
            config.consumer.clone(),
            &config.kafka,
            pool.clone(),
            state.metrics.clone(),
            consumer_stop.clone(),
        )?;
        let exited = consumer_exited.clone();
        let consumer_join = tokio::task::spawn_blocking(move || {
            let result = consumer.join();
            exited.cancel();
            result.is_ok()
        });

        let invalidation = tokio::spawn(keep_cache_in_step(pool.clone(), state.cache.clone()));
        let push_stop = CancellationToken::new();
        let pushing = config.push.clone().map(|settings| {
            tokio::spawn(push::run(
                pool.clone(),
                (*pool.connect_options()).clone(),
                settings,
                state.cache.waiters().clone(),
                state.metrics.clone(),
                push_stop.clone(),
            ))
        });
        let pruning = tokio::spawn(prune_history(
            pool.clone(),
            config.consumer.changes_retention,
        ));
        let parked = tokio::spawn(apply_parked_events(
            pool.clone(),
            config.consumer.changes_retention.is_some(),
        ));
        tracing::info!(%address, %metrics_address, topic = %config.kafka.topic, group = %config.consumer.group_id, "projector serving");
        let stop_serving = CancellationToken::new();
        let metrics_state = state.clone();
        let mut routes = api::router(state.clone());
        if let Some(console) = &config.console {
            routes = routes.merge(console::router(ConsoleState::new(ConsoleShared {
                api: state,
                tokens: console.tokens.clone(),
                topic: config.kafka.topic.clone(),
                group: config.consumer.group_id.clone(),
                feed_on: config.consumer.changes_retention.is_some(),
                throttle: FailureThrottle::new(),
            })));
        }
        // Change streams and waiting reads hold their connections open; past
        // the grace they are closed (their clients reconnect elsewhere).
        let server = tokio::spawn(futures::future::join(
            serve(
                listener,
                routes,
                config.connections,
                stop_serving.clone(),
                config.shutdown_grace,
            ),
            serve(
                metrics_listener,
                api::metrics_router(metrics_state),
                config.connections,
                stop_serving.clone(),
                config.shutdown_grace,
            ),
        ));
        let consumer_died = tokio::select! {
            () = shutdown.cancelled() => false,
            () = consumer_exited.cancelled() => true,
        };
        stop_serving.cancel();
        server.await.context("read API task")?;
        consumer_stop.cancel();
        invalidation.abort();
        pruning.abort();
        parked.abort();
        push_stop.cancel();
        if let Some(pushing) = pushing {
            // Stops between attempts; a change in flight is sent again next time.
            let _ = pushing.await;
        }
        let consumer_ok = consumer_join.await.context("consumer join")?;
        if owns_pool {
            pool.close().await;
        }
        anyhow::ensure!(consumer_ok, "the consumer thread panicked");
        anyhow::ensure!(!consumer_died, "the consumer stopped on its own");
        tracing::info!("projector stopped");
        Ok(())
    }
}

/// How long the console can say where in Kafka an event was applied from.
const PLACEMENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes changes past the feed's retention (when the feed is on) and event
/// placements past [`PLACEMENT_RETENTION`], once a minute. Every replica
/// does; the deletes are idempotent.
async fn prune_history(pool: PgPool, feed_retention: Option<Duration>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        if let Some(retention) = feed_retention {
            match feed::prune(&pool, retention).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "pruned the change feed"),
                Err(e) => tracing::warn!(error = %e, "cannot prune the change feed"),
            }
        }
        if let Err(e) = applied::prune(&pool, PLACEMENT_RETENTION).await {
            tracing::warn!(error = %e, "cannot prune event placements");
        }
        if let Err(e) = console::prune_ended_sessions(&pool).await {
            tracing::warn!(error = %e, "cannot prune ended console sessions");
        }
    }
}

/// How often a replica looks for events the relay parked.
const PARKED_POLL: Duration = Duration::from_secs(5);

/// Applies events the relay parked (Kafka refuses their message) from the
/// log, as soon as a replica finds them.
async fn apply_parked_events(pool: PgPool, feed_on: bool) {
    let mut every = tokio::time::interval(PARKED_POLL);
    loop {
        every.tick().await;
        if let Err(e) = reapply::apply_parked(&pool, feed_on).await {
            tracing::warn!(error = format!("{e:#}"), "cannot apply parked events yet");
        }
    }
}

/// Listens for change notifications and evicts what they name. Whenever the
/// listener is not connected, the cache is emptied and bypassed (it could miss
/// a notification), and the listener reconnects.
async fn keep_cache_in_step(pool: PgPool, cache: Arc<EntitlementCache>) {
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match listener {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for projection changes; entitlement cache off");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        cache.set_listening(true);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => cache.invalidate(notification.payload()),
                // The connection dropped: notifications may have been missed.
                Ok(None) | Err(_) => {
                    cache.set_listening(false);
                    tracing::warn!(
                        "projection change listener lost; entitlement cache off until it is back"
                    );
                    break;
                }
            }
        }
    }
}
