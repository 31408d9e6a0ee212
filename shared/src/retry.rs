//! The one retry policy of the workspace: waits that start at `first`,
//! roughly double after each consecutive failure (with jitter, so replicas
//! that failed together do not retry together) up to `max`, and start over
//! after a success. Built on the `backoff` crate; every loop that retries
//! holds one of these instead of a formula of its own.

use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff as _;

/// The waits of one retrying loop.
#[derive(Debug)]
pub struct Retry {
    policy: ExponentialBackoff,
    max: Duration,
}

impl Retry {
    /// Retries forever: waits from `first` up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self::build(first, max, None)
    }

    /// Gives up once `give_up_after` has passed since the first failure of
    /// a run of failures: [`Retry::next_delay`] then answers `None`.
    pub fn within(first: Duration, max: Duration, give_up_after: Duration) -> Self {
        Self::build(first, max, Some(give_up_after))
    }

    fn build(first: Duration, max: Duration, give_up_after: Option<Duration>) -> Self {
        let mut policy = ExponentialBackoff {
            initial_interval: first,
            max_interval: max,
            max_elapsed_time: give_up_after,
            ..ExponentialBackoff::default()
        };
        policy.reset();
        Self { policy, max }
    }

    /// How long to wait after another failure, `None` when it is time to
    /// give up (only for [`Retry::within`]).
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.policy.next_backoff()
    }

    /// How long to wait after another failure, for a loop that never gives up.
    pub fn after_failure(&mut self) -> Duration {
        self.next_delay().unwrap_or(self.max).min(self.max)
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.policy.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_and_start_over_after_a_success() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut retry = Retry::new(first, max);
        let waits: Vec<Duration> = (0..12).map(|_| retry.after_failure()).collect();
        // Jitter is ±50% around 100 ms, 150 ms, ...
        assert!(
            waits[0] >= first / 2 && waits[0] <= first * 3 / 2,
            "{waits:?}"
        );
        assert!(waits.iter().all(|w| *w <= max), "{waits:?}");
        assert!(waits[11] >= max / 2, "reaches the cap: {waits:?}");
        retry.reset();
        assert!(retry.after_failure() <= first * 3 / 2);
    }

    #[test]
    fn a_bounded_retry_gives_up() {
        let mut retry = Retry::within(
            Duration::from_millis(1),
            Duration::from_millis(1),
            Duration::ZERO,
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(retry.next_delay(), None);
    }
}
