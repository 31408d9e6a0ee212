//! Helpers for the end-to-end tests and the load generator: running
//! polarsim (the Polar simulator beside this repository) and reading its
//! streams.

pub mod bench;
pub mod chaos;
pub mod fault_proxy;
pub mod postgres;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use serde::Deserialize;

/// One line of polarsim's `events.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct SimEvent {
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The exact payload to send, byte for byte.
    pub body: String,
}

/// polarsim.py: `$POLARSIM`, else `../shared/tools/polarsim/polarsim.py`
/// beside the repository.
pub fn polarsim() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("POLARSIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/tools/polarsim/polarsim.py")
        });
    anyhow::ensure!(
        path.exists(),
        "polarsim not found at {}: set POLARSIM (scripts/test does)",
        path.display()
    );
    Ok(path)
}

/// A `python3 polarsim.py <subcommand>` command, ready for arguments.
pub fn polarsim_command(subcommand: &str) -> anyhow::Result<Command> {
    let mut command = Command::new("python3");
    command.arg(polarsim()?).arg(subcommand);
    Ok(command)
}

/// Settings for `Pipeline::start_with_pool` in an end-to-end run: both
/// services on free ports, the relay polling every 200 ms, four partitions,
/// and `extra` on top (replacing a default of the same name).
pub fn pipeline_settings(
    topic: &str,
    secret: &str,
    api_token: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut settings: Vec<(String, String)> = [
        ("DATABASE_URL", "postgres://unused@127.0.0.1/unused"),
        ("KAFKA_TOPIC", topic),
        ("KAFKA_TOPIC_PARTITIONS", "4"),
        ("POLAR_WEBHOOK_SECRET", secret),
        ("PROJECTOR_API_TOKENS", api_token),
        ("INGEST_LISTEN", "127.0.0.1:0"),
        ("PROJECTOR_LISTEN", "127.0.0.1:0"),
        ("INGEST_METRICS_LISTEN", "127.0.0.1:0"),
        ("PROJECTOR_METRICS_LISTEN", "127.0.0.1:0"),
        ("RELAY_POLL_INTERVAL_MS", "200"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (name, value) in extra {
        settings.retain(|(k, _)| k != name);
        settings.push((name.to_string(), value.to_string()));
    }
    settings
}

/// What `polarsim send` did: whether it exited successfully, and its
/// report (stdout) and stderr.
#[derive(Debug)]
pub struct Sent {
    pub success: bool,
    pub report: String,
    pub stderr: String,
}

/// Runs `polarsim send` of `dir/events.jsonl` to `url`, signed with
/// `secret` as Polar signs, with `args` (duplicates, reordering, gaps...),
/// off the async runtime the services under test run on.
pub async fn polarsim_send(
    dir: &Path,
    url: &str,
    secret: &str,
    args: &[&str],
) -> anyhow::Result<Sent> {
    let mut command = polarsim_command("send")?;
    command
        .arg(dir.join("events.jsonl"))
        .args(["--url", url, "--secret", secret])
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    Ok(Sent {
        success: output.status.success(),
        report: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `polarsim verify` of `dir/expected.json` against a read API (Polar's
/// SDK, polling for up to 60 s), off the async runtime the services under
/// test run on. Returns whether it passed and its stdout.
pub async fn polarsim_verify(dir: &Path, api: &str, token: &str) -> anyhow::Result<(bool, String)> {
    let mut command = polarsim_command("verify")?;
    command.arg(dir.join("expected.json")).args([
        "--api",
        api,
        "--token",
        token,
        "--timeout",
        "60",
    ]);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let mut report = String::from_utf8_lossy(&output.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), report))
}

/// Asks a read API's entitlement check about every row of `entitlements` in
/// `dir/expected.json` ("does external id X have benefit Y within customer
/// C"), and about each external id and benefit without a customer (true when
/// any of its rows is). Returns the rows asked and the answers that were
/// wrong, each described.
pub async fn check_entitlements(
    dir: &Path,
    api: &str,
    token: &str,
) -> anyhow::Result<(usize, Vec<String>)> {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let rows = expected["entitlements"]
        .as_array()
        .context("expected.json has no entitlements")?;
    hookstream_shared::tls::use_ring_provider();
    let client = reqwest::Client::new();
    let ask = |query: Vec<(&'static str, String)>| {
        let url = reqwest::Url::parse_with_params(&format!("{api}/v1/entitlements/check"), &query);
        let client = &client;
        async move {
            let request = client.get(url?).bearer_auth(token);
            let answer: serde_json::Value =
                request.send().await?.error_for_status()?.json().await?;
            anyhow::Ok(answer)
        }
    };
    let mut anywhere: std::collections::BTreeMap<(String, String), bool> = Default::default();
    let mut wrong = Vec::new();
    for row in rows {
        let field = |name: &str| row[name].as_str().unwrap_or_default().to_owned();
        let (x, c, b) = (
            field("external_id"),
            field("customer_id"),
            field("benefit_id"),
        );
        let want = row["granted"]
            .as_bool()
            .context("a row without `granted`")?;
        *anywhere.entry((x.clone(), b.clone())).or_default() |= want;
        let answer = ask(vec![
            ("external_id", x),
            ("customer_id", c),
            ("benefit_id", b),
        ])
        .await?;
        if answer["granted"].as_bool() != Some(want) {
            wrong.push(format!("{row} answered {answer}"));
        }
    }
    for ((x, b), want) in &anywhere {
        let answer = ask(vec![("external_id", x.clone()), ("benefit_id", b.clone())]).await?;
        if answer["granted"].as_bool() != Some(*want) {
            wrong.push(format!(
                "{x} / {b} in any customer: want {want}, answered {answer}"
            ));
        }
    }
    Ok((rows.len() + anywhere.len(), wrong))
}

/// Reads every customer's members back through polar-sdk (`tests/sdk/members.py`)
/// and compares them with `dir/expected.json`. Returns whether all matched
/// and the script's output.
pub async fn sdk_members_check(
    dir: &Path,
    api: &str,
    token: &str,
) -> anyhow::Result<(bool, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/members.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(dir.join("expected.json"))
        .args([api, token]);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let mut report = String::from_utf8_lossy(&output.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), report))
}

/// Waits (up to a minute) until the projector has applied everything in
/// the log.
pub async fn wait_until_projected(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (logged, applied): (i64, i64) = sqlx::query_as(
            "select (select count(*) from event_log),
                    (select coalesce(sum(messages_applied), 0)::bigint from projector_offsets)",
        )
        .fetch_one(pool)
        .await?;
        if applied >= logged {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the projector applied {applied} of {logged} logged events in a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// What `polarsim compare` found: the calls made, and those whose answers
/// differed, with its report (stdout and stderr).
#[derive(Debug)]
pub struct Compared {
    pub calls: u64,
    pub differ: u64,
    pub report: String,
}

/// Runs `polarsim compare` of `dir/expected.json`: Polar's own Python SDK
/// makes `calls` seeded random reads (every operation hookstream serves, all
/// three API versions) against `reference` (serve-api, Polar's semantics)
/// and `candidate`, and reports every difference.
pub async fn polarsim_compare(
    dir: &Path,
    reference: (&str, &str),
    candidate: (&str, &str),
    seed: u32,
    calls: u32,
) -> anyhow::Result<Compared> {
    let mut command = polarsim_command("compare")?;
    command
        .arg(dir.join("expected.json"))
        .args(["--reference", reference.0, "--reference-token", reference.1])
        .args(["--candidate", candidate.0, "--candidate-token", candidate.1])
        .args(["--seed", &seed.to_string(), "--calls", &calls.to_string()])
        .args(["--max-report", "40"]);
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let mut report = String::from_utf8_lossy(&output.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&output.stderr));
    // "compare: N calls, I identical, D differ"
    let summary = report
        .lines()
        .rev()
        .filter(|line| line.ends_with(" differ"))
        .find_map(|line| line.strip_prefix("compare: "))
        .with_context(|| format!("polarsim compare printed no summary:\n{report}"))?;
    let number_before = |word: &str| -> anyhow::Result<u64> {
        let words: Vec<&str> = summary
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .collect();
        let at = words
            .iter()
            .position(|w| *w == word)
            .with_context(|| format!("no {word:?} in {summary:?}"))?;
        Ok(words[at.checked_sub(1).context("no count")?].parse()?)
    };
    Ok(Compared {
        calls: number_before("calls")?,
        differ: number_before("differ")?,
        report,
    })
}

/// Reads a read API through Polar's TypeScript SDK (@polar-sh/sdk 1.0.1,
/// `tests/sdk/ts/replica.mjs`) in every API version, checking the fields
/// against `dir/expected.json`. Returns whether every check passed and the
/// script's output.
pub async fn ts_sdk_check(dir: &Path, api: &str, token: &str) -> anyhow::Result<(bool, String)> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/ts");
    anyhow::ensure!(
        sdk.join("node_modules/@polar-sh/sdk").exists(),
        "the TypeScript SDK is not installed: npm ci --prefix {} (scripts/test does)",
        sdk.display()
    );
    let mut command = Command::new("node");
    command
        .current_dir(&sdk)
        .arg("replica.mjs")
        .arg(dir.join("expected.json"))
        .args([api, token]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("cannot run node")?;
    let mut report = String::from_utf8_lossy(&output.stdout).into_owned();
    report.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), report))
}

/// Generates a stream into `dir` unless it is already there (polarsim is
/// deterministic per seed and version, so a cached stream is the same stream).
///
/// Tests running at once may ask for the same stream. polarsim writes into a
/// directory of this call's own, which is then renamed into place: a reader
/// never sees a half-written stream, and a second writer's rename fails
/// harmlessly once the first has landed.
pub fn generate(dir: &Path, seed: u32, customers: u32, days: u32) -> anyhow::Result<()> {
    let complete =
        |dir: &Path| dir.join("events.jsonl").exists() && dir.join("expected.json").exists();
    if complete(dir) {
        return Ok(());
    }
    let staging = staging_dir(dir);
    let output = polarsim_command("generate")?
        .args([
            "--seed",
            &seed.to_string(),
            "--customers",
            &customers.to_string(),
            "--days",
            &days.to_string(),
        ])
        .arg("--out")
        .arg(&staging)
        .output()
        .context("cannot run python3")?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        anyhow::bail!(
            "polarsim generate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if dir.exists() && !complete(dir) {
        // Left half-written by a run killed before this helper staged its
        // output; nothing can be reading it.
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove the partial stream {}", dir.display()))?;
    }
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(()),
        Err(_) if complete(dir) => {
            // Another test landed the same stream first.
            std::fs::remove_dir_all(&staging)
                .with_context(|| format!("cannot remove {}", staging.display()))?;
            Ok(())
        }
        Err(error) => Err(error)
            .with_context(|| format!("cannot move {} to {}", staging.display(), dir.display())),
    }
}

/// A directory beside `dir` that no other call, in this process or another,
/// writes into.
fn staging_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!(".{name}.staging-{}", uuid::Uuid::new_v4()))
}

/// Every event of a stream, in file order.
pub fn read_events(file: &Path) -> anyhow::Result<Vec<SimEvent>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .map(|line| serde_json::from_str(line).context("not a polarsim line"))
        .collect()
}

/// `polarsim serve-api`: Polar's REST API over a stream's state, on a free
/// port, killed when dropped.
#[derive(Debug)]
pub struct ServeApi {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl ServeApi {
    /// Serves `dir/events.jsonl` to bearer `token`, with serve-api's `args`
    /// (`--upto`, `--rate-limit`, ...). Returns once it listens.
    pub fn start(dir: &Path, token: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = polarsim_command("serve-api")?
            .arg(dir.join("events.jsonl"))
            .args(["--port", "0", "--token", token])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run python3")?;
        // "serve-api: http://127.0.0.1:PORT (N events, ...)" once it listens.
        let mut first = String::new();
        BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut first)?;
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(str::to_owned);
        match url {
            Some(url) => Ok(Self { child, url }),
            None => {
                let _ = child.kill();
                anyhow::bail!("serve-api did not start: {first:?}")
            }
        }
    }
}

impl Drop for ServeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
