//! `GET /v1/entitlements/check`: the feature gate's hot path. Does this
//! customer, member or person hold this benefit right now? Answered from the
//! replica's [`EntitlementCache`](super::EntitlementCache) when it can be,
//! else by one query for everything the customer or person holds, which is
//! then cached.
//!
//! Three questions, by which parameter names the subject:
//!
//! - `customer_id` or `external_customer_id`: the customer as a whole. For a
//!   team, any of its members holding it counts.
//! - `external_id`: the person, an app's user. X holds Y if an individual
//!   customer with external id X does, or any live member with external id X,
//!   in any customer, does through a grant of its own. A team's own external
//!   id is its owner member's, so other members' grants do not count for it.
//!   `customer_id` or `external_customer_id` beside it keeps only grants
//!   within that customer.
//! - `external_member_id`: only members with that external id, optionally
//!   within one customer.
//!
//! A member's grant stops counting as soon as the member is deleted or the
//! seat it came through is revoked, before Polar's `benefit_grant.revoked`
//! for it arrives (those are separate jobs, seconds later).
//!
//! Unknown and deleted subjects are simply not entitled (200, `granted:
//! false`): a gate should not need to tell the two apart. Every answer lists
//! the grants it rests on (`via`).
//!
//! `wait_for=granted|revoked` (with `timeout_ms`, at most 30 s) makes it a
//! waiting read, for an app's success page: the answer comes as soon as it
//! is that, woken by the projector's change notifications (see
//! [`super::waiters`]), or at the timeout as it is then.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde::Serialize;

use super::customer_ref::CustomerRef;
use super::entitlement_cache::{
    Cached, CustomerEntitlements, Holding, Lookup, PersonEntitlements, PersonHolding, PersonLookup,
    Through,
};
use super::params::QueryParams;
use super::waiters::{Wait, Waited, wait_until};
use super::{ApiError, ApiState, json_text};

/// What the request asks about.
#[derive(Debug, Clone, Copy)]
enum Subject<'a> {
    Customer(CustomerRef<'a>),
    Person {
        external_id: &'a str,
        within: Option<CustomerRef<'a>>,
        members_only: bool,
    },
}

fn subject(params: &QueryParams) -> Result<Subject<'_>, ApiError> {
    let nonempty = |key: &str| -> Result<Option<&str>, ApiError> {
        Ok(params.one(key)?.filter(|v| !v.is_empty()))
    };
    let customer = match (nonempty("customer_id")?, nonempty("external_customer_id")?) {
        (Some(id), None) => Some(CustomerRef::Id(id)),
        (None, Some(external_id)) => Some(CustomerRef::External(external_id)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "customer_id",
                "give at most one of customer_id and external_customer_id",
            ));
        }
    };
    match (nonempty("external_id")?, nonempty("external_member_id")?) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "external_id",
            "give at most one of external_id and external_member_id",
        )),
        (Some(external_id), None) => Ok(Subject::Person {
            external_id,
            within: customer,
            members_only: false,
        }),
        (None, Some(external_id)) => Ok(Subject::Person {
            external_id,
            within: customer,
            members_only: true,
        }),
        (None, None) => customer.map(Subject::Customer).ok_or_else(|| {
            ApiError::invalid(
                "customer_id",
                "give one of customer_id, external_customer_id, external_id and external_member_id",
            )
        }),
    }
}

pub async fn check(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let benefit_id = benefit_id(&params)?;
    let subject = subject(&params)?;
    let Some(wait) = Wait::parse(&params, &[("granted", true), ("revoked", false)])? else {
        let answer = evaluate(&state, benefit_id, subject).await?;
        return Ok(json_text(answer.body));
    };
    wait_until(&state, wait, subject.keys(), || async {
        let answer = evaluate(&state, benefit_id, subject).await?;
        Ok(Waited {
            done: answer.granted == wait.granted,
            response: json_text(answer.body),
            keys: answer.keys,
        })
    })
    .await
}

/// The check's answer to `query` (the route's parameters, without
/// waiting) and whether it grants, exactly as the route would answer it.
/// The console's benefit check asks through this, so both give one answer.
pub async fn check_once(state: &ApiState, query: &str) -> Result<(bool, String), ApiError> {
    let params = QueryParams::parse(Some(query));
    let benefit_id = benefit_id(&params)?;
    let answer = evaluate(state, benefit_id, subject(&params)?).await?;
    Ok((answer.granted, answer.body))
}

fn benefit_id(params: &QueryParams) -> Result<&str, ApiError> {
    let benefit_id = params
        .one("benefit_id")?
        .filter(|b| !b.is_empty())
        .ok_or_else(|| ApiError::invalid("benefit_id", "is required"))?;
    if !is_uuid(benefit_id) {
        // Never "not granted" for an id that cannot be one: a typo would
        // look like a customer without access.
        return Err(ApiError::invalid(
            "benefit_id",
            "must be a UUID (Polar's ids are)",
        ));
    }
    Ok(benefit_id)
}

fn is_uuid(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok()
}

impl Subject<'_> {
    /// The change-notification keys that name this subject before anything
    /// is read (its customers are added once they are known).
    fn keys(&self) -> Vec<String> {
        match self {
            Self::Customer(customer) => vec![customer.key()],
            Self::Person { external_id, .. } => vec![CustomerRef::External(external_id).key()],
        }
    }
}

/// An answer, and the notification keys that would name a change to it.
struct Answer {
    granted: bool,
    body: String,
    keys: Vec<String>,
}

async fn evaluate(
    state: &ApiState,
    benefit_id: &str,
    subject: Subject<'_>,
) -> Result<Answer, ApiError> {
    let mut keys = subject.keys();
    let (granted, body) = match subject {
        Subject::Customer(key) => {
            let customer = customer_entitlements(state, key).await?;
            let via: Vec<&Holding> = customer
                .as_ref()
                .map(|c| c.holdings_of(benefit_id).collect())
                .unwrap_or_default();
            if let (CustomerRef::External(_), Some(c)) = (key, &customer) {
                keys.push(CustomerRef::Id(&c.customer_id).key());
            }
            let answer = CustomerAnswer {
                granted: !via.is_empty(),
                customer_id: customer.as_ref().map(|c| c.customer_id.as_str()),
                benefit_id,
                via: via.into_iter().map(Via::of).collect(),
            };
            (answer.granted, serde_json::to_string(&answer))
        }
        Subject::Person {
            external_id,
            within,
            members_only,
        } => {
            let person = person_entitlements(state, external_id).await?;
            let mut via: Vec<&Holding> = Vec::new();
            for h in &person.holdings {
                let counts = h.holding.benefit_id == benefit_id
                    && (!members_only || h.through == Through::Member)
                    && match within {
                        None => true,
                        Some(CustomerRef::Id(id)) => h.holding.customer_id == id,
                        Some(CustomerRef::External(external_id)) => {
                            h.customer_external_id.as_deref() == Some(external_id)
                        }
                    };
                // One grant can be reached both ways (an individual customer's
                // grants are its owner member's); a person holds few.
                if counts && !via.iter().any(|v| v.grant_id == h.holding.grant_id) {
                    via.push(&h.holding);
                }
            }
            let mut customers: Vec<&String> = person.customers.iter().collect();
            customers.sort();
            keys.extend(customers.into_iter().map(|c| CustomerRef::Id(c).key()));
            let first = via.first();
            let answer = PersonAnswer {
                granted: !via.is_empty(),
                external_id,
                customer_id: first.map(|h| h.customer_id.as_str()),
                member_id: first.and_then(|h| h.member_id.as_deref()),
                benefit_id,
                via: via.iter().map(|h| Via::of(h)).collect(),
            };
            (answer.granted, serde_json::to_string(&answer))
        }
    };
    Ok(Answer {
        granted,
        body: body.map_err(anyhow::Error::from)?,
        keys,
    })
}

/// The answer about a customer. Serialised straight from borrowed fields:
/// this is the hot path, and building a `serde_json::Value` first cost a
/// map and a string per field.
#[derive(Serialize)]
struct CustomerAnswer<'a> {
    granted: bool,
    customer_id: Option<&'a str>,
    benefit_id: &'a str,
    via: Vec<Via<'a>>,
}

/// The answer about a person or member: the first grant's customer and
/// member, and all of them in `via`.
#[derive(Serialize)]
struct PersonAnswer<'a> {
    granted: bool,
    external_id: &'a str,
    customer_id: Option<&'a str>,
    member_id: Option<&'a str>,
    benefit_id: &'a str,
    via: Vec<Via<'a>>,
}

/// One grant an answer rests on.
#[derive(Serialize)]
struct Via<'a> {
    customer_id: &'a str,
    member_id: Option<&'a str>,
    grant_id: &'a str,
}

impl<'a> Via<'a> {
    fn of(holding: &'a Holding) -> Self {
        Self {
            customer_id: &holding.customer_id,
            member_id: holding.member_id.as_deref(),
            grant_id: &holding.grant_id,
        }
    }
}

async fn customer_entitlements(state: &ApiState, key: CustomerRef<'_>) -> Result<Cached, ApiError> {
    let cached = match key {
        CustomerRef::Id(id) => state.cache.by_id(id),
        CustomerRef::External(external_id) => state.cache.by_external_id(external_id),
    };
    match cached {
        Lookup::Hit(customer) => {
            state.metrics.cache_hits.inc();
            Ok(customer)
        }
        Lookup::Miss { epoch } => {
            state.metrics.cache_misses.inc();
            let customer = load_customer(state, key).await?;
            let (by_external, by_id) = match key {
                CustomerRef::Id(id) => (None, Some(id)),
                CustomerRef::External(external_id) => (Some(external_id), None),
            };
            state
                .cache
                .fill(epoch, by_external, by_id, customer.clone());
            Ok(customer)
        }
    }
}

async fn person_entitlements(
    state: &ApiState,
    external_id: &str,
) -> Result<Arc<PersonEntitlements>, ApiError> {
    match state.cache.by_person(external_id) {
        PersonLookup::Hit(person) => {
            state.metrics.cache_hits.inc();
            Ok(person)
        }
        PersonLookup::Miss { epoch } => {
            state.metrics.cache_misses.inc();
            let person = Arc::new(load_person(state, external_id).await?);
            state.cache.fill_person(epoch, external_id, person.clone());
            Ok(person)
        }
    }
}

/// A customer and one of its effective grants (none: a customer without any).
#[derive(sqlx::FromRow)]
struct GrantRow {
    customer_id: String,
    benefit_id: Option<String>,
    grant_id: Option<String>,
    member_id: Option<String>,
}

impl GrantRow {
    fn holding(self) -> Option<Holding> {
        Some(Holding {
            benefit_id: self.benefit_id?,
            grant_id: self.grant_id?,
            customer_id: self.customer_id,
            member_id: self.member_id,
        })
    }
}

/// A customer a person belongs to, how, and one grant it holds there.
#[derive(sqlx::FromRow)]
struct PersonGrantRow {
    #[sqlx(flatten)]
    grant: GrantRow,
    customer_external_id: Option<String>,
    as_member: bool,
}

/// Every grant a live customer holds, in one query.
async fn load_customer(state: &ApiState, key: CustomerRef<'_>) -> Result<Cached, ApiError> {
    let (condition, value) = key.condition();
    let rows: Vec<GrantRow> = sqlx::query_as(&format!(
        "with customer as (
                 select c.id from projection.customers c
                 where {condition} and c.deleted_at is null order by c.id limit 1)
             select c.id as customer_id, e.benefit_id, e.grant_id, e.member_id
             from customer c
             left join projection.effective_grants e on e.customer_id = c.id
             order by e.benefit_id, e.grant_id"
    ))
    .bind(value)
    .fetch_all(&state.pool)
    .await?;
    let Some(customer_id) = rows.first().map(|r| r.customer_id.clone()) else {
        return Ok(None);
    };
    let holdings = rows.into_iter().filter_map(GrantRow::holding).collect();
    Ok(Some(Arc::new(CustomerEntitlements {
        customer_id,
        holdings,
    })))
}

/// Everything one external id holds as a person, in one query: through
/// individual customers with that external id, and through live members
/// with it (whose customer is not deleted), each member only its own grants
/// and none whose seat was revoked after the grant was last seen granted.
async fn load_person(state: &ApiState, external_id: &str) -> Result<PersonEntitlements, ApiError> {
    let rows: Vec<PersonGrantRow> = sqlx::query_as(
        "with people as (
             select c.id as customer_id, c.external_id as customer_external_id,
                    null::text as member_id
             from projection.customers c
             where c.external_id = $1 and c.deleted_at is null
               and c.type is distinct from 'team'
           union all
             select m.customer_id, c.external_id, m.id
             from projection.members m
             left join projection.customers c on c.id = m.customer_id
             where m.external_id = $1 and m.deleted_at is null and c.deleted_at is null
         )
         select p.customer_id, p.customer_external_id, p.member_id is not null as as_member,
                e.benefit_id, e.grant_id, e.member_id
         from people p
         left join lateral (
             select e.benefit_id, e.grant_id, e.member_id
             from projection.effective_grants e
             where e.customer_id = p.customer_id
               and (p.member_id is null or (
                    e.member_id = p.member_id
                    and not exists (
                        select 1 from projection.seat_holders h
                        join projection.customer_seats s on s.id = h.id
                        where h.member_id = e.member_id
                          and s.subscription_id = e.subscription_id
                          and s.status = 'revoked' and s.revoked_at >= e.v_at)))
         ) e on true
         order by e.benefit_id, e.grant_id, p.customer_id",
    )
    .bind(external_id)
    .fetch_all(&state.pool)
    .await?;
    let mut customers = BTreeSet::new();
    let mut holdings = Vec::new();
    for row in rows {
        customers.insert(row.grant.customer_id.clone());
        let Some(holding) = row.grant.holding() else {
            continue;
        };
        holdings.push(PersonHolding {
            holding,
            through: if row.as_member {
                Through::Member
            } else {
                Through::Customer
            },
            customer_external_id: row.customer_external_id,
        });
    }
    Ok(PersonEntitlements {
        customers: customers.into_iter().collect(),
        holdings,
    })
}
