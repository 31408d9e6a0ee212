//! One page of a Polar list (`{items, pagination}`), as every list route
//! builds it: filters and sort keys in SQL over the table's query columns,
//! the page's objects served as Polar serves them ([`Served`]).
//!
//! Polar's ORDER BY puts NULLs last ascending and first descending (Postgres's
//! own defaults, kept here), and its rows with equal sort keys come in no set
//! order; hookstream breaks such ties by creation, then id, so paging is
//! stable. Text sort keys compare by code point (`collate "C"`), whatever
//! the database's collation.

use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::projection::families::Table;

use super::polar_query::{Criterion, Page, PolarQuery};
use super::served::{Served, Stored};
use super::{ApiError, json_text};

/// A value bound to a placeholder of a list's SQL.
#[derive(Debug, Clone)]
pub enum Bind {
    Texts(Vec<String>),
    Text(String),
    Bool(bool),
    Time(DateTime<Utc>),
}

/// A list being built: its table, filters and order.
#[derive(Debug)]
pub struct Listing {
    table: Table,
    alias: &'static str,
    conditions: Vec<String>,
    binds: Vec<Bind>,
    order: Vec<String>,
}

impl Listing {
    /// The objects of `projection.<table>`, called `alias` in the SQL.
    pub fn of(table: Table, alias: &'static str) -> Self {
        Self {
            table,
            alias,
            conditions: Vec::new(),
            binds: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Binds a value; returns its placeholder (`$3`).
    pub fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    /// Keeps only the rows `condition` holds for.
    pub fn filter(&mut self, condition: impl Into<String>) {
        self.conditions.push(condition.into());
    }

    /// Keeps the rows whose `expression` is one of `values`, if given.
    pub fn any_of(&mut self, expression: &str, values: Option<Vec<String>>) {
        if let Some(values) = values {
            let p = self.bind(Bind::Texts(values));
            self.filter(format!("{expression} = any({p})"));
        }
    }

    /// Polar's metadata filter on the jsonb `metadata`: for every key
    /// named, its value's text is one of the values given.
    pub fn metadata(&mut self, metadata: &str, keys: Vec<(String, Vec<String>)>) {
        for (key, values) in keys {
            let k = self.bind(Bind::Text(key));
            let v = self.bind(Bind::Texts(values));
            self.filter(format!("({metadata}) ->> {k} = any({v})"));
        }
    }

    /// Orders by each criterion's expression (`key` maps a property to it).
    pub fn sort(&mut self, criteria: &[Criterion<'_>], key: impl Fn(&str) -> String) {
        for criterion in criteria {
            let direction = if criterion.descending { "desc" } else { "asc" };
            self.order
                .push(format!("{} {direction}", key(criterion.property)));
        }
    }

    /// One page of the list, served in `served`'s version.
    pub async fn page(self, served: Served<'_>, page: Page) -> Result<Response, ApiError> {
        let Self {
            table,
            alias: a,
            conditions,
            binds,
            mut order,
        } = self;
        let name = table.name();
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("where {}", conditions.join(" and "))
        };
        let count_sql = format!("select count(*) from projection.{name} {a} {filter}");
        // Only the values the filter names: a statement is prepared (and
        // cached) with as many parameters as it is given, so the same text
        // must always be given as many.
        let counted = &binds[..highest_placeholder(&filter).min(binds.len())];
        let total: i64 = bind_all(sqlx::query_scalar(&count_sql), counted)
            .fetch_one(served.pool)
            .await?;
        order.push(format!("{a}.created_at asc"));
        order.push(format!("{a}.id asc"));
        let (limit, offset) = (binds.len() + 1, binds.len() + 2);
        let page_sql = format!(
            "select {a}.id, {a}.v_at, {a}.snapshot::text as snapshot
             from projection.{name} {a} {filter}
             order by {order}
             limit ${limit} offset ${offset}",
            order = order.join(", "),
        );
        let rows: Vec<Stored> = bind_all(sqlx::query_as(&page_sql), &binds)
            .bind(page.limit)
            .bind(page.offset())
            .fetch_all(served.pool)
            .await?;
        let items = served.items(table, rows).await?;
        json_page(items, page, total)
    }
}

/// The highest `$n` in `sql`.
fn highest_placeholder(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Polar's list answer: the page's items and the pagination.
pub fn json_page(items: Vec<Box<RawValue>>, page: Page, total: i64) -> Result<Response, ApiError> {
    #[derive(serde::Serialize)]
    struct Answer {
        items: Vec<Box<RawValue>>,
        pagination: Value,
    }
    let answer = Answer {
        items,
        pagination: page.pagination(total),
    };
    serde_json::to_string(&answer)
        .map(json_text)
        .map_err(|e| ApiError::Internal(e.into()))
}

/// A served object as the answer, or Polar's 404.
pub fn one_or_not_found(object: Option<Box<RawValue>>) -> Result<Response, ApiError> {
    object
        .map(|o| json_text(o.get().to_owned()))
        .ok_or(ApiError::NotFound)
}

trait Bindable<'q>: Sized {
    fn bind_value(self, value: &'q Bind) -> Self;
}

macro_rules! bindable {
    ($query:ty) => {
        impl<'q, O> Bindable<'q> for $query {
            fn bind_value(self, value: &'q Bind) -> Self {
                match value {
                    Bind::Texts(v) => self.bind(v),
                    Bind::Text(v) => self.bind(v),
                    Bind::Bool(v) => self.bind(v),
                    Bind::Time(v) => self.bind(v),
                }
            }
        }
    };
}

bindable!(sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>);
bindable!(sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>);

fn bind_all<'q, Q: Bindable<'q>>(query: Q, binds: &'q [Bind]) -> Q {
    binds.iter().fold(query, Bindable::bind_value)
}

/// Polar's customer filters: `customer_id` (ids) on `column`, and
/// `external_customer_id` through the customer's own row (Polar clears a
/// deleted customer's external id, so it matches nothing).
pub fn customer_filters(listing: &mut Listing, query: &mut PolarQuery, column: &str) {
    listing.any_of(column, query.uuids("customer_id"));
    if let Some(external_ids) = query.texts("external_customer_id") {
        let p = listing.bind(Bind::Texts(external_ids));
        listing.filter(format!(
            "{column} in (select c.id from projection.customers c where c.external_id = any({p}))"
        ));
    }
}

/// Whether `organization_id` (if given) names this organization: the one
/// the projections are of, as its objects say. Asking for another answers
/// an empty list, as Polar does.
pub async fn organization_matches(
    pool: &sqlx::PgPool,
    query: &mut PolarQuery,
) -> Result<bool, ApiError> {
    let Some(asked) = query.uuids("organization_id") else {
        return Ok(true);
    };
    let ours: Option<String> = sqlx::query_scalar(
        "select coalesce(
             (select id from projection.organizations order by id limit 1),
             (select snapshot ->> 'organization_id' from projection.products
              where snapshot ? 'organization_id' limit 1),
             (select snapshot ->> 'organization_id' from projection.customers
              where snapshot ? 'organization_id' limit 1))",
    )
    .fetch_one(pool)
    .await?;
    Ok(ours.is_some_and(|ours| asked.contains(&ours)))
}
