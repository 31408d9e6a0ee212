//! `loadgen`: the benchmarks behind BENCHMARKS.md. Each subcommand starts the
//! real release binaries against a fresh database and an embedded broker,
//! drives them, and prints its figures beside a baseline measured in the same
//! run (the machine is shared and noisy; ratios travel better than absolutes).
//!
//! ```text
//! cargo build --release -p hookstream-ingest -p hookstream-projector -p hookstream-tests
//! target/release/loadgen ingest          # group commit vs one transaction per request
//! target/release/loadgen projector       # draining a backlog of polarsim events
//! target/release/loadgen entitlements    # the feature-gate hot path
//! target/release/loadgen end-to-end      # 200 from ingest to visible in the read API
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::Full;
use hyper::Request;

use hookstream_ingest::signature::{KeyRule, signature_header};
use hookstream_shared::config::Secret;
use hookstream_shared::kafka::EmbeddedKafka;
use hookstream_tests::bench::{FreshDatabase, Measured, Pace, Service, drive, free_port};
use hookstream_tests::{SimEvent, generate, read_events};

// mimalloc: the service allocates per request and per batch from several
// threads; glibc's allocator spent a tenth of ingest's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "polar_whs_loadgen_benchmark_secret_0123456789";

#[derive(Parser)]
#[command(about = "Benchmarks for hookstream; see BENCHMARKS.md")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Ingest throughput and latency: group commit against one transaction per request.
    Ingest(IngestArgs),
}

#[derive(Args)]
struct Common {
    /// Postgres server URL without a database; each run gets a fresh database there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    database_server: String,
    /// Where polarsim streams are generated and cached.
    #[arg(long, default_value = "bench-data")]
    data_dir: PathBuf,
    /// Extra settings for the services under test, `NAME=value` (repeatable),
    /// for trying a configuration.
    #[arg(long = "env", value_parser = parse_env)]
    extra_env: Vec<(String, String)>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=value, got {text:?}"))
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    common: Common,
    /// A polarsim events.jsonl whose bodies are sent (default: generated, 2000 customers).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Length of each run.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Keep-alive connections for the full-speed runs: many senders at once,
    /// as when Polar catches up after an outage.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// The fixed rate of the latency runs (requests per second).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Only the group-commit runs (no baseline), for trying settings.
    #[arg(long)]
    skip_baseline: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Ingest(args) => ingest(args).await,
    }
}

fn stream(
    common: &Common,
    events: Option<PathBuf>,
    seed: u32,
    customers: u32,
) -> anyhow::Result<Vec<SimEvent>> {
    let file = match events {
        Some(file) => file,
        None => {
            let dir = common.data_dir.join(format!("polarsim-{seed}-{customers}"));
            eprintln!("generating polarsim stream in {} (cached)", dir.display());
            generate(&dir, seed, customers, 90)?;
            dir.join("events.jsonl")
        }
    };
    read_events(&file)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Signed Polar webhooks over the stream's bodies, each with a new webhook-id
/// (so every one is a new event), signed now (valid for 5 minutes).
struct SignedRequests {
    bodies: Vec<Bytes>,
    ids: Vec<String>,
    signatures: Vec<String>,
    timestamp: String,
    authority: String,
}

impl SignedRequests {
    fn new(events: &[SimEvent], count: usize, run: &str, authority: &str) -> Self {
        let bodies: Vec<Bytes> = events.iter().map(|e| Bytes::from(e.body.clone())).collect();
        let timestamp = unix_now();
        let secret = Secret::new(SECRET);
        let ids: Vec<String> = (0..count).map(|i| format!("{run}-{i}")).collect();
        let signatures = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                signature_header(
                    KeyRule::Polar,
                    &secret,
                    id,
                    timestamp,
                    &bodies[i % bodies.len()],
                )
            })
            .collect();
        Self {
            bodies,
            ids,
            signatures,
            timestamp: timestamp.to_string(),
            authority: authority.to_owned(),
        }
    }

    fn request(&self, i: u64) -> Request<Full<Bytes>> {
        let i = i as usize % self.ids.len();
        Request::post("/webhooks/polar")
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("user-agent", "polar.sh webhooks")
            .header("webhook-id", &self.ids[i])
            .header("webhook-timestamp", &self.timestamp)
            .header("webhook-signature", &self.signatures[i])
            .body(Full::new(self.bodies[i % self.bodies.len()].clone()))
            .expect("valid request")
    }
}

/// One ingest run: fresh database and topic, the ingest binary with `extra`
/// settings, driven at `pace`.
async fn ingest_run(
    args: &IngestArgs,
    events: &[SimEvent],
    label: &str,
    extra: &[(&str, &str)],
    pace: Pace,
    connections: usize,
) -> anyhow::Result<Measured> {
    let run = format!("lg{}", unix_now());
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let kafka = EmbeddedKafka::start(1)?;
    kafka.create_topic("polar.events", 6)?;
    let port = free_port()?;
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database.url.clone()),
        ("KAFKA_BROKERS", kafka.bootstrap_servers().to_owned()),
        ("POLAR_WEBHOOK_SECRET", SECRET.to_owned()),
        ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
    ];
    for (k, v) in extra {
        env.push((k, (*v).to_owned()));
    }
    for (k, v) in &args.common.extra_env {
        env.push((k.as_str(), v.clone()));
    }
    let service = Service::start("ingest", port, &env).await?;
    let authority = format!("127.0.0.1:{port}");
    let total = match pace {
        Pace::Rate(rate) => (rate * args.seconds as f64) as usize,
        // Enough for the fastest this machine could go; signed in advance so
        // the load generator spends its time sending.
        Pace::FullSpeed => 40_000 * args.seconds as usize,
    };
    let requests = Arc::new(SignedRequests::new(events, total, &run, &authority));
    let measured = drive(
        &authority,
        connections,
        pace,
        total as u64,
        Duration::from_secs(args.seconds),
        {
            let requests = requests.clone();
            move |i| requests.request(i)
        },
    )
    .await?;
    println!("{}", measured.summary(label));
    println!("{:<34} {}", "", ingest_internals(&service.base_url).await);
    service.stop()?;
    drop(kafka);
    database.drop_now().await?;
    Ok(measured)
}

/// Mean batch size and mean commit time, from ingest's own metrics.
async fn ingest_internals(base_url: &str) -> String {
    let Ok((200, text)) = hookstream_tests::bench::get(base_url, "/metrics", None).await else {
        return "metrics unavailable".to_owned();
    };
    let text = String::from_utf8_lossy(&text);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let batches = value("hookstream_ingest_batch_size_count");
    format!(
        "ingest saw {batches} batches: mean {:.1} events, mean commit {:.2} ms, mean request {:.2} ms",
        value("hookstream_ingest_batch_size_sum") / batches,
        1000.0 * value("hookstream_ingest_commit_seconds_sum") / batches,
        1000.0 * value("hookstream_ingest_request_seconds_sum")
            / value("hookstream_ingest_request_seconds_count"),
    )
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let events = stream(&args.common, args.events.clone(), 1, 2000)?;
    let mean = events.iter().map(|e| e.body.len()).sum::<usize>() / events.len().max(1);
    println!(
        "ingest: {} polarsim bodies (mean {mean} bytes), {} s per run, {} connections at full speed, {}/s fixed rate",
        events.len(),
        args.seconds,
        args.connections,
        args.rate
    );
    // The baseline commits one transaction per request (batches of one) with
    // as many concurrent commits as connections: what a hand-written handler
    // that inserts and commits per webhook does.
    let per_request: &[(&str, &str)] = &[
        ("INGEST_MAX_BATCH", "1"),
        ("INGEST_COMMIT_CONCURRENCY", "32"),
        ("DATABASE_MAX_CONNECTIONS", "32"),
    ];
    let started = Instant::now();
    let grouped = ingest_run(
        &args,
        &events,
        "group commit, full speed",
        &[],
        Pace::FullSpeed,
        args.connections,
    )
    .await?;
    let grouped_rate = ingest_run(
        &args,
        &events,
        &format!("group commit, {}/s", args.rate),
        &[],
        Pace::Rate(args.rate),
        256,
    )
    .await?;
    if args.skip_baseline {
        return Ok(());
    }
    let baseline = ingest_run(
        &args,
        &events,
        "per-request commit, full speed",
        per_request,
        Pace::FullSpeed,
        args.connections,
    )
    .await?;
    let baseline_rate = ingest_run(
        &args,
        &events,
        &format!("per-request commit, {}/s", args.rate),
        per_request,
        Pace::Rate(args.rate),
        256,
    )
    .await?;
    println!(
        "group commit / per-request: throughput x{:.2}; p99 at {}/s {:.2} ms vs {:.2} ms ({:.0} s in all)",
        grouped.throughput() / baseline.throughput(),
        args.rate,
        grouped_rate.quantile_ms(0.99),
        baseline_rate.quantile_ms(0.99),
        started.elapsed().as_secs_f64()
    );
    let failed = [&baseline, &grouped, &baseline_rate, &grouped_rate]
        .iter()
        .any(|m| m.ok() == 0 || m.transport_errors > 0);
    anyhow::ensure!(
        !failed,
        "a run had no successful request, or had transport errors"
    );
    Ok(())
}
