//! `GET /v1/customers/{id}/state` and `GET /v1/customers/external/{external_id}/state`:
//! Polar's CustomerState, the customer with its active subscriptions, granted
//! benefits and active meters. Unknown and deleted customers are 404.
//! `wait_for=active_subscription` makes it a waiting read (see
//! [`super::waiters`]).

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse as _, Response};

use super::customer_ref::CustomerRef;
use super::listing::{Bind, Listing, one_or_not_found, organization_matches};
use super::params::QueryParams;
use super::polar_query::PolarQuery;
use super::served::{Served, Stored};
use super::version::ApiVersion;
use super::waiters::{Wait, Waited, wait_until};
use super::{ApiError, ApiState, json_text};
use crate::projection::families::Table;

/// The customer snapshot with the three lists added, as one JSON text. The
/// lists come from the materialised effective rows, ordered by creation.
const STATE_COLUMNS: &str = "
    (c.snapshot || jsonb_build_object(
        'active_subscriptions', coalesce(
            (select jsonb_agg(e.item order by e.created_at, e.subscription_id)
             from projection.effective_subscriptions e where e.customer_id = c.id), '[]'::jsonb),
        'granted_benefits', coalesce(
            (select jsonb_agg(
                        -- the benefit as it is now, if we have it
                        e.item || jsonb_build_object(
                            'benefit_type', coalesce(b.snapshot -> 'type', e.item -> 'benefit_type'),
                            'benefit_metadata', coalesce(b.snapshot -> 'metadata', e.item -> 'benefit_metadata'))
                        order by e.created_at, e.grant_id)
             from projection.effective_grants e
             left join projection.benefits b on b.id = e.benefit_id
             where e.customer_id = c.id), '[]'::jsonb),
        'active_meters', coalesce(
            (select s.snapshot -> 'active_meters'
             from projection.customer_states s where s.customer_id = c.id), '[]'::jsonb)
    ))::text";

pub async fn state_by_id(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&state, CustomerRef::Id(&id), query.as_deref()).await
}

pub async fn state_by_external_id(
    State(state): State<ApiState>,
    Path(external_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(
        &state,
        CustomerRef::External(&external_id),
        query.as_deref(),
    )
    .await
}

/// The state, or with `wait_for=active_subscription&timeout_ms=` (for an
/// app's success page) the state as soon as it lists an active
/// subscription, or at the timeout as it is then (404 if the customer does
/// not exist yet).
async fn answer(
    state: &ApiState,
    whose: CustomerRef<'_>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query);
    let Some(wait) = Wait::parse(&params, &[("active_subscription", true)])? else {
        return read(state, whose)
            .await?
            .map(|(_, text, _)| json_text(text))
            .ok_or(ApiError::NotFound);
    };
    let own_key = whose.key();
    wait_until(state, wait, vec![own_key.clone()], || async {
        let found = read(state, whose).await?;
        let mut keys = vec![own_key.clone()];
        Ok(match found {
            Some((id, text, active)) => {
                if matches!(whose, CustomerRef::External(_)) {
                    keys.push(CustomerRef::Id(&id).key());
                }
                Waited {
                    done: active,
                    response: json_text(text),
                    keys,
                }
            }
            None => Waited {
                done: false,
                response: ApiError::NotFound.into_response(),
                keys,
            },
        })
    })
    .await
}

/// The live customer's id, its state, and whether the state lists an
/// active subscription. The console shows the state through this too.
pub(crate) async fn read(
    state: &ApiState,
    whose: CustomerRef<'_>,
) -> Result<Option<(String, String, bool)>, ApiError> {
    let (filter, value) = whose.condition();
    let sql = format!(
        "select c.id, {STATE_COLUMNS},
                exists (select 1 from projection.effective_subscriptions e where e.customer_id = c.id)
         from projection.customers c
         where {filter} and c.deleted_at is null
         order by c.id limit 1"
    );
    Ok(sqlx::query_as(&sql)
        .bind(value)
        .fetch_optional(&state.pool)
        .await?)
}

/// `GET /v1/customers/`: customers that are not deleted. `email` matches
/// exactly in any case; `query` an email, name or billing name containing
/// it, or an external id starting with it, in any case; `active` a customer
/// with a trialing, active or past-due subscription.
pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let page = query.page();
    let ours = organization_matches(&state.pool, &mut query).await?;
    let mut list = Listing::of(Table::Customers, "c");
    list.filter("c.deleted_at is null");
    if let Some(email) = query.last("email") {
        let p = list.bind(Bind::Text(email));
        list.filter(format!("lower(c.email) = lower({p})"));
    }
    if let Some(text) = query.last("query") {
        let p = list.bind(Bind::Text(text.to_lowercase()));
        list.filter(format!(
            "(strpos(lower(coalesce(c.email, '')), {p}) > 0
              or strpos(lower(coalesce(c.name, '')), {p}) > 0
              or strpos(lower(coalesce(c.billing_name, '')), {p}) > 0
              or (c.external_id is not null and starts_with(lower(c.external_id), {p})))"
        ));
    }
    if let Some(active) = query.boolean("active") {
        list.filter(format!(
            "{} exists (select 1 from projection.subscriptions s
                         where s.customer_id = c.id and s.status in ('active', 'trialing', 'past_due'))",
            if active { "" } else { "not" }
        ));
    }
    list.metadata("c.snapshot -> 'metadata'", query.metadata());
    let sorting = query.sorting(&["created_at", "email", "name"], &["-created_at"]);
    list.sort(&sorting, |property| match property {
        "email" => "c.email collate \"C\"".to_owned(),
        "name" => "c.name collate \"C\"".to_owned(),
        _ => "c.created_at".to_owned(),
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

/// `GET /v1/customers/{id}`: 404 for a deleted or unknown customer.
pub async fn get_one(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::default();
    let id = query.path_uuid(&id, "id", false);
    query.finish()?;
    let row: Option<Stored> = sqlx::query_as(
        "select id, v_at, snapshot::text as snapshot from projection.customers
         where id = $1 and deleted_at is null",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    one_or_not_found(
        Served {
            pool: &state.pool,
            version,
        }
        .one(Table::Customers, row)
        .await?,
    )
}

/// `GET /v1/customers/external/{external_id}`: the live customer with that
/// external id.
pub async fn get_external(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    Path(external_id): Path<String>,
) -> Result<Response, ApiError> {
    let row: Option<Stored> = sqlx::query_as(
        "select id, v_at, snapshot::text as snapshot from projection.customers
         where external_id = $1 and deleted_at is null order by id limit 1",
    )
    .bind(external_id)
    .fetch_optional(&state.pool)
    .await?;
    one_or_not_found(
        Served {
            pool: &state.pool,
            version,
        }
        .one(Table::Customers, row)
        .await?,
    )
}
