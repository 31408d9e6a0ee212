//! The short form of `loadgen chaos` (RELIABILITY.md): the real debug
//! binaries under a retrying polarsim stream, with `kill -9`s of ingest and
//! both projector replicas, a Postgres crash and restart, a broker outage and
//! storms of terminated Postgres connections, all while webhooks keep arriving.

use std::time::Duration;

use hookstream_tests::chaos::{BrokerChoice, ChaosPlan, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_outages_under_a_retrying_stream_lose_nothing_and_apply_nothing_twice() {
    hookstream_shared::telemetry::init_for_tests();
    let plan = ChaosPlan {
        customers: std::env::var("CHAOS_CUSTOMERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(150),
        rate: 100.0,
        kills: 8,
        postgres_restarts: 1,
        broker_outages: 1,
        connection_storms: 2,
        // Every disruption must happen while the stream still runs: about
        // 45 s of webhooks against about 28 s of disruptions.
        max_pause: Duration::from_millis(1000),
        seed: 11,
        broker: BrokerChoice::Mock,
        data_dir: std::env::temp_dir().join("hookstream-chaos-streams"),
    };
    let report = run(&plan).await.expect("the chaos harness ran");
    report.print();
    assert!(
        report.sender_succeeded,
        "polarsim gave up on deliveries: {}",
        report.send_summary
    );
    assert_eq!(
        report.kills_ingest + report.kills_projector,
        plan.kills,
        "the stream ended before every kill"
    );
    assert_eq!(report.postgres_restarts, 1);
    assert_eq!(report.recovery_seconds.len(), 1);
    assert_eq!(report.broker_outages, 1);
    assert_eq!(report.accepted_while_broker_down, 1);
    assert_eq!(report.connection_storms, 2);
    assert!(
        report.backends_terminated >= 2 && report.blackouts >= 1,
        "the storms cut no connection: {} terminated, {} blackouts",
        report.backends_terminated,
        report.blackouts
    );
    assert_eq!(report.lost, 0, "acknowledged webhooks missing from the log");
    assert_eq!(report.logged_twice, 0);
    assert_eq!(report.unpublished, 0, "events never reached the topic");
    assert_eq!(
        report.passed_over, 0,
        "the projectors passed over messages without applying them"
    );
    assert!(
        report.polarsim_verify_passed,
        "polarsim verify: {}",
        report.polarsim_verify
    );
    assert!(report.drift_passed, "projector verify: {}", report.drift);
    assert!(report.passed(&plan));
}
