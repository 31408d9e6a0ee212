//! What Polar's API serves for a stored object: the object's newest snapshot,
//! with what Polar joins in at read time.
//!
//! - Objects nested in it (a subscription's `customer`, `product` and
//!   `discount`, a grant's `customer`, `benefit` and `member`, an order's
//!   `subscription`...) are Polar's current rows, not the copies taken when
//!   the object last changed: each of their fields is the current row's,
//!   unless the copy is newer than the row (lists stay the copy's).
//! - A discount's `redemptions_count` is counted from the checkouts that
//!   redeemed it: Polar counts redemptions with a database trigger, and no
//!   webhook reports the count.
//! - An individual customer's owner member carries the customer's email:
//!   Polar copies each new email to it without a `member.updated`, so the
//!   member is its newest snapshot followed by every later customer
//!   version that changed the email.
//! - A benefit grant is a `BenefitGrant`: the webhook's
//!   `previous_properties` is not part of it.
//! - Version 2027-01 shapes seat-based prices differently ([`ApiVersion`]).

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sqlx::PgPool;

use crate::projection::families::Table;

use super::ApiError;
use super::version::ApiVersion;

/// A stored object: its id, the time of its version, and its snapshot.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub id: String,
    pub v_at: DateTime<Utc>,
    pub snapshot: String,
}

/// An object as served, with the time of its version (which may be a later
/// customer's, for an owner member that took its email).
#[derive(Debug, Clone)]
struct Current {
    at: DateTime<Utc>,
    /// Null when the stored JSON is beyond what serde_json reads (a number
    /// past f64, which Postgres's numeric took): served as stored.
    object: Value,
    /// The stored JSON, kept only when `object` could not be read.
    unread: Option<String>,
}

/// One version of a customer, as its own event carried it.
#[derive(Debug, sqlx::FromRow)]
struct CustomerVersion {
    customer_id: String,
    v_at: DateTime<Utc>,
    email: Option<String>,
    #[sqlx(rename = "type")]
    kind: Option<String>,
    modified_at: Option<DateTime<Utc>>,
}

/// The keys under which Polar nests other objects, and whose rows they are.
const NESTED: [(&str, Table); 6] = [
    ("customer", Table::Customers),
    ("product", Table::Products),
    ("benefit", Table::Benefits),
    ("subscription", Table::Subscriptions),
    ("member", Table::Members),
    ("discount", Table::Discounts),
];

/// Serves objects of one table, in the API version asked for.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub pool: &'a PgPool,
    pub version: ApiVersion,
}

impl Served<'_> {
    /// The served JSON of `rows` (objects of `table`), in their order.
    pub async fn items(
        &self,
        table: Table,
        rows: Vec<Stored>,
    ) -> Result<Vec<Box<RawValue>>, ApiError> {
        let mut current = self.current_of(table, rows).await?;
        let mut nested_ids: HashMap<Table, BTreeSet<String>> = HashMap::new();
        for item in &current {
            for (key, nested_table) in NESTED {
                if let Some(id) = item
                    .object
                    .get(key)
                    .and_then(|n| n.get("id"))
                    .and_then(Value::as_str)
                {
                    nested_ids
                        .entry(nested_table)
                        .or_default()
                        .insert(id.to_owned());
                }
            }
        }
        let mut rows_of: HashMap<Table, HashMap<String, Current>> = HashMap::new();
        for (nested_table, ids) in nested_ids {
            let ids: Vec<String> = ids.into_iter().collect();
            let rows = self.stored(nested_table, &ids).await?;
            let rows = self.current_of(nested_table, rows).await?;
            rows_of.insert(
                nested_table,
                rows.into_iter()
                    .filter_map(|c| Some((c.object.get("id")?.as_str()?.to_owned(), c)))
                    .collect(),
            );
        }
        current
            .iter_mut()
            .map(|item| {
                if let Some(stored) = item.unread.take() {
                    return RawValue::from_string(stored).map_err(internal);
                }
                let mut object = std::mem::take(&mut item.object);
                refresh(&mut object, &rows_of);
                if table == Table::BenefitGrants
                    && let Some(map) = object.as_object_mut()
                {
                    map.remove("previous_properties");
                }
                self.version.shape(&mut object);
                serde_json::value::to_raw_value(&object).map_err(internal)
            })
            .collect()
    }

    /// The served JSON of one object of `table`, if it is stored.
    pub async fn one(
        &self,
        table: Table,
        row: Option<Stored>,
    ) -> Result<Option<Box<RawValue>>, ApiError> {
        match row {
            None => Ok(None),
            Some(row) => Ok(self.items(table, vec![row]).await?.pop()),
        }
    }

    /// The stored rows of `table` with these ids.
    async fn stored(&self, table: Table, ids: &[String]) -> Result<Vec<Stored>, ApiError> {
        Ok(sqlx::query_as(&format!(
            "select id, v_at, snapshot::text as snapshot from projection.{} where id = any($1)",
            table.name()
        ))
        .bind(ids)
        .fetch_all(self.pool)
        .await?)
    }

    /// Rows as Polar holds them now: parsed, with the fields no webhook
    /// reports put right (an owner member's email, a discount's count).
    async fn current_of(&self, table: Table, rows: Vec<Stored>) -> Result<Vec<Current>, ApiError> {
        let mut current: Vec<Current> = rows
            .into_iter()
            .map(|row| match serde_json::from_str(&row.snapshot) {
                Ok(object) => Current {
                    at: row.v_at,
                    object,
                    unread: None,
                },
                Err(_) => Current {
                    at: row.v_at,
                    object: Value::Null,
                    unread: Some(row.snapshot),
                },
            })
            .collect();
        match table {
            Table::Members => self.sync_owner_emails(&mut current).await?,
            Table::Discounts => self.count_redemptions(&mut current).await?,
            _ => {}
        }
        Ok(current)
    }

    /// Each owner member of an individual customer, after the customer's
    /// versions newer than the member that changed its email.
    async fn sync_owner_emails(&self, members: &mut [Current]) -> Result<(), ApiError> {
        let customers: Vec<String> = members
            .iter()
            .filter(|m| m.object.get("role").and_then(Value::as_str) == Some("owner"))
            .filter_map(|m| m.object.get("customer_id")?.as_str().map(str::to_owned))
            .collect();
        if customers.is_empty() {
            return Ok(());
        }
        let versions: Vec<CustomerVersion> = sqlx::query_as(
            "select customer_id, v_at, email, type, modified_at from projection.customer_versions
                 where customer_id = any($1) order by customer_id, v_at, v_seq",
        )
        .bind(&customers)
        .fetch_all(self.pool)
        .await?;
        for member in members.iter_mut() {
            if member.object.get("role").and_then(Value::as_str) != Some("owner") {
                continue;
            }
            let Some(customer) = member
                .object
                .get("customer_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let mut email = member.object.get("email").cloned().unwrap_or(Value::Null);
            let mut patched = None;
            let mut at = member.at;
            for version in versions.iter().filter(|v| v.customer_id == customer) {
                let customer_email = version.email.clone().map_or(Value::Null, Value::String);
                if version.kind.as_deref() == Some("individual")
                    && version.v_at > at
                    && customer_email != email
                {
                    email = customer_email;
                    at = version.v_at;
                    patched = Some(version.modified_at);
                }
            }
            if let (Some(modified_at), Some(map)) = (patched, member.object.as_object_mut()) {
                map.insert("email".to_owned(), email);
                map.insert(
                    "modified_at".to_owned(),
                    modified_at.map_or(Value::Null, |t| Value::String(polar_time(t))),
                );
                member.at = at;
            }
        }
        Ok(())
    }

    /// Each discount's `redemptions_count`, counted from the checkouts that
    /// redeemed it (confirmed or succeeded with it).
    async fn count_redemptions(&self, discounts: &mut [Current]) -> Result<(), ApiError> {
        let ids: Vec<String> = discounts
            .iter()
            .filter_map(|d| d.object.get("id")?.as_str().map(str::to_owned))
            .collect();
        let counts: HashMap<String, i64> = sqlx::query_as(
            "select discount_id, count(*) from projection.checkouts
             where discount_id = any($1) and status in ('confirmed', 'succeeded')
             group by discount_id",
        )
        .bind(&ids)
        .fetch_all(self.pool)
        .await?
        .into_iter()
        .collect();
        for discount in discounts {
            let id = discount
                .object
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let count = counts.get(id).copied().unwrap_or(0);
            if let Some(map) = discount.object.as_object_mut() {
                map.insert("redemptions_count".to_owned(), Value::from(count));
            }
        }
        Ok(())
    }
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::Internal(anyhow::anyhow!("serving a stored object: {e}"))
}

/// Replaces the fields of each object nested in `object` with its current
/// row's, unless the nested copy is newer than the row.
fn refresh(object: &mut Value, rows_of: &HashMap<Table, HashMap<String, Current>>) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    for (key, table) in NESTED {
        let Some(Value::Object(nested)) = map.get_mut(key) else {
            continue;
        };
        let Some(current) = nested
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| rows_of.get(&table)?.get(id))
        else {
            continue;
        };
        let nested_at = version_of(nested);
        if nested_at.is_some_and(|at| current.at < at) {
            continue;
        }
        let Some(latest) = current.object.as_object() else {
            continue;
        };
        for (k, v) in nested.iter_mut() {
            if let Some(now) = latest.get(k)
                && !v.is_array()
                && !now.is_array()
            {
                *v = now.clone();
            }
        }
    }
}

/// An object's own version time: `modified_at`, else `created_at`.
fn version_of(object: &Map<String, Value>) -> Option<DateTime<Utc>> {
    let text = object
        .get("modified_at")
        .and_then(Value::as_str)
        .or_else(|| object.get("created_at").and_then(Value::as_str))?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A time as Polar writes it: microseconds, `Z`, no fraction when zero.
pub fn polar_time(time: DateTime<Utc>) -> String {
    if time.timestamp_subsec_micros() == 0 {
        time.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_objects_take_their_rows_fields_unless_newer() {
        let row = |at: &str, object: Value| Current {
            at: at.parse().unwrap(),
            object,
            unread: None,
        };
        let mut rows_of = HashMap::new();
        rows_of.insert(
            Table::Customers,
            HashMap::from([(
                "c1".to_owned(),
                row(
                    "2026-01-03T00:00:00Z",
                    json!({"id": "c1", "email": "new@x", "modified_at": "2026-01-03T00:00:00Z", "tags": [1]}),
                ),
            )]),
        );
        let mut item = json!({
            "id": "s1",
            "customer": {"id": "c1", "email": "old@x", "modified_at": "2026-01-02T00:00:00Z", "tags": [0]},
            "product": {"id": "p9", "name": "kept"},
        });
        refresh(&mut item, &rows_of);
        assert_eq!(item["customer"]["email"], "new@x");
        assert_eq!(
            item["customer"]["tags"],
            json!([0]),
            "lists stay the copy's"
        );
        assert_eq!(item["product"]["name"], "kept", "no row: as it is");
        let mut newer = json!({"customer": {"id": "c1", "email": "newest@x", "modified_at": "2026-01-04T00:00:00Z"}});
        refresh(&mut newer, &rows_of);
        assert_eq!(newer["customer"]["email"], "newest@x");
    }

    #[test]
    fn times_are_written_as_polar_writes_them() {
        let t: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().unwrap();
        assert_eq!(polar_time(t), "2026-01-02T03:04:05Z");
        let t: DateTime<Utc> = "2026-01-02T03:04:05.000120Z".parse().unwrap();
        assert_eq!(polar_time(t), "2026-01-02T03:04:05.000120Z");
    }
}
