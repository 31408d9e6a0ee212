//! Slowing down token guessing, per client address, without slowing the
//! right token.
//!
//! Each client address has a clock of answers owed for its wrong tokens
//! (a leaky bucket): every wrong token is answered [`STEP`] after the
//! previous one, beyond a free allowance of [`FREE_FAILURES`] at once. So a
//! client that mistypes now and then never waits, and one that guesses
//! learns at most one answer per [`STEP`]. Once a client already owes more
//! than [`MAX_WAIT`], it gets 429 at once and its token is not even looked
//! at: a 429 says nothing about the token, and waiting connections stay
//! bounded. A right token is answered at once, whatever the address owes
//! (unless it is that saturated address).
//!
//! The address is the TCP peer: behind a proxy, the proxy's. IPv6 clients
//! are counted by /64, the block one host usually holds.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens a client may present at once before answers slow down.
pub const FREE_FAILURES: u32 = 10;
/// Time between answers to one client's wrong tokens, past the allowance.
pub const STEP: Duration = Duration::from_millis(250);
/// The longest a wrong token waits; past it, 429 without looking.
pub const MAX_WAIT: Duration = Duration::from_secs(5);
/// Clients remembered at most; the ones whose debt is paid go first.
const MAX_CLIENTS: usize = 65_536;

/// The client's address, as the listener recorded it (axum's
/// `ConnectInfo`); `None` for a request that came in another way (a test
/// calling the router directly), which is never throttled.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

impl Peer {
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        Self(
            extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
        )
    }
}

/// What to do with a request, before its token is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check the token.
    Check,
    /// Too many wrong tokens waiting from this client: answer 429, asking
    /// it to come back after this long, without checking anything.
    Refuse { retry_after: Duration },
}

/// Per-address clocks of answers owed for wrong tokens.
#[derive(Debug, Default)]
pub struct FailureThrottle {
    /// When each client's debt is paid (in the past: nothing owed).
    paid_at: Mutex<HashMap<IpAddr, Instant>>,
}

impl FailureThrottle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a request from `peer` may have its token checked.
    pub fn admit(&self, peer: Option<SocketAddr>, now: Instant) -> Admission {
        let Some(client) = peer.map(client_of) else {
            return Admission::Check;
        };
        let paid_at = self.lock().get(&client).copied();
        match paid_at.map(|t| owed(t, now)) {
            Some(wait) if wait > MAX_WAIT => Admission::Refuse {
                retry_after: wait - MAX_WAIT,
            },
            _ => Admission::Check,
        }
    }

    /// Records a wrong token from `peer`; returns how long to wait before
    /// answering it.
    pub fn failed(&self, peer: Option<SocketAddr>, now: Instant) -> Duration {
        let Some(client) = peer.map(client_of) else {
            return Duration::ZERO;
        };
        let mut clients = self.lock();
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            clients.retain(|_, paid_at| *paid_at > now);
            if clients.len() >= MAX_CLIENTS {
                // Every one of them is guessing: forget an arbitrary one
                // rather than grow.
                if let Some(&any) = clients.keys().next() {
                    clients.remove(&any);
                }
            }
        }
        let paid_at = clients.entry(client).or_insert(now);
        *paid_at = (*paid_at).max(now) + STEP;
        owed(*paid_at, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.paid_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The wait owed by a client whose debt is paid at `paid_at`, beyond the
/// free allowance.
fn owed(paid_at: Instant, now: Instant) -> Duration {
    paid_at
        .saturating_duration_since(now)
        .saturating_sub(STEP * FREE_FAILURES)
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64.
fn client_of(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_few_mistakes_cost_nothing_and_guessing_is_slowed_then_refused() {
        let throttle = FailureThrottle::new();
        let now = Instant::now();
        let client = peer("198.51.100.7:40000");
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.failed(client, now), Duration::ZERO);
        }
        assert_eq!(throttle.failed(client, now), STEP);
        assert_eq!(throttle.failed(client, now), STEP * 2);
        // Owing up to MAX_WAIT: still checked (and made to wait).
        let mut wait = Duration::ZERO;
        while wait < MAX_WAIT {
            assert_eq!(throttle.admit(client, now), Admission::Check);
            wait = throttle.failed(client, now);
        }
        wait = throttle.failed(client, now);
        assert!(wait > MAX_WAIT);
        assert!(matches!(
            throttle.admit(client, now),
            Admission::Refuse { .. }
        ));
        // Another client is not affected, nor one without an address.
        assert_eq!(
            throttle.admit(peer("198.51.100.8:1"), now),
            Admission::Check
        );
        assert_eq!(throttle.failed(None, now), Duration::ZERO);
        // The debt is paid off with time.
        let later = now + wait + STEP;
        assert_eq!(throttle.admit(client, later), Admission::Check);
        assert_eq!(throttle.failed(client, later), Duration::ZERO);
    }

    #[test]
    fn one_ipv6_host_is_one_client_whatever_its_interface_id() {
        let throttle = FailureThrottle::new();
        let now = Instant::now();
        for i in 0..=FREE_FAILURES {
            throttle.failed(peer(&format!("[2001:db8:1:2::{i:x}]:443")), now);
        }
        assert_eq!(
            throttle.failed(peer("[2001:db8:1:2:ffff::1]:1"), now),
            STEP * 2
        );
        assert_eq!(
            throttle.failed(peer("[2001:db8:1:3::1]:1"), now),
            Duration::ZERO
        );
    }
}
