//! `GET /v1/orders/` and `/v1/orders/{id}`: every order, with Polar's
//! filters and sort keys. `product_billing_type` is the order's (current)
//! product's: `recurring` or `one_time`; `amount` sorts by the net amount,
//! as Polar does; `status` by Polar's rank.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;

use crate::projection::families::Table;

use super::listing::{Bind, Listing, customer_filters, one_or_not_found, organization_matches};
use super::polar_query::PolarQuery;
use super::served::{Served, Stored};
use super::version::ApiVersion;
use super::{ApiError, ApiState};

const STATUSES: &[&str] = &[
    "draft",
    "pending",
    "paid",
    "refunded",
    "partially_refunded",
    "void",
];

const SORT: &[&str] = &[
    "created_at",
    "status",
    "invoice_number",
    "amount",
    "net_amount",
    "customer",
    "product",
    "discount",
    "subscription",
];

fn sort_key(property: &str) -> String {
    match property {
        "status" => {
            "(case o.status when 'draft' then 1 when 'pending' then 2 when 'paid' then 3
                when 'partially_refunded' then 4 when 'refunded' then 5 when 'void' then 6 end)"
        }
        "invoice_number" => "o.invoice_number collate \"C\"",
        "amount" | "net_amount" => "o.net_amount",
        "customer" => {
            "(select c.email from projection.customers c where c.id = o.customer_id) collate \"C\""
        }
        "product" => {
            "(select lower(p.snapshot ->> 'name') from projection.products p where p.id = o.product_id) collate \"C\""
        }
        "discount" => {
            "(select lower(d.snapshot ->> 'name') from projection.discounts d where d.id = o.discount_id) collate \"C\""
        }
        "subscription" => "o.subscription_id collate \"C\"",
        _ => "o.created_at",
    }
    .to_owned()
}

pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Orders, "o");
    customer_filters(&mut list, &mut query, "o.customer_id");
    for (name, column) in [
        ("product_id", "o.product_id"),
        ("discount_id", "o.discount_id"),
        ("checkout_id", "o.checkout_id"),
        ("subscription_id", "o.subscription_id"),
    ] {
        list.any_of(column, query.uuids(name));
    }
    if let Some(types) = query.enums("product_billing_type", &["one_time", "recurring"]) {
        let p = list.bind(Bind::Texts(types));
        list.filter(format!(
            "exists (select 1 from projection.products p where p.id = o.product_id
                     and (case when p.snapshot -> 'is_recurring' = 'true'::jsonb
                               then 'recurring' else 'one_time' end) = any({p}))"
        ));
    }
    list.any_of("o.status", query.enums("status", STATUSES));
    for (name, op) in [("created_after", ">"), ("created_before", "<")] {
        if let Some(bound) = query.time(name, false) {
            let p = list.bind(Bind::Time(bound));
            list.filter(format!("o.created_at {op} {p}"));
        }
    }
    list.metadata("o.metadata", query.metadata());
    let sorting = query.sorting(SORT, &["-created_at"]);
    list.sort(&sorting, sort_key);
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

pub async fn get_one(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::default();
    let id = query.path_uuid(&id, "id", false);
    query.finish()?;
    let row: Option<Stored> = sqlx::query_as(
        "select id, v_at, snapshot::text as snapshot from projection.orders where id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    one_or_not_found(
        Served {
            pool: &state.pool,
            version,
        }
        .one(Table::Orders, row)
        .await?,
    )
}
