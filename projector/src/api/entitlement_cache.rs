//! An in-process cache for the entitlement check, kept exact by invalidation.
//!
//! Every consumer batch that changes a customer NOTIFYs (on commit) the
//! customer's id and external ids (see [`crate::changes`]); every projector
//! replica listens and evicts those entries, whichever replica's consumer made
//! the change. Two rules keep a stale answer from being cached:
//!
//! - A fill read from Postgres is inserted only if no invalidation arrived
//!   while it was being read (the `epoch` check); a fill that raced a change is
//!   answered but not kept.
//! - While the listener is not connected (start-up, a lost connection), the
//!   cache is empty and bypassed: notifications may have been missed.
//!
//! Entries also expire after a TTL and the cache is bounded: when full it is
//! cleared, which costs a burst of misses, never a wrong answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::waiters::Waiters;
use crate::changes::CLEAR_ALL;

/// One grant an answer can rest on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holding {
    pub benefit_id: String,
    pub grant_id: String,
    /// The grant's billing customer.
    pub customer_id: String,
    /// The member the grant is for, when known.
    pub member_id: Option<String>,
}

/// What the check needs to know about one customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerEntitlements {
    pub customer_id: String,
    /// Grants currently held by the customer (any of its members, for a team).
    pub holdings: Vec<Holding>,
}

impl CustomerEntitlements {
    pub fn holdings_of<'a>(&'a self, benefit_id: &'a str) -> impl Iterator<Item = &'a Holding> {
        self.holdings
            .iter()
            .filter(move |h| h.benefit_id == benefit_id)
    }
}

/// A cached answer: `None` means no such live customer.
pub type Cached = Option<Arc<CustomerEntitlements>>;

/// How a person (an external id) holds a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Through {
    /// As an individual customer with that external id.
    Customer,
    /// As a member with that external id.
    Member,
}

/// A grant a person holds, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PersonHolding {
    pub holding: Holding,
    pub through: Through,
    /// The billing customer's external id, for scoping by it.
    pub customer_external_id: Option<String>,
}

/// What the check needs to know about one external id as a person: every
/// grant it holds anywhere, and every customer it belongs to (to forget the
/// entry when any of them changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonEntitlements {
    pub customers: HashSet<String>,
    pub holdings: Vec<PersonHolding>,
}

#[derive(Debug)]
struct Slot<T = Cached> {
    value: T,
    loaded_at: Instant,
}

#[derive(Debug, Default)]
struct Maps {
    by_id: HashMap<String, Slot>,
    by_external: HashMap<String, Slot>,
    by_person: HashMap<String, Slot<Arc<PersonEntitlements>>>,
    /// Customer id → people whose entries involve it.
    people_of_customer: HashMap<String, HashSet<String>>,
}

impl Maps {
    fn len(&self) -> usize {
        self.by_id.len() + self.by_external.len() + self.by_person.len()
    }

    fn clear(&mut self) {
        self.by_id.clear();
        self.by_external.clear();
        self.by_person.clear();
        self.people_of_customer.clear();
    }

    fn forget_person(&mut self, external_id: &str) {
        if let Some(slot) = self.by_person.remove(external_id) {
            for customer in &slot.value.customers {
                if let Some(people) = self.people_of_customer.get_mut(customer) {
                    people.remove(external_id);
                    if people.is_empty() {
                        self.people_of_customer.remove(customer);
                    }
                }
            }
        }
    }
}

/// The cache; cheap to share behind an `Arc`. The requests waiting on a
/// change ([`Waiters`]) are woken by the same notifications, after the
/// entries they name are gone, so a woken waiter reads the change.
#[derive(Debug)]
pub struct EntitlementCache {
    maps: Mutex<Maps>,
    waiters: Arc<Waiters>,
    /// Bumped by every invalidation; fills compare it before inserting.
    epoch: AtomicU64,
    listening: AtomicBool,
    max_entries: usize,
    ttl: Duration,
}

/// How a person lookup went.
#[derive(Debug, PartialEq, Eq)]
pub enum PersonLookup {
    Hit(Arc<PersonEntitlements>),
    /// Not cached; read Postgres, then [`EntitlementCache::fill_person`].
    Miss {
        epoch: u64,
    },
}

/// How a lookup went.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit(Cached),
    /// Not cached; read Postgres, then [`EntitlementCache::fill`] with this epoch.
    Miss {
        epoch: u64,
    },
}

impl EntitlementCache {
    /// `max_entries` of 0 disables the cache.
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        Self {
            maps: Mutex::new(Maps::default()),
            waiters: Arc::new(Waiters::default()),
            epoch: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            max_entries,
            ttl,
        }
    }

    /// The requests waiting on a change.
    pub fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }

    /// Whether change notifications are being received (else the cache is
    /// bypassed, and waiters must look for themselves).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn usable(&self) -> bool {
        self.max_entries > 0 && self.listening.load(Ordering::Acquire)
    }

    pub fn by_id(&self, customer_id: &str) -> Lookup {
        self.lookup(customer_id, |m| &m.by_id)
    }

    pub fn by_external_id(&self, external_id: &str) -> Lookup {
        self.lookup(external_id, |m| &m.by_external)
    }

    /// The person entry of `external_id`.
    pub fn by_person(&self, external_id: &str) -> PersonLookup {
        let epoch = self.epoch.load(Ordering::Acquire);
        if !self.usable() {
            return PersonLookup::Miss { epoch };
        }
        let maps = self.maps.lock().expect("cache lock");
        match maps.by_person.get(external_id) {
            Some(slot) if slot.loaded_at.elapsed() < self.ttl => {
                PersonLookup::Hit(slot.value.clone())
            }
            _ => PersonLookup::Miss { epoch },
        }
    }

    /// As [`fill`](Self::fill), for a person entry.
    pub fn fill_person(&self, epoch: u64, external_id: &str, value: Arc<PersonEntitlements>) {
        if !self.usable() {
            return;
        }
        let mut maps = self.maps.lock().expect("cache lock");
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if maps.len() >= self.max_entries {
            maps.clear();
        }
        maps.forget_person(external_id);
        for customer in &value.customers {
            maps.people_of_customer
                .entry(customer.clone())
                .or_default()
                .insert(external_id.to_owned());
        }
        maps.by_person.insert(
            external_id.to_owned(),
            Slot {
                value,
                loaded_at: Instant::now(),
            },
        );
    }

    fn lookup(&self, key: &str, map: impl Fn(&Maps) -> &HashMap<String, Slot>) -> Lookup {
        // Read the epoch first: an invalidation after this point makes the
        // fill's epoch stale, so the fill is not kept.
        let epoch = self.epoch.load(Ordering::Acquire);
        if !self.usable() {
            return Lookup::Miss { epoch };
        }
        let maps = self.maps.lock().expect("cache lock");
        match map(&maps).get(key) {
            Some(slot) if slot.loaded_at.elapsed() < self.ttl => Lookup::Hit(slot.value.clone()),
            _ => Lookup::Miss { epoch },
        }
    }

    /// Keeps a value read from Postgres under its id (and the external id it
    /// was asked by), unless an invalidation arrived since `epoch`.
    pub fn fill(
        &self,
        epoch: u64,
        asked_by_external: Option<&str>,
        asked_by_id: Option<&str>,
        value: Cached,
    ) {
        if !self.usable() {
            return;
        }
        let mut maps = self.maps.lock().expect("cache lock");
        // Checked under the lock: invalidations also take it.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if maps.len() >= self.max_entries {
            maps.clear();
        }
        let now = Instant::now();
        if let Some(id) = value
            .as_ref()
            .map(|v| v.customer_id.as_str())
            .or(asked_by_id)
        {
            maps.by_id.insert(
                id.to_owned(),
                Slot {
                    value: value.clone(),
                    loaded_at: now,
                },
            );
        }
        if let Some(external_id) = asked_by_external {
            maps.by_external.insert(
                external_id.to_owned(),
                Slot {
                    value,
                    loaded_at: now,
                },
            );
        }
    }

    /// Applies one notification payload, then wakes whoever waits on what
    /// it names.
    pub fn invalidate(&self, payload: &str) {
        self.evict(payload);
        self.waiters.wake(payload);
    }

    fn evict(&self, payload: &str) {
        let mut maps = self.maps.lock().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if payload == CLEAR_ALL {
            maps.clear();
            return;
        }
        for token in payload.split(',') {
            if let Some(id) = token.strip_prefix("c:") {
                maps.by_id.remove(id);
                // An external id may still point at this customer.
                maps.by_external
                    .retain(|_, slot| slot.value.as_ref().is_none_or(|v| v.customer_id != id));
                // And people who are its members.
                for person in maps.people_of_customer.remove(id).unwrap_or_default() {
                    maps.forget_person(&person);
                }
            } else if let Some(external_id) = token.strip_prefix("x:") {
                maps.by_external.remove(external_id);
                maps.forget_person(external_id);
            }
        }
    }

    /// The listener is connected (`true`) or lost (`false`, which also empties the cache).
    pub fn set_listening(&self, listening: bool) {
        if !listening {
            self.evict(CLEAR_ALL);
        }
        self.listening.store(listening, Ordering::Release);
        // Either way waiters must look again: while no one listened,
        // notifications may have been missed.
        self.waiters.wake_everyone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(id: &str, benefits: &[&str]) -> Cached {
        Some(Arc::new(CustomerEntitlements {
            customer_id: id.to_owned(),
            holdings: benefits
                .iter()
                .map(|b| Holding {
                    benefit_id: b.to_string(),
                    grant_id: format!("grant-{b}"),
                    customer_id: id.to_owned(),
                    member_id: None,
                })
                .collect(),
        }))
    }

    fn member_of(customers: &[&str]) -> Arc<PersonEntitlements> {
        Arc::new(PersonEntitlements {
            customers: customers.iter().map(|c| c.to_string()).collect(),
            holdings: Vec::new(),
        })
    }

    #[test]
    fn a_person_is_forgotten_when_any_customer_it_belongs_to_changes() {
        let cache = listening_cache();
        for person in ["usr_1", "usr_2"] {
            let PersonLookup::Miss { epoch } = cache.by_person(person) else {
                panic!("empty cache hit")
            };
            cache.fill_person(epoch, person, member_of(&["team_a", "team_b"]));
        }
        assert!(matches!(cache.by_person("usr_1"), PersonLookup::Hit(_)));
        cache.invalidate("c:team_b");
        assert!(matches!(
            cache.by_person("usr_1"),
            PersonLookup::Miss { .. }
        ));
        assert!(matches!(
            cache.by_person("usr_2"),
            PersonLookup::Miss { .. }
        ));
        let PersonLookup::Miss { epoch } = cache.by_person("usr_1") else {
            panic!()
        };
        cache.fill_person(epoch, "usr_1", member_of(&[]));
        cache.invalidate("c:team_a");
        assert!(
            matches!(cache.by_person("usr_1"), PersonLookup::Hit(_)),
            "a refilled entry is indexed by its new customers only"
        );
        cache.invalidate("x:usr_1");
        assert!(
            matches!(cache.by_person("usr_1"), PersonLookup::Miss { .. }),
            "a new member or customer with the external id"
        );
        assert!(cache.maps.lock().unwrap().people_of_customer.is_empty());
    }

    fn listening_cache() -> EntitlementCache {
        let cache = EntitlementCache::new(100, Duration::from_secs(60));
        cache.set_listening(true);
        cache
    }

    #[test]
    fn a_fill_is_served_until_its_customer_changes() {
        let cache = listening_cache();
        let Lookup::Miss { epoch } = cache.by_external_id("usr_1") else {
            panic!("empty cache hit")
        };
        cache.fill(epoch, Some("usr_1"), None, customer("cus_1", &["pro"]));
        assert_eq!(
            cache.by_external_id("usr_1"),
            Lookup::Hit(customer("cus_1", &["pro"]))
        );
        assert_eq!(
            cache.by_id("cus_1"),
            Lookup::Hit(customer("cus_1", &["pro"]))
        );
        cache.invalidate("c:cus_1");
        assert!(
            matches!(cache.by_external_id("usr_1"), Lookup::Miss { .. }),
            "external lookups of the customer go too"
        );
        assert!(matches!(cache.by_id("cus_1"), Lookup::Miss { .. }));
    }

    #[test]
    fn a_fill_that_raced_a_change_is_not_kept() {
        let cache = listening_cache();
        let Lookup::Miss { epoch } = cache.by_id("cus_1") else {
            panic!()
        };
        // The batch commits (and notifies) while the fill's read is in flight.
        cache.invalidate("c:cus_1");
        cache.fill(epoch, None, Some("cus_1"), customer("cus_1", &["old"]));
        assert!(matches!(cache.by_id("cus_1"), Lookup::Miss { .. }));
    }

    #[test]
    fn unknown_customers_are_cached_and_evicted_by_the_ids_they_would_get() {
        let cache = listening_cache();
        let Lookup::Miss { epoch } = cache.by_external_id("usr_new") else {
            panic!()
        };
        cache.fill(epoch, Some("usr_new"), None, None);
        assert_eq!(cache.by_external_id("usr_new"), Lookup::Hit(None));
        cache.invalidate("c:cus_9,x:usr_new");
        assert!(matches!(
            cache.by_external_id("usr_new"),
            Lookup::Miss { .. }
        ));
    }

    #[test]
    fn without_a_listener_nothing_is_cached() {
        let cache = EntitlementCache::new(100, Duration::from_secs(60));
        let Lookup::Miss { epoch } = cache.by_id("cus_1") else {
            panic!()
        };
        cache.fill(epoch, None, Some("cus_1"), customer("cus_1", &[]));
        assert!(matches!(cache.by_id("cus_1"), Lookup::Miss { .. }));
        let cache = listening_cache();
        let Lookup::Miss { epoch } = cache.by_id("cus_1") else {
            panic!()
        };
        cache.fill(epoch, None, Some("cus_1"), customer("cus_1", &[]));
        cache.set_listening(false);
        assert!(
            matches!(cache.by_id("cus_1"), Lookup::Miss { .. }),
            "losing the listener empties the cache"
        );
    }

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache = EntitlementCache::new(4, Duration::from_millis(20));
        cache.set_listening(true);
        for i in 0..10 {
            let id = format!("cus_{i}");
            let Lookup::Miss { epoch } = cache.by_id(&id) else {
                panic!()
            };
            cache.fill(epoch, None, Some(&id), customer(&id, &[]));
        }
        assert!(cache.maps.lock().unwrap().by_id.len() <= 4);
        std::thread::sleep(Duration::from_millis(30));
        assert!(matches!(cache.by_id("cus_9"), Lookup::Miss { .. }));
    }
}
