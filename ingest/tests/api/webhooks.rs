//! `POST /webhooks/{source}`: what is stored, what is refused, and what is answered.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestIngest, now, polar_event, sign};

fn customer_created(id: &str) -> String {
    polar_event(
        "customer.created",
        json!({"id": id, "email": "a@example.com", "modified_at": null}),
    )
}

/// Sends `n` distinct `customer.created` webhooks (ids `{prefix}-0`...) all
/// at once; their statuses in order.
async fn send_distinct_at_once(
    app: &TestIngest,
    prefix: &str,
    n: usize,
) -> Vec<reqwest::StatusCode> {
    futures::future::join_all((0..n).map(|i| async move {
        let body = customer_created(&format!("c{i}"));
        app.webhook(&format!("{prefix}-{i}"), &body)
            .send()
            .await
            .unwrap()
            .status()
    }))
    .await
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_new_event_is_stored_byte_for_byte_and_answered_with_its_seq(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    // Non-ASCII and odd spacing: stored exactly as sent, never re-serialised.
    let body = r#"{"type":"customer.created","timestamp":"2026-01-02T07:12:11Z","api_version":"2026-10","data":{"id":"c1","name":"Zoë  Ñandú"}}"#;
    let response = app.webhook("wh-1", body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let seq = answer["seq"].as_i64().expect("seq");

    let row: (i64, String, String, String, String, Vec<u8>) = sqlx::query_as(
        "select seq, source, webhook_id, event_type, partition_key, body from event_log",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            seq,
            "polar".into(),
            "wh-1".into(),
            "customer.created".into(),
            "c1".into(),
            body.as_bytes().to_vec()
        )
    );
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_api_version_is_kept_from_the_header_else_from_the_body(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    // Polar names the endpoint's version in a header; the body says it too.
    let body = customer_created("c1");
    let sent = app
        .webhook("wh-v1", &body)
        .header("webhook-api-version", "2027-01")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    // Without the header (another sender, an older Polar): the body's.
    app.answer("wh-v2", &customer_created("c2")).await;
    // Neither: nothing is made up.
    let bare =
        r#"{"type":"customer.created","timestamp":"2026-01-02T07:12:11Z","data":{"id":"c3"}}"#;
    app.answer("wh-v3", bare).await;
    let kept: Vec<(String, Option<String>)> =
        sqlx::query_as("select webhook_id, api_version from event_log order by webhook_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        kept,
        vec![
            ("wh-v1".into(), Some("2027-01".into())),
            ("wh-v2".into(), Some("2026-10".into())),
            ("wh-v3".into(), None),
        ]
    );
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_duplicate_is_answered_200_and_adds_nothing(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    let body = customer_created("c1");
    let first: Value = app.answer("wh-dup", &body).await;
    // A retry: same id, fresh timestamp and signature.
    let response = app.webhook("wh-dup", &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let second: Value = response.json().await.unwrap();
    assert_eq!(first["status"], "accepted");
    assert_eq!(second["status"], "duplicate");
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(app.log_count().await, 1);
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn fifty_concurrent_copies_of_one_id_make_exactly_one_row(pool: PgPool) {
    // Small batches so the copies are spread over several concurrent commits,
    // which is the race the unique constraint has to settle.
    let app = TestIngest::spawn_with(
        pool,
        &[
            ("INGEST_MAX_BATCH", "4"),
            ("INGEST_COMMIT_CONCURRENCY", "4"),
        ],
    )
    .await;
    let body = customer_created("c-race");
    let answers = futures::future::join_all((0..50).map(|_| async {
        let response = app.webhook("wh-race", &body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    }))
    .await;
    let accepted = answers.iter().filter(|a| a["status"] == "accepted").count();
    assert_eq!(
        accepted, 1,
        "exactly one copy is the new event: {answers:?}"
    );
    assert!(answers.iter().all(|a| a["seq"] == answers[0]["seq"]));
    assert_eq!(app.log_count().await, 1);
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn many_distinct_concurrent_events_are_all_stored(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    let answers = send_distinct_at_once(&app, "wh", 200).await;
    assert!(answers.iter().all(|s| *s == 200));
    assert_eq!(app.log_count().await, 200);
    let distinct: i64 = sqlx::query_scalar("select count(distinct seq) from event_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(distinct, 200);
    app.stop().await;
}

/// `INGEST_MAX_BATCH` caps a batch even when the linger's target is larger:
/// the linger once filled batches to its target whatever the cap, so a
/// setting of 1 (what `loadgen`'s per-request baseline uses) gave batches of
/// up to 64.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn no_batch_exceeds_the_max_batch_setting_while_lingering(pool: PgPool) {
    let app = TestIngest::spawn_with(
        pool,
        &[
            ("INGEST_MAX_BATCH", "4"),
            ("INGEST_BATCH_TARGET", "64"),
            ("INGEST_BATCH_LINGER_US", "20000"),
            ("INGEST_BATCH_LINGER_ADAPTIVE", "false"),
            ("INGEST_COMMIT_CONCURRENCY", "1"),
        ],
    )
    .await;
    let answers = send_distinct_at_once(&app, "cap", 60).await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    assert_eq!(app.log_count().await, 60);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.metrics_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    let batches = sample("hookstream_ingest_batch_size_count");
    let within_cap = sample("hookstream_ingest_batch_size_bucket{le=\"4\"}");
    assert_eq!(sample("hookstream_ingest_batch_size_sum"), 60.0);
    assert_eq!(within_cap, batches, "a batch held more than 4 events");
    assert!(
        batches < 60.0,
        "60 concurrent webhooks under a 20 ms linger should share batches"
    );
    app.stop().await;
}

/// One refused request: what to send, and the status and code expected.
struct Refusal {
    name: &'static str,
    request: reqwest::RequestBuilder,
    status: u16,
    code: &'static str,
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn every_refusal_stores_nothing(pool: PgPool) {
    let app = TestIngest::spawn_with(pool, &[("INGEST_MAX_BODY_BYTES", "2048")]).await;
    let url = format!("{}/webhooks/polar", app.base_url);
    let body = customer_created("c1");
    let ts = now();
    let unsigned = |b: &str| {
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body(b.to_owned())
    };
    let signed_with = |id: &str, ts: i64, signature: String, b: &str| {
        unsigned(b)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
    };
    let not_envelope = r#"{"test": 2432232314}"#;
    let cases = vec![
        Refusal {
            name: "unknown source",
            request: app
                .webhook("r1", &body)
                .build()
                .map(|r| {
                    let mut r = r;
                    *r.url_mut() = format!("{}/webhooks/stripe", app.base_url).parse().unwrap();
                    r
                })
                .map(|r| reqwest::RequestBuilder::from_parts(app.client.clone(), r))
                .unwrap(),
            status: 404,
            code: "unknown_source",
        },
        Refusal {
            name: "no headers",
            request: unsigned(&body),
            status: 401,
            code: "missing_header",
        },
        Refusal {
            name: "no signature",
            request: unsigned(&body)
                .header("webhook-id", "r2")
                .header("webhook-timestamp", ts.to_string()),
            status: 401,
            code: "missing_header",
        },
        Refusal {
            name: "wrong secret",
            request: signed_with(
                "r3",
                ts,
                hookstream_ingest::signature::signature_header(
                    hookstream_ingest::signature::KeyRule::Polar,
                    &hookstream_shared::config::Secret::new("polar_whs_wrong"),
                    "r3",
                    ts,
                    body.as_bytes(),
                ),
                &body,
            ),
            status: 401,
            code: "signature_mismatch",
        },
        Refusal {
            name: "signature of another body",
            request: signed_with("r4", ts, sign("r4", ts, &customer_created("c2")), &body),
            status: 401,
            code: "signature_mismatch",
        },
        Refusal {
            name: "signature of another id",
            request: signed_with("r5", ts, sign("other", ts, &body), &body),
            status: 401,
            code: "signature_mismatch",
        },
        Refusal {
            name: "stale",
            request: signed_with("r6", ts - 600, sign("r6", ts - 600, &body), &body),
            status: 401,
            code: "timestamp_too_old",
        },
        Refusal {
            name: "future",
            request: signed_with("r7", ts + 600, sign("r7", ts + 600, &body), &body),
            status: 401,
            code: "timestamp_in_future",
        },
        Refusal {
            name: "only unknown versions",
            request: signed_with(
                "r8",
                ts,
                sign("r8", ts, &body).replacen("v1,", "v1a,", 1),
                &body,
            ),
            status: 401,
            code: "no_v1_signature",
        },
        Refusal {
            name: "malformed timestamp",
            request: unsigned(&body)
                .header("webhook-id", "r9")
                .header("webhook-timestamp", "soon")
                .header("webhook-signature", sign("r9", ts, &body)),
            status: 401,
            code: "malformed_header",
        },
        Refusal {
            name: "signed, not an envelope",
            request: signed_with("r10", ts, sign("r10", ts, not_envelope), not_envelope),
            status: 400,
            code: "invalid_payload",
        },
        Refusal {
            name: "signed, not JSON",
            request: signed_with("r11", ts, sign("r11", ts, "hello"), "hello"),
            status: 400,
            code: "invalid_payload",
        },
        Refusal {
            name: "signed, wrong content type",
            request: signed_with("r12", ts, sign("r12", ts, &body), &body)
                .header("content-type", "text/plain"),
            status: 415,
            code: "unsupported_media_type",
        },
        Refusal {
            name: "signed, an API version that is not one",
            request: signed_with("r14", ts, sign("r14", ts, &body), &body)
                .header("webhook-api-version", "2026-10 ".repeat(8)),
            status: 400,
            code: "invalid_api_version",
        },
        Refusal {
            name: "signed, two API versions",
            request: signed_with("r15", ts, sign("r15", ts, &body), &body)
                .header("webhook-api-version", "2026-10")
                .header("webhook-api-version", "2027-01"),
            status: 400,
            code: "invalid_api_version",
        },
        Refusal {
            name: "over the size limit",
            request: {
                let big = polar_event(
                    "customer.created",
                    json!({"id": "c", "pad": "x".repeat(4096)}),
                );
                signed_with("r13", ts, sign("r13", ts, &big), &big)
            },
            status: 413,
            code: "payload_too_large",
        },
    ];
    for case in cases {
        let response = case.request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], case.code, "{}: {answer}", case.name);
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            case.name
        );
        assert!(
            !answer.to_string().contains(crate::helpers::SECRET),
            "{}",
            case.name
        );
    }
    assert_eq!(app.log_count().await, 0, "a refused webhook stores nothing");
    // and the service still takes good ones
    assert_eq!(app.webhook("ok", &body).send().await.unwrap().status(), 200);
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_full_request_slot_table_is_503_with_retry_after(pool: PgPool) {
    let app = TestIngest::spawn_with(
        pool,
        &[
            ("INGEST_MAX_IN_FLIGHT", "1"),
            ("INGEST_APPEND_TIMEOUT_MS", "3000"),
        ],
    )
    .await;
    // The only slot is held by a verified webhook waiting for its commit:
    // another session holds the log, as a stuck database would.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("lock table event_log in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let waiting = tokio::spawn(app.webhook("wh-waiting", &customer_created("c0")).send());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let response = app
        .webhook("wh-over", &customer_created("c1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "overloaded");
    // The commit goes through and frees the slot.
    blocker.rollback().await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        app.webhook("wh-over", &customer_created("c1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(app.log_count().await, 2);
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_log_that_cannot_take_writes_gives_503_and_loses_nothing(pool: PgPool) {
    let app = TestIngest::spawn_with(pool, &[("INGEST_APPEND_TIMEOUT_MS", "500")]).await;
    // Another session holds the table: inserts wait, as they would on a
    // database that is stuck or failing over.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("lock table event_log in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let body = customer_created("c1");
    let response = app.webhook("wh-blocked", &body).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"], "event_log_unavailable");

    blocker.rollback().await.unwrap();
    // Polar retries; the event is there exactly once whether or not the
    // waiting insert landed after the 503.
    let retry = app.webhook("wh-blocked", &body).send().await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(app.log_count().await, 1);
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn health_readiness_and_metrics(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.base_url)).send();
    let get_metrics = |path: &str| app.client.get(format!("{}{path}", app.metrics_url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get_metrics("/healthz").await.unwrap().status(), 200);
    assert_eq!(get_metrics("/readyz").await.unwrap().status(), 200);
    // Business volume is not for whoever reaches the webhook endpoint.
    assert_eq!(get("/metrics").await.unwrap().status(), 404);
    app.webhook("m1", &customer_created("c1"))
        .send()
        .await
        .unwrap();
    app.client
        .post(format!("{}/webhooks/polar", app.base_url))
        .body("{}")
        .send()
        .await
        .unwrap();
    let text = get_metrics("/metrics").await.unwrap().text().await.unwrap();
    for expected in [
        r#"hookstream_ingest_requests_total{outcome="accepted",source="polar"} 1"#,
        r#"hookstream_ingest_requests_total{outcome="unauthorized",source="polar"} 1"#,
        r#"hookstream_ingest_verification_failures_total{reason="missing_header",source="polar"} 1"#,
        "hookstream_ingest_batch_size_count 1",
        "hookstream_ingest_commit_seconds_count 1",
        "hookstream_ingest_relay_backlog_events",
        "hookstream_ingest_relay_lag_seconds",
        "hookstream_ingest_relay_publish_errors_total",
    ] {
        assert!(text.contains(expected), "metrics lack {expected}:\n{text}");
    }
    let missing = get("/nowhere").await.unwrap();
    assert_eq!(missing.status(), 404);
    app.stop().await;
}
