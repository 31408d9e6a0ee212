use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hookstream_local::Pipeline;
use hookstream_projector::projection::{dump, generation};
use hookstream_projector::rebuild::progress::{ProgressMode, ProgressReport};
use hookstream_projector::rebuild::replay::{ReplayOptions, ReplaySource, replay};
use hookstream_projector::rebuild::verify::{self as drift, VerifyOptions};
use hookstream_shared::kafka::message;
use hookstream_tests::{
    check_entitlements, generate, pipeline_settings, polarsim_send, polarsim_verify, read_events,
    sdk_members_check,
};

const SECRET: &str = "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
const TOKEN: &str = "e2e-token-0123456789abcdef0123456789ab";

/// The webhook-id of every message on the topic, with its count.
fn topic_ids(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> BTreeMap<String, usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("e2e-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + within;
    while ids.values().sum::<usize>() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100))
            && let Some(id) = message::header_text(&m, message::WEBHOOK_ID)
        {
            *ids.entry(id).or_default() += 1;
        }
    }
    ids
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_polarsim_stream_with_duplicates_and_reordering_ends_in_the_true_state(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let customers: u32 = std::env::var("E2E_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-seed5-{customers}"));
    generate(&dir, 5, customers, 90).unwrap();
    let events = read_events(&dir.join("events.jsonl")).unwrap();

    let topic = format!("e2e-{}", uuid::Uuid::new_v4());
    let pipeline =
        Pipeline::start_with_pool(pipeline_settings(&topic, SECRET, TOKEN, &[]), pool.clone())
            .await
            .unwrap();
    let ingest_url = format!("http://{}/webhooks/polar", pipeline.ingest_address);
    let api_url = format!("http://{}", pipeline.projector_address);

    // Deliver like Polar: signed with the raw secret, 20% delivered twice,
    // shuffled within windows of 50, retried on any non-2xx.
    let sent = polarsim_send(
        &dir,
        &ingest_url,
        SECRET,
        &[
            "--dup-rate",
            "0.2",
            "--reorder-window",
            "50",
            "--concurrency",
            "16",
            "--seed",
            "9",
        ],
    )
    .await
    .unwrap();
    let report = sent.report;
    assert!(
        sent.success,
        "polarsim send failed:\n{report}\n{}",
        sent.stderr
    );

    // Every event is in the log exactly once, body byte for byte.
    let logged: Vec<(String, Vec<u8>)> =
        sqlx::query_as("select webhook_id, body from event_log order by seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        logged.len(),
        events.len(),
        "one row per event, duplicates dropped"
    );
    let by_id: BTreeMap<&str, &[u8]> = logged
        .iter()
        .map(|(id, body)| (id.as_str(), body.as_slice()))
        .collect();
    assert_eq!(by_id.len(), events.len());
    for event in &events {
        assert_eq!(
            by_id.get(event.webhook_id.as_str()).copied(),
            Some(event.body.as_bytes()),
            "{}",
            event.webhook_id
        );
    }

    // Every event reaches the topic.
    let bootstrap = pipeline
        .kafka
        .as_ref()
        .unwrap()
        .bootstrap_servers()
        .to_owned();
    let topic_name = topic.clone();
    let expected = events.len();
    let on_topic = tokio::task::spawn_blocking(move || {
        topic_ids(&bootstrap, &topic_name, expected, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let wanted: BTreeSet<&str> = events.iter().map(|e| e.webhook_id.as_str()).collect();
    let got: BTreeSet<&str> = on_topic.keys().map(String::as_str).collect();
    assert_eq!(wanted, got, "every event on the topic");

    // And the projections match polarsim's own ground truth, read through Polar's SDK.
    let (passed, verdict) = polarsim_verify(&dir, &api_url, TOKEN).await.unwrap();
    assert!(passed, "polarsim verify failed:\n{verdict}");
    let (matched, total) = verdict
        .lines()
        .find_map(|l| {
            l.strip_prefix("verify: ")?
                .split_once(' ')?
                .0
                .split_once('/')
        })
        .map(|(m, t)| (m.parse::<u32>().unwrap(), t.parse::<u32>().unwrap()))
        .expect("a verify summary line");
    assert!(total > customers / 2 && matched == total, "{verdict}");
    // Every person polarsim knows, seat holders of teams included, gets the
    // true answer from the entitlement check.
    let (asked, wrong) = check_entitlements(&dir, &api_url, TOKEN).await.unwrap();
    assert!(asked > customers as usize, "{asked} entitlements asked");
    assert!(
        wrong.is_empty(),
        "{} of {asked} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // How far behind ingest the change feed was for the last batch.
    hookstream_shared::tls::use_ring_provider();
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        pipeline.projector_metrics_address
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let lag = hookstream_tests::bench::metric_value(
        &metrics,
        "hookstream_projector_change_feed_lag_seconds ",
    )
    .expect("the feed lag is reported");
    assert!((0.0..60.0).contains(&lag), "feed lag {lag} s");
    // And the members of every customer, through Polar's own SDK.
    let (members_match, report) = sdk_members_check(&dir, &api_url, TOKEN).await.unwrap();
    assert!(members_match, "members through polar-sdk:\n{report}");

    // Nothing was refused as unappliable.
    let failures: i64 = sqlx::query_scalar("select count(*) from projection.apply_failures")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failures, 0);

    // Replay from the log, with the pipeline still running, rebuilds exactly
    // what the live consumer built (DESIGN.md guarantee 4), and verify agrees.
    let consumed = generation::live(&pool).await.unwrap().unwrap();
    let options = ReplayOptions {
        source: ReplaySource::Log,
        keep_old: true,
        chunk: 1000,
        memory_budget: hookstream_projector::rebuild::DEFAULT_MEMORY_BUDGET,
        unlogged_from: hookstream_projector::rebuild::replay::DEFAULT_UNLOGGED_FROM,
    };
    let feed_count = || async {
        let counts: (i64, i64) = sqlx::query_as(
            "select count(*) filter (where kind = 'customer'), count(*) filter (where kind = 'resync')
             from projection_changes",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        counts
    };
    let (changes_before, resyncs_before) = feed_count().await;
    assert!(changes_before > 0, "the consumer wrote the change feed");
    let mut progress = ProgressReport::new(ProgressMode::Quiet, "e2e");
    let summary = replay(&pool, &options, &CancellationToken::new(), &mut progress)
        .await
        .unwrap();
    assert_eq!(summary.previous.as_ref(), Some(&consumed));
    // A replay replays nothing into the feed: one resync marker says re-read.
    assert_eq!(feed_count().await, (changes_before, resyncs_before + 1));
    let live_dump = dump::dump(&mut pool.acquire().await.unwrap(), &consumed)
        .await
        .unwrap();
    let replayed_dump = dump::dump(&mut pool.acquire().await.unwrap(), &summary.generation)
        .await
        .unwrap();
    let differences = dump::compare(&live_dump, &replayed_dump);
    assert!(
        differences.is_empty(),
        "{} rows differ after replay; first: {:#?}",
        differences.len(),
        differences.first()
    );
    let mut progress = ProgressReport::new(ProgressMode::Quiet, "e2e");
    let report = drift::verify(
        &pool,
        &VerifyOptions::default(),
        &CancellationToken::new(),
        &mut progress,
    )
    .await
    .unwrap();
    assert!(report.drift.is_empty(), "{:#?}", report.drift);
    pipeline.stop().await.unwrap();
}
