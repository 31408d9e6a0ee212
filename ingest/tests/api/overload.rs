//! Overload (issue 5): far more concurrent webhooks than ingest holds.
//! Excess is refused with 503 and `Retry-After` (never queued without bound),
//! the process survives, and every acknowledged webhook is in the log.

use std::collections::BTreeSet;

use sqlx::PgPool;

use crate::helpers::{TestIngest, now, polar_event, sign};

/// Resident memory of this process (ingest runs in it), in KiB.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn far_more_requests_than_the_queue_holds_get_503_and_lose_nothing(pool: PgPool) {
    const REQUESTS: usize = 2000;
    let app = TestIngest::spawn_with(
        pool,
        &[
            ("INGEST_MAX_IN_FLIGHT", "64"),
            ("INGEST_QUEUE_CAPACITY", "32"),
            ("INGEST_MAX_BATCH", "16"),
            ("INGEST_COMMIT_CONCURRENCY", "1"),
        ],
    )
    .await;
    let before = resident_kib();
    // One shared 64 KiB body (ids differ, so each is a distinct webhook):
    // if ingest queued all of them, memory would grow by ~125 MiB.
    let body = polar_event(
        "customer.created",
        serde_json::json!({"id": "cus_storm", "pad": "x".repeat(64 * 1024)}),
    );
    let shared = bytes::Bytes::from(body.clone());
    let ts = now();
    let url = format!("{}/webhooks/polar", app.base_url);
    let requests = (0..REQUESTS).map(|i| {
        let id = format!("storm-{i}");
        let request = app
            .client
            .post(&url)
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sign(&id, ts, &body))
            .header("content-type", "application/json")
            .body(shared.clone());
        async move {
            let response = request.send().await;
            (
                id,
                response.map(|r| (r.status().as_u16(), r.headers().get("retry-after").cloned())),
            )
        }
    });
    // 400 at a time: six times what ingest admits, within a default
    // file-descriptor limit (each connection costs two here).
    let outcomes: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(requests),
        400,
    ))
    .await;
    let grown_kib = resident_kib().saturating_sub(before);

    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    let mut reset = 0;
    for (id, outcome) in outcomes {
        match outcome {
            Ok((200, _)) => {
                acknowledged.insert(id);
            }
            Ok((503, retry_after)) => {
                assert!(retry_after.is_some(), "503 without Retry-After for {id}");
                refused += 1;
            }
            Ok((status, _)) => panic!("{id}: unexpected status {status}"),
            // Refused before its body was read, the request's connection is
            // closed under the client's upload and the 503 may be lost to a
            // reset. Not acknowledged either way, so Polar would retry it.
            Err(_) => reset += 1,
        }
    }
    assert!(
        refused > 0,
        "the storm overflowed the queue ({} acknowledged)",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty(), "some webhooks got through");
    assert_eq!(acknowledged.len() + refused + reset, REQUESTS);

    let logged: BTreeSet<String> = sqlx::query_scalar("select webhook_id from event_log")
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<&String> = acknowledged.difference(&logged).collect();
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
    assert!(
        grown_kib < 100 * 1024,
        "memory grew by {grown_kib} KiB for {REQUESTS} requests: queueing is not bounded"
    );

    // Still serving once the storm has passed.
    let body = polar_event("customer.created", serde_json::json!({"id": "cus_after"}));
    assert_eq!(
        app.webhook("after-storm", &body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}
