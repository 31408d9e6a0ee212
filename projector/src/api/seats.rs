//! `GET /v1/customer-seats?subscription_id=` (or `order_id=`): the seats of
//! one seat-based subscription or order as Polar's `SeatsList` — every seat,
//! and how many of the seats bought are still free (bought less pending and
//! claimed). The ids are single values (the last of repeated keys), and
//! `subscription_id` wins over `order_id`.

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use serde_json::json;

use crate::projection::families::Table;

use super::polar_query::PolarQuery;
use super::served::{Served, Stored};
use super::version::ApiVersion;
use super::{ApiError, ApiState, json_text};

pub async fn list(
    State(state): State<ApiState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut query = PolarQuery::parse(raw.as_deref());
    let subscription = query.uuid("subscription_id");
    let order = query.uuid("order_id");
    query.finish()?;
    let (container, column, id, what) = match (subscription, order) {
        (Some(id), _) => (Table::Subscriptions, "subscription_id", id, "Subscription"),
        (None, Some(id)) => (Table::Orders, "order_id", id, "Order"),
        (None, None) => {
            return Ok((
                StatusCode::BAD_REQUEST,
                axum::Json(json!({
                    "error": "BadRequest",
                    "detail": "Either subscription_id or order_id must be provided",
                })),
            )
                .into_response());
        }
    };
    let seats_bought: Option<Option<i64>> = sqlx::query_scalar(&format!(
        "select (snapshot::jsonb ->> 'seats')::bigint from projection.{} where id = $1",
        container.name()
    ))
    .bind(&id)
    .fetch_optional(&state.pool)
    .await?;
    let Some(total) = seats_bought else {
        return Ok((
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "ResourceNotFound", "detail": format!("{what} not found")})),
        )
            .into_response());
    };
    let rows: Vec<Stored> = sqlx::query_as(&format!(
        "select id, v_at, snapshot::text as snapshot from projection.customer_seats
         where {column} = $1 order by created_at, id"
    ))
    .bind(&id)
    .fetch_all(&state.pool)
    .await?;
    let seats = Served {
        pool: &state.pool,
        version,
    }
    .items(Table::CustomerSeats, rows)
    .await?;
    #[derive(serde::Deserialize)]
    struct Status<'a> {
        #[serde(borrow, default)]
        status: Option<std::borrow::Cow<'a, str>>,
    }
    let taken = seats
        .iter()
        .filter(|s| {
            serde_json::from_str::<Status<'_>>(s.get())
                .ok()
                .and_then(|s| s.status)
                .is_some_and(|status| status == "pending" || status == "claimed")
        })
        .count() as i64;
    let available = total.map_or(0, |total| (total - taken).max(0));
    #[derive(serde::Serialize)]
    struct SeatsList {
        seats: Vec<Box<serde_json::value::RawValue>>,
        available_seats: i64,
        total_seats: i64,
    }
    let list = SeatsList {
        seats,
        available_seats: available,
        total_seats: total.unwrap_or(0),
    };
    serde_json::to_string(&list)
        .map(json_text)
        .map_err(|e| ApiError::Internal(e.into()))
}
