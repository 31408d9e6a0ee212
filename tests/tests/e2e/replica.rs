//! The read replica: after a webhook run, Polar's own SDKs read the same
//! from hookstream as from Polar. `polarsim compare` drives polar-sdk with
//! thousands of seeded random reads (every operation hookstream serves, all
//! three API versions) against serve-api over the same stream (Polar's
//! semantics) and against the projector, and reports every difference; the
//! TypeScript SDK reads every resource too.

use std::path::PathBuf;

use sqlx::PgPool;

use hookstream_local::Pipeline;
use hookstream_tests::{
    ServeApi, generate, pipeline_settings, polarsim_compare, polarsim_send, polarsim_verify,
    read_events, ts_sdk_check, wait_until_projected,
};

const SECRET: &str = "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
const TOKEN: &str = "e2e-token-0123456789abcdef0123456789ab";
const REFERENCE_TOKEN: &str = "polar_oat_replica_reference";
/// Calls per comparison: enough that every operation is drawn many times in
/// every version (about 20 s against a debug build).
const CALLS: u32 = 1200;

/// Delivers seed `seed`'s stream as Polar does (duplicates, reordering),
/// written in API version `api_version`, and compares every read. The
/// stream must hold each of `covers`, the event types the seed is chosen for.
async fn webhooks_then_compare(
    pool: PgPool,
    seed: u32,
    api_version: &str,
    covers: &[&str],
) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("replica-seed{seed}-80"));
    generate(&dir, seed, 80, 90).unwrap();
    let types: std::collections::BTreeSet<String> = read_events(&dir.join("events.jsonl"))
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    for event_type in covers {
        assert!(
            types.contains(*event_type),
            "seed {seed} has no {event_type}"
        );
    }
    let topic = format!("e2e-replica-{}", uuid::Uuid::new_v4());
    let pipeline =
        Pipeline::start_with_pool(pipeline_settings(&topic, SECRET, TOKEN, &[]), pool.clone())
            .await
            .unwrap();
    let ingest_url = format!("http://{}/webhooks/polar", pipeline.ingest_address);
    let api_url = format!("http://{}", pipeline.projector_address);
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
            "--api-version",
            api_version,
        ],
    )
    .await
    .unwrap();
    assert!(sent.success, "{}\n{}", sent.report, sent.stderr);
    // The header Polar sent is kept with every event.
    let versions: Vec<Option<String>> =
        sqlx::query_scalar("select distinct api_version from event_log")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![Some(api_version.to_owned())]);
    wait_until_projected(&pool).await.unwrap();
    let (passed, report) = polarsim_verify(&dir, &api_url, TOKEN).await.unwrap();
    assert!(passed, "{report}");

    // Polar as it stands after the whole stream; nothing API-only.
    let polar = ServeApi::start(&dir, REFERENCE_TOKEN, &["--no-api-only"]).unwrap();
    let compared = polarsim_compare(
        &dir,
        (&polar.url, REFERENCE_TOKEN),
        (&api_url, TOKEN),
        seed,
        CALLS,
    )
    .await
    .unwrap();
    assert_eq!(compared.calls, u64::from(CALLS), "{}", compared.report);
    assert_eq!(compared.differ, 0, "{}", compared.report);

    let (passed, report) = ts_sdk_check(&dir, &api_url, TOKEN).await.unwrap();
    assert!(passed, "{report}");
    pipeline.stop().await.unwrap();
    dir
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn polars_sdks_read_webhooks_of_2026_10_exactly_as_polar_serves_them(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let covers = [
        "subscription.migrated",
        "subscription.paused",
        "subscription.resumed",
        "order.refunded",
        "refund.created",
        "refund.updated",
        "discount.created",
        "discount.updated",
        "discount.deleted",
        "benefit.updated",
        "organization.updated",
        "member.deleted",
        "customer.deleted",
    ];
    webhooks_then_compare(pool, 1, "2026-10", &covers).await;
}

/// Webhooks of an endpoint set to 2027-01 carry its seat-price shapes; a
/// 2026-04 or 2026-10 client still gets its own.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn polars_sdks_read_webhooks_of_2027_01_exactly_as_polar_serves_them(pool: PgPool) {
    hookstream_shared::telemetry::init_for_tests();
    let covers = [
        "subscription.migrated",
        "benefit_grant.updated",
        "benefit.updated",
        "customer_seat.claimed",
        "refund.updated",
        "discount.deleted",
    ];
    webhooks_then_compare(pool, 7, "2027-01", &covers).await;
}
