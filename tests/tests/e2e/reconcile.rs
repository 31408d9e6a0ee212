//! Reconcile against polarsim's `serve-api` (Polar's REST API over the state
//! a stream implies), with the real pipeline running: what webhooks never
//! brought must end up in the projections, through the event log, and
//! `polarsim verify` checks the result through Polar's own SDK.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use hookstream_ingest::config::PolarApiSettings;
use hookstream_ingest::reconcile::polar_api::PolarApi;
use hookstream_ingest::reconcile::{ReconcileOptions, Reconciler, Summary};
use hookstream_local::Pipeline;
use hookstream_projector::rebuild::progress::{ProgressMode, ProgressReport};
use hookstream_projector::rebuild::verify::{self as drift, VerifyOptions};
use hookstream_shared::config::Settings;
use hookstream_tests::{
    ServeApi, generate, pipeline_settings, polarsim_compare, polarsim_send, polarsim_verify,
    wait_until_projected,
};

const SECRET: &str = "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
const TOKEN: &str = "e2e-token-0123456789abcdef0123456789ab";
const API_TOKEN: &str = "polar_oat_reconcile_test_token";

const SCAN: ReconcileOptions = ReconcileOptions {
    scan: true,
    deliveries: false,
};

fn reconcile_pipeline_settings() -> Vec<(String, String)> {
    let topic = format!("e2e-reconcile-{}", uuid::Uuid::new_v4());
    // What reconcile appends is published by the relay's sweep.
    pipeline_settings(&topic, SECRET, TOKEN, &[("RELAY_SWEEP_AFTER_MS", "200")])
}

/// A stream of polarsim's, generated once per seed and size.
fn stream(seed: u32, customers: u32) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reconcile-seed{seed}-{customers}"));
    generate(&dir, seed, customers, 60).unwrap();
    dir
}

fn lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .count()
}

fn polar_settings(url: &str, extra: &[(&str, &str)]) -> PolarApiSettings {
    let mut vars = vec![
        ("POLAR_API_URL".to_owned(), url.to_owned()),
        ("POLAR_ACCESS_TOKEN".to_owned(), API_TOKEN.to_owned()),
        // serve-api has no limit unless asked; the pacer should not slow the tests.
        ("POLAR_API_RATE_LIMIT".to_owned(), "100000".to_owned()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    PolarApiSettings::from_settings(&Settings::from_vars(vars).unwrap()).unwrap()
}

async fn reconcile(
    pool: &PgPool,
    settings: &PolarApiSettings,
    options: ReconcileOptions,
) -> anyhow::Result<Summary> {
    let reconciler = Reconciler::new(
        PolarApi::new(settings)?,
        pool.clone(),
        settings.endpoint_id.clone(),
    );
    let mut progress = ProgressReport::counting(ProgressMode::Quiet, "test", "objects");
    reconciler
        .run_recorded(options, &mut progress, &CancellationToken::new())
        .await
}

/// `polarsim send` of `dir`'s stream with Polar's duplicates and reordering,
/// plus `args`; returns its stdout.
async fn send(dir: &Path, pipeline: &Pipeline, args: &[&str]) -> String {
    let url = format!("http://{}/webhooks/polar", pipeline.ingest_address);
    send_to(dir, &url, args, true).await
}

async fn send_to(dir: &Path, url: &str, args: &[&str], must_succeed: bool) -> String {
    let mut all = vec![
        "--dup-rate",
        "0.2",
        "--reorder-window",
        "50",
        "--concurrency",
        "16",
        "--seed",
        "4",
    ];
    all.extend_from_slice(args);
    let sent = polarsim_send(dir, url, SECRET, &all).await.unwrap();
    if must_succeed {
        assert!(
            sent.success,
            "polarsim send failed:\n{}\n{}",
            sent.report, sent.stderr
        );
    }
    sent.report
}

/// `polarsim verify` against the read API: the true state through Polar's SDK.
async fn assert_verified(dir: &Path, pipeline: &Pipeline) {
    let api = format!("http://{}", pipeline.projector_address);
    let (passed, report) = polarsim_verify(dir, &api, TOKEN).await.unwrap();
    assert!(
        passed,
        "polarsim verify failed:\n{}",
        report.lines().rev().take(25).collect::<Vec<_>>().join("\n")
    );
}

/// Replay agrees with the live projections (the log stays the source of truth).
async fn assert_no_drift(pool: &PgPool) {
    let mut progress = ProgressReport::new(ProgressMode::Quiet, "e2e");
    let report = drift::verify(
        pool,
        &VerifyOptions::default(),
        &CancellationToken::new(),
        &mut progress,
    )
    .await
    .unwrap();
    assert!(report.drift.is_empty(), "{:#?}", report.drift.first());
}

async fn log_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from event_log")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_existing_organization_is_imported_then_kept_current_by_webhooks(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(21, 50);
    let before_install = (lines(&dir) * 7 / 10).to_string();
    // Polar as it was when hookstream was installed: 70% of the stream.
    let api = ServeApi::start(&dir, API_TOKEN, &["--upto", &before_install]).unwrap();
    let pipeline = Pipeline::start_with_pool(reconcile_pipeline_settings(), pool.clone())
        .await
        .unwrap();
    let summary = reconcile(&pool, &polar_settings(&api.url, &[]), SCAN)
        .await
        .unwrap();
    assert!(
        summary.appended > 0 && summary.seen["customer"] > 0,
        "{summary}"
    );
    assert_eq!(summary.unchanged, 0, "{summary}");
    // From then on, webhooks only.
    send(&dir, &pipeline, &["--skip-first", &before_install]).await;
    assert_verified(&dir, &pipeline).await;
    wait_until_projected(&pool).await.unwrap();
    // Every read answers as Polar does now.
    let now = ServeApi::start(&dir, API_TOKEN, &[]).unwrap();
    let projector = format!("http://{}", pipeline.projector_address);
    let compared = polarsim_compare(&dir, (&now.url, API_TOKEN), (&projector, TOKEN), 21, 800)
        .await
        .unwrap();
    assert_eq!(compared.differ, 0, "{}", compared.report);
    assert_no_drift(&pool).await;
    pipeline.stop().await.unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_disabled_endpoint_is_recovered_by_a_scan_and_a_second_scan_appends_nothing(
    pool: PgPool,
) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(22, 50);
    let n = lines(&dir);
    // Polar had the endpoint disabled over the middle third: those events
    // were never created for it, so nothing retries them.
    let dropped = format!("{}:{}", n / 3, 2 * n / 3);
    let pipeline = Pipeline::start_with_pool(reconcile_pipeline_settings(), pool.clone())
        .await
        .unwrap();
    let report = send(&dir, &pipeline, &["--drop-range", &dropped]).await;
    assert!(report.contains("not sent"), "{report}");
    let api = ServeApi::start(&dir, API_TOKEN, &[]).unwrap();
    let settings = polar_settings(&api.url, &[]);
    let first = reconcile(&pool, &settings, SCAN).await.unwrap();
    assert!(first.appended > 0, "{first}");
    assert_verified(&dir, &pipeline).await;

    // Once the first scan's deletions are projected, nothing is left to find.
    wait_until_projected(&pool).await.unwrap();
    let rows = log_rows(&pool).await;
    let second = reconcile(&pool, &settings, SCAN).await.unwrap();
    assert_eq!(second.appended, 0, "{second}");
    assert_eq!(second.removed, 0, "{second}");
    assert_eq!(second.unchanged, first.objects(), "{second}");
    assert_eq!(log_rows(&pool).await, rows, "the second scan appended");
    assert_no_drift(&pool).await;
    pipeline.stop().await.unwrap();
}

/// Polar as polar-sdk 1.0.x knows it: no flat member list, so members are
/// read customer by customer; read in API version 2027-01 beside webhooks
/// of 2026-10. After the scan, every read Polar's SDK makes answers as
/// Polar's would.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn after_a_scan_in_2027_01_without_the_member_list_every_read_is_polars(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(25, 80);
    let n = lines(&dir);
    let pipeline = Pipeline::start_with_pool(reconcile_pipeline_settings(), pool.clone())
        .await
        .unwrap();
    send(
        &dir,
        &pipeline,
        &["--drop-range", &format!("{}:{}", n / 3, 2 * n / 3)],
    )
    .await;
    let api = ServeApi::start(&dir, API_TOKEN, &["--members-list", "gone"]).unwrap();
    let settings = polar_settings(&api.url, &[("POLAR_API_VERSION", "2027-01")]);
    let summary = reconcile(&pool, &settings, SCAN).await.unwrap();
    assert!(summary.members_per_customer, "{summary}");
    for kind in ["member", "discount", "refund", "customer_seat", "meter"] {
        assert!(
            summary.seen.contains_key(kind),
            "{kind} not read: {summary}"
        );
    }
    assert!(summary.seen["customer_seat"] > 0, "{summary}");
    // Every request asked for the configured version.
    let stats: serde_json::Value = reqwest::get(format!("{}/__polarsim/stats", api.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["without_polar_version"], 0, "{stats}");
    assert_eq!(
        stats["by_api_version"]["2027-01"], stats["total"],
        "{stats}"
    );
    // ...and the scan's events say which.
    let versions: Vec<Option<String>> =
        sqlx::query_scalar("select distinct api_version from event_log where source = 'polar-api'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![Some("2027-01".to_owned())]);

    wait_until_projected(&pool).await.unwrap();
    assert_verified(&dir, &pipeline).await;
    let projector = format!("http://{}", pipeline.projector_address);
    let compared = polarsim_compare(&dir, (&api.url, API_TOKEN), (&projector, TOKEN), 25, 1200)
        .await
        .unwrap();
    assert_eq!(compared.differ, 0, "{}", compared.report);
    assert_no_drift(&pool).await;
    pipeline.stop().await.unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn customers_deleted_while_the_endpoint_was_disabled_are_removed(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    // Polar deletes about 3% of customers; this stream deletes two.
    let dir = stream(3, 100);
    let events = hookstream_tests::read_events(&dir.join("events.jsonl")).unwrap();
    // The endpoint went dark just before the first deletion and stayed so:
    // every deletion after it is known only to Polar's API.
    let first_deletion = events
        .iter()
        .position(|e| e.event_type == "customer.deleted")
        .expect("the stream deletes customers");
    let pipeline = Pipeline::start_with_pool(reconcile_pipeline_settings(), pool.clone())
        .await
        .unwrap();
    send(&dir, &pipeline, &["--limit", &first_deletion.to_string()]).await;
    wait_until_projected(&pool).await.unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let deleted_in_polar: Vec<String> = expected["customers"]
        .as_object()
        .unwrap()
        .values()
        .filter(|c| c["deleted"] == true)
        .map(|c| c["customer_id"].as_str().unwrap().to_owned())
        .collect();
    let live_here: Vec<String> = sqlx::query_scalar(
        "select id from projection.customers where deleted_at is null and id = any($1)",
    )
    .bind(&deleted_in_polar)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !live_here.is_empty(),
        "some customers Polar deleted are live here"
    );

    let api = ServeApi::start(&dir, API_TOKEN, &[]).unwrap();
    let summary = reconcile(&pool, &polar_settings(&api.url, &[]), SCAN)
        .await
        .unwrap();
    assert_eq!(
        summary.removed_by_kind["customer"] as usize,
        live_here.len(),
        "{summary}"
    );
    assert_eq!(summary.missed_by_pages, 0, "{summary}");
    assert_verified(&dir, &pipeline).await;
    assert_no_drift(&pool).await;
    pipeline.stop().await.unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn failed_deliveries_land_once_and_a_redelivery_changes_nothing(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(23, 40);
    let n = lines(&dir);
    let (from, to) = (n / 2, n / 2 + 60);
    let failed = dir.join("failed-deliveries.txt");
    let pipeline = Pipeline::start_with_pool(reconcile_pipeline_settings(), pool.clone())
        .await
        .unwrap();
    send(&dir, &pipeline, &["--drop-range", &format!("{from}:{to}")]).await;
    // Those 60 events went to an endpoint that was down: every attempt failed.
    let dead = format!(
        "http://127.0.0.1:{}/webhooks/polar",
        hookstream_tests::bench::free_port().unwrap()
    );
    send_to(
        &dir,
        &dead,
        &[
            "--skip-first",
            &from.to_string(),
            "--limit",
            &to.to_string(),
            "--retries",
            "1",
            "--failed-out",
            failed.to_str().unwrap(),
        ],
        false,
    )
    .await;
    let api = ServeApi::start(
        &dir,
        API_TOKEN,
        &["--failed-deliveries", failed.to_str().unwrap()],
    )
    .unwrap();
    let deliveries_only = ReconcileOptions {
        scan: false,
        deliveries: true,
    };
    let settings = polar_settings(&api.url, &[]);
    let pulled = reconcile(&pool, &settings, deliveries_only).await.unwrap();
    assert_eq!(pulled.deliveries.events, 60, "{pulled}");
    assert!(
        pulled.deliveries.attempts > 60,
        "one row per attempt: {pulled}"
    );
    assert_eq!(pulled.deliveries.appended, 60, "{pulled}");
    assert_eq!(pulled.deliveries.already_logged, 0, "{pulled}");
    // The exact events, under the webhook-ids Polar sent: nothing else needed.
    assert_verified(&dir, &pipeline).await;

    // Someone presses "redeliver" in Polar: the same webhook-id, a duplicate.
    let rows = log_rows(&pool).await;
    let resent = send(
        &dir,
        &pipeline,
        &[
            "--skip-first",
            &from.to_string(),
            "--limit",
            &(from + 1).to_string(),
        ],
    )
    .await;
    assert!(resent.contains("200"), "{resent}");
    let again = reconcile(&pool, &settings, deliveries_only).await.unwrap();
    assert_eq!(again.deliveries.appended, 0, "{again}");
    assert_eq!(again.deliveries.already_logged, 60, "{again}");
    assert_eq!(log_rows(&pool).await, rows, "a redelivery added a row");
    assert_no_drift(&pool).await;
    pipeline.stop().await.unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn webhooks_arriving_during_a_reconcile_still_win_when_newer(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(24, 50);
    let before_install = (lines(&dir) / 2).to_string();
    let api = ServeApi::start(&dir, API_TOKEN, &["--upto", &before_install]).unwrap();
    let pipeline = Pipeline::start_with_pool(reconcile_pipeline_settings(), pool.clone())
        .await
        .unwrap();
    // A slow scan (2 requests a second) while the rest arrives as webhooks:
    // the two interleave, and the scan's versions are the older ones.
    let slow = polar_settings(&api.url, &[("POLAR_API_RATE_LIMIT", "120")]);
    let tail = ["--skip-first", before_install.as_str(), "--rate", "150"];
    let (summary, _) = tokio::join!(reconcile(&pool, &slow, SCAN), send(&dir, &pipeline, &tail));
    let summary = summary.unwrap();
    assert!(
        summary.elapsed > Duration::from_secs(2),
        "the scan overlapped the webhooks: {summary}"
    );
    assert_verified(&dir, &pipeline).await;
    assert_no_drift(&pool).await;
    pipeline.stop().await.unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn polars_rate_limit_is_honoured_with_one_429_per_window_at_most(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(21, 50);
    // Five requests per two-second window; the scan needs more than that.
    let api = ServeApi::start(
        &dir,
        API_TOKEN,
        &["--rate-limit", "5", "--rate-window", "2"],
    )
    .unwrap();
    let summary = reconcile(&pool, &polar_settings(&api.url, &[]), SCAN)
        .await
        .unwrap();
    let passed = summary.requests - summary.rate_limited;
    assert!(
        summary.rate_limited >= 1,
        "the limit never struck: {summary}"
    );
    // Each window lets 5 through; a second 429 in one window would push the
    // count of 429s past the number of windows the passed requests needed.
    assert!(
        summary.rate_limited <= passed.div_ceil(5),
        "more than one 429 per window: {summary}"
    );
    assert!(summary.objects() > 0, "{summary}");
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn bad_tokens_unreachable_apis_and_malformed_pages_fail_clearly_and_a_rerun_recovers(
    pool: PgPool,
) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(21, 50);
    let api = ServeApi::start(&dir, API_TOKEN, &[]).unwrap();

    let wrong = polar_settings(&api.url, &[("POLAR_ACCESS_TOKEN", "polar_oat_wrong")]);
    let error = format!("{:#}", reconcile(&pool, &wrong, SCAN).await.unwrap_err());
    assert!(
        error.contains("POLAR_ACCESS_TOKEN") && error.contains("401"),
        "{error}"
    );
    assert!(
        !error.contains("polar_oat_wrong"),
        "the token leaked: {error}"
    );
    assert_eq!(log_rows(&pool).await, 0);

    let nowhere = format!(
        "http://127.0.0.1:{}",
        hookstream_tests::bench::free_port().unwrap()
    );
    let unreachable = polar_settings(&nowhere, &[("POLAR_API_RETRY_SECS", "2")]);
    let error = format!(
        "{:#}",
        reconcile(&pool, &unreachable, SCAN).await.unwrap_err()
    );
    assert!(
        error.contains("cannot be reached") && error.contains(&nowhere),
        "{error}"
    );
    assert_eq!(log_rows(&pool).await, 0);

    // A server whose customer list is not a page, after products and
    // benefits that are: the error names the list; what was appended stays.
    let broken = BrokenApi::start(&api.url, Breakage::MalformedCustomers).await;
    let error = format!(
        "{:#}",
        reconcile(&pool, &polar_settings(&broken.url, &[]), SCAN)
            .await
            .unwrap_err()
    );
    assert!(
        error.contains("/v1/customers/") && error.contains("not a page"),
        "{error}"
    );
    let partial = log_rows(&pool).await;
    assert!(
        partial > 0,
        "products and benefits were appended before the failure"
    );

    let recorded: Vec<String> =
        sqlx::query_scalar("select outcome from reconcile_runs order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, ["failed", "failed", "failed"]);

    // A rerun completes what the failed run began, adding each object once.
    let rerun = reconcile(&pool, &polar_settings(&api.url, &[]), SCAN)
        .await
        .unwrap();
    assert_eq!(rerun.unchanged as i64, partial, "{rerun}");
    assert_eq!(
        log_rows(&pool).await,
        partial + rerun.appended as i64,
        "{rerun}"
    );
    // Everything read is in the log once; so is each deletion found.
    let absences: i64 = sqlx::query_scalar(
        "select count(*) from event_log where webhook_id like 'polar-api:%:absent-after:%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        log_rows(&pool).await,
        rerun.objects() as i64 + absences,
        "{rerun}"
    );
}

/// How [`BrokenApi`] misbehaves.
#[derive(Clone, Copy)]
enum Breakage {
    /// `/v1/customers/` answers 200 with a body that is not a page.
    MalformedCustomers,
    /// The first this many requests answer 503 (a deploy, an overloaded edge).
    FirstRequestsFail(usize),
}

/// Forwards to serve-api, misbehaving as its [`Breakage`] says: a stand-in
/// for an API answering garbage, or failing for a while, mid-scan.
struct BrokenApi {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl BrokenApi {
    async fn start(upstream: &str, breakage: Breakage) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            hookstream_shared::tls::use_ring_provider();
            let client = reqwest::Client::new();
            let mut accepted = 0usize;
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted += 1;
                let failing = matches!(breakage, Breakage::FirstRequestsFail(n) if accepted <= n);
                let client = client.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut request = vec![0u8; 8192];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&request[..n]).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let malformed = matches!(breakage, Breakage::MalformedCustomers)
                        && target.starts_with("/v1/customers/");
                    let (status, body) = if failing {
                        (
                            "503 Service Unavailable".to_owned(),
                            br#"{"detail":"try again"}"#.to_vec(),
                        )
                    } else if malformed {
                        ("200 OK".to_owned(), br#"{"items": "not a list"}"#.to_vec())
                    } else {
                        let answer = client
                            .get(format!("{upstream}{target}"))
                            .bearer_auth(API_TOKEN)
                            .send()
                            .await
                            .unwrap();
                        (
                            answer.status().to_string(),
                            answer.bytes().await.unwrap().to_vec(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        Self { url, task }
    }
}

impl Drop for BrokenApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of one unlabelled (or exactly labelled) series in ingest's
/// Prometheus text, if present.
async fn metric(pipeline: &Pipeline, series: &str) -> Option<f64> {
    hookstream_shared::tls::use_ring_provider();
    let text = reqwest::get(format!(
        "http://{}/metrics",
        pipeline.ingest_metrics_address
    ))
    .await
    .ok()?
    .text()
    .await
    .ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_periodic_mode_sees_a_disabled_endpoint_and_reconciles_once_for_it(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(21, 50);
    let endpoint = "0b5e2f0c-1d2a-4c3b-9e8f-7a6b5c4d3e2f";
    let api = ServeApi::start(
        &dir,
        API_TOKEN,
        &["--endpoint-enabled", "false", "--endpoint-id", endpoint],
    )
    .unwrap();
    // A run succeeded a moment ago: the interval alone would not start one.
    sqlx::query(
        "insert into reconcile_runs (started_at, finished_at, outcome) values (now(), now(), 'ok')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut settings = reconcile_pipeline_settings();
    settings.extend(
        [
            ("INGEST_RECONCILE_INTERVAL", "1h"),
            ("INGEST_ENDPOINT_CHECK_INTERVAL", "1s"),
            ("POLAR_API_URL", api.url.as_str()),
            ("POLAR_ACCESS_TOKEN", API_TOKEN),
            ("POLAR_API_RATE_LIMIT", "100000"),
            ("POLAR_WEBHOOK_ENDPOINT_ID", endpoint),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let pipeline = Pipeline::start_with_pool(settings, pool.clone())
        .await
        .unwrap();
    let ok_runs = r#"hookstream_ingest_reconcile_runs_total{outcome="ok"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&pipeline, ok_runs).await != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no reconcile after the endpoint was seen disabled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&pipeline, "hookstream_ingest_polar_endpoint_enabled").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&pipeline, "hookstream_ingest_reconcile_leader").await,
        Some(1.0)
    );
    let scanned: i64 =
        sqlx::query_scalar("select count(*) from event_log where source = 'polar-api'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(scanned > 0, "the reconcile appended the organization");
    // Still disabled, checked every second: one run for one disablement.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&pipeline, ok_runs).await, Some(1.0));
    let runs: i64 = sqlx::query_scalar("select count(*) from reconcile_runs where outcome = 'ok'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 2);
    pipeline.stop().await.unwrap();
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_api_failing_for_a_while_is_retried_and_the_scan_completes(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let dir = stream(21, 50);
    let api = ServeApi::start(&dir, API_TOKEN, &[]).unwrap();
    let clean = reconcile(&pool, &polar_settings(&api.url, &[]), SCAN)
        .await
        .unwrap();
    let flaky = BrokenApi::start(&api.url, Breakage::FirstRequestsFail(3)).await;
    let retried = reconcile(&pool, &polar_settings(&flaky.url, &[]), SCAN)
        .await
        .unwrap();
    assert_eq!(retried.retries, 3, "{retried}");
    assert_eq!(retried.objects(), clean.objects(), "{retried}");
    assert_eq!(retried.unchanged, clean.objects(), "{retried}");
}
