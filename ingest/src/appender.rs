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

use hookstream_shared::db::is_transient;
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
    let mut arrivals = ArrivalRate::new(Instant::now());
    while let Some(first) = inbox.recv().await {
        // Waiting for a slot before gathering is what makes batches grow
        // under load: requests pile up while every slot is committing.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = Vec::with_capacity(settings.max_batch);
        batch.push(first);
        take_queued(&mut inbox, &mut batch, settings.max_batch);
        let linger = settings
            .linger
            .wait_for(batch.len(), arrivals.per_second(Instant::now()));
        if !linger.is_zero() {
            let deadline = tokio::time::Instant::now() + linger;
            // The linger fills towards its target, never past the cap.
            let fill_to = settings.linger.target.min(settings.max_batch);
            while batch.len() < fill_to {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(request)) => batch.push(request),
                    Ok(None) | Err(_) => break,
                }
            }
            take_queued(&mut inbox, &mut batch, settings.max_batch);
        }
        arrivals.count(batch.len(), Instant::now());
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

/// Moves what is already queued into `batch`, up to `max` in all.
fn take_queued(
    inbox: &mut mpsc::Receiver<AppendRequest>,
    batch: &mut Vec<AppendRequest>,
    max: usize,
) {
    while batch.len() < max {
        match inbox.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

/// How long a batch that has a commit slot waits for more events.
///
/// Every commit costs Postgres a transaction and a WAL flush, and the relay a
/// produce and a dequeue, whatever its size; under heavy traffic, waiting a
/// moment for more events spreads that cost over many. Under light traffic
/// the wait would only add latency, so it is taken only when the recent
/// arrival rate says the wait will bring at least one more event, and only
/// as long as it takes to bring the batch to `target` at that rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// The longest wait (`INGEST_BATCH_LINGER_US`); zero turns lingering off.
    pub max: Duration,
    /// A lingering batch is committed once it holds this many events.
    pub target: usize,
    /// Whether the wait follows the arrival rate; if not, every batch below
    /// `target` waits the whole `max`.
    pub adaptive: bool,
}

impl Linger {
    /// The wait for a batch of `held` events, with events arriving at
    /// `per_second`.
    pub fn wait_for(&self, held: usize, per_second: f64) -> Duration {
        if self.max.is_zero() || held >= self.target {
            return Duration::ZERO;
        }
        if !self.adaptive {
            return self.max;
        }
        let expected_in_max = per_second * self.max.as_secs_f64();
        if expected_in_max < 1.0 {
            return Duration::ZERO;
        }
        let to_target = (self.target - held) as f64 / per_second;
        self.max.min(Duration::from_secs_f64(to_target))
    }
}

/// Events per second entering batches, over the last window of at least
/// [`ArrivalRate::WINDOW`]. A window closes only when a batch forms, so
/// after a quiet spell the first batch sees the spell's low rate at once.
#[derive(Debug)]
struct ArrivalRate {
    window_start: Instant,
    in_window: usize,
    per_second: f64,
}

impl ArrivalRate {
    const WINDOW: Duration = Duration::from_millis(50);

    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            in_window: 0,
            per_second: 0.0,
        }
    }

    /// The rate of the last closed window, or of the open one once it is
    /// long enough: events that stopped coming lower the rate at once.
    fn per_second(&self, now: Instant) -> f64 {
        let open_for = now.saturating_duration_since(self.window_start);
        if open_for >= Self::WINDOW {
            self.in_window as f64 / open_for.as_secs_f64()
        } else {
            self.per_second
        }
    }

    fn count(&mut self, events: usize, now: Instant) {
        self.in_window += events;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= Self::WINDOW {
            self.per_second = self.in_window as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.in_window = 0;
        }
    }
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
        Err(e) if events.len() > 1 && !is_transient(&e) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Linger = Linger {
        max: Duration::from_millis(1),
        target: 64,
        adaptive: true,
    };

    #[test]
    fn light_traffic_never_waits() {
        // 500 events/s bring half an event per millisecond: nothing to wait for.
        assert_eq!(LINGER.wait_for(1, 500.0), Duration::ZERO);
        assert_eq!(LINGER.wait_for(1, 0.0), Duration::ZERO);
    }

    #[test]
    fn heavy_traffic_waits_until_the_target_is_due_at_most_the_linger() {
        // 5,000/s: 63 more events are 12.6 ms away, so the whole linger.
        assert_eq!(LINGER.wait_for(1, 5_000.0), Duration::from_millis(1));
        // 640,000/s: the missing 32 are due in 50 us.
        assert_eq!(LINGER.wait_for(32, 640_000.0), Duration::from_micros(50));
        // Already at the target: commit now.
        assert_eq!(LINGER.wait_for(64, 5_000.0), Duration::ZERO);
    }

    #[test]
    fn a_fixed_linger_waits_whatever_the_traffic_and_zero_turns_it_off() {
        let fixed = Linger {
            adaptive: false,
            ..LINGER
        };
        assert_eq!(fixed.wait_for(1, 0.0), Duration::from_millis(1));
        assert_eq!(fixed.wait_for(64, 0.0), Duration::ZERO);
        let off = Linger {
            max: Duration::ZERO,
            ..LINGER
        };
        assert_eq!(off.wait_for(1, 1e6), Duration::ZERO);
    }

    #[test]
    fn the_arrival_rate_falls_as_soon_as_events_stop_coming() {
        let start = Instant::now();
        let mut rate = ArrivalRate::new(start);
        for ms in 1..=50 {
            rate.count(10, start + Duration::from_millis(ms));
        }
        let measured = rate.per_second(start + Duration::from_millis(51));
        assert!((9_000.0..=11_000.0).contains(&measured), "{measured}");
        // A quiet second later, before any batch closes the window.
        assert!(rate.per_second(start + Duration::from_secs(1)) < 1.0);
    }
}
