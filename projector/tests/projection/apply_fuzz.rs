//! The apply path fuzzed with hostile values: real Polar payloads (polarsim's
//! stream, every family) with one value anywhere in `data` replaced by an
//! oversized string, an uncastable time, a number no column holds, or a
//! value of the wrong JSON kind, each applied alone into the live
//! generation of a real database.
//!
//! The decoder must refuse everything the database would refuse: no event
//! may reach the database's refusal (the net under the decoder), and no read
//! may fail afterwards, whatever was applied before.

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use sqlx::PgPool;

use hookstream_projector::projection::IncomingEvent;
use hookstream_shared::envelope;

use crate::helpers::{apply, get, live};
use crate::order_independence::polarsim_stream;
use crate::poison::{failing_sorted_reads, incompressible};

/// Stands for a number JSON can write but no Rust or Postgres float holds.
const HUGE: &str = "__hookstream_fuzz_huge__";

fn hostile_values() -> Vec<Value> {
    vec![
        json!(incompressible(5000)),
        json!("i".repeat(257)),
        json!(""),
        json!("garbage"),
        json!("0000-01-01T00:00:00Z"),
        json!("9999-12-31T23:59:59.999999Z"),
        json!("2026-13-45T99:99:99Z"),
        json!("2026-01-01 00:00:00"),
        json!(1e30),
        json!(-1),
        json!(29.5),
        json!(9_223_372_036_854_775_808u64),
        json!(HUGE),
        json!(null),
        json!(true),
        json!([]),
        json!([1, "two", null]),
        json!({}),
        json!({"id": "x"}),
    ]
}

/// Every path to a value inside `value`, as keys and indexes.
fn paths(value: &Value, prefix: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                prefix.push(json!(key));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(json!(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'v>(value: &'v mut Value, path: &[Value]) -> &'v mut Value {
    path.iter().fold(value, |v, step| match step {
        Value::String(key) => &mut v[key.as_str()],
        Value::Number(i) => &mut v[i.as_u64().unwrap() as usize],
        _ => unreachable!(),
    })
}

/// Event `pick` of the stream with the value at path `where_` (an index
/// into its paths) of its `data` replaced by hostile value `what`.
fn mutated(pick: usize, where_: usize, what: usize, seq: i64) -> IncomingEvent {
    let stream = polarsim_stream();
    let original = &stream[pick % stream.len()];
    let mut body: Value = serde_json::from_slice(&original.body).unwrap();
    let mut all = Vec::new();
    paths(&body["data"], &mut vec![json!("data")], &mut all);
    let values = hostile_values();
    if !all.is_empty() {
        *at(&mut body, &all[where_ % all.len()]) = values[what % values.len()].clone();
    }
    let text = body.to_string().replace(&format!("\"{HUGE}\""), "1e400");
    IncomingEvent {
        seq,
        webhook_id: format!("fuzz-{seq}"),
        body: text.into_bytes(),
    }
}

/// Reads that must never fail, whatever the generation holds: every sorted
/// list, and the state and an entitlement check of the event's customer.
async fn failing_reads(pool: &PgPool, event: &IncomingEvent) -> Vec<String> {
    let mut failing = failing_sorted_reads(pool).await;
    let key = envelope::parse(&event.body)
        .ok()
        .and_then(|e| e.partition_key)
        .unwrap_or_default();
    let key: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
    for path in [
        format!("/v1/customers/{key}/state"),
        format!("/v1/customers/external/{key}/state"),
        format!("/v1/entitlements/check?customer_id={key}&benefit_id=b"),
        format!("/v1/customers/{key}/members"),
        format!("/v1/members/?customer_id={key}"),
        "/v1/customer-meters/".to_owned(),
    ] {
        let (status, body) = get(pool, &path).await;
        if status >= 500 {
            failing.push(format!("{path}: {status} {body}"));
        }
    }
    failing
}

/// Mutated events to try: enough to hit every family's fields with every
/// kind of hostile value several times over, in well under a minute.
const CASES: usize = 400;

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn whatever_a_payload_carries_the_decoder_refuses_what_the_database_would(pool: PgPool) {
    live(&pool).await;
    // The stream itself first, so mutated events meet the rows they touch.
    let stream = polarsim_stream();
    apply(&pool, stream).await;
    let mut seq = stream.iter().map(|e| e.seq).max().unwrap_or(0);
    // A fixed seed: a failure names the same event on every run.
    let mut runner = TestRunner::deterministic();
    let picks = (any::<usize>(), any::<usize>(), any::<usize>());
    for _ in 0..CASES {
        let (pick, where_, what) = picks.new_tree(&mut runner).unwrap().current();
        seq += 1;
        let event = mutated(pick, where_, what, seq);
        let outcome = apply(&pool, std::slice::from_ref(&event)).await;
        assert_eq!(outcome.events(), 1, "{outcome:?}");
        let refused: Option<String> = sqlx::query_scalar(
            "select reason from projection.apply_failures
             where seq = $1 and reason like 'the database refused it%'",
        )
        .bind(event.seq)
        .fetch_optional(&pool)
        .await
        .unwrap();
        let mut failing = failing_reads(&pool, &event).await;
        if let Some(reason) = refused {
            failing.push(format!("the decoder let it through: {reason}"));
        }
        assert!(
            failing.is_empty(),
            "{}\n{failing:#?}",
            String::from_utf8_lossy(&event.body)
        );
    }
}
