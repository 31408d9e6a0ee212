//! A customer as a request names it: by Polar's id or by the app's external
//! id. One place says how each is looked up and which change notification
//! names it, for every route that takes either.

use crate::changes;

/// A customer, by id or by external id.
#[derive(Debug, Clone, Copy)]
pub enum CustomerRef<'a> {
    Id(&'a str),
    External(&'a str),
}

impl<'a> CustomerRef<'a> {
    /// The condition on `projection.customers c` that selects it, with `$1`
    /// for the value to bind. Polar keeps external ids unique among live
    /// customers; while events are still arriving two may briefly share one,
    /// so queries add `order by c.id limit 1` to pick deterministically.
    pub fn condition(self) -> (&'static str, &'a str) {
        match self {
            Self::Id(id) => ("c.id = $1", id),
            Self::External(external_id) => ("c.external_id = $1", external_id),
        }
    }

    /// The change-notification token naming it (see [`crate::changes`]).
    pub fn key(self) -> String {
        match self {
            Self::Id(id) => changes::customer_key(id),
            Self::External(external_id) => changes::external_key(external_id),
        }
    }
}
