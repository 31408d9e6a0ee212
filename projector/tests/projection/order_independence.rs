//! DESIGN.md guarantee 3: the same events in any order, with any duplicates,
//! in any batching, give byte-for-byte the same projections.
//!
//! The streams are polarsim's: every lifecycle Polar produces (renewals,
//! dunning, cancellations, plan changes, shared benefits, deletions), with the
//! envelopes and payloads Polar's own SDK accepts, teams with members and
//! seats (assigned, claimed, revoked, members deleted) included.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde::Deserialize;
use sqlx::PgPool;

use hookstream_projector::projection::{IncomingEvent, dump, generation};

use crate::helpers::apply_into;

#[derive(Deserialize)]
struct Line {
    webhook_id: String,
    body: String,
}

/// polarsim.py: $POLARSIM, else the copy beside this repository.
pub fn polarsim() -> PathBuf {
    let path = std::env::var_os("POLARSIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/tools/polarsim/polarsim.py")
        });
    assert!(
        path.exists(),
        "polarsim not found at {}: set POLARSIM (scripts/test does)",
        path.display()
    );
    path
}

fn polarsim_dir(seed: u32, customers: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("polarsim-{seed}-{customers}"))
}

/// polarsim's `expected.json` for [`stream`]`(seed, customers)`.
pub fn expected(seed: u32, customers: u32) -> serde_json::Value {
    stream(seed, customers);
    let text = std::fs::read_to_string(polarsim_dir(seed, customers).join("expected.json"))
        .expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

/// A polarsim stream, generated once per test binary and seed.
pub fn stream(seed: u32, customers: u32) -> Vec<IncomingEvent> {
    let dir = polarsim_dir(seed, customers);
    let file = dir.join("events.jsonl");
    // polarsim writes expected.json last: a run killed before it is redone.
    if !file.exists() || !dir.join("expected.json").exists() {
        let status = Command::new("python3")
            .arg(polarsim())
            .args([
                "generate",
                "--seed",
                &seed.to_string(),
                "--customers",
                &customers.to_string(),
            ])
            .args(["--days", "60", "--out"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("python3 runs polarsim");
        assert!(status.success(), "polarsim generate failed");
    }
    std::fs::read_to_string(&file)
        .expect("events.jsonl")
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line: Line = serde_json::from_str(line).expect("polarsim line");
            IncomingEvent {
                seq: i as i64 + 1,
                webhook_id: line.webhook_id,
                body: line.body.into_bytes(),
            }
        })
        .collect()
}

/// The stream every test of this binary shares (generated once).
pub fn polarsim_stream() -> &'static [IncomingEvent] {
    shared_stream()
}

fn shared_stream() -> &'static [IncomingEvent] {
    static STREAM: OnceLock<Vec<IncomingEvent>> = OnceLock::new();
    STREAM.get_or_init(|| stream(11, 40))
}

/// A delivery plan: an order of the events (duplicates included) and a batch size.
fn delivery() -> impl Strategy<Value = (Vec<usize>, usize)> {
    let n = shared_stream().len();
    (
        Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        proptest::collection::vec(0..n, 0..n / 5),
        1usize..400,
    )
        .prop_map(|(mut order, duplicates, batch)| {
            order.extend(duplicates);
            (order, batch)
        })
        .prop_shuffle_indices()
}

/// Extension so the duplicates are spread through the order, not appended.
trait ShuffleIndices: Strategy<Value = (Vec<usize>, usize)> + Sized {
    fn prop_shuffle_indices(self) -> BoxedStrategy<(Vec<usize>, usize)>
    where
        Self: 'static,
    {
        self.prop_flat_map(|(order, batch)| (Just(order).prop_shuffle(), Just(batch)))
            .boxed()
    }
}
impl<S: Strategy<Value = (Vec<usize>, usize)>> ShuffleIndices for S {}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn any_order_and_duplicates_give_the_projections_of_in_order_application(pool: PgPool) {
    let events = shared_stream();
    assert!(
        events.len() > 500,
        "a stream with every lifecycle: {} events",
        events.len()
    );
    generation::ensure_live(&pool).await.unwrap();
    let reference = generation::create(&pool, "test").await.unwrap();
    apply_into(&pool, &reference, events, 1).await;
    let expected = dump::dump(&mut pool.acquire().await.unwrap(), &reference)
        .await
        .unwrap();
    assert!(
        expected["effective_grants"].len() > 10,
        "the stream grants benefits"
    );
    assert!(
        expected["customer_states"].len() > 10,
        "the stream has state snapshots"
    );

    // Cases are drawn from proptest's strategies but run here, in async code
    // (the runner's closure is synchronous). The failing plan is printed.
    let cases = std::env::var("ORDER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    for case in 0..cases {
        let (order, batch) = delivery().new_tree(&mut runner).expect("a plan").current();
        // The first case delivers everything in one batch, which the
        // projector decodes on several threads (one per 250 events, up to
        // one per core) and merges.
        let batch = if case == 0 { order.len() } else { batch };
        let candidate = generation::create(&pool, "test").await.unwrap();
        let delivered: Vec<IncomingEvent> = order.iter().map(|&i| events[i].clone()).collect();
        apply_into(&pool, &candidate, &delivered, batch).await;
        let actual = dump::dump(&mut pool.acquire().await.unwrap(), &candidate)
            .await
            .unwrap();
        let differences = dump::compare(&expected, &actual);
        assert!(
            differences.is_empty(),
            "case {case}: {} rows differ with batch size {batch} and {} deliveries; first: {:#?}",
            differences.len(),
            order.len(),
            differences[0]
        );
        generation::drop_generation(&pool, &candidate)
            .await
            .unwrap();
    }
}
