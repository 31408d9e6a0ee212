//! DESIGN.md guarantee 7 against poison events: whatever a signed webhook
//! carries, every event acknowledged ends in the projections or as a
//! recorded apply failure; the partition it shares moves on; replay and
//! verify finish and agree with the live consumer; no read fails.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hookstream_projector::projection::{IncomingEvent, generation};
use hookstream_projector::rebuild::replay::replay;
use hookstream_projector::rebuild::verify::{VerifyOptions, verify};

use crate::consumer::{config, publish, start, topic_with, wait_consumed};
use crate::helpers::{Stream, apply, benefit, customer, get, grant, state, subscription, ts};
use crate::replay::{log_events, log_replay, quiet};

/// `len` letters and digits no compression shortens: Postgres compresses an
/// index entry before it judges its size, so a repeated letter would fit.
pub(crate) fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// Customers created, then a hostile event, then a rename of every customer:
/// on one partition, so every rename comes after the hostile event.
fn around(s: &Stream, hostile: impl FnOnce(&Stream) -> IncomingEvent) -> Vec<IncomingEvent> {
    let customers: Vec<Value> = (0..40)
        .map(|i| {
            customer(
                &format!("cus_{i}"),
                Some(&format!("usr_{i}")),
                s.tick(1),
                None,
            )
        })
        .collect();
    let mut events: Vec<IncomingEvent> = customers
        .iter()
        .map(|c| s.event("customer.created", c.clone()))
        .collect();
    events.push(hostile(s));
    for (i, c) in customers.iter().enumerate() {
        let mut renamed = c.clone();
        renamed["name"] = json!(format!("Renamed {i}"));
        renamed["modified_at"] = json!(ts(s.tick(1)));
        events.push(s.event("customer.updated", renamed));
    }
    events
}

/// Logs `events`, runs the consumer over them on a one-partition topic until
/// every message is applied, and checks that every rename landed.
async fn consume_on_one_partition(pool: &PgPool, events: &[IncomingEvent]) -> Vec<IncomingEvent> {
    let logged = log_events(pool, events).await;
    let topic = topic_with(1);
    publish(&topic, &logged).await;
    let running = start(pool, config(&topic, &[("PROJECTOR_BATCH_SIZE", "25")])).await;
    wait_consumed(pool, &topic.name, logged.len(), Duration::from_secs(60)).await;
    running.stop().await;
    for i in 0..40 {
        let (status, state) = get(pool, &format!("/v1/customers/external/usr_{i}/state")).await;
        assert_eq!(status, 200, "usr_{i}: {state}");
        assert_eq!(state["name"], format!("Renamed {i}"), "usr_{i}");
    }
    logged
}

/// `(seq, reason)` of every recorded apply failure of the live generation.
async fn failures(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("select seq, reason from projection.apply_failures order by seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Replays the log into a new live generation, then verifies it against
/// the log: both must finish, and the replay must record the same failures
/// the consumer did.
async fn replay_and_verify_agree(pool: &PgPool) {
    let live_failures = failures(pool).await;
    let stop = CancellationToken::new();
    replay(pool, &log_replay(false, 7), &stop, &mut quiet())
        .await
        .expect("the replay finishes");
    assert_eq!(
        failures(pool).await,
        live_failures,
        "the replay records what the consumer recorded"
    );
    let report = verify(
        pool,
        &VerifyOptions {
            attempts: 1,
            ..VerifyOptions::default()
        },
        &stop,
        &mut quiet(),
    )
    .await
    .expect("verify finishes");
    assert!(report.drift.is_empty(), "{:#?}", report.drift);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_external_id_longer_than_an_index_entry_is_kept_whole_and_its_partition_moves_on(
    pool: PgPool,
) {
    let long = incompressible(5000);
    let s = Stream::new();
    let events = around(&s, |s| {
        s.event(
            "customer.created",
            customer("cus_long", Some(&long), s.tick(1), None),
        )
    });
    consume_on_one_partition(&pool, &events).await;
    let (status, state) = get(&pool, &format!("/v1/customers/external/{long}/state")).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["external_id"], long.as_str(), "read back whole");
    assert_eq!(state["id"], "cus_long");
    assert!(failures(&pool).await.is_empty());
    replay_and_verify_agree(&pool).await;
}

/// Makes every generation's `customers` table (the live one, a replay's, a
/// verify's scratch) refuse the row of `cus_poison` the way Postgres refused
/// an oversized index entry (SQLSTATE 54000): a refusal of a class the
/// projector never counted as the data's, raised by the real database.
async fn poison_customer_rows(pool: &PgPool) {
    sqlx::raw_sql(
        r#"
        create function refuse_poison() returns trigger language plpgsql as $$
        begin
            if new.id = 'cus_poison' then
                raise exception using errcode = 'program_limit_exceeded',
                    message = 'index row size 5024 exceeds btree version 4 maximum 2704 (simulated)';
            end if;
            return new;
        end $$;
        create function poison_new_customer_tables() returns event_trigger language plpgsql as $$
        declare created record;
        begin
            for created in select object_identity from pg_event_trigger_ddl_commands()
                where object_type = 'table' and object_identity like '%.customers'
            loop
                execute format('create trigger refuse_poison before insert or update on %s
                                for each row execute function refuse_poison()', created.object_identity);
            end loop;
        end $$;
        create event trigger poison_new_customer_tables on ddl_command_end
            when tag in ('CREATE TABLE') execute function poison_new_customer_tables();
        "#,
    )
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_event_the_database_refuses_for_any_lasting_reason_is_recorded_and_passed(pool: PgPool) {
    poison_customer_rows(&pool).await;
    let s = Stream::new();
    let events = around(&s, |s| {
        s.event(
            "customer.created",
            customer("cus_poison", Some("usr_poison"), s.tick(1), None),
        )
    });
    let logged = consume_on_one_partition(&pool, &events).await;
    let poison = logged
        .iter()
        .find(|e| String::from_utf8_lossy(&e.body).contains("cus_poison"))
        .unwrap();
    let recorded = failures(&pool).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, poison.seq);
    assert!(
        recorded[0].1.contains("index row size"),
        "{}",
        recorded[0].1
    );
    let (status, _) = get(&pool, "/v1/customers/external/usr_poison/state").await;
    assert_eq!(status, 404, "the refused event wrote nothing");
    replay_and_verify_agree(&pool).await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_refused_event_fails_alone_and_its_batch_mates_are_applied(pool: PgPool) {
    poison_customer_rows(&pool).await;
    crate::helpers::live(&pool).await;
    let s = Stream::new();
    let events = [
        s.event(
            "customer.created",
            customer("cus_a", Some("a"), s.tick(1), None),
        ),
        s.event(
            "customer.created",
            customer("cus_poison", Some("p"), s.tick(1), None),
        ),
        s.event(
            "customer.created",
            customer("cus_b", Some("b"), s.tick(1), None),
        ),
    ];
    let outcome = apply(&pool, &events).await;
    assert_eq!(outcome.failed, 1);
    assert_eq!(outcome.applied.get("customer.created"), Some(&2));
    for external_id in ["a", "b"] {
        let (status, _) = get(
            &pool,
            &format!("/v1/customers/external/{external_id}/state"),
        )
        .await;
        assert_eq!(status, 200, "{external_id}");
    }
    assert_eq!(failures(&pool).await[0].0, events[1].seq);
}

/// Every sort key of every list the read API serves, each way.
const SORTED_READS: &[(&str, &[&str])] = &[
    (
        "/v1/subscriptions/",
        &[
            "customer",
            "status",
            "started_at",
            "current_period_end",
            "ended_at",
            "ends_at",
            "amount",
            "product",
            "discount",
        ],
    ),
    (
        "/v1/benefit-grants/",
        &["created_at", "granted_at", "revoked_at"],
    ),
    (
        "/v1/customer-meters/",
        &[
            "created_at",
            "modified_at",
            "balance",
            "consumed_units",
            "credited_units",
        ],
    ),
];

/// Reads every list sorted by each of its keys both ways; returns the ones
/// that did not answer 200.
pub(crate) async fn failing_sorted_reads(pool: &PgPool) -> Vec<String> {
    let mut failing = Vec::new();
    for (path, keys) in SORTED_READS {
        for key in *keys {
            for sorting in [key.to_string(), format!("-{key}")] {
                let (status, body) = get(pool, &format!("{path}?sorting={sorting}")).await;
                if status != 200 {
                    failing.push(format!("{path}?sorting={sorting}: {status} {body}"));
                }
            }
        }
    }
    failing
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn values_that_cannot_be_sorted_or_cast_are_refused_when_applied_and_no_read_fails(
    pool: PgPool,
) {
    crate::helpers::live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.tick(1), None);
    let good = subscription("sub_good", &c, "prod_1", "active", s.tick(1), None);
    let perk = benefit("ben_1", s.tick(1));
    let mut hostile: Vec<(&str, &str, Value)> = Vec::new();
    let mut huge_amount = subscription("sub_amount", &c, "prod_1", "active", s.tick(1), None);
    huge_amount["amount"] = json!(1e30);
    hostile.push(("amount 1e30", "subscription.created", huge_amount));
    let mut garbage_end = subscription("sub_end", &c, "prod_1", "active", s.tick(1), None);
    garbage_end["current_period_end"] = json!("garbage");
    hostile.push((
        "current_period_end garbage",
        "subscription.updated",
        garbage_end,
    ));
    let mut fractional = subscription("sub_frac", &c, "prod_1", "active", s.tick(1), None);
    fractional["amount"] = json!(29.5);
    hostile.push(("amount 29.5", "subscription.created", fractional));
    let mut meters_object = subscription("sub_meters", &c, "prod_1", "active", s.tick(1), None);
    meters_object["meters"] = json!({"not": "a list"});
    hostile.push(("meters an object", "subscription.created", meters_object));
    let mut garbage_grant = grant("gr_1", &c, &perk, Some("sub_good"), true, s.tick(1), None);
    garbage_grant["granted_at"] = json!("garbage");
    hostile.push(("granted_at garbage", "benefit_grant.created", garbage_grant));
    let listed = grant("gr_2", &c, &perk, Some("sub_good"), true, s.tick(1), None);
    let mut bad_item = state(&c, &[&good], &[&listed]);
    bad_item["granted_benefits"][0]["created_at"] = json!("0000-01-01T00:00:00Z");
    hostile.push((
        "a listed grant in year 0",
        "customer.state_changed",
        bad_item,
    ));
    let mut bad_meter = state(&c, &[&good], &[]);
    bad_meter["active_meters"] = json!([{"id": "m", "meter_id": "m", "balance": "lots",
        "consumed_units": 1, "credited_units": 2, "created_at": ts(s.now()), "modified_at": null}]);
    hostile.push((
        "a meter's balance not a number",
        "customer.state_changed",
        bad_meter,
    ));
    let mut not_a_list = state(&c, &[&good], &[]);
    not_a_list["granted_benefits"] = json!({"id": "x"});
    hostile.push((
        "granted_benefits not a list",
        "customer.state_changed",
        not_a_list,
    ));
    let mut long_id = subscription("sub_x", &c, "prod_1", "active", s.tick(1), None);
    long_id["id"] = json!("s".repeat(3000));
    hostile.push(("a 3000-byte id", "subscription.created", long_id));

    let mut events = vec![s.event("subscription.created", good.clone())];
    let hostile_events: Vec<IncomingEvent> = hostile
        .iter()
        .map(|(_, event_type, data)| s.event(event_type, data.clone()))
        .collect();
    events.extend(hostile_events.iter().cloned());
    let outcome = apply(&pool, &events).await;
    assert_eq!(outcome.failed as usize, hostile.len(), "{outcome:?}");

    let recorded = failures(&pool).await;
    for ((label, _, _), event) in hostile.iter().zip(&hostile_events) {
        let reason = recorded
            .iter()
            .find(|(seq, _)| *seq == event.seq)
            .map(|(_, reason)| reason.as_str());
        let reason = reason.unwrap_or_else(|| panic!("{label}: not recorded"));
        assert!(
            !reason.starts_with("the database refused it"),
            "{label}: the decoder let it through: {reason}"
        );
    }
    let (status, subs) = get(&pool, "/v1/subscriptions/?external_customer_id=usr_1").await;
    assert_eq!(status, 200, "{subs}");
    assert!(
        subs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "sub_good"),
        "{subs}"
    );
    let failing = failing_sorted_reads(&pool).await;
    assert!(failing.is_empty(), "{failing:#?}");
    let live = generation::live(&pool).await.unwrap().unwrap();
    assert!(live.name().starts_with("hookstream_gen_"));
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_event_the_relay_parked_is_applied_from_the_log(pool: PgPool) {
    let s = Stream::new();
    let events = [s.event(
        "customer.created",
        customer("cus_parked", Some("usr_parked"), s.tick(1), None),
    )];
    let logged = log_events(&pool, &events).await;
    // As the relay does when Kafka refuses the message itself.
    hookstream_shared::event_log::park(
        &pool,
        &[(logged[0].seq, "Broker: Message size too large".to_owned())],
    )
    .await
    .unwrap();
    let topic = topic_with(1);
    let running = start(&pool, config(&topic, &[])).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let applied: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("select applied_at from event_log_parked")
                .fetch_one(&pool)
                .await
                .unwrap();
        if applied.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
    let (status, state) = get(&pool, "/v1/customers/external/usr_parked/state").await;
    assert_eq!(status, 200, "{state}");
    replay_and_verify_agree(&pool).await;
}
