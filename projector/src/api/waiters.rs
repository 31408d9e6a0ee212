//! Waiting reads: requests parked until a change notification names what
//! they wait on (a customer `c:<id>` or an external id `x:<id>`, the tokens
//! of [`crate::changes`]), then re-evaluated. They cost memory, never a
//! database connection while they wait.
//!
//! A waiter registers its keys *before* it reads, and arms its wake-up
//! before it reads too, so a change committed between its read and its
//! sleep still wakes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use tokio::sync::Notify;

use super::params::QueryParams;
use super::{ApiError, ApiState};
use crate::changes::CLEAR_ALL;
use crate::metrics::InProgress;

/// The parked requests, by the keys they wait on.
#[derive(Debug, Default)]
pub struct Waiters {
    /// Key → its wake-up and how many registrations hold it.
    keys: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    /// Woken by every notification that cannot be matched to keys (a
    /// clear-all, a listener reconnect).
    everyone: Arc<Notify>,
    /// Woken by every notification at all: change-feed streams wait on it.
    any: Notify,
}

impl Waiters {
    /// Registers interest in `keys` until the registration is dropped.
    pub fn register(self: &Arc<Self>, keys: impl IntoIterator<Item = String>) -> Registration {
        let mut map = self.keys.lock().expect("waiters lock");
        let notifies = keys
            .into_iter()
            .map(|key| {
                let entry = map
                    .entry(key.clone())
                    .or_insert_with(|| (Arc::new(Notify::new()), 0));
                entry.1 += 1;
                (key, entry.0.clone())
            })
            .collect();
        Registration {
            waiters: self.clone(),
            notifies,
        }
    }

    /// Wakes the waiters of every key a notification payload names.
    pub fn wake(&self, payload: &str) {
        self.any.notify_waiters();
        if payload == CLEAR_ALL {
            self.wake_everyone();
            return;
        }
        let map = self.keys.lock().expect("waiters lock");
        for token in payload.split(',') {
            if let Some((notify, _)) = map.get(token) {
                notify.notify_waiters();
            }
        }
    }

    /// Resolves at the next notification of any change. Armed at once.
    pub fn any_change(&self) -> impl Future<Output = ()> + '_ {
        let mut notified = Box::pin(self.any.notified());
        notified.as_mut().enable();
        notified
    }

    pub fn wake_everyone(&self) {
        self.any.notify_waiters();
        self.everyone.notify_waiters();
        for (notify, _) in self.keys.lock().expect("waiters lock").values() {
            notify.notify_waiters();
        }
    }

    /// Keys currently waited on (for tests and metrics).
    pub fn keys(&self) -> usize {
        self.keys.lock().expect("waiters lock").len()
    }
}

/// A waiter's interest in some keys; dropping it forgets them.
#[derive(Debug)]
pub struct Registration {
    waiters: Arc<Waiters>,
    notifies: Vec<(String, Arc<Notify>)>,
}

impl Registration {
    /// Resolves at the next notification naming any of the keys (or
    /// everyone). Armed at once: a notification between this call and the
    /// first poll still counts.
    pub fn changed(&self) -> impl Future<Output = ()> + '_ {
        let mut armed: Vec<_> = self
            .notifies
            .iter()
            .map(|(_, notify)| Box::pin(notify.notified()))
            .chain(std::iter::once(Box::pin(self.waiters.everyone.notified())))
            .collect();
        for notified in &mut armed {
            notified.as_mut().enable();
        }
        async move {
            futures::future::select_all(armed).await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.waiters.keys.lock().expect("waiters lock");
        for (key, _) in &self.notifies {
            if let Some(entry) = map.get_mut(key) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// One look at what a waiting read waits for.
#[derive(Debug)]
pub struct Waited {
    /// Whether it is what the request waits for.
    pub done: bool,
    pub response: Response,
    /// The change-notification keys that would name a change to it.
    pub keys: Vec<String>,
}

/// Looks with `look` until it is done or `wait.timeout` has passed, woken
/// by change notifications naming the keys it reports (starting with
/// `keys`); returns the last look's response.
pub async fn wait_until<F, Fut>(
    state: &ApiState,
    wait: Wait,
    mut keys: Vec<String>,
    mut look: F,
) -> Result<Response, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Waited, ApiError>>,
{
    let _counted = InProgress::new(&state.metrics.waiters);
    let deadline = tokio::time::Instant::now() + wait.timeout;
    loop {
        // Registered and armed before the read: a change committed while
        // it runs still wakes this request.
        let registration = state.cache.waiters().register(keys.iter().cloned());
        let changed = registration.changed();
        tokio::pin!(changed);
        let seen = look().await?;
        if seen.done || tokio::time::Instant::now() >= deadline {
            return Ok(seen.response);
        }
        if seen.keys != keys {
            // The read named customers to watch as well: watch them, read again.
            keys = seen.keys;
            continue;
        }
        // Without change notifications nothing would wake it: look again
        // now and then instead.
        let listening = state.cache.is_listening();
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = tokio::time::sleep(UNHEARD_POLL), if !listening => {}
        }
    }
}

/// Longest `timeout_ms` a waiting check may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// `timeout_ms` when `wait_for` is given without one.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// How often a waiter looks again while change notifications are not heard.
const UNHEARD_POLL: Duration = Duration::from_millis(250);

/// `wait_for=<condition>&timeout_ms=`: answer as soon as the condition
/// holds, or at the timeout with the answer as it is then.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Which of the route's conditions (see [`Wait::parse`]): for the
    /// check, `granted` (true) or `revoked` (false).
    pub granted: bool,
    pub timeout: Duration,
}

impl Wait {
    /// The check's `wait_for=granted|revoked`.
    /// `wait_for` among `conditions` (each with what it means), and `timeout_ms`.
    pub fn parse(
        params: &QueryParams,
        conditions: &[(&str, bool)],
    ) -> Result<Option<Self>, ApiError> {
        let max_ms = i64::try_from(MAX_WAIT.as_millis()).unwrap_or(i64::MAX);
        let timeout = params
            .integer("timeout_ms", 0, max_ms)?
            .map(|ms| Duration::from_millis(ms.unsigned_abs()));
        let granted = match params.one("wait_for")? {
            None if timeout.is_some() => {
                return Err(ApiError::invalid("timeout_ms", "needs wait_for"));
            }
            None => return Ok(None),
            Some(condition) => conditions
                .iter()
                .find(|(name, _)| *name == condition)
                .map(|(_, meaning)| *meaning)
                .ok_or_else(|| {
                    let names: Vec<&str> = conditions.iter().map(|(name, _)| *name).collect();
                    ApiError::invalid("wait_for", format!("must be one of {}", names.join(", ")))
                })?,
        };
        Ok(Some(Self {
            granted,
            timeout: timeout.unwrap_or(DEFAULT_WAIT),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_notification_between_arming_and_waiting_still_wakes() {
        let waiters = Arc::new(Waiters::default());
        let registration = waiters.register(["c:cus_1".to_owned()]);
        let changed = registration.changed();
        // The change lands after arming and before the waiter awaits.
        waiters.wake("c:cus_9,c:cus_1");
        tokio::time::timeout(Duration::from_secs(1), changed)
            .await
            .expect("woken");
    }

    #[tokio::test]
    async fn only_the_keys_named_wake_and_dropped_registrations_are_forgotten() {
        let waiters = Arc::new(Waiters::default());
        let registration = waiters.register(["x:usr_1".to_owned()]);
        let other = waiters.register(["x:usr_1".to_owned(), "c:cus_2".to_owned()]);
        assert_eq!(waiters.keys(), 2);
        let changed = registration.changed();
        waiters.wake("c:cus_2");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), changed)
                .await
                .is_err(),
            "woken by another key"
        );
        let changed = registration.changed();
        waiters.wake(CLEAR_ALL);
        tokio::time::timeout(Duration::from_secs(1), changed)
            .await
            .expect("a clear-all wakes everyone");
        drop(other);
        assert_eq!(waiters.keys(), 1);
        drop(registration);
        assert_eq!(waiters.keys(), 0);
    }
}
