//! One page of a Polar list (`{items, pagination}`), shared by every list
//! route: a count and a page of snapshots, under the same filter.

use axum::response::Response;
use sqlx::{PgPool, Row as _};

use super::params::Page;
use super::{ApiError, json_text};

/// A value bound to a list filter's placeholder (`$1`, `$2`... in order).
#[derive(Debug, Clone)]
pub enum Arg {
    /// A list parameter, `None` when absent (the filter then matches all).
    Texts(Option<Vec<String>>),
    Flag(Option<bool>),
}

/// A list: `from` names the relation and its alias, `filter` is the `where`
/// clause over the [`Arg`]s, `item` the JSON of one element and `key` the
/// unique tie-break after `order`.
#[derive(Debug)]
pub struct List<'a> {
    pub from: &'a str,
    pub item: &'a str,
    pub key: &'a str,
    pub filter: &'a str,
    pub order: String,
    pub args: Vec<Arg>,
}

impl List<'_> {
    pub async fn page(&self, pool: &PgPool, page: Page) -> Result<Response, ApiError> {
        let List {
            from,
            item,
            key,
            filter,
            order,
            args,
        } = self;
        let count_sql = format!("select count(*) from {from} {filter}");
        let total: i64 = bind(sqlx::query(&count_sql), args)
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        let (limit, offset) = (args.len() + 1, args.len() + 2);
        let page_sql = format!(
            "select coalesce(jsonb_agg(item order by position), '[]'::jsonb)::text from (
                 select {item} as item, row_number() over (order by {order}, {key}) as position
                 from {from} {filter}
                 order by {order}, {key}
                 limit ${limit} offset ${offset}
             ) page"
        );
        let items: String = bind(sqlx::query(&page_sql), args)
            .bind(page.limit)
            .bind(page.offset())
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        Ok(json_text(format!(
            r#"{{"items":{items},"pagination":{}}}"#,
            page.pagination_json(total)
        )))
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind<'q>(mut query: Query<'q>, args: &'q [Arg]) -> Query<'q> {
    for arg in args {
        query = match arg {
            Arg::Texts(values) => query.bind(values),
            Arg::Flag(flag) => query.bind(flag),
        };
    }
    query
}
