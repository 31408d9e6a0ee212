//! What the load generator is made of: a fresh database per run, an embedded
//! broker, the real service binaries as child processes, and an HTTP driver
//! that, at a fixed rate, measures latency from when each request was due
//! whenever the sender is behind schedule (so a stalled server shows up as
//! latency, not as fewer samples).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sqlx::{Connection, PgConnection};
use tokio::net::TcpStream;

use hookstream_shared::kafka::EmbeddedKafka;

/// A database created empty for one run and dropped afterwards.
#[derive(Debug)]
pub struct FreshDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl FreshDatabase {
    /// `server` is a Postgres URL without the database part.
    pub async fn create(server: &str, name: &str) -> anyhow::Result<Self> {
        let admin_url = format!("{server}/postgres");
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .context("cannot reach Postgres")?;
        // Names come from the load generator itself, never from input.
        sqlx::raw_sql(&format!("drop database if exists {name} with (force)"))
            .execute(&mut admin)
            .await?;
        sqlx::raw_sql(&format!("create database {name}"))
            .execute(&mut admin)
            .await?;
        // Loopback: TLS would only add AES on both sides of every query.
        Ok(Self {
            url: format!("{server}/{name}?sslmode=disable"),
            admin_url,
            name: name.to_owned(),
        })
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::raw_sql(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// A port free right now on 127.0.0.1, for a child service to bind.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A service binary running as a child process; killed when dropped.
#[derive(Debug)]
pub struct Service {
    child: Child,
    pub base_url: String,
    /// Its metrics listener (`<BINARY>_METRICS_LISTEN`, on a port of its own).
    pub metrics_url: String,
}

impl Service {
    /// Starts `binary` (a sibling of this executable) with `env`, listening on
    /// `port` and serving metrics on a free port, and waits until its
    /// `/readyz` answers 200.
    pub async fn start(binary: &str, port: u16, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let path = sibling_binary(binary)?;
        let mut command = Command::new(&path);
        let metrics_port = free_port()?;
        command.env(
            format!("{}_METRICS_LISTEN", binary.to_ascii_uppercase()),
            format!("127.0.0.1:{metrics_port}"),
        );
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command.env(
            "RUST_LOG",
            std::env::var("SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
        );
        // Services log to stdout: dropped, unless SERVICE_LOG_DIR asks for
        // one file per binary (appended across restarts), to read after a run.
        match std::env::var_os("SERVICE_LOG_DIR") {
            Some(dir) => {
                let path = PathBuf::from(dir).join(format!("{binary}.log"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                command.stdout(file);
            }
            None => {
                command.stdout(Stdio::null());
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        let service = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = get(&service.base_url, "/readyz", None).await {
                return Ok(service);
            }
            anyhow::ensure!(Instant::now() < deadline, "{binary} did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The service's process id, for [`cpu::process_seconds`].
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait: the service's own graceful shutdown.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a run cost in CPU time, beside how long it took: on a machine whose
/// cores are all busy, core-seconds per event bound the rate no matter how the
/// work is spread. Read from Linux's `/proc`; zero where it cannot be read.
pub mod cpu {
    /// User plus system time, in seconds, of process `pid` (all its threads).
    pub fn process_seconds(pid: u32) -> f64 {
        read_stat(&format!("/proc/{pid}/stat")).map_or(0.0, |t| t.own)
    }

    /// User plus system time, in seconds, of every process whose command is
    /// `command` (e.g. `postgres`), including their exited and reaped
    /// children: a server's backends come and go during a run.
    pub fn command_seconds(command: &str) -> f64 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|e| read_stat(&format!("{}/stat", e.path().display())))
            .filter(|t| t.command == command)
            .map(|t| t.own + t.children)
            .sum()
    }

    struct Times {
        command: String,
        own: f64,
        children: f64,
    }

    fn read_stat(path: &str) -> Option<Times> {
        let stat = std::fs::read_to_string(path).ok()?;
        // The command is in parentheses and may itself hold spaces or ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let command = head.split_once('(')?.1.to_owned();
        // After the command: state is field 3; utime, stime, cutime, cstime
        // are fields 14 to 17.
        let fields: Vec<f64> = rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        let [utime, stime, cutime, cstime] = fields[..] else {
            return None;
        };
        let tick = clock_ticks_per_second();
        Some(Times {
            command,
            own: (utime + stime) / tick,
            children: (cutime + cstime) / tick,
        })
    }

    /// `getconf CLK_TCK`: 100 on every Linux this runs on; asked once.
    fn clock_ticks_per_second() -> f64 {
        static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
        *TICKS.get_or_init(|| {
            std::process::Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(100.0)
        })
    }

    /// The cores this machine has.
    pub fn cores() -> f64 {
        std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
    }
}

/// The path of another binary built beside this one (same profile). A test
/// executable lives one level down, in `deps/`; `cargo test --workspace`
/// builds the service binaries in the directory above it.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name(name);
    let candidates = [
        Some(beside.clone()),
        exe.parent()
            .filter(|dir| dir.ends_with("deps"))
            .and_then(|dir| dir.parent())
            .map(|dir| dir.join(name)),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} not found: build it first (cargo build --release -p hookstream-ingest -p hookstream-projector, or cargo test --workspace)",
                beside.display()
            )
        })
}

/// The value of the first sample in a Prometheus text exposition whose line
/// starts with `name` (give the labels, or a trailing space for none).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// One GET on a fresh connection: status and body.
pub async fn get(base_url: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Bytes)> {
    let authority = base_url.trim_start_matches("http://").to_owned();
    let mut sender = connect(&authority).await?;
    let mut request = Request::get(path).header("host", &authority);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new()))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A keep-alive HTTP/1.1 connection.
pub async fn connect(authority: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// How requests are issued.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as `connections` keep-alive connections allow.
    FullSpeed,
    /// Request `i` is due at `start + i / rate`; latency counts from then.
    Rate(f64),
}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    pub sent: u64,
    /// Answers by status code.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub elapsed: Duration,
    /// Latencies of 2xx answers, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Measured {
    pub fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }

    pub fn summary(&self, label: &str) -> String {
        let others: Vec<String> = self
            .statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(s, n)| format!("{s}x{n}"))
            .collect();
        format!(
            "{label:<34} {:>9.0}/s ok  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>8.2} ms  ({} sent, {} ok{}{})",
            self.throughput(),
            self.quantile_ms(0.50),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.quantile_ms(1.0),
            self.sent,
            self.ok(),
            if others.is_empty() {
                String::new()
            } else {
                format!(", other {}", others.join(" "))
            },
            if self.transport_errors > 0 {
                format!(", {} transport errors", self.transport_errors)
            } else {
                String::new()
            },
        )
    }
}

/// Sends `total` requests built by `make(i)` to `authority` over
/// `connections` connections at `pace`, for at most `max_duration`.
pub async fn drive<F>(
    authority: &str,
    connections: usize,
    pace: Pace,
    total: u64,
    max_duration: Duration,
    make: F,
) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Request<Full<Bytes>> + Send + Sync + 'static,
{
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(authority).await?);
    }
    let make = Arc::new(make);
    let authority: Arc<str> = authority.into();
    paced(senders, pace, total, max_duration, move |mut sender, i| {
        let (make, authority) = (make.clone(), authority.clone());
        async move {
            let outcome = async {
                let response = sender.send_request(make(i)).await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                Ok::<u16, anyhow::Error>(status)
            }
            .await;
            match outcome {
                Ok(status) => (sender, Some(status)),
                Err(_) => {
                    match connect(&authority).await {
                        Ok(s) => sender = s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                    (sender, None)
                }
            }
        }
    })
    .await
}

/// Runs operations `0..total` at `pace` for at most `max_duration`, one
/// worker per element of `workers` (its state: a connection, a pool). Each
/// worker takes the next operation, waits until it is due, and runs
/// `operation(state, i)`, which hands the state back with the status it
/// ended in (2xx counts as success and is timed) or `None` when it failed
/// before any status (a broken connection).
pub async fn paced<S, Op, Fut>(
    workers: Vec<S>,
    pace: Pace,
    total: u64,
    max_duration: Duration,
    operation: Op,
) -> anyhow::Result<Measured>
where
    S: Send + 'static,
    Op: Fn(S, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (S, Option<u16>)> + Send,
{
    let operation = Arc::new(operation);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + max_duration;
    let mut tasks = Vec::with_capacity(workers.len());
    for state in workers {
        let (operation, next) = (operation.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut state = state;
            let mut measured = Measured::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let due = match pace {
                    Pace::FullSpeed => Instant::now(),
                    Pace::Rate(rate) => {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        if Instant::now() < due {
                            // Idle until due: time from waking, since tokio's
                            // 1 ms timer may wake late and that is not the
                            // server's doing.
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            // Behind schedule: the wait is real queueing.
                            due
                        }
                    }
                };
                measured.sent += 1;
                let (returned, status) = operation(state, i).await;
                state = returned;
                match status {
                    Some(status) => {
                        *measured.statuses.entry(status).or_default() += 1;
                        if (200..300).contains(&status) {
                            let us = due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                            measured.latencies_us.push(us);
                        }
                    }
                    None => measured.transport_errors += 1,
                }
            }
            measured
        }));
    }
    let mut all = Measured::default();
    for task in tasks {
        let m = task.await?;
        all.sent += m.sent;
        all.transport_errors += m.transport_errors;
        for (s, n) in m.statuses {
            *all.statuses.entry(s).or_default() += n;
        }
        all.latencies_us.extend(m.latencies_us);
    }
    all.elapsed = start.elapsed();
    all.latencies_us.sort_unstable();
    Ok(all)
}

/// Publishes a polarsim stream to `topic` as ingest's relay would: keyed by
/// customer, raw body, hookstream's headers, `seq` = position in the stream.
pub async fn publish_stream(
    bootstrap: &str,
    topic: &str,
    events: &[crate::SimEvent],
) -> anyhow::Result<()> {
    StreamPublisher::new(bootstrap, 0)?
        .publish(topic, events)
        .await
}

/// One producer publishing a stream in parts, as ingest's relay would
/// (see [`publish_stream`]), numbering events on from part to part.
#[allow(missing_debug_implementations)] // the producer has no Debug
pub struct StreamPublisher {
    producer: rdkafka::producer::FutureProducer,
    /// The `seq` of the last event published.
    last_seq: usize,
}

impl StreamPublisher {
    /// A producer whose first event gets `seq` `after_seq + 1`.
    pub fn new(bootstrap: &str, after_seq: usize) -> anyhow::Result<Self> {
        Ok(Self {
            producer: rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("enable.idempotence", "true")
                .set("linger.ms", "20")
                .set("queue.buffering.max.messages", "1000000")
                .create()?,
            last_seq: after_seq,
        })
    }

    pub async fn publish(&mut self, topic: &str, events: &[crate::SimEvent]) -> anyhow::Result<()> {
        use rdkafka::producer::FutureRecord;
        for chunk in events.chunks(20_000) {
            let first_seq = self.last_seq + 1;
            self.last_seq += chunk.len();
            let producer = &self.producer;
            let sends = chunk.iter().enumerate().map(|(i, event)| {
                let seq = (first_seq + i) as i64;
                let key = hookstream_shared::envelope::parse(event.body.as_bytes())
                    .ok()
                    .and_then(|e| e.partition_key)
                    .unwrap_or_else(|| event.webhook_id.clone());
                async move {
                    let headers = hookstream_shared::kafka::message::headers(
                        &event.webhook_id,
                        &event.event_type,
                        "polar",
                        seq,
                    );
                    producer
                        .send(
                            FutureRecord::to(topic)
                                .key(&key)
                                .payload(event.body.as_bytes())
                                .headers(headers),
                            Duration::from_secs(30),
                        )
                        .await
                        .map_err(|(e, _)| anyhow::anyhow!("publish failed: {e}"))
                }
            });
            for result in futures::future::join_all(sends).await {
                result?;
            }
        }
        Ok(())
    }
}

/// Sums the next offsets the projector stored: the messages it has applied.
pub async fn consumed(database_url: &str) -> anyhow::Result<i64> {
    let mut connection = PgConnection::connect(database_url).await?;
    consumed_on(&mut connection).await
}

/// [`consumed`] on an open connection: a drain polls it every few
/// milliseconds, and a new connection per poll would bill Postgres for a
/// backend start each time.
pub async fn consumed_on(connection: &mut PgConnection) -> anyhow::Result<i64> {
    let n: Option<i64> =
        sqlx::query_scalar("select sum(next_offset)::bigint from projector_offsets")
            .fetch_one(connection)
            .await
            .unwrap_or(None);
    Ok(n.unwrap_or(0))
}

/// Which broker a run uses.
#[derive(Debug, Clone)]
pub enum BrokerChoice {
    /// librdkafka's mock cluster, in this process.
    Mock,
    /// A `tansu` binary, started as its own process with in-memory storage.
    Tansu { binary: PathBuf },
}

/// The broker the services talk to, and how to take it away for a while.
#[derive(Debug)]
pub enum Broker {
    Mock(EmbeddedKafka),
    /// A separate process; an outage freezes it (SIGSTOP), so clients see a
    /// broker that stops answering, as across a network partition. Its
    /// in-memory storage survives that, where a restart would wipe it.
    Process {
        child: Child,
        bootstrap: String,
    },
}

impl Broker {
    pub fn start(choice: &BrokerChoice) -> anyhow::Result<Self> {
        match choice {
            BrokerChoice::Mock => Ok(Self::Mock(EmbeddedKafka::start(1)?)),
            BrokerChoice::Tansu { binary } => start_tansu(binary),
        }
    }

    /// Creates `topic` with `partitions`, as an operator would before
    /// starting the services.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Self::Mock(kafka) => kafka.create_topic(topic, partitions),
            Self::Process { bootstrap, .. } => {
                let mut settings =
                    hookstream_shared::kafka::KafkaSettings::for_brokers(bootstrap, topic);
                settings.partitions = partitions;
                hookstream_shared::kafka::ensure_topic(&settings, None).await
            }
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Self::Mock(kafka) => kafka.bootstrap_servers().to_owned(),
            Self::Process { bootstrap, .. } => bootstrap.clone(),
        }
    }

    /// Takes the broker away (`false`) or brings it back.
    pub fn set_reachable(&self, reachable: bool) -> anyhow::Result<()> {
        match self {
            Self::Mock(kafka) => kafka.set_broker_up(1, reachable),
            Self::Process { child, .. } => {
                let signal = if reachable { "-CONT" } else { "-STOP" };
                let status = Command::new("kill")
                    .args([signal, &child.id().to_string()])
                    .status()?;
                anyhow::ensure!(status.success(), "kill {signal} failed");
                Ok(())
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Self::Process { child, .. } = self {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts tansu on a free port with in-memory storage and waits until it
/// accepts connections.
fn start_tansu(binary: &Path) -> anyhow::Result<Broker> {
    let port = free_port()?;
    let bootstrap = format!("127.0.0.1:{port}");
    let child = Command::new(binary)
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(["--listener-url", &format!("tcp://{bootstrap}")])
        .args(["--advertised-listener-url", &format!("tcp://{bootstrap}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let broker = Broker::Process { child, bootstrap };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(broker.bootstrap_servers()).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tansu did not start listening");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(broker)
}
