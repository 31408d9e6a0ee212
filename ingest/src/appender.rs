//! Group commit: concurrent webhook requests share one insert and one commit.
//!
//! Handlers put verified events on a bounded queue and wait. One batcher task
//! takes whatever is queued (up to `max_batch`) as soon as a commit slot is
//! free, so batches stay small when traffic is light and grow by themselves
//! while earlier commits are in flight. Each request is answered when the
//! commit holding its event returns; never before, so a 2xx means the event is
//! durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::relay::{FreshEvents, Outgoing};

use sqlx::PgPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use hookstream_shared::envelope::Envelope;
use hookstream_shared::event_log::{self, Appended, NewEvent};

use crate::config::BatchSettings;
use crate::metrics::IngestMetrics;
use crate::signature::VerifiedWebhook;

/// Why an event could not be appended. Both mean "try again later" to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("the append queue is full")]
    QueueFull,
    #[error("the event log cannot take the write")]
    Unavailable,
}

struct AppendRequest {
    event: NewEvent,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// The handle handlers use. Cloned into every request; when the last clone is
/// dropped (the HTTP server has stopped), the batcher drains and exits.
#[derive(Clone, Debug)]
pub struct Appender {
    queue: mpsc::Sender<AppendRequest>,
    append_timeout: Duration,
    metrics: IngestMetrics,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("webhook_id", &self.event.webhook_id)
            .finish()
    }
}

impl Appender {
    /// Starts the batcher; returns the handle and the batcher's task, which
    /// ends once every handle is gone and every batch has committed.
    /// Every committed batch's new events are offered to `fresh` (the relay).
    pub fn start(
        pool: PgPool,
        settings: BatchSettings,
        metrics: IngestMetrics,
        fresh: FreshEvents,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, inbox) = mpsc::channel(settings.queue_capacity);
        let appender = Self {
            queue,
            append_timeout: settings.append_timeout,
            metrics: metrics.clone(),
        };
        let batcher = tokio::spawn(run_batcher(inbox, pool, settings, metrics, fresh));
        (appender, batcher)
    }

    /// Appends one verified event and waits for its commit. Only a
    /// [`VerifiedWebhook`] can be appended, so nothing unverified reaches the log.
    pub async fn append(
        &self,
        source: &str,
        webhook: VerifiedWebhook,
        envelope: Envelope,
    ) -> Result<Appended, AppendError> {
        let event = NewEvent::from_envelope(
            source,
            webhook.webhook_id(),
            envelope,
            webhook.body().clone(),
        );
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(AppendRequest { event, reply })
            .map_err(|_| AppendError::QueueFull)?;
        self.metrics.queue_depth.inc();
        match tokio::time::timeout(self.append_timeout, answer).await {
            Ok(Ok(result)) => result,
            // The batcher dropped the request (it only does so when shutting
            // down) or the commit took too long: the sender retries, and if the
            // event did land, the retry is answered as a duplicate.
            Ok(Err(_)) | Err(_) => Err(AppendError::Unavailable),
        }
    }
}

async fn run_batcher(
    mut inbox: mpsc::Receiver<AppendRequest>,
    pool: PgPool,
    settings: BatchSettings,
    metrics: IngestMetrics,
    fresh: FreshEvents,
) {
    let slots = Arc::new(Semaphore::new(settings.commit_concurrency));
    let mut commits = JoinSet::new();
    while let Some(first) = inbox.recv().await {
        // Waiting for a slot before gathering is what makes batches grow
        // under load: requests pile up while every slot is committing.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = Vec::with_capacity(settings.max_batch);
        batch.push(first);
        if !settings.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + settings.linger;
            while batch.len() < settings.max_batch {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(request)) => batch.push(request),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        while batch.len() < settings.max_batch {
            match inbox.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        metrics.queue_depth.sub(batch.len() as i64);
        commits.spawn(commit(
            pool.clone(),
            batch,
            permit,
            metrics.clone(),
            fresh.clone(),
        ));
        while commits.try_join_next().is_some() {}
    }
    while commits.join_next().await.is_some() {}
}

async fn commit(
    pool: PgPool,
    batch: Vec<AppendRequest>,
    _slot: OwnedSemaphorePermit,
    metrics: IngestMetrics,
    fresh: FreshEvents,
) {
    let (events, replies): (Vec<NewEvent>, Vec<_>) =
        batch.into_iter().map(|r| (r.event, r.reply)).unzip();
    metrics.batch_size.observe(events.len() as f64);
    let started = Instant::now();
    let result = event_log::append_batch(&pool, &events).await;
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(&outcomes) {
                let _ = reply.send(Ok(*outcome));
            }
            fresh.offer(new_events(events, &outcomes));
        }
        Err(e) if events.len() > 1 && is_caused_by_the_data(&e) => {
            // One event the database refuses must not fail its batch-mates:
            // append each on its own so only that one is refused.
            tracing::warn!(error = %e, batch = events.len(), "batch refused by the database; appending its events one by one");
            for (event, reply) in events.into_iter().zip(replies) {
                let outcome = event_log::append_batch(&pool, std::slice::from_ref(&event))
                    .await
                    .map(|mut o| o.remove(0))
                    .map_err(|e| {
                        tracing::error!(error = %e, webhook_id = %event.webhook_id, "event refused by the database");
                        metrics.commit_failures.inc();
                        AppendError::Unavailable
                    });
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = events.len(), "cannot append batch to the event log");
            metrics.commit_failures.inc();
            for reply in replies {
                let _ = reply.send(Err(AppendError::Unavailable));
            }
        }
    }
}

/// The events a batch actually added, ready for the relay.
fn new_events(events: Vec<NewEvent>, outcomes: &[Appended]) -> Vec<Outgoing> {
    events
        .into_iter()
        .zip(outcomes)
        .filter_map(|(e, outcome)| match outcome {
            Appended::New { seq } => Some(Outgoing {
                seq: *seq,
                source: e.source,
                webhook_id: e.webhook_id,
                event_type: e.event_type,
                partition_key: e.partition_key,
                body: e.body,
            }),
            Appended::Duplicate { .. } => None,
        })
        .collect()
}

/// Data exceptions (class 22) and integrity violations other than the unique
/// key we resolve with ON CONFLICT (class 23) are caused by a row, not by the
/// database being unavailable.
fn is_caused_by_the_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}
