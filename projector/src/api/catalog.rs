//! The catalog's reads: `GET /v1/products/`, `/v1/benefits/`,
//! `/v1/discounts/`, `/v1/meters/` and each one by id.
//!
//! These tables hold tens of rows, not thousands, so filters and sort keys
//! read the jsonb snapshots. A product's `price_amount_type` and
//! `price_amount` are its first price that is not archived (custom before
//! fixed; a custom price's amount is its minimum, or -1); names sort in any
//! case (Polar's columns are CITEXT); `query` is a LIKE pattern, so `%`
//! and `_` in it are wildcards, as in Polar.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::projection::families::Table;

use super::listing::{Bind, Listing, one_or_not_found, organization_matches};
use super::polar_query::PolarQuery;
use super::served::{Served, Stored};
use super::version::ApiVersion;
use super::{ApiError, ApiState};

const BENEFIT_TYPES: &[&str] = &[
    "custom",
    "discord",
    "github_repository",
    "downloadables",
    "license_keys",
    "meter_credit",
    "feature_flag",
    "slack_shared_channel",
];

/// A jsonb boolean field read as Python's `bool()` reads it.
fn flag(object: &str, field: &str) -> String {
    format!("coalesce({object} -> '{field}' = 'true'::jsonb, false)")
}

/// A product's first price that is not archived.
const FIRST_PRICE: &str = "(select pr from jsonb_array_elements(
        case jsonb_typeof(p.snapshot -> 'prices') when 'array' then p.snapshot -> 'prices' else '[]' end
    ) with ordinality as x(pr, n)
    where not coalesce(pr -> 'is_archived' = 'true'::jsonb, false) order by n limit 1)";

pub async fn list_products(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Products, "p");
    list.any_of("p.id", query.uuids("id"));
    if let Some(text) = query.last("query") {
        let p = list.bind(Bind::Text(format!("%{text}%")));
        list.filter(format!("p.snapshot ->> 'name' ilike {p}"));
    }
    for name in ["is_archived", "is_recurring"] {
        if let Some(value) = query.boolean(name) {
            let p = list.bind(Bind::Bool(value));
            list.filter(format!("{} = {p}", flag("p.snapshot", name)));
        }
    }
    list.any_of(
        "p.snapshot ->> 'visibility'",
        query.enums("visibility", &["draft", "private", "public"]),
    );
    if let Some(benefits) = query.uuids("benefit_id") {
        let p = list.bind(Bind::Texts(benefits));
        list.filter(format!(
            "exists (select 1 from jsonb_array_elements(
                case jsonb_typeof(p.snapshot -> 'benefits') when 'array' then p.snapshot -> 'benefits' else '[]' end
             ) b where b ->> 'id' = any({p}))"
        ));
    }
    list.metadata("p.snapshot -> 'metadata'", query.metadata());
    let sorting = query.sorting(
        &["created_at", "name", "price_amount_type", "price_amount"],
        &["-created_at"],
    );
    list.sort(&sorting, |property| match property {
        "name" => "lower(p.snapshot ->> 'name') collate \"C\"".to_owned(),
        "price_amount_type" => format!(
            "(select case first.pr ->> 'amount_type' when 'custom' then 1 when 'fixed' then 2 end
              from (select {FIRST_PRICE} as pr) first)"
        ),
        "price_amount" => format!(
            "(select case first.pr ->> 'amount_type'
                       when 'custom' then coalesce((first.pr ->> 'minimum_amount')::numeric, -1)
                       when 'fixed' then (first.pr ->> 'price_amount')::numeric end
              from (select {FIRST_PRICE} as pr) first)"
        ),
        _ => "p.created_at".to_owned(),
    });
    query.finish()?;
    if !ours {
        list.filter("false");
    }
    list.page(
        Served {
            pool: &state.pool,
            version,
        },
        page,
    )
    .await
}

pub async fn list_benefits(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Benefits, "b");
    let ids = query.uuids("id");
    list.any_of("b.id", ids.clone());
    if let Some(excluded) = query.uuids("exclude_id") {
        let p = list.bind(Bind::Texts(excluded));
        list.filter(format!("not (b.id = any({p}))"));
    }
    list.any_of("b.snapshot ->> 'type'", query.enums("type", BENEFIT_TYPES));
    if let Some(text) = query.last("query") {
        let p = list.bind(Bind::Text(format!("%{text}%")));
        list.filter(format!("b.snapshot ->> 'description' ilike {p}"));
    }
    list.metadata("b.snapshot -> 'metadata'", query.metadata());
    let sorting = query.sorting(
        &["created_at", "description", "type", "user_order"],
        &["-created_at"],
    );
    // `user_order` is the position of each id in `id` (its last one),
    // ahead of every other criterion; without ids it means nothing.
    let user_order = sorting.iter().find(|c| c.property == "user_order").copied();
    if let (Some(order), Some(ids)) = (user_order, ids.filter(|ids| !ids.is_empty())) {
        let p = list.bind(Bind::Texts(ids));
        list.sort(&[order], |_| {
            format!("(select max(u.n) from unnest({p}::text[]) with ordinality as u(id, n) where u.id = b.id)")
        });
    }
    let others: Vec<_> = sorting
        .into_iter()
        .filter(|c| c.property != "user_order")
        .collect();
    list.sort(&others, |property| match property {
        "description" => "b.snapshot ->> 'description' collate \"C\"".to_owned(),
        "type" => "b.snapshot ->> 'type' collate \"C\"".to_owned(),
        _ => "b.created_at".to_owned(),
    });
    query.finish()?;
    if !ours {
        list.filter("false");
    }
    list.page(
        Served {
            pool: &state.pool,
            version,
        },
        page,
    )
    .await
}

pub async fn list_discounts(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Discounts, "d");
    list.filter("d.deleted_at is null");
    if let Some(text) = query.last("query") {
        let p = list.bind(Bind::Text(format!("%{text}%")));
        list.filter(format!(
            "(d.snapshot ->> 'name' ilike {p} or d.snapshot ->> 'code' ilike {p})"
        ));
    }
    let sorting = query.sorting(
        &["created_at", "name", "code", "redemptions_count", "ends_at"],
        &["-created_at"],
    );
    list.sort(&sorting, |property| match property {
        "name" => "lower(d.snapshot ->> 'name') collate \"C\"".to_owned(),
        "code" => "d.snapshot ->> 'code' collate \"C\"".to_owned(),
        "redemptions_count" => "(select count(*) from projection.checkouts k
              where k.discount_id = d.id and k.status in ('confirmed', 'succeeded'))"
            .to_owned(),
        "ends_at" => "d.ends_at".to_owned(),
        _ => "d.created_at".to_owned(),
    });
    query.finish()?;
    if !ours {
        list.filter("false");
    }
    list.page(
        Served {
            pool: &state.pool,
            version,
        },
        page,
    )
    .await
}

pub async fn list_meters(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Meters, "m");
    if let Some(archived) = query.boolean("is_archived") {
        list.filter(format!(
            "(coalesce(m.snapshot -> 'archived_at', 'null'::jsonb) <> 'null'::jsonb) = {}",
            list_bool(archived)
        ));
    }
    list.metadata("m.snapshot -> 'metadata'", query.metadata());
    let sorting = query.sorting(&["created_at", "name"], &["name"]);
    list.sort(&sorting, |property| match property {
        "name" => "m.snapshot ->> 'name' collate \"C\"".to_owned(),
        _ => "m.created_at".to_owned(),
    });
    query.finish()?;
    if !ours {
        list.filter("false");
    }
    list.page(
        Served {
            pool: &state.pool,
            version,
        },
        page,
    )
    .await
}

fn list_bool(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// `GET /v1/{products,benefits,discounts,meters}/{id}`.
async fn get_catalog(
    state: &ApiState,
    version: ApiVersion,
    table: Table,
    id: &str,
    visible: &str,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::default();
    let id = query.path_uuid(id, "id", false);
    query.finish()?;
    let row: Option<Stored> = sqlx::query_as(&format!(
        "select id, v_at, snapshot::text as snapshot from projection.{} where id = $1 and {visible}",
        table.name()
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    one_or_not_found(
        Served {
            pool: &state.pool,
            version,
        }
        .one(table, row)
        .await?,
    )
}

pub async fn get_product(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get_catalog(&state, version, Table::Products, &id, "true").await
}

pub async fn get_benefit(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get_catalog(&state, version, Table::Benefits, &id, "true").await
}

pub async fn get_discount(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get_catalog(&state, version, Table::Discounts, &id, "deleted_at is null").await
}

pub async fn get_meter(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    get_catalog(&state, version, Table::Meters, &id, "true").await
}
