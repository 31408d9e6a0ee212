//! The overview (`/console/`): webhooks received and events applied over
//! the last hour and day, the consumer's position and lag per partition,
//! the relay's backlog, apply failures, unknown event types, the last
//! reconcile and the Polar endpoint, and the generations.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{Markup, html};

use hookstream_shared::event_log;

use crate::offsets;

use super::layout::{self, Page, event_link, time};
use super::session::Operator;
use super::{ConsoleError, ConsoleState, PREFIX};

/// Counts per time bucket: received (the log) and applied (the consumer).
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: DateTime<Utc>,
    received: i64,
    applied: i64,
}

/// `buckets` buckets of `width` ending with the current one.
async fn traffic(
    state: &ConsoleState,
    width: Duration,
    buckets: i32,
) -> Result<Vec<Bucket>, ConsoleError> {
    let now = Utc::now();
    let last = now
        .duration_trunc(width)
        .map_err(|e| ConsoleError::Internal(e.into()))?;
    let first = last - width * (buckets - 1);
    let mut out: Vec<Bucket> = (0..buckets)
        .map(|i| Bucket {
            start: first + width * i,
            ..Bucket::default()
        })
        .collect();
    let seconds = width.num_seconds() as f64;
    let index = |at: DateTime<Utc>| -> Option<usize> {
        let i = (at - first).num_seconds() as f64 / seconds;
        (i >= 0.0).then_some(i.floor() as usize)
    };
    // Bucketed in SQL by epoch arithmetic, so any width works.
    let received: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "select to_timestamp(floor(extract(epoch from received_at) / $2) * $2), count(*)
         from event_log where received_at >= $1 group by 1",
    )
    .bind(first)
    .bind(seconds)
    .fetch_all(&state.api.pool)
    .await?;
    let applied: Vec<(DateTime<Utc>, i64)> = sqlx::query_as(
        "select to_timestamp(floor(extract(epoch from applied_at) / $2) * $2),
                sum(cardinality(seqs))::bigint
         from projector_applied_messages where applied_at >= $1 group by 1",
    )
    .bind(first)
    .bind(seconds)
    .fetch_all(&state.api.pool)
    .await?;
    for (at, n) in received {
        if let Some(b) = index(at).and_then(|i| out.get_mut(i)) {
            b.received = n;
        }
    }
    for (at, n) in applied {
        if let Some(b) = index(at).and_then(|i| out.get_mut(i)) {
            b.applied = n;
        }
    }
    Ok(out)
}

/// Paired bars (received, applied) per bucket, as inline SVG.
fn chart(id: &str, buckets: &[Bucket], label: impl Fn(&Bucket) -> String) -> Markup {
    const WIDTH: f64 = 1000.0;
    const HEIGHT: f64 = 120.0;
    let max = buckets
        .iter()
        .map(|b| b.received.max(b.applied))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = WIDTH / buckets.len().max(1) as f64;
    let bar = slot * 0.42;
    let height = |n: i64| (n as f64 / max * (HEIGHT - 4.0)).max(if n > 0 { 1.0 } else { 0.0 });
    html! {
        svg.chart id=(id) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } preserveAspectRatio="none" role="img" {
            @for (i, b) in buckets.iter().enumerate() {
                @let x = i as f64 * slot;
                rect.received x=(format!("{x:.1}")) y=(format!("{:.1}", HEIGHT - height(b.received))) width=(format!("{bar:.1}")) height=(format!("{:.1}", height(b.received))) {
                    title { (label(b)) ": " (b.received) " received" }
                }
                rect.applied x=(format!("{:.1}", x + bar)) y=(format!("{:.1}", HEIGHT - height(b.applied))) width=(format!("{bar:.1}")) height=(format!("{:.1}", height(b.applied))) {
                    title { (label(b)) ": " (b.applied) " applied" }
                }
            }
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Run {
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: Option<String>,
    summary: Option<String>,
    error: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct GenerationRow {
    name: String,
    status: String,
    built_from: String,
    created_at: DateTime<Utc>,
    activated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
struct UnknownType {
    event_type: String,
    events: i64,
    first_seq: i64,
    last_seq: i64,
    last_seen_at: DateTime<Utc>,
}

/// This replica's view of each partition's lag (from its consumer's
/// statistics); partitions another replica holds are not in it.
fn lag_by_partition(state: &ConsoleState) -> std::collections::HashMap<i32, i64> {
    state
        .api
        .metrics
        .registry
        .gather()
        .iter()
        .filter(|family| family.name().ends_with("consumer_lag"))
        .flat_map(|family| family.get_metric().iter())
        .filter_map(|metric| {
            let partition = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "partition")?
                .value()
                .parse()
                .ok()?;
            Some((partition, metric.get_gauge().get_value() as i64))
        })
        .collect()
}

pub async fn page(
    operator: Operator,
    State(state): State<ConsoleState>,
) -> Result<Response, ConsoleError> {
    let pool = &state.api.pool;
    let hour = traffic(&state, Duration::minutes(1), 60).await?;
    let day = traffic(&state, Duration::hours(1), 24).await?;
    let partitions = offsets::all(pool, &state.group, &state.topic).await?;
    let lag = lag_by_partition(&state);
    let backlog = event_log::backlog(pool).await?;
    let (failures, newest_failure): (i64, Option<i64>) =
        sqlx::query_as("select count(*), max(seq) from projection.apply_failures")
            .fetch_one(pool)
            .await?;
    let unknown: Vec<UnknownType> = sqlx::query_as(
        "select event_type, events, first_seq, last_seq, last_seen_at
         from projector_unknown_event_types order by last_seen_at desc limit 20",
    )
    .fetch_all(pool)
    .await?;
    let last_run: Option<Run> = sqlx::query_as(
        "select started_at, finished_at, outcome, summary::text as summary, error
         from reconcile_runs order by id desc limit 1",
    )
    .fetch_optional(pool)
    .await?;
    let endpoints: Vec<(String, bool, DateTime<Utc>)> = sqlx::query_as(
        "select endpoint_id, enabled, checked_at from polar_endpoint_state order by endpoint_id",
    )
    .fetch_all(pool)
    .await?;
    let generations: Vec<GenerationRow> = sqlx::query_as(
        "select name, status, built_from, created_at, activated_at from projection_generations
         where status in ('live', 'building') order by created_at",
    )
    .fetch_all(pool)
    .await?;
    let log_head: Option<i64> = sqlx::query_scalar("select max(seq) from event_log")
        .fetch_one(pool)
        .await?;

    let sum = |buckets: &[Bucket], f: fn(&Bucket) -> i64| buckets.iter().map(f).sum::<i64>();
    let body = html! {
        div.cards {
            div.card { div.value #received-hour { (sum(&hour, |b| b.received)) } div.label { "webhooks received, last hour" } }
            div.card { div.value #applied-hour { (sum(&hour, |b| b.applied)) } div.label { "events applied, last hour" } }
            div.card { div.value { (sum(&day, |b| b.received)) } div.label { "received, last 24 hours" } }
            div.card { div.value { (sum(&day, |b| b.applied)) } div.label { "applied, last 24 hours" } }
            div.card { div.value { (backlog.unpublished) } div.label { "relay backlog" @if let Some(oldest) = backlog.oldest_received_at { " (oldest " (time(Some(oldest))) ")" } } }
            div.card { div.value.(if backlog.parked > 0 { "bad" } else { "ok" }) #parked-count { (backlog.parked) }
                       div.label { a href={ (PREFIX) "failures#parked" } { "parked by the relay" } " (Kafka refuses them; " (backlog.parked_unapplied) " not yet applied from the log)" } }
            div.card { div.value.(if failures > 0 { "bad" } else { "ok" }) #failure-count { (failures) }
                       div.label { a href={ (PREFIX) "failures" } { "apply failures" } @if let Some(seq) = newest_failure { ", newest " (event_link(seq)) } } }
            div.card { div.value { (log_head.unwrap_or(0)) } div.label { "log head: the highest seq (seqs have gaps)" } }
        }
        p.legend { span { span.swatch.received {} "received" } span { span.swatch.applied {} "applied" } }
        h2 { "Last hour, per minute" }
        (chart("chart-hour", &hour, |b| b.start.format("%H:%M").to_string()))
        h2 { "Last 24 hours, per hour" }
        (chart("chart-day", &day, |b| b.start.format("%d %H:00").to_string()))

        h2 { "Consumer (group " code { (state.group) } ", topic " code { (state.topic) } ")" }
        @if partitions.is_empty() { p.muted { "No position stored yet: nothing applied." } } @else {
            table #partitions {
                thead { tr { th.num { "Partition" } th.num { "Next offset" } th.num { "Lag" } th { "Last applied" } } }
                tbody { @for p in &partitions { tr {
                    td.num { (p.partition) }
                    td.num { (p.next_offset) }
                    td.num { @match lag.get(&p.partition) { Some(l) => (l), None => span.muted title="held by another replica, or not measured yet" { "—" } } }
                    td { (time(Some(p.updated_at))) }
                } } }
            }
        }

        h2 { "Unknown event types" }
        @if unknown.is_empty() { p.muted { "None seen." } } @else {
            table #unknown-types {
                thead { tr { th { "Type" } th.num { "Events" } th { "First" } th { "Last" } th { "Last seen" } } }
                tbody { @for u in &unknown { tr {
                    td.mono { (u.event_type) } td.num { (u.events) }
                    td { (event_link(u.first_seq)) } td { (event_link(u.last_seq)) } td { (time(Some(u.last_seen_at))) }
                } } }
            }
        }

        h2 { "Reconcile with Polar's API" }
        @match &last_run {
            None => p.muted { "Never run (" code { "ingest reconcile" } ", or INGEST_RECONCILE_INTERVAL for the periodic mode)." },
            Some(run) => table #reconcile {
                tr { th { "Last run" } td { (time(Some(run.started_at))) " → " (time(run.finished_at)) } }
                tr { th { "Outcome" } td { @match run.outcome.as_deref() {
                    Some("ok") => span.ok { "ok" },
                    Some(other) => span.bad { (other) },
                    None => span.warn { "running (or the process died mid-run)" },
                } } }
                @if let Some(summary) = &run.summary { tr { th { "Summary" } td.mono { (summary) } } }
                @if let Some(error) = &run.error { tr { th { "Error" } td.bad { (error) } } }
            },
        }
        @for (endpoint, enabled, checked) in &endpoints {
            p #endpoint { "Polar webhook endpoint " code { (endpoint) } ": "
                @if *enabled { span.ok { "enabled" } } @else { span.bad { "disabled — Polar creates no events for it; reconcile fills the gap" } }
                span.muted { " (checked " (time(Some(*checked))) ")" } }
        }

        h2 { "Generations" }
        table #generations {
            thead { tr { th { "Generation" } th { "Status" } th { "Built from" } th { "Created" } th { "Live since" } } }
            tbody { @for g in &generations { tr {
                td.mono { (g.name) }
                td { @if g.status == "building" { span.warn { "replay in progress" } } @else { span.ok { (g.status) } } }
                td { (g.built_from) } td { (time(Some(g.created_at))) } td { (time(g.activated_at)) }
            } } }
        }
    };
    Ok(layout::page(
        &operator,
        Page {
            title: "Overview",
            body,
        },
    )
    .into_response())
}
