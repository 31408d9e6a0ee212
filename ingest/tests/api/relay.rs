//! The relay: committed events reach the topic with the right key, headers
//! and value, and survive the broker being away.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{TestIngest, header, polar_event};

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_event_reaches_the_topic_with_key_headers_and_raw_value(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    let body = polar_event(
        "subscription.updated",
        json!({"id": "sub_1", "customer_id": "cus_1", "customer": {"id": "cus_1"}, "status": "active"}),
    );
    let answer: serde_json::Value = app.answer("wh-relay", &body).await;
    app.wait_all_published(Duration::from_secs(10)).await;

    let messages = app.read_topic(1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "published exactly once");
    let message = &messages[0];
    assert_eq!(message.key(), Some(&b"cus_1"[..]));
    assert_eq!(message.payload(), Some(body.as_bytes()));
    assert_eq!(header(message, "webhook-id"), Some("wh-relay"));
    assert_eq!(header(message, "event-type"), Some("subscription.updated"));
    assert_eq!(header(message, "source"), Some("polar"));
    assert_eq!(
        header(message, "seq"),
        Some(answer["seq"].to_string().as_str())
    );
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn one_customers_events_share_a_partition(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    for (i, customer) in ["cus_a", "cus_b", "cus_a", "cus_c", "cus_a", "cus_b"]
        .iter()
        .enumerate()
    {
        let body = polar_event(
            "order.paid",
            json!({"id": format!("ord_{i}"), "customer_id": customer}),
        );
        assert_eq!(
            app.webhook(&format!("wh-{i}"), &body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    app.wait_all_published(Duration::from_secs(10)).await;
    let messages = app.read_topic(6, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 6);
    let mut partitions: HashMap<Vec<u8>, i32> = HashMap::new();
    for m in &messages {
        let previous = partitions.insert(m.key().unwrap().to_vec(), m.partition());
        assert!(
            previous.is_none_or(|p| p == m.partition()),
            "a key moved partitions"
        );
    }
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn with_the_broker_down_webhooks_are_accepted_and_published_once_it_returns(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    app.kafka.set_broker_up(1, false).unwrap();
    for i in 0..20 {
        let body = polar_event("customer.updated", json!({"id": format!("cus_{i}")}));
        let response = app
            .webhook(&format!("wh-down-{i}"), &body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "accepted while Kafka is down");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.log_count().await, 20);
    assert_eq!(
        app.unpublished_count().await,
        20,
        "nothing is marked published without an ack"
    );

    app.kafka.set_broker_up(1, true).unwrap();
    app.wait_all_published(Duration::from_secs(30)).await;
    let messages = app.read_topic(20, Duration::from_secs(10)).await;
    let mut ids: Vec<&str> = messages
        .iter()
        .filter_map(|m| header(m, "webhook-id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "every event reached the topic");
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn rows_left_unpublished_by_a_crash_are_published_on_start(pool: PgPool) {
    // Rows appended by an earlier run that died before publishing them,
    // including one committed "late" (lower seq inserted after a higher one
    // was already published): the relay must not skip it.
    sqlx::raw_sql(
        "insert into event_log (source, webhook_id, event_type, partition_key, occurred_at, body)
         values ('polar', 'early', 'customer.created', 'c1', now(), '{}'),
                ('polar', 'published', 'customer.created', 'c2', now(), '{}'),
                ('polar', 'late', 'customer.created', 'c3', now(), '{}');
         insert into event_log_outbox (seq) select seq from event_log where webhook_id in ('early', 'late');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let app = TestIngest::spawn(pool).await;
    app.wait_all_published(Duration::from_secs(10)).await;
    let messages = app.read_topic(2, Duration::from_secs(10)).await;
    let mut ids: Vec<&str> = messages
        .iter()
        .filter_map(|m| header(m, "webhook-id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec!["early", "late"]);
    app.stop().await;
}

/// A body `len` bytes long: a Polar envelope padded with one long string.
fn body_of(len: usize, event_type: &str, customer_id: &str) -> String {
    let skeleton = polar_event(
        event_type,
        json!({"id": "ord_big", "customer_id": customer_id, "pad": ""}),
    );
    let pad = len.checked_sub(skeleton.len()).expect("room for padding");
    let body = skeleton.replace("\"pad\":\"\"", &format!("\"pad\":\"{}\"", "x".repeat(pad)));
    assert_eq!(body.len(), len);
    body
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn every_body_ingest_accepts_is_published_and_one_byte_more_is_refused(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    let limit = hookstream_ingest::config::DEFAULT_MAX_BODY_BYTES;
    // The largest event there can be: the longest webhook id, type and key
    // ingest accepts, around the largest body.
    let id = "w".repeat(256);
    let event_type = format!("order.{}", "t".repeat(122));
    let key = "k".repeat(256);
    let largest = body_of(limit, &event_type, &key);
    let answer = app.webhook(&id, &largest).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    app.wait_all_published(Duration::from_secs(10)).await;
    let messages = app.read_topic(1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].payload().map(<[u8]>::len), Some(limit));
    assert_eq!(messages[0].key(), Some(key.as_bytes()));

    let over = body_of(limit + 1, "order.paid", "cus_1");
    let refused = app.webhook("one-byte-over", &over).send().await.unwrap();
    assert_eq!(refused.status(), 413, "refused before the 200");
    assert_eq!(app.log_count().await, 1, "the refused body stored nothing");
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_event_kafka_can_never_take_is_parked_not_retried_forever(pool: PgPool) {
    // A row a replica with a larger body limit accepted (or a topic whose
    // limit was lowered since): larger than this relay's producer takes.
    let body = body_of(
        hookstream_ingest::config::DEFAULT_MAX_BODY_BYTES + 100_000,
        "order.paid",
        "cus_1",
    );
    let appended = hookstream_shared::event_log::append_batch(
        &pool,
        &[hookstream_shared::event_log::NewEvent::from_envelope(
            "polar",
            "accepted-by-a-bigger-limit",
            hookstream_shared::envelope::parse(body.as_bytes()).unwrap(),
            body.clone().into(),
        )],
    )
    .await
    .unwrap();
    let app = TestIngest::spawn(pool.clone()).await;
    let small = polar_event("order.paid", json!({"id": "ord_1", "customer_id": "cus_1"}));
    assert_eq!(
        app.webhook("small", &small).send().await.unwrap().status(),
        200
    );
    // The outbox drains: the small one published, the large one parked.
    app.wait_all_published(Duration::from_secs(15)).await;
    let parked: Vec<(i64, String)> = sqlx::query_as("select seq, reason from event_log_parked")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].0, appended[0].seq());
    assert!(
        parked[0].1.to_lowercase().contains("too large"),
        "{}",
        parked[0].1
    );
    assert_eq!(app.metrics().relay_parked.get(), 1);
    let messages = app.read_topic(1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "only the small one");
    app.stop().await;
}
