//! Replay and verify (DESIGN.md guarantee 4): a rebuild from the log equals
//! what the consumer built; readers never fail or go back in time while a
//! replay runs; a killed replay changes nothing; verify catches drift.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hookstream_projector::projection::dump::{self, TableDump};
use hookstream_projector::projection::from_log::{Target, apply_log};
use hookstream_projector::projection::{Generation, IncomingEvent, generation};
use hookstream_projector::rebuild::DEFAULT_MEMORY_BUDGET;
use hookstream_projector::rebuild::progress::{ProgressMode, ProgressReport};
use hookstream_projector::rebuild::replay::{
    DEFAULT_UNLOGGED_FROM, ReplayOptions, ReplaySource, replay,
};
use hookstream_shared::envelope;
use hookstream_shared::event_log::{self, NewEvent};

use crate::helpers::{Stream, benefit, customer, database_url, get, grant, live, with_uids};
use crate::order_independence::polarsim_stream;

/// Appends events to the log as ingest does; returns them with their seqs.
pub(crate) async fn log_events(pool: &PgPool, events: &[IncomingEvent]) -> Vec<IncomingEvent> {
    let mut logged = Vec::with_capacity(events.len());
    for chunk in events.chunks(500) {
        let new: Vec<NewEvent> = chunk
            .iter()
            .map(|e| {
                let parsed = envelope::parse(&e.body).unwrap();
                NewEvent::from_envelope("polar", &e.webhook_id, parsed, e.body.clone().into())
            })
            .collect();
        let appended = event_log::append_batch(pool, &new).await.unwrap();
        for (event, outcome) in chunk.iter().zip(appended) {
            logged.push(IncomingEvent {
                seq: outcome.seq(),
                ..event.clone()
            });
        }
    }
    logged
}

/// Logs polarsim's stream and applies it to the live generation the way the
/// consumer would see it: shuffled, with duplicates, in small batches.
async fn logged_and_consumed(pool: &PgPool) -> Vec<IncomingEvent> {
    live(pool).await;
    let logged = log_events(pool, polarsim_stream()).await;
    let mut delivered: Vec<IncomingEvent> = logged.iter().rev().cloned().collect();
    delivered.extend(logged.iter().step_by(7).cloned());
    let third = delivered.len() / 3;
    delivered.rotate_left(third);
    let live = generation::live(pool).await.unwrap().unwrap();
    crate::helpers::apply_into(pool, &live, &delivered, 37).await;
    logged
}

async fn dump_of(pool: &PgPool, generation: &Generation) -> BTreeMap<&'static str, TableDump> {
    dump::dump(&mut pool.acquire().await.unwrap(), generation)
        .await
        .unwrap()
}

pub(crate) fn quiet() -> ProgressReport {
    ProgressReport::new(ProgressMode::Quiet, "test")
}

pub(crate) fn log_replay(keep_old: bool, chunk: usize) -> ReplayOptions {
    ReplayOptions {
        source: ReplaySource::Log,
        keep_old,
        chunk,
        memory_budget: DEFAULT_MEMORY_BUDGET,
        unlogged_from: DEFAULT_UNLOGGED_FROM,
    }
}

/// The persistence (`p` logged, `u` unlogged) of every table of `generation`.
async fn table_persistence(pool: &PgPool, generation: &Generation) -> Vec<String> {
    sqlx::query_scalar(
        "select distinct c.relpersistence::text from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = $1 and c.relkind in ('r', 'i') order by 1",
    )
    .bind(generation.name())
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn generation_statuses(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("select name, status from projection_generations order by name")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_replay_from_the_log_rebuilds_exactly_what_the_consumer_built(pool: PgPool) {
    logged_and_consumed(&pool).await;
    let before = generation::live(&pool).await.unwrap().unwrap();
    let consumed = dump_of(&pool, &before).await;
    assert!(
        consumed["effective_grants"].len() > 10,
        "the stream grants benefits"
    );

    // A budget of one byte writes after every chunk: objects then meet their
    // older versions in the table's upserts rather than in memory. Built
    // unlogged (the small log would be built logged), and logged at the end.
    let summary = replay(
        &pool,
        &ReplayOptions {
            memory_budget: 1,
            unlogged_from: 0,
            ..log_replay(true, 250)
        },
        &CancellationToken::new(),
        &mut quiet(),
    )
    .await
    .unwrap();

    assert_eq!(summary.previous.as_ref(), Some(&before));
    assert!(summary.kept_previous);
    assert_eq!(summary.events as usize, polarsim_stream().len());
    let now_live = generation::live(&pool).await.unwrap().unwrap();
    assert_eq!(now_live, summary.generation);
    assert_ne!(now_live, before);
    assert_eq!(table_persistence(&pool, &now_live).await, ["p"]);
    let differences = dump::compare(&consumed, &dump_of(&pool, &now_live).await);
    assert!(
        differences.is_empty(),
        "first of {}: {:#?}",
        differences.len(),
        differences.first()
    );
    assert_eq!(
        generation_statuses(&pool).await,
        vec![
            (before.name().to_owned(), "retired".to_owned()),
            (now_live.name().to_owned(), "live".to_owned()),
        ]
    );

    // Without --keep-old the replaced generation is dropped.
    let again = replay(
        &pool,
        &log_replay(false, 5000),
        &CancellationToken::new(),
        &mut quiet(),
    )
    .await
    .unwrap();
    assert_eq!(again.previous.as_ref(), Some(&now_live));
    assert!(!again.kept_previous);
    let schema_left: bool = sqlx::query_scalar(
        "select exists (select 1 from information_schema.schemata where schema_name = $1)",
    )
    .bind(now_live.name())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!schema_left, "{now_live} should have been dropped");
    let differences = dump::compare(&consumed, &dump_of(&pool, &again.generation).await);
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(table_persistence(&pool, &again.generation).await, ["p"]);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_event_whose_seq_commits_late_is_not_missed(pool: PgPool) {
    // Seqs are taken at insert and become visible at commit: a reader can pass
    // seq n while its transaction is open and see n+1 first.
    let logged = logged_and_consumed(&pool).await;
    let s = Stream::new();
    let t0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    let late = s.event(
        "customer.created",
        customer("cus_late", Some("late_user"), t0, None),
    );
    let mut open = pool.begin().await.unwrap();
    let late_seq: i64 = sqlx::query_scalar(
        "insert into event_log (source, webhook_id, event_type, partition_key, occurred_at, body)
         values ('polar', 'wh-late', 'customer.created', 'cus_late', $1, $2) returning seq",
    )
    .bind(t0)
    .bind(&late.body)
    .fetch_one(&mut *open)
    .await
    .unwrap();
    // A later event commits while the earlier seq is still open.
    let after = s.event("customer.created", customer("cus_after", None, t0, None));
    let after = log_events(
        &pool,
        &[IncomingEvent {
            webhook_id: "wh-after".into(),
            ..after
        }],
    )
    .await;
    assert!(after[0].seq > late_seq && late_seq > logged.last().unwrap().seq);

    // A consumer batch in flight holds the live row, so the replay reads
    // past the open seq, then waits to switch; the open seq commits meanwhile.
    let mut batch_in_flight = pool.begin().await.unwrap();
    sqlx::query("select generation from projection_live for share")
        .execute(&mut *batch_in_flight)
        .await
        .unwrap();
    let replaying = {
        let pool = pool.clone();
        tokio::spawn(async move {
            replay(
                &pool,
                &log_replay(false, 100),
                &CancellationToken::new(),
                &mut quiet(),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_stat_activity
             where wait_event_type = 'Lock' and query like '%projection_live for update%')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting {
            break;
        }
        assert!(
            !replaying.is_finished(),
            "the replay switched without waiting for the batch"
        );
        assert!(
            Instant::now() < deadline,
            "the replay never reached the switch"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    open.commit().await.unwrap();
    batch_in_flight.commit().await.unwrap();
    replaying.await.unwrap().unwrap();
    let (status, state) = get(&pool, "/v1/customers/external/late_user/state").await;
    assert_eq!(
        status, 200,
        "the late event is in the new generation: {state}"
    );
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn readers_see_no_error_and_no_regression_while_a_replay_runs(pool: PgPool) {
    logged_and_consumed(&pool).await;
    // A customer who gains a benefit while the replay runs, through the log
    // and the live generation, as ingest and the consumer would do it.
    let s = Stream::new();
    let t0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    let c = customer("cus_new", Some("new_user"), t0, None);
    let b = benefit("ben_new", t0);
    let g = grant("grant_new", &c, &b, None, true, t0, None);
    let arriving = vec![
        s.event("customer.created", c.clone()),
        s.event("benefit.created", b.clone()),
        s.event("benefit_grant.created", g.clone()),
    ];

    let stop_polling = CancellationToken::new();
    let poller = {
        let pool = pool.clone();
        let stop = stop_polling.clone();
        tokio::spawn(async move {
            let mut polls = 0u32;
            let mut seen_granted = false;
            while !stop.is_cancelled() {
                let (status, body) = get(
                    &pool,
                    &with_uids(
                        "/v1/entitlements/check?external_customer_id=new_user&benefit_id=ben_new",
                    ),
                )
                .await;
                assert!(
                    status == 200 || status == 404,
                    "check failed during replay: {status} {body}"
                );
                let granted = status == 200 && body["granted"] == Value::Bool(true);
                assert!(
                    granted || !seen_granted,
                    "the grant went back in time: {body}"
                );
                seen_granted |= granted;
                polls += 1;
                tokio::task::yield_now().await;
            }
            (polls, seen_granted)
        })
    };
    let feeder = {
        let pool = pool.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let logged = log_events(&pool, &arriving).await;
            let up_to = logged.last().unwrap().seq;
            apply_log(
                &pool,
                &Target::Live,
                logged[0].seq - 1,
                up_to,
                10,
                &CancellationToken::new(),
                |_, _| {},
            )
            .await
            .unwrap();
        })
    };
    replay(
        &pool,
        &log_replay(false, 100),
        &CancellationToken::new(),
        &mut quiet(),
    )
    .await
    .unwrap();
    feeder.await.unwrap();
    stop_polling.cancel();
    let (polls, seen_granted) = poller.await.unwrap();
    assert!(
        polls > 5,
        "the reader polled during the replay ({polls} polls)"
    );
    assert!(
        seen_granted,
        "the grant applied during the replay is visible"
    );
    let (status, body) = get(
        &pool,
        &with_uids("/v1/entitlements/check?external_customer_id=new_user&benefit_id=ben_new"),
    )
    .await;
    assert_eq!(
        (status, body["granted"].clone()),
        (200, Value::Bool(true)),
        "{body}"
    );
}

fn projector(pool: &PgPool, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_projector"));
    command
        .args(args)
        .env_clear()
        .env("DATABASE_URL", database_url(pool))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_replay_killed_midway_leaves_live_untouched_and_the_next_one_works(pool: PgPool) {
    logged_and_consumed(&pool).await;
    let live_before = generation::live(&pool).await.unwrap().unwrap();
    let dump_before = dump_of(&pool, &live_before).await;

    // Small chunks so the kill lands while the new generation is half built.
    let mut child = projector(&pool, &["replay", "--chunk", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let building: Option<String> =
            sqlx::query_scalar("select name from projection_generations where status = 'building'")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(name) = building {
            let customers: i64 =
                sqlx::query_scalar(&format!("select count(*) from {name}.customers"))
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
            if customers > 0 {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "the replay never started building"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    assert_eq!(generation::live(&pool).await.unwrap().unwrap(), live_before);
    assert!(dump::compare(&dump_before, &dump_of(&pool, &live_before).await).is_empty());
    let (status, _) = get(&pool, "/v1/subscriptions/?limit=5").await;
    assert_eq!(status, 200);

    let output = run(projector(&pool, &["replay"])).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("events/s"), "a summary: {stdout}");
    let statuses = generation_statuses(&pool).await;
    assert_eq!(
        statuses.len(),
        1,
        "the abandoned and the old generation are gone: {statuses:?}"
    );
    let now_live = generation::live(&pool).await.unwrap().unwrap();
    assert!(dump::compare(&dump_before, &dump_of(&pool, &now_live).await).is_empty());
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn verify_exits_0_without_drift_and_1_with_a_tampered_row(pool: PgPool) {
    logged_and_consumed(&pool).await;
    let clean = run(projector(&pool, &["verify"])).await;
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("no drift"));

    let live = generation::live(&pool).await.unwrap().unwrap();
    let tampered: String = sqlx::query_scalar(&format!(
        "update {} set status = 'canceled' where id = (select min(id) from {0}) returning id",
        live.qualify("subscriptions")
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    // A member row too: the tables of teams are checked like the others.
    let tampered_member: String = sqlx::query_scalar(&format!(
        "update {} set deleted_at = now() where id = (select min(id) from {0}) returning id",
        live.qualify("members")
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    let drift = run(projector(&pool, &["verify", "--attempts", "2"])).await;
    let stdout = String::from_utf8_lossy(&drift.stdout);
    assert_eq!(
        drift.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&drift.stderr)
    );
    assert!(
        stdout.contains(&format!("subscriptions {tampered}: differs")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "members {tampered_member}: differs\n  deleted_at: null → \""
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"  status: ""#) && stdout.contains(r#" → "canceled""#),
        "the field that differs, old and new: {stdout}"
    );
    assert!(
        !stdout.contains("\"snapshot\""),
        "whole rows only with --full-rows: {stdout}"
    );
    assert!(stdout.contains("drift: 2 rows"), "{stdout}");
    let full = run(projector(
        &pool,
        &["verify", "--attempts", "1", "--full-rows"],
    ))
    .await;
    let full = String::from_utf8_lossy(&full.stdout);
    assert!(
        full.contains("  expected {") && full.contains("  live     {"),
        "{full}"
    );
    // Verify leaves no scratch generation behind.
    assert_eq!(generation_statuses(&pool).await.len(), 1);
}
