//! Apply failures (`/console/failures`): the events the live generation
//! could not apply, why, and re-applying one or all after a fix (a POST with
//! the session's CSRF token; the outcome is shown on the page it returns to).
//! Below them, the events the relay parked because Kafka refuses their
//! message, and whether a projector has applied them from the log yet.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;

use hookstream_shared::event_log;

use crate::rebuild::reapply::{self, Which};

use super::layout::{self, Page, event_link, time};
use super::session::Operator;
use super::{ConsoleError, ConsoleState, PREFIX};

/// Most failures listed, newest first.
const MAX_LISTED: i64 = 500;

#[derive(Debug, sqlx::FromRow)]
struct Failure {
    seq: i64,
    webhook_id: String,
    event_type: Option<String>,
    reason: String,
    received_at: Option<DateTime<Utc>>,
}

/// The outcome of the last re-apply, carried back in the address.
#[derive(Debug, Deserialize)]
pub struct Shown {
    reapplied: Option<String>,
    still_failing: Option<String>,
}

pub async fn page(
    operator: Operator,
    State(state): State<ConsoleState>,
    Query(shown): Query<Shown>,
) -> Result<Response, ConsoleError> {
    let failures: Vec<Failure> = sqlx::query_as(
        "select f.seq, f.webhook_id, f.event_type, f.reason, l.received_at
         from projection.apply_failures f left join event_log l on l.seq = f.seq
         order by f.seq desc limit $1",
    )
    .bind(MAX_LISTED)
    .fetch_all(&state.api.pool)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from projection.apply_failures")
        .fetch_one(&state.api.pool)
        .await?;
    let parked = event_log::parked(&state.api.pool, MAX_LISTED).await?;
    let seqs = |list: &Option<String>| -> Vec<i64> {
        list.as_deref()
            .unwrap_or("")
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let reapplied = seqs(&shown.reapplied);
    let still = seqs(&shown.still_failing);
    let body = html! {
        @if shown.reapplied.is_some() || shown.still_failing.is_some() {
            div.banner #outcome role="status" {
                @if reapplied.is_empty() && still.is_empty() {
                    "Nothing to re-apply: no such failure."
                } @else {
                    "Tried " (reapplied.len() + still.len()) " again: " (reapplied.len()) " applied, " (still.len()) " still failing."
                    @if !reapplied.is_empty() { " Applied: " @for seq in &reapplied { (event_link(*seq)) " " } }
                    @if !still.is_empty() { " Still failing: " @for seq in &still { (event_link(*seq)) " " } }
                }
            }
        }
        p { (total) " event" @if total != 1 { "s" } " could not be applied. Each was skipped so its partition kept moving; re-apply after a fix." }
        @if !failures.is_empty() {
            form.inline method="post" action={ (PREFIX) "failures/reapply" } {
                input type="hidden" name="csrf" value=(operator.csrf);
                input type="hidden" name="all" value="true";
                button #reapply-all type="submit" { "Re-apply all" }
            }
            table #failures {
                thead { tr { th { "Event" } th { "Type" } th { "Webhook-id" } th { "Received" } th { "Reason" } th {} } }
                tbody { @for f in &failures { tr data-seq=(f.seq) {
                    td { (event_link(f.seq)) }
                    td.mono { (f.event_type.as_deref().unwrap_or("—")) }
                    td.mono { (f.webhook_id) }
                    td { (time(f.received_at)) }
                    td.bad { (f.reason) }
                    td {
                        form.inline method="post" action={ (PREFIX) "failures/reapply" } {
                            input type="hidden" name="csrf" value=(operator.csrf);
                            input type="hidden" name="seq" value=(f.seq);
                            button.reapply type="submit" { "Re-apply" }
                        }
                    }
                } } }
            }
        }
        h2 { "Parked by the relay" }
        @if parked.is_empty() {
            p { "None: Kafka took every event ingest accepted." }
        } @else {
            p { "Kafka refuses these events' messages themselves (larger than the topic takes, or a record the broker rejects), so the relay stopped retrying them. A projector applies each from the log instead; raise the topic's " code { "max.message.bytes" } " (or lower " code { "INGEST_MAX_BODY_BYTES" } ") so no more are parked." }
            table #parked {
                thead { tr { th { "Event" } th { "Type" } th { "Webhook-id" } th { "Parked" } th { "Applied from the log" } th { "Kafka said" } } }
                tbody { @for p in &parked { tr data-seq=(p.seq) {
                    td { (event_link(p.seq)) }
                    td.mono { (p.event_type) }
                    td.mono { (p.webhook_id) }
                    td { (time(Some(p.parked_at))) }
                    td { @if p.applied_at.is_some() { (time(p.applied_at)) } @else { span.bad { "not yet" } } }
                    td.bad { (p.reason) }
                } } }
            }
        }
    };
    Ok(layout::page(
        &operator,
        Page {
            title: "Apply failures",
            body,
        },
    )
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct ReapplyForm {
    csrf: String,
    seq: Option<i64>,
    #[serde(default)]
    all: bool,
}

pub async fn reapply(
    operator: Operator,
    State(state): State<ConsoleState>,
    Form(form): Form<ReapplyForm>,
) -> Result<Response, ConsoleError> {
    if let Err(refused) = operator.check_csrf(&form.csrf) {
        return Ok(refused.into_response());
    }
    let seqs: Vec<i64> = form.seq.into_iter().collect();
    let which = match (form.all, seqs.is_empty()) {
        (true, _) => Which::All,
        (false, false) => Which::Seqs(&seqs),
        (false, true) => {
            return Err(ConsoleError::BadRequest(
                "Say which failure to re-apply (seq), or all.".to_owned(),
            ));
        }
    };
    let done = reapply::reapply_failures(&state.api.pool, which, state.feed_on).await?;
    tracing::info!(
        applied = done.applied.len(),
        still_failing = done.still_failing.len(),
        "console re-applied failed events"
    );
    let join = |seqs: &mut dyn Iterator<Item = i64>| -> String {
        seqs.map(|s| s.to_string()).collect::<Vec<_>>().join(",")
    };
    // Only the first hundred of each are named in the address.
    let target = format!(
        "{PREFIX}failures?reapplied={}&still_failing={}",
        join(&mut done.applied.iter().copied().take(100)),
        join(&mut done.still_failing.iter().map(|(s, _)| *s).take(100)),
    );
    Ok(Redirect::to(&target).into_response())
}
