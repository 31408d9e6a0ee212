//! The change feed (see [`crate::feed`]), oldest first:
//!
//! - `GET /v1/changes?after=<cursor>&limit=`: `{items, next_cursor}`. A
//!   reader stores `next_cursor` and asks after it next time.
//! - `GET /v1/changes/stream?after=<cursor>`: the same items as server-sent
//!   events (`id:` is the cursor, `event:` the kind), resuming after
//!   `Last-Event-ID` when the client sends it. Woken by the projector's
//!   change notifications; a comment every 15 s keeps proxies from closing
//!   an idle stream. The stream is pulled: a slow reader is sent the next
//!   page only when it has taken the last, so nothing is buffered for it
//!   beyond one page.
//!
//! A cursor older than the feed's retention answers 410 (`CursorExpired`)
//! rather than skipping changes; a stream that falls that far behind ends
//! with an `expired` event.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use serde_json::json;

use super::params::QueryParams;
use super::{ApiError, ApiState, json_text};
use crate::feed::{self, Change, MAX_PAGE, ReadError};
use crate::metrics::InProgress;

/// Items a stream reads from the feed at a time.
const STREAM_PAGE: i64 = 100;
/// How often an idle stream sends a comment to keep proxies from closing it.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often a stream looks at the feed while change notifications are not
/// heard.
const UNHEARD_POLL: Duration = Duration::from_millis(500);

fn read_error(e: ReadError) -> ApiError {
    match e {
        ReadError::Gone { .. } => ApiError::Gone(format!(
            "{e}; start again from the current state and the newest cursor"
        )),
        ReadError::Database(e) => e.into(),
    }
}

pub async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let after = params.integer("after", 0, i64::MAX)?.unwrap_or(0);
    let limit = params.integer("limit", 0, MAX_PAGE)?.unwrap_or(100).max(1);
    let items = feed::read(&state.pool, after, limit)
        .await
        .map_err(read_error)?;
    let next_cursor = items.last().map_or(after, |c| c.cursor);
    Ok(json_text(
        json!({"items": items, "next_cursor": next_cursor}).to_string(),
    ))
}

pub async fn stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = QueryParams::parse(query.as_deref());
    let mut after = params.integer("after", 0, i64::MAX)?.unwrap_or(0);
    if let Some(last) = headers.get("last-event-id") {
        after = last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid("Last-Event-ID", "must be a cursor"))?;
    }
    // An expired cursor is refused before the stream starts, with a status.
    let first = feed::read(&state.pool, after, STREAM_PAGE)
        .await
        .map_err(read_error)?;
    let reader = StreamReader {
        state: state.clone(),
        after,
        pending: first.into(),
        finished: false,
        _counted: InProgress::new(&state.metrics.sse_clients),
    };
    let events = futures::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok::<Event, Infallible>(event), reader))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}

/// One stream's position in the feed and the page it has read ahead.
struct StreamReader {
    state: ApiState,
    after: i64,
    pending: VecDeque<Change>,
    finished: bool,
    _counted: InProgress,
}

impl StreamReader {
    /// The next event, waiting for a change when the feed has none; `None`
    /// ends the stream.
    async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        loop {
            if let Some(change) = self.pending.pop_front() {
                self.after = change.cursor;
                let event = Event::default()
                    .id(change.cursor.to_string())
                    .event(&change.kind)
                    .json_data(&change);
                return match event {
                    Ok(event) => Some(event),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode a change");
                        None
                    }
                };
            }
            let waiters = self.state.cache.waiters().clone();
            let changed = waiters.any_change();
            match feed::read(&self.state.pool, self.after, STREAM_PAGE).await {
                Ok(page) if !page.is_empty() => self.pending = page.into(),
                Ok(_) => {
                    let listening = self.state.cache.is_listening();
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep(UNHEARD_POLL), if !listening => {}
                    }
                }
                Err(ReadError::Gone { .. }) => {
                    self.finished = true;
                    return Some(
                        Event::default()
                            .event("expired")
                            .data(format!("changes after {} are gone; resync", self.after)),
                    );
                }
                Err(ReadError::Database(e)) => {
                    // The client resumes from its Last-Event-ID.
                    tracing::warn!(error = %e, "change stream cannot read the feed; closing it");
                    return None;
                }
            }
        }
    }
}
