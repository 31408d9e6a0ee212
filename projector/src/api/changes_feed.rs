//! `GET /v1/changes?after=<cursor>&limit=`: the change feed (see
//! [`crate::feed`]), oldest first: `{items, next_cursor}`. A reader stores
//! `next_cursor` and asks after it next time; a cursor older than the
//! feed's retention answers 410 (`CursorExpired`) rather than skipping.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::json;

use super::params::QueryParams;
use super::{ApiError, ApiState, json_text};
use crate::feed::{self, MAX_PAGE, ReadError};

pub async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let number = |key: &str, default: i64, max: i64| -> Result<i64, ApiError> {
        match params.one(key)? {
            None => Ok(default),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (0..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(key, format!("must be an integer from 0 to {max}"))
                }),
        }
    };
    let after = number("after", 0, i64::MAX)?;
    let limit = number("limit", 100, MAX_PAGE)?.max(1);
    let items = feed::read(&state.pool, after, limit)
        .await
        .map_err(|e| match e {
            ReadError::Gone { .. } => ApiError::Gone(format!(
                "{e}; start again from the current state and the newest cursor"
            )),
            ReadError::Database(e) => e.into(),
        })?;
    let next_cursor = items.last().map_or(after, |c| c.cursor);
    Ok(json_text(
        json!({"items": items, "next_cursor": next_cursor}).to_string(),
    ))
}
