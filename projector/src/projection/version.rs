//! The order of versions, which makes applying events order-independent.
//!
//! A row is replaced only by a strictly newer [`Version`]. Versions compare
//! first by the object's own time (`modified_at`, or `created_at` for a new
//! object), then by where the snapshot came from (an object's own event beats
//! the same version embedded in another event, whose shape may differ), then
//! by the envelope's timestamp, then by log sequence. The last makes the order
//! total, so any delivery order of the same events picks the same winner.

use chrono::{DateTime, Utc};

/// Where a snapshot came from; higher wins a tie on the object's own time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rank {
    /// Embedded in another object's event, or the customer part of a state.
    Embedded = 1,
    /// The object's own event (`subscription.updated` for a subscription).
    OwnEvent = 2,
}

/// A snapshot's version. Field order is comparison order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// `modified_at`, or `created_at` when the object was never modified.
    pub at: DateTime<Utc>,
    pub rank: Rank,
    /// The envelope's `timestamp`.
    pub occurred: DateTime<Utc>,
    /// The event's log sequence number.
    pub seq: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn newer_object_time_wins_over_everything_else() {
        let older = Version {
            at: t(10),
            rank: Rank::OwnEvent,
            occurred: t(99),
            seq: 99,
        };
        let newer = Version {
            at: t(11),
            rank: Rank::Embedded,
            occurred: t(1),
            seq: 1,
        };
        assert!(newer > older);
    }

    #[test]
    fn ties_break_by_rank_then_envelope_time_then_seq() {
        let base = Version {
            at: t(10),
            rank: Rank::Embedded,
            occurred: t(20),
            seq: 5,
        };
        assert!(
            Version {
                rank: Rank::OwnEvent,
                occurred: t(1),
                ..base
            } > base
        );
        assert!(
            Version {
                occurred: t(21),
                seq: 1,
                ..base
            } > base
        );
        assert!(Version { seq: 6, ..base } > base);
    }
}
