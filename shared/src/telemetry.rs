//! Structured logging, set up once per process from `RUST_LOG` and `LOG_FORMAT`.

use std::str::FromStr;

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Settings};

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected `text` or `json`".to_owned()),
        }
    }
}

/// The logging settings both services read.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `LOG_FORMAT` (`text`).
    pub format: LogFormat,
    /// `RUST_LOG` (`info`, with Postgres's NOTICEs at `warn`): an `EnvFilter`
    /// directive.
    pub filter: String,
}

/// The filter without `RUST_LOG`. sqlx logs every NOTICE Postgres sends at
/// INFO, and creating a generation's schema sends a dozen (`... does not
/// exist, skipping`) that say nothing to an operator.
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

impl LogSettings {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let format = settings.parse_or("LOG_FORMAT", LogFormat::Text)?;
        let filter = settings
            .get("RUST_LOG")?
            .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
        // Validate here so a typo stops the service with the setting's name
        // instead of silently logging nothing.
        EnvFilter::try_new(&filter).map_err(|e| ConfigError::new("RUST_LOG", e.to_string()))?;
        Ok(Self { format, filter })
    }
}

/// Installs the global subscriber, logging to stdout (services). Later calls
/// are ignored, so tests and embedded runs that start several services in one
/// process can all call it.
pub fn init(settings: &LogSettings) {
    init_with_writer(settings, std::io::stdout, std::io::stdout().is_terminal());
}

/// As [`init`], logging to stderr: for commands whose stdout is their result
/// (`projector replay`, `projector verify`).
pub fn init_for_command(settings: &LogSettings) {
    init_with_writer(settings, std::io::stderr, std::io::stderr().is_terminal());
}

/// Colours only on a terminal: a log written to a file or a pipe (systemd,
/// `> service.log`, a collector) would otherwise keep the escape codes.
/// `NO_COLOR` (any value) turns them off on a terminal too.
fn init_with_writer<W>(settings: &LogSettings, writer: W, terminal: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(terminal && std::env::var_os("NO_COLOR").is_none())
        .with_writer(writer);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// For tests: logs to the test harness's captured output, at `RUST_LOG` or `warn`.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
