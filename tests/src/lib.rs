//! Helpers for the end-to-end tests and the load generator: running
//! polarsim (the Polar simulator beside this repository) and reading its
//! streams.

pub mod bench;
pub mod chaos;
pub mod fault_proxy;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Generates a stream into `dir` unless it is already there (polarsim is
/// deterministic per seed and version, so a cached stream is the same stream).
pub fn generate(dir: &Path, seed: u32, customers: u32, days: u32) -> anyhow::Result<()> {
    if dir.join("events.jsonl").exists() && dir.join("expected.json").exists() {
        return Ok(());
    }
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
        .arg(dir)
        .output()
        .context("cannot run python3")?;
    anyhow::ensure!(
        output.status.success(),
        "polarsim generate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Every event of a stream, in file order.
pub fn read_events(file: &Path) -> anyhow::Result<Vec<SimEvent>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .map(|line| serde_json::from_str(line).context("not a polarsim line"))
        .collect()
}
