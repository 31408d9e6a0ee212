//! The consumer against a Kafka-protocol broker (librdkafka's mock cluster):
//! exactly-once application across failed transactions, crashes and
//! rebalances. Each test checks the end state against in-order application.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hookstream_projector::projection::{IncomingEvent, dump, generation};
use hookstream_projector::rebuild::DEFAULT_MEMORY_BUDGET;
use hookstream_projector::{Application, ProjectorConfig, offsets};
use hookstream_shared::config::Settings;
use hookstream_shared::envelope;
use hookstream_shared::kafka::EmbeddedKafka;

use crate::helpers::{TOKEN, apply_into, with_uids};
use crate::order_independence::polarsim_stream;

const PARTITIONS: i32 = 3;

pub(crate) struct Topic {
    pub(crate) kafka: EmbeddedKafka,
    pub(crate) name: String,
}

fn topic() -> Topic {
    topic_with(PARTITIONS)
}

/// A fresh topic of `partitions` partitions on a broker of its own.
pub(crate) fn topic_with(partitions: i32) -> Topic {
    hookstream_shared::telemetry::init_for_tests();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let name = format!("test-{}", uuid::Uuid::new_v4());
    kafka.create_topic(&name, partitions).unwrap();
    Topic { kafka, name }
}

/// Publishes events as ingest's relay does: keyed by customer, raw body,
/// hookstream's headers.
pub(crate) async fn publish(topic: &Topic, events: &[IncomingEvent]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", topic.kafka.bootstrap_servers())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for event in events {
        let parsed = envelope::parse(&event.body).unwrap();
        let key = parsed
            .partition_key
            .unwrap_or_else(|| event.webhook_id.clone());
        let headers = hookstream_shared::kafka::message::headers(
            &event.webhook_id,
            &parsed.event_type,
            "polar",
            event.seq,
        );
        producer
            .send(
                FutureRecord::to(&topic.name)
                    .key(&key)
                    .payload(&event.body)
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
}

pub(crate) fn config(topic: &Topic, extra: &[(&str, &str)]) -> ProjectorConfig {
    let mut vars: Vec<(String, String)> = vec![
        (
            "DATABASE_URL".into(),
            "postgres://unused@127.0.0.1/unused".into(),
        ),
        (
            "KAFKA_BROKERS".into(),
            topic.kafka.bootstrap_servers().into(),
        ),
        ("KAFKA_TOPIC".into(), topic.name.clone()),
        ("PROJECTOR_API_TOKENS".into(), TOKEN.into()),
        ("PROJECTOR_LISTEN".into(), "127.0.0.1:0".into()),
        ("PROJECTOR_METRICS_LISTEN".into(), "127.0.0.1:0".into()),
        ("PROJECTOR_BATCH_SIZE".into(), "200".into()),
        ("PROJECTOR_SESSION_TIMEOUT_MS".into(), "6000".into()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    ProjectorConfig::from_settings(&Settings::from_vars(vars).unwrap()).unwrap()
}

pub(crate) struct Running {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

pub(crate) async fn start(pool: &PgPool, config: ProjectorConfig) -> Running {
    let app = Application::build_with_pool(config, pool.clone())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    Running { stop, task }
}

impl Running {
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Messages of `topic` the stored offsets cover.
async fn consumed(pool: &PgPool, topic: &str) -> i64 {
    let consumed: Option<i64> = sqlx::query_scalar(
        "select sum(next_offset)::bigint from projector_offsets where topic = $1",
    )
    .bind(topic)
    .fetch_one(pool)
    .await
    .unwrap();
    consumed.unwrap_or(0)
}

/// The moment the stored offsets cover more than `count` messages, seen
/// from outside as soon as it can be (polling every 2 ms): a batch's commit.
async fn committed_past(pool: &PgPool, topic: &str, count: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumed(pool, topic).await <= count as i64 {
        assert!(Instant::now() < deadline, "nothing past {count} committed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Instant::now()
}

/// The projector binary over the test's database and `topic`, with the
/// settings every run needs; callers add their own and spawn it.
fn projector_binary(pool: &PgPool, topic: &Topic) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_projector"));
    command
        .env_clear()
        .env("DATABASE_URL", crate::helpers::database_url(pool))
        .env("KAFKA_BROKERS", topic.kafka.bootstrap_servers())
        .env("KAFKA_TOPIC", &topic.name)
        .env("PROJECTOR_API_TOKENS", TOKEN)
        .env("PROJECTOR_LISTEN", "127.0.0.1:0")
        .env("PROJECTOR_METRICS_LISTEN", "127.0.0.1:0");
    command
}

/// For each `i`, a grant of `ben` to a new customer `cus_<i>` (external
/// id `usr_<i>`), embedded in the grant: one change each in the feed.
fn grants_to_new_customers(
    s: &crate::helpers::Stream,
    customers: std::ops::Range<usize>,
) -> Vec<IncomingEvent> {
    use crate::helpers::{benefit, customer, grant};
    let b = benefit("ben", s.now());
    customers
        .map(|i| {
            let c = customer(
                &format!("cus_{i}"),
                Some(&format!("usr_{i}")),
                s.now(),
                None,
            );
            s.event(
                "benefit_grant.created",
                grant(&format!("g_{i}"), &c, &b, None, true, s.tick(1), None),
            )
        })
        .collect()
}

/// Waits until the stored offsets cover `count` messages.
pub(crate) async fn wait_consumed(pool: &PgPool, topic: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let consumed = consumed(pool, topic).await;
        if consumed >= count as i64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumed {consumed} of {count} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The live generation equals in-order application of `events`, and the
/// consumer's audit shows no message passed over.
async fn assert_live_equals_in_order(pool: &PgPool, topic: &str, events: &[IncomingEvent]) {
    let passed_over = offsets::messages_passed_over(pool, topic).await.unwrap();
    assert_eq!(passed_over, 0, "messages passed over without being applied");
    let reference = generation::create(pool, "test").await.unwrap();
    apply_into(pool, &reference, events, 1).await;
    let expected = dump::dump(&mut pool.acquire().await.unwrap(), &reference)
        .await
        .unwrap();
    let live = generation::live(pool).await.unwrap().unwrap();
    let actual = dump::dump(&mut pool.acquire().await.unwrap(), &live)
        .await
        .unwrap();
    let differences = dump::compare(&expected, &actual);
    assert!(
        differences.is_empty(),
        "{} rows differ; first: {:#?}",
        differences.len(),
        differences.first()
    );
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn consumes_the_topic_into_the_projections(pool: PgPool) {
    let topic = topic();
    let events = polarsim_stream();
    publish(&topic, events).await;
    let running = start(&pool, config(&topic, &[])).await;
    wait_consumed(&pool, &topic.name, events.len(), Duration::from_secs(60)).await;
    running.stop().await;
    assert_live_equals_in_order(&pool, &topic.name, events).await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn failed_transactions_neither_skip_nor_double_apply(pool: PgPool) {
    let topic = topic();
    let events = polarsim_stream();
    // Every third batch fails at its offsets write, after its projection writes:
    // the whole transaction must roll back and the batch be re-read.
    sqlx::raw_sql(
        "create sequence sabotage;
         create function sabotage() returns trigger language plpgsql as $$
         begin
             if nextval('sabotage') % 3 = 0 then raise exception 'injected failure'; end if;
             return null;
         end $$;
         create trigger sabotage before insert or update on projector_offsets
             for each statement execute function sabotage();",
    )
    .execute(&pool)
    .await
    .unwrap();
    publish(&topic, events).await;
    let running = start(&pool, config(&topic, &[("PROJECTOR_BATCH_SIZE", "97")])).await;
    wait_consumed(&pool, &topic.name, events.len(), Duration::from_secs(120)).await;
    running.stop().await;
    let injected: i64 = sqlx::query_scalar("select last_value from sabotage")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(injected >= 3, "failures were injected");
    sqlx::raw_sql("drop trigger sabotage on projector_offsets")
        .execute(&pool)
        .await
        .unwrap();
    assert_live_equals_in_order(&pool, &topic.name, events).await;
}

/// The fault of issue 11: a batch fails, and so does the reload of the
/// offsets meant to rewind it; then the database is back. The consumer's fetch
/// position is past the failed batch, so applying what comes next would skip
/// it for good while every offset looked consumed.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_batch_whose_rewind_failed_is_still_applied_before_anything_after_it(pool: PgPool) {
    let topic = topic();
    let events = polarsim_stream();
    let third = events.len() / 3;
    let (before, rest) = events.split_at(third);
    let (during, after) = rest.split_at(third);
    publish(&topic, before).await;
    let app = Application::build_with_pool(
        config(&topic, &[("PROJECTOR_BATCH_SIZE", "50")]),
        pool.clone(),
    )
    .await
    .unwrap();
    let metrics = app.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    wait_consumed(&pool, &topic.name, before.len(), Duration::from_secs(60)).await;

    // Hidden, the offsets table fails both the batch and the reload.
    sqlx::raw_sql("alter table projector_offsets rename to projector_offsets_hidden")
        .execute(&pool)
        .await
        .unwrap();
    let (failed_batches, failed_rewinds) =
        (metrics.batch_errors.get(), metrics.rewind_errors.get());
    publish(&topic, during).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.batch_errors.get() == failed_batches
        || metrics.rewind_errors.get() == failed_rewinds
    {
        assert!(Instant::now() < deadline, "the fault never struck");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Back at once: the very next attempt can commit.
    sqlx::raw_sql("alter table projector_offsets_hidden rename to projector_offsets")
        .execute(&pool)
        .await
        .unwrap();
    publish(&topic, after).await;
    wait_consumed(&pool, &topic.name, events.len(), Duration::from_secs(60)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_live_equals_in_order(&pool, &topic.name, events).await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_projector_killed_mid_stream_resumes_exactly_where_it_committed(pool: PgPool) {
    let topic = topic();
    let events = polarsim_stream();
    publish(&topic, events).await;
    generation::ensure_live(&pool).await.unwrap();
    let spawn = || {
        projector_binary(&pool, &topic)
            .env("PROJECTOR_BATCH_SIZE", "50")
            .env("PROJECTOR_SESSION_TIMEOUT_MS", "3000")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("projector binary starts")
    };
    let applied = || consumed(&pool, &topic.name);
    // Kill -9 as soon as some progress is made, several times over.
    let mut kills = 0;
    while kills < 4 && applied().await < events.len() as i64 {
        let mut child = spawn();
        let before = applied().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while applied().await == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL: no shutdown, mid-batch as likely as not
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 2, "the projector was killed mid-stream");
    let mut child = spawn();
    wait_consumed(&pool, &topic.name, events.len(), Duration::from_secs(120)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_live_equals_in_order(&pool, &topic.name, events).await;
}

/// A newcomer's first screen: the projector's own lines, not the NOTICEs
/// Postgres sends while the first generation is created (`schema ... does
/// not exist, skipping`), which sqlx logs at INFO; and, written to a pipe,
/// no colour codes.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_first_start_logs_no_postgres_notices(pool: PgPool) {
    let topic = topic();
    // RUST_LOG unset: the default a newcomer gets.
    let mut child = projector_binary(&pool, &topic)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("projector binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live: Option<String> = sqlx::query_scalar("select generation from projection_live")
            .fetch_optional(&pool)
            .await
            .unwrap();
        if live.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no generation was created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The reader views are created, and the consumer has started.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("created the first projection generation"),
        "{stdout}"
    );
    for noise in [
        "skipping",
        "does not exist",
        "sqlx::postgres::notice",
        "\x1b[",
    ] {
        assert!(
            !stdout.contains(noise),
            "{noise:?} on the first screen:\n{stdout}"
        );
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn two_replicas_share_the_partitions_and_one_takes_over_when_the_other_leaves(pool: PgPool) {
    let topic = topic();
    let events = polarsim_stream();
    let (first, rest) = events.split_at(events.len() / 2);
    publish(&topic, first).await;
    let a = start(&pool, config(&topic, &[])).await;
    let b = start(&pool, config(&topic, &[])).await;
    wait_consumed(&pool, &topic.name, first.len(), Duration::from_secs(60)).await;
    // One replica leaves; the rest of the stream must still be applied, once.
    a.stop().await;
    publish(&topic, rest).await;
    wait_consumed(&pool, &topic.name, events.len(), Duration::from_secs(60)).await;
    b.stop().await;
    assert_live_equals_in_order(&pool, &topic.name, events).await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_cached_entitlement_is_forgotten_as_soon_as_a_batch_revokes_it(pool: PgPool) {
    use crate::helpers::{Stream, benefit, customer, grant};
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let b = benefit("ben", s.now());
    let t = s.tick(1);
    let granted = s.event(
        "benefit_grant.created",
        grant("g", &c, &b, None, true, t, None),
    );
    let revoked = s.event(
        "benefit_grant.revoked",
        grant("g", &c, &b, None, false, t, Some(s.tick(60))),
    );
    forgotten_from_cache(
        &pool,
        &[granted],
        &revoked,
        "external_customer_id=usr_1&benefit_id=ben",
    )
    .await;
}

/// The hardest case for the person cache: a revoked seat names neither its
/// member nor its customer, so the batch must find whom it concerned.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_cached_person_is_forgotten_as_soon_as_their_seat_is_revoked(pool: PgPool) {
    use crate::helpers::{Stream, benefit, grant};
    use crate::members::{member, seat, team, to_member};
    let s = Stream::new();
    let t0 = s.now();
    let acme = team("cus_team", "acme", t0);
    let ada = member("mem_ada", "cus_team", Some("ada"), "member", t0, None);
    let b = benefit("ben", t0);
    let claimed = s.tick(1);
    let before = [
        s.event("customer.created", acme.clone()),
        s.event(
            "customer_seat.claimed",
            seat("seat", "sub", Some(&ada), "claimed", claimed, None),
        ),
        s.event(
            "benefit_grant.created",
            to_member(
                grant("g", &acme, &b, Some("sub"), true, claimed, None),
                &ada,
            ),
        ),
    ];
    let revoked = s.event(
        "customer_seat.revoked",
        seat("seat", "sub", None, "revoked", claimed, Some(s.tick(60))),
    );
    forgotten_from_cache(&pool, &before, &revoked, "external_id=ada&benefit_id=ben").await;
}

/// The success page's question: a check asked before the grant exists
/// answers as soon as the grant's batch commits, woken by the change
/// notification; one that nothing satisfies answers at its timeout.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn waiting_reads_answer_when_the_change_commits_or_at_their_timeout(pool: PgPool) {
    use crate::helpers::{Stream, benefit, customer, grant, subscription};
    use serde_json::json;
    let topic = topic();
    let s = Stream::new();
    let c = customer("cus_w", Some("usr_w"), s.now(), None);
    let b = benefit("ben", s.now());
    let before = [
        s.event("customer.created", c.clone()),
        s.event("benefit.created", b.clone()),
    ];
    let granted = s.event(
        "benefit_grant.created",
        grant("g", &c, &b, None, true, s.tick(5), None),
    );
    publish(&topic, &before).await;
    let app = Application::build_with_pool(config(&topic, &[]), pool.clone())
        .await
        .unwrap();
    let api = format!("http://{}", app.address());
    let metrics = app.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    wait_consumed(&pool, &topic.name, before.len(), Duration::from_secs(30)).await;

    hookstream_shared::tls::use_ring_provider();
    let client = reqwest::Client::new();
    let ask = |query: String| {
        let request = client
            .get(format!("{api}/v1/entitlements/check?{}", with_uids(&query)))
            .bearer_auth(TOKEN);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Wait until change notifications are heard (checks are then cached).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.cache_hits.get() == 0 {
        ask("external_id=usr_w&benefit_id=ben".into()).await;
        assert!(Instant::now() < deadline, "never answered from the cache");
    }

    // A person and a customer, both waiting before the grant is sent.
    assert_eq!(metrics.waiters.get(), 0);
    let waiting: Vec<_> = ["external_id=usr_w", "external_customer_id=usr_w"]
        .into_iter()
        .map(|subject| {
            tokio::spawn(ask(format!(
                "{subject}&benefit_id=ben&wait_for=granted&timeout_ms=20000"
            )))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "answered before the grant"
    );
    assert_eq!(metrics.waiters.get(), 2);
    publish(&topic, std::slice::from_ref(&granted)).await;
    let committed = committed_past(&pool, &topic.name, before.len()).await;
    for waiter in waiting {
        let (status, answer) = waiter.await.unwrap();
        let answered = Instant::now();
        assert_eq!(
            (status, answer["granted"].clone()),
            (200, json!(true)),
            "{answer}"
        );
        assert!(
            answered.saturating_duration_since(committed) < Duration::from_millis(200),
            "answered {:?} after the commit",
            answered - committed
        );
    }

    // The state, waiting for an active subscription.
    let get = |path: String| {
        let request = client.get(format!("{api}{path}")).bearer_auth(TOKEN);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response
                    .json::<serde_json::Value>()
                    .await
                    .unwrap_or_default(),
            )
        }
    };
    let state_waiter = tokio::spawn(get(
        "/v1/customers/external/usr_w/state?wait_for=active_subscription&timeout_ms=20000".into(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!state_waiter.is_finished(), "no subscription yet");
    let consumed_before = before.len() + 1;
    publish(
        &topic,
        &[s.event(
            "subscription.created",
            subscription("sub_w", &c, "prod", "active", s.tick(5), None),
        )],
    )
    .await;
    let committed = committed_past(&pool, &topic.name, consumed_before).await;
    let (status, state) = state_waiter.await.unwrap();
    assert!(Instant::now().saturating_duration_since(committed) < Duration::from_millis(200));
    assert_eq!(status, 200);
    assert_eq!(
        state["active_subscriptions"][0]["id"],
        json!("sub_w"),
        "{state}"
    );
    let asked = Instant::now();
    let (status, _) = get(
        "/v1/customers/external/nobody/state?wait_for=active_subscription&timeout_ms=300".into(),
    )
    .await;
    assert_eq!(status, 404, "no such customer, at the timeout");
    assert!(asked.elapsed() >= Duration::from_millis(300));

    // Nothing will revoke it: the wait ends at its timeout, with the answer as it is.
    let asked = Instant::now();
    let (status, answer) =
        ask("external_id=usr_w&benefit_id=ben&wait_for=revoked&timeout_ms=400".into()).await;
    let waited = asked.elapsed();
    assert_eq!((status, answer["granted"].clone()), (200, json!(true)));
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Already so: no wait at all.
    let asked = Instant::now();
    let (_, answer) =
        ask("external_id=usr_w&benefit_id=ben&wait_for=granted&timeout_ms=20000".into()).await;
    assert_eq!(answer["granted"], json!(true));
    assert!(asked.elapsed() < Duration::from_secs(1));
    for bad in [
        "external_id=usr_w&benefit_id=ben&wait_for=maybe",
        "external_id=usr_w&benefit_id=ben&wait_for=granted&timeout_ms=30001",
        "external_id=usr_w&benefit_id=ben&timeout_ms=100",
    ] {
        assert_eq!(ask(bad.into()).await.0, 422, "{bad}");
    }
    assert_eq!(metrics.waiters.get(), 0);
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// DESIGN's feed contract: a polarsim stream with duplicates, in shuffled
/// order, read through `GET /v1/changes` with a stored cursor while the
/// projector is restarted midway: cursors only grow, none repeats, and each
/// customer's last change carries the true final entitlements.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_change_feed_read_with_a_stored_cursor_ends_in_the_true_entitlements(pool: PgPool) {
    use std::collections::BTreeMap;

    use crate::order_independence::expected;
    let topic = topic();
    let events = polarsim_stream();
    let truth = expected(11, 40);
    // Shuffled, with every fifth event twice: a fixed pseudo-random order.
    let mut order: Vec<&IncomingEvent> = events.iter().chain(events.iter().step_by(5)).collect();
    let mut state = 0x2545_f491_u64;
    for i in (1..order.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let order: Vec<IncomingEvent> = order.into_iter().cloned().collect();
    let (first_half, second_half) = order.split_at(order.len() / 2);

    hookstream_shared::tls::use_ring_provider();
    let client = reqwest::Client::new();
    let mut cursor = 0i64;
    let mut seen: Vec<serde_json::Value> = Vec::new();
    // What the read API showed for each change's customer right after the
    // change was read: a change must never be in the feed before it is.
    let mut shown: BTreeMap<i64, Option<Vec<String>>> = BTreeMap::new();
    let read_all = async |api: &str,
                          cursor: &mut i64,
                          seen: &mut Vec<serde_json::Value>,
                          shown: &mut BTreeMap<i64, Option<Vec<String>>>| loop {
        let page: serde_json::Value = client
            .get(format!("{api}/v1/changes?after={cursor}&limit=37"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().unwrap().clone();
        for item in &items {
            let at = item["cursor"].as_i64().unwrap();
            assert!(
                at > *cursor,
                "cursor {at} after {cursor}: repeated or out of order"
            );
            *cursor = at;
            let state = client
                .get(format!(
                    "{api}/v1/customers/{}/state",
                    item["customer_id"].as_str().unwrap()
                ))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let benefits = if state.status() == 200 {
                let state: serde_json::Value = state.json().await.unwrap();
                let mut ids: Vec<String> = state["granted_benefits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g["benefit_id"].as_str().unwrap().to_owned())
                    .collect();
                ids.sort();
                ids.dedup();
                Some(ids)
            } else {
                None
            };
            shown.insert(at, benefits);
        }
        assert_eq!(page["next_cursor"].as_i64(), Some(*cursor));
        if items.is_empty() {
            return;
        }
        seen.extend(items);
    };
    for half in [first_half, second_half] {
        publish(&topic, half).await;
        let app = Application::build_with_pool(config(&topic, &[]), pool.clone())
            .await
            .unwrap();
        let api = format!("http://{}", app.address());
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        let published = if std::ptr::eq(half, first_half) {
            first_half.len()
        } else {
            order.len()
        };
        // Read while the projector works through the backlog, and once more
        // after it is done.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            read_all(&api, &mut cursor, &mut seen, &mut shown).await;
            if consumed(&pool, &topic.name).await >= published as i64 {
                break;
            }
            assert!(Instant::now() < deadline, "the backlog was not consumed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        read_all(&api, &mut cursor, &mut seen, &mut shown).await;
        // The projector goes away; the reader keeps its cursor.
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    let mut last: BTreeMap<&str, &serde_json::Value> = BTreeMap::new();
    for item in &seen {
        assert_eq!(item["kind"], "customer", "{item}");
        last.insert(item["customer_id"].as_str().unwrap(), item);
    }
    // A customer's last change was readable as soon as it was in the feed:
    // the state read right after it already showed its benefits.
    for item in last.values() {
        let cursor = item["cursor"].as_i64().unwrap();
        if let Some(Some(benefits)) = shown.get(&cursor) {
            let in_feed: Vec<String> =
                serde_json::from_value(item["granted_benefit_ids"].clone()).unwrap();
            assert_eq!(
                benefits, &in_feed,
                "change {cursor} in the feed before it was readable"
            );
        }
    }
    let mut compared = 0;
    for customer in truth["customers"].as_object().unwrap().values() {
        if customer["deleted"] == true {
            continue;
        }
        let id = customer["customer_id"].as_str().unwrap();
        let item = last.get(id).unwrap_or_else(|| panic!("no change for {id}"));
        let mut want: Vec<&str> = customer["granted_benefit_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap())
            .collect();
        want.sort();
        let got: Vec<&str> = item["granted_benefit_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap())
            .collect();
        assert_eq!(got, want, "benefits of {id}: {item}");
        let mut want: Vec<&str> = customer["active_subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        want.sort();
        let mut got: Vec<&str> = item["active_subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        got.sort();
        assert_eq!(got, want, "subscriptions of {id}: {item}");
        compared += 1;
    }
    assert!(compared > 30, "{compared} customers compared");

    // Retention: once changes are pruned, a cursor before them is refused.
    let pruned = hookstream_projector::feed::prune(&pool, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pruned as usize, seen.len());
    let gone = hookstream_projector::feed::read(&pool, 0, 10).await;
    assert!(
        matches!(
            gone,
            Err(hookstream_projector::feed::ReadError::Gone { .. })
        ),
        "{gone:?}"
    );
    assert!(
        hookstream_projector::feed::read(&pool, cursor, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Server-sent events of the feed: a client that drops its connection and
/// comes back with `Last-Event-ID` gets every change after it, with no gap
/// and no repeat, including changes committed while it was away and after.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_change_stream_resumes_after_its_last_event_id_without_gap_or_repeat(pool: PgPool) {
    use crate::helpers::Stream;
    let topic = topic();
    let s = Stream::new();
    let batch = |from: usize, to: usize| grants_to_new_customers(&s, from..to);
    publish(&topic, &batch(0, 10)).await;
    let app = Application::build_with_pool(config(&topic, &[]), pool.clone())
        .await
        .unwrap();
    let api = format!("http://{}", app.address());
    let metrics = app.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    wait_consumed(&pool, &topic.name, 10, Duration::from_secs(30)).await;

    hookstream_shared::tls::use_ring_provider();
    let client = reqwest::Client::new();
    // Reads events until `count` ids have come (heartbeats are comments).
    let read_ids = async |last: Option<i64>, count: usize| -> Vec<i64> {
        let mut request = client
            .get(format!("{api}/v1/changes/stream"))
            .bearer_auth(TOKEN);
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        let mut response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut text = String::new();
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while ids.len() < count {
            let chunk = tokio::time::timeout_at(deadline.into(), response.chunk())
                .await
                .expect("events in time")
                .unwrap()
                .expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                    ids.push(id.trim().parse::<i64>().unwrap());
                }
            }
        }
        ids.truncate(count);
        ids // dropping the response closes the connection
    };
    let first = read_ids(None, 4).await;
    // Away: more changes commit before it comes back, and more after.
    publish(&topic, &batch(10, 16)).await;
    wait_consumed(&pool, &topic.name, 16, Duration::from_secs(30)).await;
    // Each of the 20 customers changes once: 20 changes in all.
    let later = batch(16, 20);
    let (resumed, ()) = tokio::join!(read_ids(first.last().copied(), 20 - first.len()), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&topic, &later).await;
        wait_consumed(&pool, &topic.name, 20, Duration::from_secs(30)).await;
    });
    let all: Vec<i64> = sqlx::query_scalar("select cursor from projection_changes order by cursor")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut got = first.clone();
    got.extend(&resumed);
    assert_eq!(got, all, "no gap, no repeat");
    assert!(all.len() >= 20, "{} changes", all.len());
    let (status, _) = {
        let r = client
            .get(format!("{api}/v1/changes/stream"))
            .bearer_auth(TOKEN)
            .header("last-event-id", "soon")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 422);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        metrics.sse_clients.get(),
        0,
        "closed streams are not counted"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Push: every change reaches the app's endpoint, signed so the official
/// `standardwebhooks` package verifies it, in cursor order, through an app
/// that fails, times out and is down for a while, and across a `kill -9`
/// of the projector mid-delivery.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn every_change_is_pushed_signed_and_in_order_through_failures_and_a_kill(pool: PgPool) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::helpers::Stream;
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// The app: its first two answers are 500, the third comes too late,
    /// the next three are 503 (down), the rest 200.
    #[derive(Default)]
    struct App {
        attempts: AtomicUsize,
        received: Mutex<Vec<(u16, serde_json::Value)>>,
    }
    async fn hook(
        axum::extract::State(app): axum::extract::State<std::sync::Arc<App>>,
        headers: axum::http::HeaderMap,
        body: String,
    ) -> axum::http::StatusCode {
        let n = app.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let status: u16 = match n {
            1 | 2 => 500,
            4..=6 => 503,
            _ => 200,
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        // Recorded on arrival; the third is answered after the sender gave up.
        app.received.lock().unwrap().push((
            if n == 3 { 0 } else { status },
            serde_json::json!({
                "id": header("webhook-id"), "timestamp": header("webhook-timestamp"),
                "signature": header("webhook-signature"), "body": body,
            }),
        ));
        if n == 3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        axum::http::StatusCode::from_u16(status).unwrap()
    }
    let app = std::sync::Arc::new(App::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(app.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let topic = topic();
    let s = Stream::new();
    let batch = |from: usize, to: usize| grants_to_new_customers(&s, from..to);
    let spawn = || {
        projector_binary(&pool, &topic)
            .env("PROJECTOR_SESSION_TIMEOUT_MS", "3000")
            .env("PROJECTOR_NOTIFY_URL", &hook_url)
            .env("PROJECTOR_NOTIFY_SECRET", SECRET)
            .env("PROJECTOR_NOTIFY_TIMEOUT_MS", "500")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("projector binary starts")
    };
    let delivered = || {
        app.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(status, _)| *status == 200)
            .count()
    };
    let wait_for = async |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    publish(&topic, &batch(0, 8)).await;
    let mut projector = spawn();
    wait_for("some changes delivered", &|| delivered() >= 3).await;
    projector.kill().unwrap(); // SIGKILL, in the middle of delivering
    projector.wait().unwrap();
    publish(&topic, &batch(8, 14)).await;
    let mut projector = spawn();
    wait_consumed(&pool, &topic.name, 14, Duration::from_secs(60)).await;
    let cursors: Vec<i64> =
        sqlx::query_scalar("select cursor from projection_changes order by cursor")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(cursors.len(), 14, "one change per customer");
    let delivered_cursors = || -> std::collections::BTreeSet<i64> {
        app.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(status, _)| *status == 200)
            .map(|(_, d)| {
                d["id"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("change_")
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    wait_for("every change delivered", &|| {
        cursors.iter().all(|c| delivered_cursors().contains(c))
    })
    .await;
    projector.kill().unwrap();
    projector.wait().unwrap();

    let received = app.received.lock().unwrap().clone();
    let statuses: Vec<u16> = received.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        &statuses[..6],
        &[500, 500, 0, 503, 503, 503],
        "{statuses:?}"
    );
    // In order: each 200 is the next change, or one sent again (at least
    // once: what was in flight at the kill, or answered too late).
    let mut highest = 0i64;
    let mut seen = std::collections::BTreeSet::new();
    for (_, delivery) in received.iter().filter(|(status, _)| *status == 200) {
        let body: serde_json::Value =
            serde_json::from_str(delivery["body"].as_str().unwrap()).unwrap();
        let cursor = body["cursor"].as_i64().unwrap();
        assert_eq!(delivery["id"], format!("change_{cursor}"));
        assert!(
            cursor > highest || seen.contains(&cursor),
            "{cursor} after {highest}"
        );
        highest = highest.max(cursor);
        seen.insert(cursor);
    }
    // Every signature, through Polar's own choice of library.
    let file = std::env::temp_dir().join(format!("pushed-{}.json", uuid::Uuid::new_v4()));
    let all: Vec<&serde_json::Value> = received.iter().map(|(_, d)| d).collect();
    std::fs::write(&file, serde_json::to_string(&all).unwrap()).unwrap();
    let verify = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys\n\
             from standardwebhooks import Webhook\n\
             wh = Webhook(sys.argv[2])\n\
             ds = json.load(open(sys.argv[1]))\n\
             for d in ds:\n\
             \x20   wh.verify(d['body'], {'webhook-id': d['id'], 'webhook-timestamp': d['timestamp'], 'webhook-signature': d['signature']})\n\
             print(len(ds))\n",
        )
        .arg(&file)
        .arg(SECRET)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        verify.status.success(),
        "standardwebhooks refused a signature: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout).trim(),
        received.len().to_string()
    );
}

/// Runs a projector over `before`, has `query` answered granted from its
/// cache, then publishes `change` and expects the answer to turn false
/// within moments of the batch's commit.
async fn forgotten_from_cache(
    pool: &PgPool,
    before: &[IncomingEvent],
    change: &IncomingEvent,
    query: &str,
) {
    let topic = topic();
    publish(&topic, before).await;
    let config = config(&topic, &[]);
    let app = Application::build_with_pool(config, pool.clone())
        .await
        .unwrap();
    let api = format!("http://{}", app.address());
    let metrics = app.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    wait_consumed(pool, &topic.name, before.len(), Duration::from_secs(30)).await;

    hookstream_shared::tls::use_ring_provider();
    let client = reqwest::Client::new();
    let check = || async {
        let answer: serde_json::Value = client
            .get(format!("{api}/v1/entitlements/check?{}", with_uids(query)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["granted"].as_bool().unwrap()
    };
    // The listener connects right after start; until then checks read Postgres.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.cache_hits.get() == 0 {
        assert!(check().await, "{query} before the change");
        assert!(Instant::now() < deadline, "never answered from the cache");
    }

    publish(&topic, std::slice::from_ref(change)).await;
    wait_consumed(pool, &topic.name, before.len() + 1, Duration::from_secs(30)).await;
    // The batch has committed; its notification reaches the cache within moments.
    let deadline = Instant::now() + Duration::from_secs(2);
    while check().await {
        assert!(
            Instant::now() < deadline,
            "the cache kept a revoked entitlement ({query})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn messages_kafka_lost_before_they_were_applied_are_backfilled_from_the_log(pool: PgPool) {
    use hookstream_shared::event_log::{NewEvent, append_batch};
    hookstream_shared::telemetry::init_for_tests();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = Topic {
        name: format!("test-{}", uuid::Uuid::new_v4()),
        kafka,
    };
    // One partition: the mock broker keeps about 5 MB of it.
    topic.kafka.create_topic(&topic.name, 1).unwrap();

    // The log is the source of truth: the real stream, then 6 MB of events no
    // projection uses, appended and published in that order.
    let stream = polarsim_stream();
    let filler = (0..2000).map(|i| {
        let body = format!(
            r#"{{"type":"payout.created","timestamp":"2026-01-01T00:00:00Z","data":{{"id":"r{i}","pad":"{}"}}}}"#,
            "x".repeat(3000)
        );
        (format!("filler-{i}"), body.into_bytes())
    });
    let all: Vec<(String, Vec<u8>)> = stream
        .iter()
        .map(|e| (e.webhook_id.clone(), e.body.clone()))
        .chain(filler)
        .collect();
    let mut logged = Vec::new();
    for chunk in all.chunks(500) {
        let batch: Vec<NewEvent> = chunk
            .iter()
            .map(|(id, body)| NewEvent {
                source: "polar".into(),
                webhook_id: id.clone(),
                event_type: "x".into(),
                partition_key: "k".into(),
                occurred_at: chrono::Utc::now(),
                api_version: None,
                body: body.clone().into(),
            })
            .collect();
        let seqs = append_batch(&pool, &batch).await.unwrap();
        for ((id, body), appended) in chunk.iter().zip(seqs) {
            logged.push(IncomingEvent {
                seq: appended.seq(),
                webhook_id: id.clone(),
                body: body.clone(),
            });
        }
    }
    publish(&topic, &logged).await;

    let running = start(&pool, config(&topic, &[])).await;
    wait_consumed(&pool, &topic.name, logged.len(), Duration::from_secs(60)).await;
    // The backfill runs before the first batch; give it time to finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let customers: i64 = sqlx::query_scalar("select count(*) from projection.customers")
            .fetch_one(&pool)
            .await
            .unwrap();
        if customers > 0 && dump_equals_in_order(&pool, &logged).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost messages were not backfilled from the log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
}

/// Whether the live generation equals in-order application of `events`.
async fn dump_equals_in_order(pool: &PgPool, events: &[IncomingEvent]) -> bool {
    let reference = generation::create(pool, "test").await.unwrap();
    apply_into(pool, &reference, events, 500).await;
    let expected = dump::dump(&mut pool.acquire().await.unwrap(), &reference)
        .await
        .unwrap();
    let live = generation::live(pool).await.unwrap().unwrap();
    let actual = dump::dump(&mut pool.acquire().await.unwrap(), &live)
        .await
        .unwrap();
    generation::drop_generation(pool, &reference).await.unwrap();
    dump::compare(&expected, &actual).is_empty()
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_replay_from_kafka_while_the_consumer_runs_switches_without_losing_an_event(
    pool: PgPool,
) {
    use hookstream_projector::rebuild::progress::{ProgressMode, ProgressReport};
    use hookstream_projector::rebuild::replay::{ReplayOptions, ReplaySource, replay};

    let topic = topic();
    let events = polarsim_stream();
    let (first, second) = events.split_at(events.len() / 2);
    publish(&topic, first).await;
    let config = config(&topic, &[]);
    let options = ReplayOptions {
        source: ReplaySource::Kafka {
            kafka: config.kafka.clone(),
            group: config.consumer.group_id.clone(),
        },
        keep_old: false,
        chunk: 50,
        memory_budget: DEFAULT_MEMORY_BUDGET,
        unlogged_from: hookstream_projector::rebuild::replay::DEFAULT_UNLOGGED_FROM,
    };
    let running = start(&pool, config).await;
    wait_consumed(&pool, &topic.name, first.len(), Duration::from_secs(60)).await;
    let before = generation::live(&pool).await.unwrap().unwrap();

    // The second half arrives while the replay runs; the live consumer
    // applies it to whichever generation is live at each batch.
    let mut progress = ProgressReport::new(ProgressMode::Quiet, "test");
    let never = CancellationToken::new();
    let (summary, ()) = tokio::join!(
        replay(&pool, &options, &never, &mut progress),
        publish(&topic, second)
    );
    let summary = summary.unwrap();
    assert_eq!(summary.previous, Some(before));
    assert!(summary.events as usize >= first.len(), "{summary:?}");
    wait_consumed(&pool, &topic.name, events.len(), Duration::from_secs(60)).await;
    running.stop().await;
    assert_eq!(
        generation::live(&pool).await.unwrap().unwrap(),
        summary.generation
    );
    assert_live_equals_in_order(&pool, &topic.name, events).await;
}

/// A broker that lost its data comes back with the topic empty, and its
/// offsets start over at 0, below the positions stored in Postgres. Its
/// new messages must not be taken for ones already applied: the consumer
/// starts those partitions over and re-applies the event log.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_topic_recreated_under_the_stored_offsets_is_started_over_and_recovered_from_the_log(
    pool: PgPool,
) {
    use hookstream_shared::event_log::{NewEvent, append_batch};
    let before = topic();
    let stream = polarsim_stream();
    let batch: Vec<NewEvent> = stream
        .iter()
        .map(|e| {
            let parsed = envelope::parse(&e.body).unwrap();
            NewEvent::from_envelope("polar", &e.webhook_id, parsed, e.body.clone().into())
        })
        .collect();
    let logged: Vec<IncomingEvent> = append_batch(&pool, &batch)
        .await
        .unwrap()
        .iter()
        .zip(stream.iter())
        .map(|(appended, e)| IncomingEvent {
            seq: appended.seq(),
            ..e.clone()
        })
        .collect();
    // The first two thirds reach the old broker and are applied.
    let split = logged.len() * 2 / 3;
    publish(&before, &logged[..split]).await;
    let running = start(&pool, config(&before, &[])).await;
    wait_consumed(&pool, &before.name, split, Duration::from_secs(60)).await;
    running.stop().await;

    // The broker comes back empty; the relay publishes what came since.
    let after = Topic {
        kafka: EmbeddedKafka::start(1).unwrap(),
        name: before.name.clone(),
    };
    after.kafka.create_topic(&after.name, PARTITIONS).unwrap();
    publish(&after, &logged[split..]).await;
    let running = start(&pool, config(&after, &[])).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The stored positions follow the new topic, not the old one.
        let on_new_topic = consumed(&pool, &after.name).await == (logged.len() - split) as i64;
        if on_new_topic && dump_equals_in_order(&pool, &logged).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recreated topic's messages were taken for applied ones"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let passed_over = offsets::messages_passed_over(&pool, &after.name)
        .await
        .unwrap();
    assert_eq!(passed_over, 0, "the audit starts over with the partition");
    running.stop().await;
}

/// An open change stream does not hold shutdown past SHUTDOWN_GRACE_SECS.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn shutdown_closes_open_change_streams_after_the_grace(pool: PgPool) {
    let topic = topic();
    let app = Application::build_with_pool(
        config(&topic, &[("SHUTDOWN_GRACE_SECS", "1")]),
        pool.clone(),
    )
    .await
    .unwrap();
    let address = app.address();
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    hookstream_shared::tls::use_ring_provider();
    let stream = reqwest::Client::new()
        .get(format!("http://{address}/v1/changes/stream"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let asked = Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("stopped despite the open stream")
        .unwrap()
        .unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "the grace was given"
    );
    drop(stream);
}
