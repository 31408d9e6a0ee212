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
//! target/release/loadgen replay          # `projector replay` of a 1M-event log
//! target/release/loadgen console         # a 500-event customer's console page, 1M-event log
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
use hookstream_tests::bench::{
    Broker, BrokerChoice, FreshDatabase, Measured, Pace, Service, cpu, drive, free_port, paced,
};
use hookstream_tests::chaos::ChaosPlan;
use hookstream_tests::{SimEvent, generate, read_events};

// mimalloc: the service allocates per request and per batch from several
// threads; glibc's allocator spent a tenth of ingest's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "polar_whs_loadgen_benchmark_secret_0123456789";
const TOKEN: &str = "loadgen-token-0123456789abcdef0123456789";

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
    /// Projector throughput draining a backlog, against one transaction per event.
    Projector(ProjectorArgs),
    /// The feature gate: /v1/entitlements/check against /healthz (the HTTP floor).
    Entitlements(EntitlementsArgs),
    /// Ingest's 200 to the change being visible in the read API, at a fixed rate.
    EndToEnd(EndToEndArgs),
    /// `projector replay` from the event log: default chunks against one
    /// event per transaction.
    Replay(ReplayArgs),
    /// `ingest reconcile` of a whole organization from polarsim's serve-api
    /// (no rate limit), with the time at Polar's 500 requests a minute.
    Reconcile(ReconcileArgs),
    /// Waiting reads and change streams: many parked `wait_for=granted`
    /// checks and SSE clients while grants are applied; memory per waiter
    /// and the time from a grant's commit to its waiter's answer.
    Waiters(WaitersArgs),
    /// The console's customer page (timeline and all) for a customer with
    /// 500 events, in a log of a million, against one with a typical count.
    Console(ConsoleArgs),
    /// Reliability: `kill -9` ingest and the projectors, crash Postgres and
    /// take the broker away at random moments under a retrying polarsim
    /// stream, then check nothing was lost or applied twice (RELIABILITY.md).
    Chaos(ChaosArgs),
}

#[derive(Args)]
struct WaitersArgs {
    #[command(flatten)]
    common: Common,
    /// Parked `wait_for=granted` checks, one per customer and connection.
    #[arg(long, default_value_t = 10_000)]
    waiters: usize,
    /// Open `/v1/changes/stream` clients.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Grants published per second while they wait (0: all at once).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
}

#[derive(Args)]
struct ChaosArgs {
    /// Where polarsim streams are generated and cached.
    #[arg(long, default_value = "bench-data")]
    data_dir: PathBuf,
    /// Customers in the polarsim stream (about 30 events each).
    #[arg(long, default_value_t = 200)]
    customers: u32,
    /// Webhooks per second polarsim sends (retries included).
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// `kill -9`s to inflict, each of ingest or one of the two projectors at random.
    #[arg(long, default_value_t = 100)]
    kills: u32,
    /// Postgres crashes (immediate shutdown) and restarts, on the run's own server.
    #[arg(long, default_value_t = 3)]
    postgres_restarts: u32,
    /// Times the broker becomes unreachable for 2 to 5 seconds.
    #[arg(long, default_value_t = 3)]
    broker_outages: u32,
    /// Storms of 2 to 4 seconds of `pg_terminate_backend` on the services'
    /// connections at random moments.
    #[arg(long, default_value_t = 10)]
    connection_storms: u32,
    /// Longest pause between two disruptions, in milliseconds (the pause is random below it).
    #[arg(long, default_value_t = 1500)]
    max_pause_ms: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Run against this `tansu` binary (a separate Kafka-compatible broker,
    /// in-memory storage) instead of librdkafka's mock cluster.
    #[arg(long)]
    tansu: Option<PathBuf>,
}

#[derive(Args)]
struct ReconcileArgs {
    #[command(flatten)]
    common: Common,
    /// Customers in the simulated organization.
    #[arg(long, default_value_t = 10_000)]
    customers: u32,
}

#[derive(Args)]
struct ConsoleArgs {
    #[command(flatten)]
    common: Common,
    /// Events in the log in all (the polarsim stream, the busy customer's
    /// extra events, and copies of the stream under other keys).
    #[arg(long, default_value_t = 1_000_000)]
    log_events: i64,
    /// Events of the busy customer.
    #[arg(long, default_value_t = 500)]
    customer_events: usize,
    /// Page loads measured per customer.
    #[arg(long, default_value_t = 40)]
    loads: usize,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    common: Common,
    /// A polarsim events.jsonl to log and replay (default: generated, 45000 customers, about 1M events).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Events the one-event-per-transaction baseline replays (it is slow).
    #[arg(long, default_value_t = 20_000)]
    baseline_events: usize,
    /// Instead: replay a small log (default: generated, 1250 customers, about
    /// 34,000 events) while a projector serves it, alone and with entitlement
    /// checks at this rate, alternating, twice each.
    #[arg(long)]
    reads_per_second: Option<f64>,
}

#[derive(Args)]
struct ProjectorArgs {
    #[command(flatten)]
    common: Common,
    /// A polarsim events.jsonl to drain (default: generated, 45000 customers, about 1M events).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Events the one-transaction-per-event baseline drains (it is slow).
    #[arg(long, default_value_t = 20_000)]
    baseline_events: usize,
    /// Partitions of the topic; the mock broker holds 5 MB per partition,
    /// which bounds the backlog.
    #[arg(long, default_value_t = 48)]
    partitions: i32,
    /// Drain from this `tansu` binary (in-memory storage, the whole stream)
    /// instead of librdkafka's mock cluster (which holds 5 MB per partition).
    #[arg(long)]
    tansu: Option<PathBuf>,
}

#[derive(Args)]
struct EntitlementsArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The fixed rate of the latency runs (requests per second).
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
}

#[derive(Args)]
struct EndToEndArgs {
    #[command(flatten)]
    common: Common,
    /// Webhooks per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Every n-th webhook is watched until its change is visible. Each
    /// watcher polls the read API every 2 ms; watching many more loads this
    /// 2-core machine enough to inflate the very latency being measured.
    #[arg(long, default_value_t = 25)]
    sample_every: u64,
}

#[derive(Args, Clone)]
struct Common {
    /// Postgres server URL without a database; each run gets a fresh database there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    database_server: String,
    /// Where polarsim streams are generated and cached.
    #[arg(long, default_value = "bench-data")]
    data_dir: PathBuf,
    /// Leave the last run's database (hookstream_bench) in place for inspection.
    #[arg(long)]
    keep_database: bool,
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
    /// Sweep a setting, `NAME=v1,v2,...` (repeatable): every combination
    /// runs at full speed and at the fixed rate, one table row each, and the
    /// log append alone at full speed closes the table.
    #[arg(long = "sweep", value_parser = parse_sweep)]
    sweep: Vec<(String, Vec<String>)>,
}

fn parse_sweep(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, values) = parse_env(text)?;
    let values: Vec<String> = values.split(',').map(str::to_owned).collect();
    if values.iter().any(String::is_empty) {
        return Err(format!("expected NAME=v1,v2,..., got {text:?}"));
    }
    Ok((name, values))
}

/// Every combination of the swept values, in the order given (the last
/// setting varies fastest).
fn combinations(sweep: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    sweep.iter().fold(vec![Vec::new()], |done, (name, values)| {
        done.iter()
            .flat_map(|prefix| {
                values.iter().map(move |value| {
                    let mut next = prefix.clone();
                    next.push((name.clone(), value.clone()));
                    next
                })
            })
            .collect()
    })
}

/// `loadgen ingest --sweep`: the table that chooses group commit's defaults.
async fn ingest_sweep(args: &IngestArgs, events: &[SimEvent]) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for settings in combinations(&args.sweep) {
        let label = settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let extra: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let full = ingest_run(
            args,
            events,
            &format!("{label}, full speed"),
            &extra,
            Pace::FullSpeed,
            args.connections,
        )
        .await?;
        let paced = ingest_run(
            args,
            events,
            &format!("{label}, {}/s", args.rate),
            &extra,
            Pace::Rate(args.rate),
            256,
        )
        .await?;
        rows.push((label, full, paced));
    }
    let floor = append_alone(
        args,
        events,
        "log append alone, full speed",
        Pace::FullSpeed,
        32,
        4,
    )
    .await?;
    let http_floor_us = http_floor_run(args, events).await?;
    println!(
        "\n| settings | full speed | x floor | CPU per webhook: ingest / Postgres | at {0}/s: p50 | p99 | CPU per webhook: ingest / Postgres |",
        args.rate
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, full, paced) in &rows {
        println!(
            "| {label} | {:.0}/s | x{:.2} | {:.1} / {:.1} us | {:.2} ms | {:.2} ms | {:.1} / {:.1} us |",
            full.measured.throughput(),
            full.measured.throughput() / floor.events_per_second,
            full.cpu.service_us,
            full.cpu.postgres_us,
            paced.measured.quantile_ms(0.50),
            paced.measured.quantile_ms(0.99),
            paced.cpu.service_us,
            paced.cpu.postgres_us,
        );
    }
    println!(
        "log append alone at full speed: {:.0}/s; HTTP alone: {http_floor_us:.1} us of server CPU per request",
        floor.events_per_second
    );
    let failed = rows
        .iter()
        .flat_map(|(_, full, paced)| [&full.measured, &paced.measured])
        .any(|m| m.ok() == 0 || m.transport_errors > 0);
    anyhow::ensure!(
        !failed,
        "a run had no successful request, or had transport errors"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Ingest(args) => ingest(args).await,
        Bench::Projector(args) => projector(args).await,
        Bench::Entitlements(args) => entitlements(args).await,
        Bench::EndToEnd(args) => end_to_end(args).await,
        Bench::Replay(args) => replay(args).await,
        Bench::Reconcile(args) => reconcile(args).await,
        Bench::Chaos(args) => chaos(args).await,
        Bench::Waiters(args) => waiters(args).await,
        Bench::Console(args) => console(args).await,
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
) -> anyhow::Result<IngestRun> {
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
    let spent = CpuSpent::start(service.pid());
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
    let cpu = spent.shares(measured.ok());
    println!("{}", measured.summary(label));
    println!(
        "{:<34} {}",
        "",
        ingest_internals(&service.metrics_url).await
    );
    println!("{:<34} {}", "", cpu.describe("accepted webhook", "ingest"));
    service.stop()?;
    drop(kafka);
    database.drop_now().await?;
    Ok(IngestRun { measured, cpu })
}

/// The HTTP floor: the same signed requests at full speed to `http-floor`,
/// which reads each body and answers as ingest does, and nothing else.
/// Returns the floor server's CPU per request, microseconds.
async fn http_floor_run(args: &IngestArgs, events: &[SimEvent]) -> anyhow::Result<f64> {
    let port = free_port()?;
    let service = Service::start(
        "http-floor",
        port,
        &[("FLOOR_LISTEN", format!("127.0.0.1:{port}"))],
    )
    .await?;
    let authority = format!("127.0.0.1:{port}");
    let total = 40_000 * args.seconds as usize;
    let requests = Arc::new(SignedRequests::new(events, total, "floor", &authority));
    let spent = CpuSpent::start(service.pid());
    let measured = drive(
        &authority,
        args.connections,
        Pace::FullSpeed,
        total as u64,
        Duration::from_secs(args.seconds),
        {
            let requests = requests.clone();
            move |i| requests.request(i)
        },
    )
    .await?;
    let cpu = spent.shares(measured.ok());
    println!("{}", measured.summary("HTTP alone, full speed"));
    println!("{:<34} {}", "", cpu.describe("request", "server"));
    service.stop()?;
    anyhow::ensure!(measured.ok() > 0, "the HTTP floor answered nothing");
    Ok(cpu.service_us)
}

/// What one [`ingest_run`] measured.
struct IngestRun {
    measured: Measured,
    cpu: CpuPerEvent,
}

/// Core-seconds spent by a service, by Postgres and by this load generator
/// with its broker (embedded, or a tansu process) since `start`.
struct CpuSpent {
    service_pid: u32,
    service: f64,
    postgres: f64,
    loadgen: f64,
}

/// CPU seconds of this process and of any tansu broker it runs.
fn loadgen_and_broker_seconds() -> f64 {
    cpu::process_seconds(std::process::id()) + cpu::command_seconds("tansu")
}

impl CpuSpent {
    fn start(service_pid: u32) -> Self {
        Self {
            service_pid,
            service: cpu::process_seconds(service_pid),
            postgres: cpu::command_seconds("postgres"),
            loadgen: loadgen_and_broker_seconds(),
        }
    }

    /// CPU per event since `start`, by process, and the rate at which that
    /// work would fill every core of this machine: the ceiling however it is
    /// spread over them.
    fn per_event(&self, what: &str, service: &str, events: u64) -> String {
        self.shares(events).describe(what, service)
    }

    fn shares(&self, events: u64) -> CpuPerEvent {
        let n = events.max(1) as f64;
        let service_s = cpu::process_seconds(self.service_pid) - self.service;
        let postgres_s = cpu::command_seconds("postgres") - self.postgres;
        let loadgen_s = loadgen_and_broker_seconds() - self.loadgen;
        CpuPerEvent {
            service_us: 1e6 * service_s / n,
            postgres_us: 1e6 * postgres_s / n,
            loadgen_us: 1e6 * loadgen_s / n,
        }
    }
}

/// CPU microseconds per event, by process.
#[derive(Debug, Clone, Copy)]
struct CpuPerEvent {
    service_us: f64,
    postgres_us: f64,
    loadgen_us: f64,
}

impl CpuPerEvent {
    /// The rate at which this work would fill every core.
    fn cap_per_second(&self) -> f64 {
        cpu::cores() * 1e6 / (self.service_us + self.postgres_us + self.loadgen_us)
    }

    fn describe(&self, what: &str, service: &str) -> String {
        format!(
            "CPU per {what}: {service} {:.1} us, Postgres {:.1} us, load generator and broker {:.1} us; {} cores full cap this at {:.0}/s",
            self.service_us,
            self.postgres_us,
            self.loadgen_us,
            cpu::cores(),
            self.cap_per_second(),
        )
    }
}

/// Mean batch size and mean commit time, from ingest's own metrics.
async fn ingest_internals(metrics_url: &str) -> String {
    let Ok((200, text)) = hookstream_tests::bench::get(metrics_url, "/metrics", None).await else {
        return "metrics unavailable".to_owned();
    };
    let text = String::from_utf8_lossy(&text);
    let value = |name: &str| hookstream_tests::bench::metric_value(&text, name).unwrap_or(f64::NAN);
    // Share of a histogram's observations above 25 ms (a bucket bound): tells
    // a slow commit apart from a request that waited for a CPU.
    let over_25ms = |name: &str| -> f64 {
        let within = value(&format!("{name}_bucket{{le=\"0.025\"}}"));
        let all = value(&format!("{name}_count"));
        100.0 * (all - within) / all
    };
    let batches = value("hookstream_ingest_batch_size_count");
    format!(
        "ingest saw {batches} batches: mean {:.1} events, mean commit {:.2} ms ({:.2}% over 25 ms), mean request {:.2} ms ({:.2}% over 25 ms)",
        value("hookstream_ingest_batch_size_sum") / batches,
        1000.0 * value("hookstream_ingest_commit_seconds_sum") / batches,
        over_25ms("hookstream_ingest_commit_seconds"),
        1000.0 * value("hookstream_ingest_request_seconds_sum")
            / value("hookstream_ingest_request_seconds_count"),
        over_25ms("hookstream_ingest_request_seconds"),
    )
}

/// The floor under ingest: the same append (`event_log::append_batch`, its
/// dedup and its outbox row) on the same bodies, straight from this process
/// to Postgres, with no HTTP, signature, envelope parsing or Kafka. `workers`
/// commits run at once, each of `batch` events; at a fixed rate, batch `i`
/// is due at `start + i * batch / rate`. Latencies are per commit.
async fn append_alone(
    args: &IngestArgs,
    events: &[SimEvent],
    label: &str,
    pace: Pace,
    batch: usize,
    workers: usize,
) -> anyhow::Result<AppendFloor> {
    use hookstream_shared::event_log;
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let settings = hookstream_shared::db::DatabaseSettings::for_url(&database.url);
    let pool = hookstream_shared::db::connect_and_migrate(&settings, "loadgen").await?;
    let templates = events
        .iter()
        .map(log_row)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let templates = Arc::new(templates);
    let (batches, batch_pace) = match pace {
        Pace::Rate(rate) => (
            (rate * args.seconds as f64) as u64 / batch as u64,
            Pace::Rate(rate / batch as f64),
        ),
        Pace::FullSpeed => (40_000 * args.seconds / batch as u64, Pace::FullSpeed),
    };
    let run = format!("floor{}", unix_now());
    let measured = paced(
        vec![pool.clone(); workers],
        batch_pace,
        batches,
        Duration::from_secs(args.seconds),
        move |pool, i| {
            let (templates, run) = (templates.clone(), run.clone());
            async move {
                // A fresh webhook id per event, as in the ingest runs: every
                // one is new, none is a duplicate.
                let events: Vec<_> = (0..batch)
                    .map(|k| {
                        let n = i as usize * batch + k;
                        let mut event = templates[n % templates.len()].clone();
                        event.webhook_id = format!("{run}-{n}");
                        event
                    })
                    .collect();
                let status = match event_log::append_batch(&pool, &events).await {
                    Ok(_) => 200,
                    Err(_) => 503,
                };
                (pool, Some(status))
            }
        },
    )
    .await?;
    let events_per_second = measured.throughput() * batch as f64;
    println!(
        "{label:<34} {events_per_second:>9.0}/s events  per commit: p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms  ({} commits of {batch}, {} failed)",
        measured.quantile_ms(0.50),
        measured.quantile_ms(0.99),
        measured.quantile_ms(0.999),
        measured.quantile_ms(1.0),
        measured.ok(),
        measured.sent - measured.ok(),
    );
    pool.close().await;
    database.drop_now().await?;
    Ok(AppendFloor {
        events_per_second,
        commits: measured,
    })
}

/// What [`append_alone`] measured: per commit, and in events.
struct AppendFloor {
    commits: Measured,
    events_per_second: f64,
}

/// The event-log row ingest appends for a polarsim event.
fn log_row(event: &SimEvent) -> anyhow::Result<hookstream_shared::event_log::NewEvent> {
    let body = Bytes::from(event.body.clone());
    Ok(hookstream_shared::event_log::NewEvent::from_envelope(
        "polar",
        &event.webhook_id,
        hookstream_shared::envelope::parse(&body)?,
        body,
    ))
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
    if !args.sweep.is_empty() {
        return ingest_sweep(&args, &events).await;
    }
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
    let (grouped, grouped_cpu) = (grouped.measured, grouped.cpu);
    let grouped_rate = ingest_run(
        &args,
        &events,
        &format!("group commit, {}/s", args.rate),
        &[],
        Pace::Rate(args.rate),
        256,
    )
    .await?
    .measured;
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
    .await?
    .measured;
    let baseline_rate = ingest_run(
        &args,
        &events,
        &format!("per-request commit, {}/s", args.rate),
        per_request,
        Pace::Rate(args.rate),
        256,
    )
    .await?
    .measured;
    // The floor: what Postgres alone gives the same appends on this machine.
    // Ingest cannot answer before its commit, so its p99 cannot beat the
    // commits' own, nor its throughput the appends'.
    let alone = append_alone(
        &args,
        &events,
        "log append alone, full speed",
        Pace::FullSpeed,
        32,
        4,
    )
    .await?;
    let alone_small = append_alone(
        &args,
        &events,
        &format!("log append alone, {}/s", args.rate),
        Pace::Rate(args.rate),
        3,
        8,
    )
    .await?;
    let alone_large = append_alone(
        &args,
        &events,
        &format!("log append alone, {}/s", args.rate),
        Pace::Rate(args.rate),
        25,
        8,
    )
    .await?;
    let http_floor_us = http_floor_run(&args, &events).await?;
    println!(
        "ingest CPU per webhook at full speed: {:.1} us, against {http_floor_us:.1} us for HTTP alone",
        grouped_cpu.service_us
    );
    println!(
        "group commit / per-request: throughput x{:.2}; p99 at {}/s {:.2} ms vs {:.2} ms ({:.0} s in all)",
        grouped.throughput() / baseline.throughput(),
        args.rate,
        grouped_rate.quantile_ms(0.99),
        baseline_rate.quantile_ms(0.99),
        started.elapsed().as_secs_f64()
    );
    println!(
        "against the log append alone: throughput x{:.2} of {:.0}/s; p99 at {}/s {:.2} ms vs the commits' own {:.2} ms (batches of 3) and {:.2} ms (batches of 25)",
        grouped.throughput() / alone.events_per_second,
        alone.events_per_second,
        args.rate,
        grouped_rate.quantile_ms(0.99),
        alone_small.commits.quantile_ms(0.99),
        alone_large.commits.quantile_ms(0.99),
    );
    let failed = [&baseline, &grouped, &baseline_rate, &grouped_rate]
        .iter()
        .any(|m| m.ok() == 0 || m.transport_errors > 0)
        || [&alone, &alone_small, &alone_large]
            .iter()
            .any(|floor| floor.commits.ok() == 0 || floor.commits.ok() < floor.commits.sent);
    anyhow::ensure!(
        !failed,
        "a run had no successful request, or had transport errors"
    );
    Ok(())
}

/// A projector over `database` consuming `topic` on `kafka`, with `extra` settings.
async fn start_projector(
    common: &Common,
    database: &FreshDatabase,
    bootstrap_servers: &str,
    topic: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Service> {
    let port = free_port()?;
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database.url.clone()),
        ("KAFKA_BROKERS", bootstrap_servers.to_owned()),
        ("KAFKA_TOPIC", topic.to_owned()),
        ("PROJECTOR_API_TOKENS", TOKEN.to_owned()),
        ("PROJECTOR_LISTEN", format!("127.0.0.1:{port}")),
        ("DATABASE_MAX_CONNECTIONS", "32".to_owned()),
    ];
    // The run's own settings (a baseline's batch size of 1) win over --env.
    for (k, v) in &common.extra_env {
        env.push((k.as_str(), v.clone()));
    }
    for (k, v) in extra {
        env.push((k, (*v).to_owned()));
    }
    Service::start("projector", port, &env).await
}

/// Waits until the projector has applied `count` messages; returns the time
/// from the call and from the first applied batch.
async fn drain(
    database: &FreshDatabase,
    count: usize,
    label: &str,
) -> anyhow::Result<(Duration, Duration)> {
    use sqlx::Connection as _;
    let started = Instant::now();
    let mut first_progress: Option<Instant> = None;
    let mut last_report = Instant::now();
    let mut connection = sqlx::PgConnection::connect(&database.url).await?;
    loop {
        let done = hookstream_tests::bench::consumed_on(&mut connection).await? as usize;
        if done > 0 && first_progress.is_none() {
            first_progress = Some(Instant::now());
        }
        if done >= count {
            let first = first_progress.unwrap_or(started);
            return Ok((started.elapsed(), first.elapsed()));
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {label}: {done}/{count} after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "{label}: not drained within an hour"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn projector(args: ProjectorArgs) -> anyhow::Result<()> {
    let mut events = stream(&args.common, args.events.clone(), 2, 45_000)?;
    let choice = match &args.tansu {
        Some(binary) => BrokerChoice::Tansu {
            binary: binary.clone(),
        },
        None => {
            // librdkafka's mock broker keeps at most 5 MB per partition and
            // drops older messages: the backlog is cut to what it can hold,
            // with margin.
            let capacity = args.partitions as usize * 4 * 1024 * 1024;
            let mut bytes = 0;
            let fits = events
                .iter()
                .take_while(|e| {
                    bytes += e.body.len() + 200;
                    bytes <= capacity
                })
                .count();
            events.truncate(fits);
            BrokerChoice::Mock
        }
    };
    println!(
        "projector: draining a backlog of {} polarsim events from a {}-partition topic on {}",
        events.len(),
        args.partitions,
        match &choice {
            BrokerChoice::Mock => "the mock broker (all it holds)".to_owned(),
            BrokerChoice::Tansu { binary } => binary.display().to_string(),
        }
    );
    let broker = Broker::start(&choice)?;
    let bootstrap = broker.bootstrap_servers();

    // Baseline: the same projector applying one event per transaction.
    let baseline_events = &events[..args.baseline_events.min(events.len())];
    broker.create_topic("baseline", args.partitions).await?;
    hookstream_tests::bench::publish_stream(&bootstrap, "baseline", baseline_events).await?;
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let service = start_projector(
        &args.common,
        &database,
        &bootstrap,
        "baseline",
        &[("PROJECTOR_BATCH_SIZE", "1")],
    )
    .await?;
    let (_, baseline) = drain(&database, baseline_events.len(), "baseline").await?;
    let baseline_rate = baseline_events.len() as f64 / baseline.as_secs_f64();
    println!(
        "{:<40} {:>9.0} events/s  ({} events in {:.1} s)",
        "one transaction per event",
        baseline_rate,
        baseline_events.len(),
        baseline.as_secs_f64()
    );
    service.stop()?;
    database.drop_now().await?;

    broker.create_topic("backlog", args.partitions).await?;
    let published = Instant::now();
    hookstream_tests::bench::publish_stream(&bootstrap, "backlog", &events).await?;
    eprintln!(
        "  published {} events in {:.1} s",
        events.len(),
        published.elapsed().as_secs_f64()
    );
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let service = start_projector(&args.common, &database, &bootstrap, "backlog", &[]).await?;
    let spent = CpuSpent::start(service.pid());
    let (total, applying) = drain(&database, events.len(), "batched").await?;
    let cost = spent.per_event("event", "projector", events.len() as u64);
    let rate = events.len() as f64 / applying.as_secs_f64();
    println!(
        "{:<40} {:>9.0} events/s  ({} events in {:.1} s from the first batch, {:.1} s from start)",
        "batched (default settings)",
        rate,
        events.len(),
        applying.as_secs_f64(),
        total.as_secs_f64()
    );
    println!("  {cost}");
    println!(
        "batched / one per transaction: x{:.1}",
        rate / baseline_rate
    );
    service.stop()?;
    if !args.common.keep_database {
        database.drop_now().await?;
    }
    Ok(())
}

/// The (external id, benefit id) pairs of a stream's expected state: each
/// customer asked about a benefit it holds and one it does not.
fn entitlement_questions(expected: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(expected)?)?;
    let benefits: Vec<String> = expected["benefits"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| b["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut questions = Vec::new();
    for (external_id, customer) in expected["customers"].as_object().into_iter().flatten() {
        let granted: Vec<&str> = customer["granted_benefit_ids"]
            .as_array()
            .map(|g| g.iter().filter_map(|b| b.as_str()).collect())
            .unwrap_or_default();
        if let Some(held) = granted.first() {
            questions.push((external_id.clone(), (*held).to_owned()));
        }
        if let Some(missing) = benefits.iter().find(|b| !granted.contains(&b.as_str())) {
            questions.push((external_id.clone(), missing.clone()));
        }
    }
    anyhow::ensure!(!questions.is_empty(), "no customers in {}", "expected.json");
    Ok(questions)
}

/// The (external id, benefit id) pairs of a stream's expected entitlements,
/// asked of people (`external_id=`): every external id of a customer or
/// member (seat holders of teams included), about a benefit it holds
/// somewhere and one it holds nowhere.
fn person_questions(expected: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(expected)?)?;
    let mut anywhere: std::collections::BTreeMap<(&str, &str), bool> = Default::default();
    for row in expected["entitlements"].as_array().into_iter().flatten() {
        if let (Some(x), Some(b), Some(granted)) = (
            row["external_id"].as_str(),
            row["benefit_id"].as_str(),
            row["granted"].as_bool(),
        ) {
            *anywhere.entry((x, b)).or_default() |= granted;
        }
    }
    let mut questions = Vec::new();
    let mut asked: std::collections::BTreeSet<(&str, bool)> = Default::default();
    for ((x, b), granted) in anywhere {
        if asked.insert((x, granted)) {
            questions.push((x.to_owned(), b.to_owned()));
        }
    }
    anyhow::ensure!(!questions.is_empty(), "no entitlements in expected.json");
    Ok(questions)
}

async fn entitlements(args: EntitlementsArgs) -> anyhow::Result<()> {
    let dir = args.common.data_dir.join("polarsim-1-2000");
    generate(&dir, 1, 2000, 90)?;
    let events = read_events(&dir.join("events.jsonl"))?;
    let questions = Arc::new(entitlement_questions(&dir.join("expected.json"))?);
    let people = Arc::new(person_questions(&dir.join("expected.json"))?);
    let kafka = EmbeddedKafka::start(1)?;
    kafka.create_topic("polar.events", 6)?;
    hookstream_tests::bench::publish_stream(kafka.bootstrap_servers(), "polar.events", &events)
        .await?;
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let service = start_projector(
        &args.common,
        &database,
        kafka.bootstrap_servers(),
        "polar.events",
        &[],
    )
    .await?;
    drain(&database, events.len(), "projecting").await?;
    println!(
        "entitlements: {} customers projected from {} events; {} questions, {} connections, {} s per run",
        questions.len() / 2,
        events.len(),
        questions.len(),
        args.connections,
        args.seconds
    );
    let authority = service.base_url.trim_start_matches("http://").to_owned();
    // `requests` caps a run (a warm-up); timed runs are capped by time.
    let run_capped = |path_of: Arc<dyn Fn(u64) -> String + Send + Sync>, pace: Pace, requests| {
        let authority = authority.clone();
        async move {
            let host = authority.clone();
            drive(
                &authority,
                args.connections,
                pace,
                requests,
                Duration::from_secs(args.seconds),
                move |i| {
                    Request::get(path_of(i))
                        .header("host", &host)
                        .header("authorization", format!("Bearer {TOKEN}"))
                        .body(Full::new(Bytes::new()))
                        .expect("valid request")
                },
            )
            .await
        }
    };
    let run = |path_of, pace| run_capped(path_of, pace, u64::MAX);
    let q = questions.clone();
    let check_path: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(move |i| {
        let (customer, benefit) = &q[i as usize % q.len()];
        format!("/v1/entitlements/check?external_customer_id={customer}&benefit_id={benefit}")
    });
    let floor_path: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(|_| "/healthz".to_owned());
    let p = people.clone();
    let person_path: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(move |i| {
        let (person, benefit) = &p[i as usize % p.len()];
        format!("/v1/entitlements/check?external_id={person}&benefit_id={benefit}")
    });
    let floor = run(floor_path.clone(), Pace::FullSpeed).await?;
    println!("{}", floor.summary("GET /healthz, full speed"));
    // Each kind of question is asked once just before its first timed run,
    // so the runs measure the cached hot path, not how many distinct
    // questions each has to load first (there are more people than
    // customers). Just before, not all at the start: entries loaded together
    // expire together (PROJECTOR_CACHE_TTL_SECS), and a run crossing that
    // moment measures a burst of misses instead.
    run_capped(check_path.clone(), Pace::FullSpeed, questions.len() as u64).await?;
    // Customer and person checks at full speed in the order A B B A: on this
    // shared machine the rate drifts within a run, and the mirrored order
    // cancels a steady drift from their ratio.
    let checks = run(check_path.clone(), Pace::FullSpeed).await?;
    println!("{}", checks.summary("GET /v1/entitlements/check, full"));
    run_capped(person_path.clone(), Pace::FullSpeed, people.len() as u64).await?;
    let persons = run(person_path.clone(), Pace::FullSpeed).await?;
    println!(
        "{}",
        persons.summary(&format!(
            "GET /v1/entitlements/check?external_id=, full ({} people)",
            people.len() / 2
        ))
    );
    let persons_again = run(person_path.clone(), Pace::FullSpeed).await?;
    println!(
        "{}",
        persons_again.summary("GET /v1/entitlements/check?external_id=, full, again")
    );
    let checks_again = run(check_path.clone(), Pace::FullSpeed).await?;
    println!(
        "{}",
        checks_again.summary("GET /v1/entitlements/check, full, again")
    );
    let floor_rate = run(floor_path, Pace::Rate(args.rate)).await?;
    println!(
        "{}",
        floor_rate.summary(&format!("GET /healthz, {}/s", args.rate))
    );
    let checks_rate = run(check_path, Pace::Rate(args.rate)).await?;
    println!(
        "{}",
        checks_rate.summary(&format!("GET /v1/entitlements/check, {}/s", args.rate))
    );
    let persons_rate = run(person_path, Pace::Rate(args.rate)).await?;
    println!(
        "{}",
        persons_rate.summary(&format!(
            "GET /v1/entitlements/check?external_id=, {}/s",
            args.rate
        ))
    );
    println!(
        "entitlement checks run at {:.0}% of the HTTP floor's rate; p99 at {}/s {:.2} ms (floor {:.2} ms)",
        100.0 * checks.throughput() / floor.throughput(),
        args.rate,
        checks_rate.quantile_ms(0.99),
        floor_rate.quantile_ms(0.99)
    );
    println!(
        "person checks (external_id=) run at {:.0}% of customer checks' rate (A B B A); p99 at {}/s {:.2} ms",
        100.0 * (persons.throughput() + persons_again.throughput())
            / (checks.throughput() + checks_again.throughput()),
        args.rate,
        persons_rate.quantile_ms(0.99),
    );
    service.stop()?;
    database.drop_now().await?;
    anyhow::ensure!(
        checks.ok() > 0 && checks.ok() == checks.sent,
        "some entitlement checks failed"
    );
    anyhow::ensure!(
        persons.ok() > 0 && persons.ok() == persons.sent,
        "some person checks failed"
    );
    Ok(())
}

async fn end_to_end(args: EndToEndArgs) -> anyhow::Result<()> {
    use hookstream_tests::bench::get;
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let kafka = EmbeddedKafka::start(1)?;
    kafka.create_topic("polar.events", 6)?;
    let projector = start_projector(
        &args.common,
        &database,
        kafka.bootstrap_servers(),
        "polar.events",
        &[],
    )
    .await?;
    let port = free_port()?;
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database.url.clone()),
        ("KAFKA_BROKERS", kafka.bootstrap_servers().to_owned()),
        ("POLAR_WEBHOOK_SECRET", SECRET.to_owned()),
        ("INGEST_LISTEN", format!("127.0.0.1:{port}")),
    ];
    for (k, v) in &args.common.extra_env {
        env.push((k.as_str(), v.clone()));
    }
    let ingest = Service::start("ingest", port, &env).await?;
    let ingest_authority = format!("127.0.0.1:{port}");
    let api = projector.base_url.clone();
    let projector_metrics = projector.metrics_url.clone();

    // Each webhook updates one of 2000 customers to a new email, with a newer
    // modified_at than any before, so every one is a visible change.
    // The clock starts once the projector owns every partition (its first
    // group join takes seconds and is not what this measures).
    let joined = Instant::now();
    loop {
        let (_, metrics) = get(&projector_metrics, "/metrics", None).await?;
        let metrics = String::from_utf8_lossy(&metrics);
        let assigned = metrics
            .lines()
            .filter(|l| l.starts_with("hookstream_projector_consumer_lag{"))
            .count();
        if assigned >= 6 {
            break;
        }
        anyhow::ensure!(
            joined.elapsed() < Duration::from_secs(60),
            "the projector did not join the group within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "  projector assigned its partitions after {:.1} s",
        joined.elapsed().as_secs_f64()
    );
    let total = (args.rate * args.seconds as f64) as u64;
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    let secret = Secret::new(SECRET);
    let connections = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / args.rate)).into())
            .await;
        let customer = format!("cus_{:04}", i % 2000);
        let at = (base + chrono::Duration::microseconds(i as i64 * 100))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let email = format!("e{i}@example.com");
        let body = serde_json::json!({
            "type": "customer.updated", "timestamp": at, "api_version": "2026-10",
            "data": {"id": customer, "created_at": base.to_rfc3339(), "modified_at": at, "metadata": {},
                     "external_id": format!("usr_{:04}", i % 2000), "email": email, "email_verified": false,
                     "type": "individual", "name": null, "billing_name": null, "billing_address": null,
                     "tax_id": null, "locale": null, "organization_id": "org", "default_payment_method_id": null,
                     "deleted_at": null, "first_user_event_at": null, "avatar_url": null}
        })
        .to_string();
        let id = format!("e2e-{i}");
        let now = unix_now();
        let request = Request::post("/webhooks/polar")
            .header("host", &ingest_authority)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.to_string())
            .header(
                "webhook-signature",
                signature_header(KeyRule::Polar, &secret, &id, now, body.as_bytes()),
            )
            .body(Full::new(Bytes::from(body)))?;
        let (connections, latencies, failures, authority, api) = (
            connections.clone(),
            latencies.clone(),
            failures.clone(),
            ingest_authority.clone(),
            api.clone(),
        );
        let sampled = i % args.sample_every == 0;
        tasks.spawn(async move {
            let sender = connections.lock().await.pop();
            let mut sender = match sender {
                Some(s) => s,
                None => match hookstream_tests::bench::connect(&authority).await {
                    Ok(s) => s,
                    Err(_) => {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                },
            };
            let ok = match sender.send_request(request).await {
                Ok(response) => response.status() == 200,
                Err(_) => false,
            };
            connections.lock().await.push(sender);
            if !ok {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            if !sampled {
                return;
            }
            let acknowledged = Instant::now();
            // Compared as JSON: Postgres renders jsonb with spaces after colons.
            let expected = serde_json::Value::String(email);
            let deadline = acknowledged + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok((200, state)) = get(
                    &api,
                    &format!("/v1/customers/{customer}/state"),
                    Some(TOKEN),
                )
                .await
                    && serde_json::from_slice::<serde_json::Value>(&state)
                        .is_ok_and(|state| state["email"] == expected)
                {
                    let us = acknowledged.elapsed().as_micros() as u32;
                    latencies.lock().expect("latencies").push(us);
                    return;
                }
                // Every 2 ms: finer polling by many watchers at once
                // loads the read API enough to distort what it measures.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut measured = Measured {
        sent: total,
        elapsed: started.elapsed(),
        latencies_us: std::mem::take(&mut *latencies.lock().expect("latencies")),
        ..Measured::default()
    };
    measured.latencies_us.sort_unstable();
    let failed = failures.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "end to end at {}/s for {} s: {} webhooks, {} watched; 200 -> visible p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; {} failed or never visible",
        args.rate,
        args.seconds,
        total,
        measured.latencies_us.len(),
        measured.quantile_ms(0.5),
        measured.quantile_ms(0.99),
        measured.quantile_ms(0.999),
        measured.quantile_ms(1.0),
        failed
    );
    ingest.stop()?;
    projector.stop()?;
    database.drop_now().await?;
    anyhow::ensure!(
        failed == 0,
        "{failed} webhooks failed or never became visible"
    );
    Ok(())
}

/// Logs a polarsim stream as ingest would, then times `projector replay` on
/// it: first with one event per transaction on a prefix (the baseline), then
/// with default chunks on all of it. Both are the real binary's own summary.
async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    if let Some(rate) = args.reads_per_second {
        return replay_under_reads(&args, rate).await;
    }
    let events = stream(&args.common, args.events.clone(), 2, 45_000)?;
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let pool = hookstream_shared::db::connect_and_migrate(
        &hookstream_shared::db::DatabaseSettings::for_url(&database.url),
        "loadgen",
    )
    .await?;
    let baseline_events = args.baseline_events.min(events.len());
    println!(
        "replay: {} polarsim events in the log; baseline on the first {baseline_events}",
        events.len()
    );
    let logging = Instant::now();
    log_stream(&pool, &events[..baseline_events]).await?;
    let baseline = run_replay(
        &args.common,
        &database,
        &["--chunk", "1", "--memory-mb", "0"],
    )?;
    println!(
        "{:<40} {:>9.0} events/s  ({baseline_events} events)",
        "one event per transaction", baseline
    );
    log_stream(&pool, &events[baseline_events..]).await?;
    eprintln!(
        "  logged {} events in {:.1} s (not counted)",
        events.len(),
        logging.elapsed().as_secs_f64()
    );
    let chunked = run_replay(&args.common, &database, &["--memory-mb", "0"])?;
    println!(
        "{:<40} {:>9.0} events/s  ({} events)",
        "written per chunk of 10000 events",
        chunked,
        events.len()
    );
    let reduced = run_replay(&args.common, &database, &[])?;
    println!(
        "{:<40} {:>9.0} events/s  ({} events)",
        "defaults (64 MiB, written in the background)",
        reduced,
        events.len()
    );
    println!(
        "per chunk / one per transaction: x{:.1}; defaults / per chunk: x{:.1}",
        chunked / baseline,
        reduced / chunked
    );
    pool.close().await;
    if !args.common.keep_database {
        database.drop_now().await?;
    }
    Ok(())
}

/// Appends events to the log in ingest-sized batches.
async fn log_stream(pool: &sqlx::PgPool, events: &[SimEvent]) -> anyhow::Result<()> {
    use hookstream_shared::event_log;
    for chunk in events.chunks(2000) {
        let batch = chunk
            .iter()
            .map(log_row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        event_log::append_batch(pool, &batch).await?;
    }
    // The relay is not running; nothing should wait on an outbox.
    sqlx::query("delete from event_log_outbox")
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs `projector replay` and returns the events/s from its summary line.
fn run_replay(common: &Common, database: &FreshDatabase, extra: &[&str]) -> anyhow::Result<f64> {
    run_replay_at(common, &database.url, extra)
}

fn run_replay_at(common: &Common, database_url: &str, extra: &[&str]) -> anyhow::Result<f64> {
    let output = std::process::Command::new(hookstream_tests::bench::sibling_binary("projector")?)
        .arg("replay")
        .args(extra)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .envs(common.extra_env.iter().map(|(k, v)| (k, v)))
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "projector replay failed: {stdout}");
    eprint!("  {stdout}");
    // "replayed N events in S s (R events/s) into ..."
    let rate = stdout
        .lines()
        .find(|l| l.starts_with("replayed "))
        .and_then(|l| l.split_once('('))
        .and_then(|(_, rest)| rest.split_once(" events/s"))
        .and_then(|(rate, _)| rate.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no rate in the replay summary: {stdout}"))?;
    Ok(rate)
}

/// `loadgen replay --reads-per-second R`: what readers cost a replay. A
/// projector serves the log's projections while `projector replay` rebuilds
/// them, with nothing else and with entitlement checks at `rate` (as an app
/// gating its requests would send), in the order quiet, read, quiet, read.
async fn replay_under_reads(args: &ReplayArgs, rate: f64) -> anyhow::Result<()> {
    let file = match &args.events {
        Some(file) => file.clone(),
        None => {
            let dir = args.common.data_dir.join("polarsim-3-1250");
            generate(&dir, 3, 1250, 90)?;
            dir.join("events.jsonl")
        }
    };
    let events = read_events(&file)?;
    let expected = file.with_file_name("expected.json");
    let questions = Arc::new(entitlement_questions(&expected)?);
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let pool = hookstream_shared::db::connect_and_migrate(
        &hookstream_shared::db::DatabaseSettings::for_url(&database.url),
        "loadgen",
    )
    .await?;
    log_stream(&pool, &events).await?;
    println!(
        "replay under reads: {} events in the log; entitlement checks at {rate}/s in the read runs",
        events.len()
    );
    // The first replay makes the generation the projector then serves.
    run_replay(&args.common, &database, &[])?;
    let kafka = EmbeddedKafka::start(1)?;
    kafka.create_topic("polar.events", 6)?;
    let service = start_projector(
        &args.common,
        &database,
        kafka.bootstrap_servers(),
        "polar.events",
        &[],
    )
    .await?;
    let authority = service.base_url.trim_start_matches("http://").to_owned();
    let mut seconds = (Vec::new(), Vec::new());
    for round in 0..4 {
        let reading = round % 2 == 1;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers = reading.then(|| {
            tokio::spawn(read_until(
                authority.clone(),
                questions.clone(),
                rate,
                stop.clone(),
            ))
        });
        let (common, url) = (args.common.clone(), database.url.clone());
        let replayed =
            tokio::task::spawn_blocking(move || run_replay_at(&common, &url, &[])).await??;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let took = events.len() as f64 / replayed;
        match readers {
            Some(readers) => {
                let reads = readers.await??;
                println!(
                    "{:<28} {took:>6.2} s  {}",
                    "replay, read throughout",
                    reads.summary("reads meanwhile")
                );
                seconds.1.push(took);
            }
            None => {
                println!("{:<28} {took:>6.2} s", "replay, no readers");
                seconds.0.push(took);
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "read throughout / no readers: x{:.2} ({:.2} s against {:.2} s on average)",
        mean(&seconds.1) / mean(&seconds.0),
        mean(&seconds.1),
        mean(&seconds.0)
    );
    service.stop()?;
    pool.close().await;
    if !args.common.keep_database {
        database.drop_now().await?;
    }
    Ok(())
}

/// Entitlement checks at `rate` in one-second runs until `stop`; every
/// run's answers together.
async fn read_until(
    authority: String,
    questions: Arc<Vec<(String, String)>>,
    rate: f64,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Measured> {
    let mut all = Measured::default();
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (host, questions) = (authority.clone(), questions.clone());
        let run = drive(
            &authority,
            8,
            Pace::Rate(rate),
            rate.ceil() as u64,
            Duration::from_secs(1),
            move |i| {
                let (customer, benefit) = &questions[i as usize % questions.len()];
                Request::get(format!(
                    "/v1/entitlements/check?external_customer_id={customer}&benefit_id={benefit}"
                ))
                .header("host", &host)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::new()))
                .expect("valid request")
            },
        )
        .await?;
        all.sent += run.sent;
        all.transport_errors += run.transport_errors;
        for (status, n) in run.statuses {
            *all.statuses.entry(status).or_default() += n;
        }
        all.latencies_us.extend(run.latencies_us);
    }
    all.latencies_us.sort_unstable();
    all.elapsed = started.elapsed();
    Ok(all)
}

/// Polar's production limit, for the time a real reconcile would take.
const POLAR_REQUESTS_PER_MINUTE: f64 = 500.0;

async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    use hookstream_ingest::config::PolarApiSettings;
    use hookstream_ingest::reconcile::polar_api::PolarApi;
    use hookstream_ingest::reconcile::{ReconcileOptions, Reconciler};
    use hookstream_shared::progress::{ProgressMode, ProgressReport};

    let dir = args
        .common
        .data_dir
        .join(format!("polarsim-42-{}", args.customers));
    eprintln!("generating polarsim stream in {} (cached)", dir.display());
    generate(&dir, 42, args.customers, 90)?;
    eprintln!("starting serve-api over it (loading takes a while)");
    let api = hookstream_tests::ServeApi::start(&dir, TOKEN, &[])?;
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let pool = hookstream_shared::db::connect_and_migrate(
        &hookstream_shared::db::DatabaseSettings::for_url(&database.url),
        "loadgen",
    )
    .await?;
    let settings =
        PolarApiSettings::from_settings(&hookstream_shared::config::Settings::from_vars([
            ("POLAR_API_URL", api.url.as_str()),
            ("POLAR_ACCESS_TOKEN", TOKEN),
            ("POLAR_API_RATE_LIMIT", "100000000"),
        ])?)?;
    let options = ReconcileOptions {
        scan: true,
        deliveries: false,
    };
    let never = tokio_util::sync::CancellationToken::new();
    let mut runs = Vec::new();
    for run in [
        "first (an organization new to hookstream)",
        "again (nothing changed)",
    ] {
        let reconciler = Reconciler::new(PolarApi::new(&settings)?, pool.clone(), None);
        let mut progress =
            ProgressReport::counting(ProgressMode::for_stderr(), "reconcile", "objects");
        let summary = reconciler.run(options, &mut progress, &never).await?;
        progress.finish();
        println!("{run}:\n{summary}");
        let at_polar_rate = summary.requests as f64 / POLAR_REQUESTS_PER_MINUTE;
        println!(
            "  {:.0} objects/s; at Polar's {POLAR_REQUESTS_PER_MINUTE} requests/min the same {} requests take {at_polar_rate:.1} min",
            summary.objects() as f64 / summary.elapsed.as_secs_f64(),
            summary.requests
        );
        runs.push(summary);
    }
    pool.close().await;
    if !args.common.keep_database {
        database.drop_now().await?;
    }
    let first = &runs[0];
    anyhow::ensure!(first.appended > 0, "the first reconcile appended nothing");
    anyhow::ensure!(
        runs[1].appended == 0,
        "the second reconcile appended events"
    );
    Ok(())
}

async fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let plan = ChaosPlan {
        customers: args.customers,
        rate: args.rate,
        kills: args.kills,
        postgres_restarts: args.postgres_restarts,
        broker_outages: args.broker_outages,
        connection_storms: args.connection_storms,
        max_pause: Duration::from_millis(args.max_pause_ms),
        seed: args.seed,
        broker: match args.tansu {
            Some(binary) => BrokerChoice::Tansu { binary },
            None => BrokerChoice::Mock,
        },
        data_dir: args.data_dir,
    };
    println!(
        "chaos against {}: {} customers at {}/s with 20% duplicates and reordering; {} kill -9s, {} Postgres crashes, {} broker outages, {} connection storms",
        match &plan.broker {
            BrokerChoice::Mock => "the mock broker".to_owned(),
            BrokerChoice::Tansu { binary } => binary.display().to_string(),
        },
        plan.customers,
        plan.rate,
        plan.kills,
        plan.postgres_restarts,
        plan.broker_outages,
        plan.connection_storms
    );
    let report = hookstream_tests::chaos::run(&plan).await?;
    println!("  events in the stream: {}", report.events);
    report.print();
    let passed = report.passed(&plan);
    println!(
        "chaos {}: lost = {}, double-applied = {}",
        if passed { "passed" } else { "FAILED" },
        report.lost,
        if report.drift_passed {
            "0"
        } else {
            "see projector verify"
        }
    );
    anyhow::ensure!(passed, "the chaos run found a problem");
    Ok(())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// A synthetic webhook: `data` as `event_type`, at `at`.
fn synthetic(i: usize, event_type: &str, at: &str, data: serde_json::Value) -> SimEvent {
    SimEvent {
        webhook_id: format!("waiters-{event_type}-{i}"),
        event_type: event_type.to_owned(),
        body: serde_json::json!({
            "type": event_type, "timestamp": at, "api_version": "2026-10", "data": data,
        })
        .to_string(),
    }
}

async fn waiters(args: WaitersArgs) -> anyhow::Result<()> {
    use hookstream_tests::bench::connect;
    use http_body_util::BodyExt as _;
    let n = args.waiters;
    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let kafka = EmbeddedKafka::start(1)?;
    kafka.create_topic("polar.events", 6)?;
    let service = start_projector(
        &args.common,
        &database,
        kafka.bootstrap_servers(),
        "polar.events",
        &[("PROJECTOR_CACHE_ENTRIES", "100000")],
    )
    .await?;
    let authority = service.base_url.trim_start_matches("http://").to_owned();
    let customer = |i: usize| {
        serde_json::json!({
            "id": format!("cus_{i}"), "created_at": "2026-01-01T00:00:00Z", "modified_at": null,
            "metadata": {}, "external_id": format!("usr_{i}"), "email": format!("u{i}@example.com"),
            "email_verified": false, "type": "individual", "name": null, "billing_name": null,
            "billing_address": null, "tax_id": null, "locale": null, "organization_id": "org",
            "default_payment_method_id": null, "deleted_at": null, "first_user_event_at": null,
            "avatar_url": null,
        })
    };
    let seed: Vec<SimEvent> = (0..n)
        .map(|i| synthetic(i, "customer.created", "2026-01-01T00:00:00Z", customer(i)))
        .collect();
    hookstream_tests::bench::publish_stream(kafka.bootstrap_servers(), "polar.events", &seed)
        .await?;
    drain(&database, seed.len(), "seeding").await?;
    let idle_kib = rss_kib(service.pid());

    // The streams first, so the waiters' memory is measured on its own.
    let stream_events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..args.streams {
        let authority = authority.clone();
        let counted = stream_events.clone();
        streams.push(tokio::spawn(async move {
            let mut sender = connect(&authority).await?;
            let request = Request::get("/v1/changes/stream")
                .header("host", &authority)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::new()))?;
            let mut body = sender.send_request(request).await?.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    let events = data.windows(4).filter(|w| w == b"id: ").count() as u64;
                    counted.fetch_add(events, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let streams_kib = rss_kib(service.pid());

    let mut parked = Vec::with_capacity(n);
    for i in 0..n {
        let authority = authority.clone();
        parked.push(tokio::spawn(async move {
            let mut sender = connect(&authority).await?;
            let request = Request::get(format!(
                "/v1/entitlements/check?external_customer_id=usr_{i}&benefit_id=ben&wait_for=granted&timeout_ms=30000"
            ))
            .header("host", &authority)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))?;
            let response = sender.send_request(request).await?;
            let body = response.into_body().collect().await?.to_bytes();
            let answered = SystemTime::now();
            let granted = body.windows(14).any(|w| w == b"\"granted\":true");
            anyhow::Ok((i, answered, granted))
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, text) =
            hookstream_tests::bench::get(&service.metrics_url, "/metrics", None).await?;
        let text = String::from_utf8_lossy(&text);
        let parked = hookstream_tests::bench::metric_value(
            &text,
            "hookstream_projector_entitlement_waiters ",
        );
        if parked.is_some_and(|parked| parked >= n as f64) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the waiters never all parked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let parked_kib = rss_kib(service.pid());
    println!(
        "waiters: {n} parked checks and {} change streams on one projector",
        args.streams
    );
    println!(
        "memory: idle {idle_kib} KiB; +{} KiB for {} streams; +{} KiB for {n} waiters = {:.1} KiB per waiter (connection and request included)",
        streams_kib.saturating_sub(idle_kib),
        args.streams,
        parked_kib.saturating_sub(streams_kib),
        parked_kib.saturating_sub(streams_kib) as f64 / n as f64
    );

    // The grants, applied while they all wait.
    let benefit = serde_json::json!({
        "id": "ben", "created_at": "2026-01-01T00:00:00Z", "modified_at": null, "type": "feature_flag",
        "description": "ben", "selectable": true, "deletable": true, "is_deleted": false,
        "organization_id": "org", "metadata": {}, "visibility": "public", "properties": {},
        "visibility_configurable": true,
    });
    let grants: Vec<SimEvent> = (0..n)
        .map(|i| {
            let data = serde_json::json!({
                "created_at": "2026-01-02T00:00:00Z", "modified_at": null, "id": format!("g_{i}"),
                "granted_at": "2026-01-02T00:00:00Z", "is_granted": true, "revoked_at": null,
                "is_revoked": false, "subscription_id": null, "order_id": null,
                "customer_id": format!("cus_{i}"), "member_id": null, "benefit_id": "ben",
                "error": null, "customer": customer(i), "member": null, "benefit": benefit,
                "properties": {}, "previous_properties": {},
            });
            synthetic(i, "benefit_grant.created", "2026-01-02T00:00:00Z", data)
        })
        .collect();
    let mut publisher =
        hookstream_tests::bench::StreamPublisher::new(kafka.bootstrap_servers(), seed.len())?;
    let started = Instant::now();
    if args.rate == 0 {
        publisher.publish("polar.events", &grants).await?;
    } else {
        // A tenth of a second's grants at a time.
        let chunk = (args.rate as usize / 10).max(1);
        for (k, part) in grants.chunks(chunk).enumerate() {
            let due = started + Duration::from_millis(100 * k as u64);
            tokio::time::sleep_until(due.into()).await;
            publisher.publish("polar.events", part).await?;
        }
    }
    let mut answers = Vec::with_capacity(n);
    for waiter in parked {
        answers.push(waiter.await??);
    }
    let all_answered = started.elapsed();
    // When each customer's grant committed: its change in the feed.
    let pool = sqlx::PgPool::connect(&database.url).await?;
    let committed: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select customer_id, changed_at from projection_changes
         where kind = 'customer' and 'benefit_grants' = any(changed)",
    )
    .fetch_all(&pool)
    .await?;
    let committed: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> =
        committed.into_iter().collect();
    let mut latencies_ms: Vec<f64> = Vec::with_capacity(n);
    let mut not_granted = 0;
    for (i, answered, granted) in &answers {
        if !granted {
            not_granted += 1;
            continue;
        }
        if let Some(at) = committed.get(&format!("cus_{i}")) {
            let answered: chrono::DateTime<chrono::Utc> = (*answered).into();
            latencies_ms.push((answered - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    let quantile = |q: f64| {
        latencies_ms
            .get(((latencies_ms.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "answers: {} of {n} granted ({not_granted} not) {:.1} s after the first grant was published ({})",
        latencies_ms.len(),
        all_answered.as_secs_f64(),
        if args.rate == 0 {
            "all at once".to_owned()
        } else {
            format!("{}/s", args.rate)
        }
    );
    println!(
        "commit → answer: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} grants committed in the feed)",
        quantile(0.5),
        quantile(0.99),
        quantile(1.0),
        committed.len()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "streams: {} change events received over {} streams ({:.0} each)",
        stream_events.load(std::sync::atomic::Ordering::Relaxed),
        args.streams,
        stream_events.load(std::sync::atomic::Ordering::Relaxed) as f64 / args.streams as f64
    );
    for stream in streams {
        stream.abort();
    }
    pool.close().await;
    service.stop()?;
    if !args.common.keep_database {
        database.drop_now().await?;
    }
    anyhow::ensure!(
        not_granted == 0,
        "{not_granted} waiters were not answered granted"
    );
    Ok(())
}

/// The customer page's server time (its `Server-Timing`) for a customer with
/// `customer_events` events in a log of `log_events`, beside the same page
/// for a customer with a typical count and the stylesheet (the floor of a
/// console request) in the same run.
async fn console(args: ConsoleArgs) -> anyhow::Result<()> {
    use hookstream_projector::api::{self, ApiShared, ApiState, EntitlementCache, FailureThrottle};
    use hookstream_projector::console::{self as operator_console, ConsoleShared, ConsoleState};
    use hookstream_projector::metrics::ProjectorMetrics;

    let mut events = stream(&args.common, None, 2, 2000)?;
    // The busy customer: the stream's busiest, given copies of one of its
    // subscription events, each a newer version, up to `customer_events`.
    let mut by_key: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for (i, e) in events.iter().enumerate() {
        if let Some(key) = hookstream_shared::envelope::parse(e.body.as_bytes())?.partition_key {
            by_key.entry(key).or_default().push(i);
        }
    }
    let (busy, indexes) = by_key
        .iter()
        .max_by_key(|(_, v)| v.len())
        .map(|(k, v)| (k.clone(), v.clone()))
        .ok_or_else(|| anyhow::anyhow!("an empty stream"))?;
    let template = indexes
        .iter()
        .map(|&i| &events[i])
        .find(|e| e.event_type.starts_with("subscription."))
        .ok_or_else(|| anyhow::anyhow!("the busiest customer has no subscription event"))?
        .clone();
    let template: serde_json::Value = serde_json::from_str(&template.body)?;
    let last_at: chrono::DateTime<chrono::Utc> = events
        .iter()
        .rev()
        .find_map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.body).ok()?["timestamp"]
                .as_str()?
                .parse()
                .ok()
        })
        .unwrap_or_else(chrono::Utc::now);
    for i in 0..args.customer_events.saturating_sub(indexes.len()) {
        let at = (last_at + chrono::Duration::seconds(i as i64 + 1)).to_rfc3339();
        let mut body = template.clone();
        body["timestamp"] = serde_json::json!(at);
        body["data"]["modified_at"] = serde_json::json!(at);
        events.push(SimEvent {
            webhook_id: format!("console-bench-{i}"),
            event_type: body["type"].as_str().unwrap_or_default().to_owned(),
            body: body.to_string(),
        });
    }

    let database = FreshDatabase::create(&args.common.database_server, "hookstream_bench").await?;
    let pool = hookstream_shared::db::connect_and_migrate(
        &hookstream_shared::db::DatabaseSettings::for_url(&database.url),
        "loadgen",
    )
    .await?;
    log_stream(&pool, &events).await?;
    run_replay(&args.common, &database, &[])?;
    // The typical customer: the median event count among keys that are
    // customers (products and anonymous checkouts have keys too).
    let keys: Vec<String> = by_key.keys().cloned().collect();
    let customers: Vec<String> = sqlx::query_scalar(
        "select id from projection.customers where id = any($1) and deleted_at is null",
    )
    .bind(&keys)
    .fetch_all(&pool)
    .await?;
    let mut typical_counts: Vec<(usize, &String)> =
        customers.iter().map(|k| (by_key[k].len(), k)).collect();
    typical_counts.sort();
    let (typical_events, typical) = typical_counts[typical_counts.len() / 2];
    let typical = typical.clone();
    // The rest of the log: copies of the stream's rows under other keys
    // (other customers' events, not projected: they only make the log big).
    let logged: i64 = sqlx::query_scalar("select count(*) from event_log")
        .fetch_one(&pool)
        .await?;
    let copies = ((args.log_events - logged).max(0) + logged - 1) / logged;
    let filling = Instant::now();
    sqlx::query(
        "insert into event_log (source, webhook_id, event_type, partition_key, occurred_at, received_at, body)
         select source, webhook_id || '-copy-' || n, event_type, partition_key || '-copy-' || n,
                occurred_at, received_at, body
         from event_log cross join generate_series(1, $1::int) n
         order by n, seq
         limit $2",
    )
    .bind(copies as i32)
    .bind(args.log_events - logged)
    .execute(&pool)
    .await?;
    sqlx::query("analyze event_log").execute(&pool).await?;
    let total: i64 = sqlx::query_scalar("select count(*) from event_log")
        .fetch_one(&pool)
        .await?;
    eprintln!(
        "  filled the log to {total} events in {:.1} s (not counted)",
        filling.elapsed().as_secs_f64()
    );
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select seq from event_log where partition_key = any($1) order by occurred_at desc, seq desc limit 2000",
    )
    .bind(vec![busy.clone()])
    .fetch_all(&pool)
    .await?;

    let api = ApiState::new(ApiShared {
        pool: pool.clone(),
        tokens: vec![Secret::new(TOKEN)],
        metrics: ProjectorMetrics::new(),
        cache: Arc::new(EntitlementCache::new(10, Duration::from_secs(60))),
        throttle: FailureThrottle::new(),
    });
    let app = api::router(api.clone()).merge(operator_console::router(ConsoleState::new(
        ConsoleShared {
            api,
            tokens: vec![Secret::new(TOKEN)],
            topic: "polar.events".to_owned(),
            group: "hookstream-projector".to_owned(),
            feed_on: true,
            throttle: FailureThrottle::new(),
        },
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    hookstream_shared::tls::use_ring_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = client
        .post(format!("{base}/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_owned();
    let measure = |path: String| {
        let client = client.clone();
        let cookie = cookie.clone();
        let base = base.clone();
        async move {
            let mut server_ms = Vec::with_capacity(args.loads);
            let mut timeline_rows = 0;
            for load in 0..=args.loads {
                let response = client
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == 200, "{path}: {}", response.status());
                let timing: f64 = response
                    .headers()
                    .get("server-timing")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("app;dur="))
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("no Server-Timing"))?;
                let html = response.text().await?;
                timeline_rows = html.matches("<tr data-seq=").count();
                // The first load warms the caches; it is not counted.
                if load > 0 {
                    server_ms.push(timing);
                }
            }
            server_ms.sort_by(f64::total_cmp);
            Ok::<_, anyhow::Error>((server_ms, timeline_rows))
        }
    };
    let quantile = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "console: {total} events in the log; customer page server time over {} loads",
        args.loads
    );
    let (floor, _) = measure("/console/assets/console.css".to_owned()).await?;
    let (usual, usual_rows) = measure(format!("/console/customers/{typical}")).await?;
    let (busy_ms, busy_rows) = measure(format!("/console/customers/{busy}")).await?;
    for (label, ms, rows) in [
        ("stylesheet (the request floor)", &floor, None),
        ("typical customer", &usual, Some(usual_rows)),
        ("busy customer", &busy_ms, Some(busy_rows)),
    ] {
        println!(
            "{:<32} p50 {:>7.3} ms  p90 {:>7.3} ms  max {:>7.3} ms{}",
            label,
            quantile(ms, 0.5),
            quantile(ms, 0.9),
            ms[ms.len() - 1],
            rows.map(|r| format!("  ({r} timeline events)"))
                .unwrap_or_default()
        );
    }
    println!(
        "busy / typical p50: x{:.1}; typical customer has {typical_events} events",
        quantile(&busy_ms, 0.5) / quantile(&usual, 0.5)
    );
    let scan = plan
        .iter()
        .find(|line| line.contains("Scan"))
        .map_or("?", |l| l.trim());
    println!("timeline query plan: {scan}");
    // What the migration's index is worth: the same page without it.
    sqlx::query("drop index event_log_partition_key")
        .execute(&pool)
        .await?;
    let (unindexed, _) = measure(format!("/console/customers/{busy}")).await?;
    println!(
        "{:<32} p50 {:>7.3} ms  (x{:.1} the indexed page)",
        "busy customer, no key index",
        quantile(&unindexed, 0.5),
        quantile(&unindexed, 0.5) / quantile(&busy_ms, 0.5)
    );
    server.abort();
    pool.close().await;
    if !args.common.keep_database {
        database.drop_now().await?;
    }
    Ok(())
}
