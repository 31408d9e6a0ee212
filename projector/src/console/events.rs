//! One logged event (`/console/events/{seq}`): what ingest kept of the
//! request, the body, where it went (the relay, Kafka, the consumer) and
//! which projection rows it wrote, each still current or superseded.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::html;

use crate::applied;
use crate::projection::IncomingEvent;

use super::evidence::{self, Outcome, Standing};
use super::layout::{self, Page, customer_link, event_link, time};
use super::session::Operator;
use super::{ConsoleError, ConsoleState};

#[derive(Debug, sqlx::FromRow)]
struct Logged {
    seq: i64,
    source: String,
    webhook_id: String,
    event_type: String,
    partition_key: String,
    occurred_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    api_version: Option<String>,
    body: Vec<u8>,
    duplicates: Option<i64>,
    last_duplicate_at: Option<DateTime<Utc>>,
    queued_for_relay: bool,
}

pub async fn page(
    operator: Operator,
    State(state): State<ConsoleState>,
    Path(seq): Path<String>,
) -> Result<Response, ConsoleError> {
    let seq: i64 = seq.parse().map_err(|_| {
        ConsoleError::BadRequest("An event is named by its seq, a number.".to_owned())
    })?;
    let pool = &state.api.pool;
    let logged: Option<Logged> = sqlx::query_as(
        "select l.seq, l.source, l.webhook_id, l.event_type, l.partition_key, l.occurred_at,
                l.received_at, l.api_version, l.body, d.copies as duplicates, d.last_received_at as last_duplicate_at,
                exists (select 1 from event_log_outbox o where o.seq = l.seq) as queued_for_relay
         from event_log l left join event_log_duplicates d on d.seq = l.seq
         where l.seq = $1",
    )
    .bind(seq)
    .fetch_optional(pool)
    .await?;
    let Some(mut logged) = logged else {
        return Err(ConsoleError::NotFound(
            "No event with that seq is in the log.",
        ));
    };
    let location = applied::location(pool, seq).await?;
    let event = IncomingEvent {
        seq,
        webhook_id: logged.webhook_id.clone(),
        body: std::mem::take(&mut logged.body),
    };
    let outcome = evidence::outcomes(pool, std::slice::from_ref(&event))
        .await?
        .remove(&seq);
    let customer_known: bool =
        sqlx::query_scalar("select exists (select 1 from projection.customers where id = $1)")
            .bind(&logged.partition_key)
            .fetch_one(pool)
            .await?;
    let body_text = layout::pretty_json(&String::from_utf8_lossy(&event.body));
    let title = format!("Event #{seq}");
    let body = html! {
        table.facts {
            tr { th { "Seq" } td { (logged.seq) } }
            tr { th { "Type" } td.mono { (logged.event_type) } }
            tr { th { "Source" } td.mono { (logged.source) } }
            tr { th { "webhook-id" } td.mono { (logged.webhook_id) } }
            tr { th { "Occurred (envelope timestamp)" } td { (time(Some(logged.occurred_at))) } }
            tr { th { "Received" } td { (time(Some(logged.received_at))) } }
            tr { th { "API version" } td.mono {
                @match &logged.api_version {
                    Some(version) => { (version) },
                    None => span.muted { "not recorded" },
                }
            } }
            tr { th { "Duplicate deliveries" } td {
                @match logged.duplicates {
                    Some(copies) => { (copies) ", the last at " (time(logged.last_duplicate_at)) " (answered 200, not logged again)" },
                    None => span.muted { "none" },
                }
            } }
            tr { th { "Key (customer)" } td.mono {
                @if customer_known { (customer_link(&logged.partition_key)) } @else { (logged.partition_key) }
            } }
        }
        p.hint {
            "Ingest keeps the webhook-id, the source, the API version (webhook-api-version) and the body byte for byte. "
            "The signature and its timestamp (webhook-signature, webhook-timestamp) are checked and not kept."
        }
        h2 { "Where it went" }
        table #delivery {
            tr { th { "Relay" } td {
                @if logged.queued_for_relay { span.warn { "waiting to be published to Kafka" } }
                @else { span.ok { "published" } }
            } }
            tr { th { "Kafka" } td {
                @match &location {
                    Some(at) => { "topic " code { (at.topic) } ", partition " (at.partition) ", offset " (at.offset)
                                   "; applied " (time(Some(at.applied_at))) },
                    None => span.muted { "not applied from Kafka by the live consumer in the last 7 days (not yet, from the log in a replay or gap repair, or longer ago)" },
                }
            } }
        }
        h2 { "What it did" }
        @match &outcome {
            Some(Outcome::Failed(reason)) => p.bad { "Failed to apply: " (reason) " — see " a href={ (super::PREFIX) "failures" } { "Failures" } "." },
            Some(Outcome::Ignored) => p.muted { "A type no projection uses; counted and ignored." },
            Some(Outcome::Applied(rows)) => table #rows {
                thead { tr { th { "Table" } th { "Row" } th { "Version" } } }
                tbody { @for row in rows { tr {
                    td.mono { (row.table) }
                    td.mono { (row.id) }
                    td { @match row.standing {
                        Standing::Current => span.ok { "current: this event's version" },
                        Standing::SupersededBy(newer) => span.muted { "superseded by " (event_link(newer)) },
                        Standing::Absent => span.warn { "no such row yet (not applied yet)" },
                    } }
                } } }
            },
            None => p.muted { "—" },
        }
        h2 { "Body" }
        pre #body { (body_text) }
    };
    Ok(layout::page(
        &operator,
        Page {
            title: &title,
            body,
        },
    )
    .into_response())
}
