//! The crash-and-outage run behind RELIABILITY.md: the real service binaries
//! under a polarsim stream that retries like Polar, while ingest and the
//! projectors are `kill -9`ed, Postgres crashes and comes back, and the broker
//! goes away for a while, and connection storms strike at random moments:
//! `pg_terminate_backend` on single backends of the services, and blackouts
//! in which a proxy between the projectors and Postgres cuts every connection
//! and refuses new ones for up to a second. So a failed statement
//! can be followed by another failure, or by a success, on the next
//! connection: the window in which a failed batch's rewind also fails.
//! Afterwards every guarantee is checked from the
//! outside: every webhook acknowledged is in the log exactly once and was
//! published, Polar's SDK reads the true state, and the projections equal a
//! fresh rebuild from the log.
//!
//! Postgres is a server of the run's own ([`PrivatePostgres`]), so crashing
//! it disturbs nothing else on the machine. Two projector replicas share the
//! topic, so a kill also moves partitions between consumers (a rebalance).
//! The broker is librdkafka's mock cluster (in this process, so it survives
//! every crash) or a separate Kafka-compatible broker process ([`Broker`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;

use hookstream_ingest::signature::{KeyRule, signature_header};
use hookstream_shared::config::Secret;

pub use crate::bench::BrokerChoice;
use crate::bench::{Broker, FreshDatabase, Service, connect, free_port, get, sibling_binary};
use crate::fault_proxy::FaultProxy;
use crate::postgres::PrivatePostgres;
use crate::{generate, polarsim_command, read_events};

const SECRET: &str = "polar_whs_chaos_run_secret_0123456789abcdef";
const TOKEN: &str = "chaos-token-0123456789abcdef0123456789";
const TOPIC: &str = "polar.events";
const PARTITIONS: i32 = 6;

/// What to inflict, and on how big a stream.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// Customers in the polarsim stream (about 30 events each).
    pub customers: u32,
    /// Webhooks per second polarsim sends (retries included).
    pub rate: f64,
    /// `kill -9`s, each of ingest or one of the two projectors, at random.
    pub kills: u32,
    /// Crashes of Postgres (immediate shutdown), each followed by a restart.
    pub postgres_restarts: u32,
    /// Times the broker becomes unreachable for a few seconds.
    pub broker_outages: u32,
    /// Storms of a few seconds in which the services' Postgres connections
    /// are terminated at random moments (one backend, or all of a
    /// service's), or the projectors' are blacked out at the proxy.
    pub connection_storms: u32,
    /// Longest pause between two disruptions (random below it).
    pub max_pause: Duration,
    pub seed: u64,
    pub broker: BrokerChoice,
    /// Where polarsim streams are generated and cached.
    pub data_dir: PathBuf,
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    pub events: usize,
    /// polarsim send's own summary (deliveries, requests, answers by code).
    pub send_summary: serde_json::Value,
    pub sender_succeeded: bool,
    pub kills_ingest: u32,
    pub kills_projector: u32,
    pub postgres_restarts: u32,
    /// Seconds from each Postgres restart to ingest's next 200, unaided.
    pub recovery_seconds: Vec<f64>,
    pub broker_outages: u32,
    /// Webhooks acknowledged while the broker was unreachable.
    pub accepted_while_broker_down: u32,
    pub connection_storms: u32,
    /// Backends `pg_terminate_backend` ended during the storms.
    pub backends_terminated: u64,
    /// Blackouts of the projectors' connections during the storms.
    pub blackouts: u64,
    /// From the start of the stream to the end of the last disruption.
    pub disruptions_took: Duration,
    /// From the start of the stream to its last answer.
    pub elapsed: Duration,
    /// Acknowledged (stream events and probes) but not in the log.
    pub lost: usize,
    pub logged_twice: usize,
    pub unpublished: i64,
    /// Messages the projectors' stored positions passed without applying
    /// them, from their exactly-once audit. A skip that later versions of the
    /// same objects overwrite shows here, and nowhere else.
    pub passed_over: i64,
    pub polarsim_verify: String,
    pub polarsim_verify_passed: bool,
    pub drift: String,
    pub drift_passed: bool,
}

impl ChaosReport {
    /// Every guarantee held, and every planned disruption happened.
    pub fn passed(&self, plan: &ChaosPlan) -> bool {
        self.sender_succeeded
            && self.kills_ingest + self.kills_projector == plan.kills
            && self.postgres_restarts == plan.postgres_restarts
            && self.broker_outages == plan.broker_outages
            && self.connection_storms == plan.connection_storms
            && self.lost == 0
            && self.logged_twice == 0
            && self.unpublished == 0
            && self.passed_over == 0
            && self.polarsim_verify_passed
            && self.drift_passed
    }

    /// The figures RELIABILITY.md records, one per line.
    pub fn print(&self) {
        println!("  polarsim send: {}", self.send_summary);
        println!(
            "  kill -9 survived: {} (ingest {}, projector {}); disruptions over after {:.0} s of a {:.0} s stream",
            self.kills_ingest + self.kills_projector,
            self.kills_ingest,
            self.kills_projector,
            self.disruptions_took.as_secs_f64(),
            self.elapsed.as_secs_f64()
        );
        println!(
            "  Postgres crashed and restarted: {} (ingest answered 503 + Retry-After each time; back to 200 after {:?} s)",
            self.postgres_restarts,
            self.recovery_seconds
                .iter()
                .map(|s| (s * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        );
        println!(
            "  broker outages: {} ({} webhooks acknowledged while it was down)",
            self.broker_outages, self.accepted_while_broker_down
        );
        println!(
            "  connection storms: {} ({} Postgres backends of ingest and the projectors terminated, {} blackouts of the projectors' connections)",
            self.connection_storms, self.backends_terminated, self.blackouts
        );
        println!(
            "  log: lost {}, logged twice {}, unpublished {}",
            self.lost, self.logged_twice, self.unpublished
        );
        println!(
            "  projectors: messages passed over without being applied {}",
            self.passed_over
        );
        println!("  polarsim verify: {}", self.polarsim_verify);
        println!("  projector verify: {}", self.drift);
    }
}

#[derive(Debug, Clone, Copy)]
enum Disruption {
    Kill,
    PostgresRestart,
    BrokerOutage,
    ConnectionStorm,
}

/// Runs the plan. Errors are failures of the harness itself; what the run
/// found about the services is in the report.
pub async fn run(plan: &ChaosPlan) -> anyhow::Result<ChaosReport> {
    let dir = plan
        .data_dir
        .join(format!("polarsim-chaos-{}", plan.customers));
    generate(&dir, 7, plan.customers, 60)?;
    let events = read_events(&dir.join("events.jsonl"))?;
    let postgres = PrivatePostgres::start()?;
    let database = FreshDatabase::create(&postgres.server_url(), "hookstream_chaos").await?;
    let broker = Broker::start(&plan.broker)?;
    broker.create_topic(TOPIC, PARTITIONS).await?;

    let ingest_port = free_port()?;
    let projector_ports = [free_port()?, free_port()?];
    let ingest_env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database.url.clone()),
        ("KAFKA_BROKERS", broker.bootstrap_servers()),
        ("KAFKA_TOPIC_PARTITIONS", PARTITIONS.to_string()),
        ("POLAR_WEBHOOK_SECRET", SECRET.to_owned()),
        ("INGEST_LISTEN", format!("127.0.0.1:{ingest_port}")),
        ("RELAY_SWEEP_AFTER_MS", "1000".to_owned()),
    ];
    // The projectors reach Postgres through the proxy, so their connections
    // can be taken away without touching ingest's.
    let proxy = FaultProxy::start(postgres.address()).await?;
    let projector_database_url = database.url.replacen(
        &postgres.address().to_string(),
        &format!("127.0.0.1:{}", proxy.port()),
        1,
    );
    anyhow::ensure!(
        projector_database_url != database.url,
        "the database URL does not name the server's address"
    );
    let projector_env = |port: u16| -> Vec<(&str, String)> {
        vec![
            ("DATABASE_URL", projector_database_url.clone()),
            // A pool keeps trying to connect until its acquire timeout, so
            // with the default (2 s) a blackout only delays a query. A short
            // one lets a blackout fail one query and spare the next.
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "250".to_owned()),
            ("KAFKA_BROKERS", broker.bootstrap_servers()),
            ("PROJECTOR_API_TOKENS", TOKEN.to_owned()),
            ("PROJECTOR_LISTEN", format!("127.0.0.1:{port}")),
            ("PROJECTOR_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ]
    };
    let mut ingest = Some(Service::start("ingest", ingest_port, &ingest_env).await?);
    let mut projectors = [None, None];
    for (slot, port) in projectors.iter_mut().zip(projector_ports) {
        *slot = Some(Service::start("projector", port, &projector_env(port)).await?);
    }
    let ingest_authority = format!("127.0.0.1:{ingest_port}");

    let report_file = dir.join("send-report.json");
    let mut sender = polarsim_command("send")?
        .arg(dir.join("events.jsonl"))
        .args([
            "--url",
            &format!("http://{ingest_authority}/webhooks/polar"),
        ])
        .args([
            "--secret",
            SECRET,
            "--dup-rate",
            "0.2",
            "--reorder-window",
            "50",
        ])
        .args(["--rate", &plan.rate.to_string(), "--concurrency", "32"])
        // Polar's own attempt count, with a shorter base so a run ends in minutes.
        .args([
            "--retries",
            "10",
            "--retry-base-ms",
            "300",
            "--timeout",
            "10",
        ])
        .arg("--report")
        .arg(&report_file)
        .arg("--quiet")
        .stdout(Stdio::null())
        .spawn()?;

    let mut random = XorShift(plan.seed.max(1));
    let schedule = shuffled_schedule(plan, &mut random);
    let mut report = ChaosReport {
        events: events.len(),
        ..ChaosReport::default()
    };
    let mut probes = Probes::new(&ingest_authority);
    // The harness's own connection: its application name is none of the
    // services', so a storm never cuts it.
    let control = sqlx::PgPool::connect(&database.url).await?;
    let started = Instant::now();
    for disruption in schedule {
        if sender.try_wait()?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(
            random.next_u64() % (plan.max_pause.as_millis() as u64).max(1),
        ))
        .await;
        match disruption {
            Disruption::Kill => {
                // Drop = SIGKILL: no graceful shutdown, no flush.
                let victim = random.next_u64() % 3;
                if victim == 0 {
                    drop(ingest.take());
                    report.kills_ingest += 1;
                    ingest = Some(Service::start("ingest", ingest_port, &ingest_env).await?);
                } else {
                    let i = (victim - 1) as usize;
                    drop(projectors[i].take());
                    report.kills_projector += 1;
                    let port = projector_ports[i];
                    projectors[i] =
                        Some(Service::start("projector", port, &projector_env(port)).await?);
                }
            }
            Disruption::PostgresRestart => {
                postgres.crash()?;
                probes
                    .expect_refusal_while_database_down()
                    .await
                    .context("while Postgres was down")?;
                tokio::time::sleep(Duration::from_millis(1000 + random.next_u64() % 2000)).await;
                postgres.resume()?;
                let back = Instant::now();
                probes
                    .expect_acceptance(Duration::from_secs(60))
                    .await
                    .context("after Postgres came back")?;
                report.recovery_seconds.push(back.elapsed().as_secs_f64());
                report.postgres_restarts += 1;
            }
            Disruption::BrokerOutage => {
                broker.set_reachable(false)?;
                probes
                    .expect_acceptance(Duration::from_secs(10))
                    .await
                    .context("while the broker was down")?;
                report.accepted_while_broker_down += 1;
                tokio::time::sleep(Duration::from_millis(2000 + random.next_u64() % 3000)).await;
                broker.set_reachable(true)?;
                report.broker_outages += 1;
            }
            Disruption::ConnectionStorm => {
                let storm = connection_storm(&control, &proxy, &mut random).await?;
                report.backends_terminated += storm.terminated;
                report.blackouts += storm.blackouts;
                report.connection_storms += 1;
            }
        }
    }
    control.close().await;
    report.disruptions_took = started.elapsed();
    let sent = tokio::task::spawn_blocking(move || sender.wait()).await??;
    report.elapsed = started.elapsed();
    report.sender_succeeded = sent.success();
    report.send_summary = std::fs::read_to_string(&report_file)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();

    let pool = sqlx::PgPool::connect(&database.url).await?;
    report.unpublished = wait_until_published(&pool, Duration::from_secs(120)).await?;
    let logged: Vec<String> = sqlx::query_scalar("select webhook_id from event_log")
        .fetch_all(&pool)
        .await?;
    // An invariant of the stored positions at every moment, caught up or not.
    report.passed_over = hookstream_projector::offsets::messages_passed_over(&pool, TOPIC).await?;
    pool.close().await;
    let logged_set: BTreeSet<&str> = logged.iter().map(String::as_str).collect();
    report.lost = events
        .iter()
        .map(|e| e.webhook_id.as_str())
        .chain(probes.acknowledged.iter().map(String::as_str))
        .filter(|id| !logged_set.contains(id))
        .count();
    report.logged_twice = logged.len() - logged_set.len();

    let api = format!("http://127.0.0.1:{}", projector_ports[0]);
    let verdict = polarsim_command("verify")?
        .arg(dir.join("expected.json"))
        .args(["--api", &api, "--token", TOKEN, "--timeout", "120"])
        .output()?;
    report.polarsim_verify = String::from_utf8_lossy(&verdict.stdout)
        .lines()
        .find(|l| l.starts_with("verify:"))
        .unwrap_or("(no summary)")
        .to_owned();
    report.polarsim_verify_passed = verdict.status.success();
    let drift = Command::new(sibling_binary("projector")?)
        .args(["verify", "--attempts", "5"])
        .env("DATABASE_URL", &database.url)
        .env("RUST_LOG", "warn")
        .output()?;
    report.drift = String::from_utf8_lossy(&drift.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    report.drift_passed = drift.status.success();

    drop(ingest);
    drop(projectors);
    drop(proxy);
    drop(broker);
    Ok(report)
}

/// Every disruption of the plan once, in a random order.
fn shuffled_schedule(plan: &ChaosPlan, random: &mut XorShift) -> Vec<Disruption> {
    let mut schedule: Vec<Disruption> = std::iter::repeat_n(Disruption::Kill, plan.kills as usize)
        .chain(std::iter::repeat_n(
            Disruption::PostgresRestart,
            plan.postgres_restarts as usize,
        ))
        .chain(std::iter::repeat_n(
            Disruption::BrokerOutage,
            plan.broker_outages as usize,
        ))
        .chain(std::iter::repeat_n(
            Disruption::ConnectionStorm,
            plan.connection_storms as usize,
        ))
        .collect();
    for i in (1..schedule.len()).rev() {
        let j = (random.next_u64() % (i as u64 + 1)) as usize;
        schedule.swap(i, j);
    }
    schedule
}

/// Application names the services give their connections (`db::connect_and_migrate`).
const SERVICE_CONNECTIONS: [&str; 2] = ["hookstream-projector", "hookstream-ingest"];

/// What one storm did.
struct Storm {
    terminated: u64,
    blackouts: u64,
}

/// For 2 to 4 seconds, every 10 to 150 ms: one time in three, blacks out the
/// projectors' connections for 200 to 1200 ms; otherwise terminates one random
/// backend of a service or, one time in four, all of that service's backends.
/// The point is faults that hit one statement and then the next, or not: a
/// batch fails, its rewind fails too, and the commit after succeeds.
async fn connection_storm(
    control: &sqlx::PgPool,
    proxy: &FaultProxy,
    random: &mut XorShift,
) -> anyhow::Result<Storm> {
    wait_until_applying(control).await?;
    let until = Instant::now() + Duration::from_millis(2000 + random.next_u64() % 2000);
    let mut storm = Storm {
        terminated: 0,
        blackouts: 0,
    };
    while Instant::now() < until {
        if random.next_u64().is_multiple_of(3) {
            let blackout = Duration::from_millis(200 + random.next_u64() % 1000);
            proxy.black_out(blackout);
            storm.blackouts += 1;
            tokio::time::sleep(blackout).await;
            continue;
        }
        let service = SERVICE_CONNECTIONS[(random.next_u64() % 2) as usize];
        let all = random.next_u64().is_multiple_of(4);
        let pick = i64::try_from(random.next_u64() % 1000).unwrap_or(0);
        let ended: i64 = sqlx::query_scalar(
            "with backends as (
                 select pid, row_number() over (order by pid) - 1 as n, count(*) over () as total
                 from pg_stat_activity
                 where datname = current_database() and application_name = $1
             )
             select count(*) filter (where pg_terminate_backend(pid))
             from backends where $2 or n = $3 % greatest(total, 1)",
        )
        .bind(service)
        .bind(all)
        .bind(pick)
        .fetch_one(control)
        .await
        .context("cannot terminate the services' backends")?;
        storm.terminated += u64::try_from(ended).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(10 + random.next_u64() % 140)).await;
    }
    Ok(storm)
}

/// Waits (up to 15 s) until the projectors' stored offsets move, so a storm
/// strikes batches being applied rather than a consumer group that is still
/// rebalancing after a kill, when no batch runs and no rewind can fail.
async fn wait_until_applying(control: &sqlx::PgPool) -> anyhow::Result<()> {
    let consumed = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "select sum(next_offset)::bigint from projector_offsets",
        )
        .fetch_one(control)
        .await
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = consumed().await?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if consumed().await? != before {
            return Ok(());
        }
    }
    Ok(())
}

/// Waits for the outbox to empty; returns what is still unpublished.
async fn wait_until_published(pool: &sqlx::PgPool, within: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + within;
    loop {
        let queued: i64 = sqlx::query_scalar("select count(*) from event_log_outbox")
            .fetch_one(pool)
            .await?;
        if queued == 0 || Instant::now() > deadline {
            return Ok(queued);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Webhooks of the run's own, beside polarsim's stream, that watch ingest's
/// answers during an outage. Their type is one no projection uses.
struct Probes {
    authority: String,
    secret: Secret,
    sent: u64,
    /// Ids of probes answered 200: they must be in the log at the end.
    acknowledged: Vec<String>,
}

impl Probes {
    fn new(authority: &str) -> Self {
        Self {
            authority: authority.to_owned(),
            secret: Secret::new(SECRET),
            sent: 0,
            acknowledged: Vec::new(),
        }
    }

    /// Posts one new signed probe: its status and `Retry-After`, or a
    /// transport error.
    async fn post(&mut self) -> anyhow::Result<(u16, Option<String>)> {
        self.sent += 1;
        let id = format!("chaos-probe-{}", self.sent);
        let now = chrono::Utc::now();
        let body = Bytes::from(format!(
            r#"{{"type":"hookstream.probe","timestamp":"{}","data":{{"id":"{id}"}}}}"#,
            now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ));
        let signature = signature_header(KeyRule::Polar, &self.secret, &id, now.timestamp(), &body);
        let request = Request::post("/webhooks/polar")
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.timestamp().to_string())
            .header("webhook-signature", signature)
            .body(Full::new(body))?;
        let mut sender = connect(&self.authority).await?;
        let response = tokio::time::timeout(Duration::from_secs(15), sender.send_request(request))
            .await
            .context("no answer within 15 s")??;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        response.into_body().collect().await?;
        if status == 200 {
            self.acknowledged.push(id);
        }
        Ok((status, retry_after))
    }

    /// With the database down, a new webhook must get 503 with `Retry-After`
    /// (and `/readyz` 503), never a 200.
    async fn expect_refusal_while_database_down(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.post().await {
                Ok((503, Some(_))) => break,
                Ok((status, retry_after)) => anyhow::bail!(
                    "a webhook got {status} (Retry-After {retry_after:?}) with the database down"
                ),
                // Ingest itself may be restarting after a kill.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "probe not answered yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let (readiness, _) = get(&format!("http://{}", self.authority), "/readyz", None).await?;
        anyhow::ensure!(
            readiness == 503,
            "/readyz answered {readiness} with the database down"
        );
        Ok(())
    }

    /// A new webhook gets 200 within `within` (503s and transport errors are
    /// retried, as Polar would).
    async fn expect_acceptance(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.post().await;
            match answer {
                Ok((200, _)) => return Ok(()),
                Ok((503, _)) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => anyhow::bail!("no 200 within {within:?}; last answer {other:?}"),
            }
        }
    }
}

/// A small deterministic generator, so a seed replays the same disruptions.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
