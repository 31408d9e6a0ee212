//! `projector`: runs the projector service (consumer and read API), or one of
//! its maintenance commands: `replay` and `verify`.
//! Configuration comes from the environment (see deploy/README.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use hookstream_projector::rebuild::progress::{ProgressMode, ProgressReport};
use hookstream_projector::rebuild::replay::{self, ReplayOptions, ReplaySource};
use hookstream_projector::rebuild::verify::{self, VerifyOptions};
use hookstream_projector::{Application, ProjectorConfig, config::ConsumerSettings};
use hookstream_shared::config::{ConfigError, Settings};
use hookstream_shared::db::{self, DatabaseSettings};
use hookstream_shared::kafka::KafkaSettings;
use hookstream_shared::shutdown;
use hookstream_shared::telemetry::{self, LogSettings};

// mimalloc: the service allocates per request and per batch from several
// threads; glibc's allocator spent a tenth of ingest's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kafka in, Polar state in Postgres out, served in Polar's API shapes.
#[derive(Debug, Parser)]
#[command(name = "projector", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: the consumer and the read API (the default).
    Serve,
    /// Rebuild every projection into a new generation while the live one
    /// keeps serving, then switch to it atomically.
    Replay {
        /// Where to read events from.
        #[arg(long, value_enum, default_value_t = From::Log)]
        from: From,
        /// Keep the previous generation (retired) instead of dropping it.
        #[arg(long)]
        keep_old: bool,
        /// Events read from the source at a time.
        #[arg(long, default_value_t = hookstream_projector::rebuild::DEFAULT_CHUNK)]
        chunk: usize,
        /// MiB of snapshots held in memory at most: half is written in the
        /// background while the other half fills. More means fewer writes
        /// of the same object, and more memory.
        #[arg(long, default_value_t = hookstream_projector::rebuild::DEFAULT_MEMORY_BUDGET >> 20)]
        memory_mb: usize,
        /// A log of at least this many events is replayed into unlogged
        /// tables, logged once at the end; a smaller one straight into
        /// logged tables.
        #[arg(long, default_value_t = hookstream_projector::rebuild::replay::DEFAULT_UNLOGGED_FROM)]
        unlogged_from: u64,
    },
    /// Rebuild from the log into a scratch generation and compare it with the
    /// live one; exits 1 on any difference.
    Verify {
        /// Comparisons to make before calling a difference drift (the live
        /// generation may briefly lag the log).
        #[arg(long, default_value_t = 3)]
        attempts: u32,
        /// Print both whole rows of each difference, not only the fields
        /// that differ.
        #[arg(long)]
        full_rows: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum From {
    /// The event log in Postgres (everything ever acknowledged).
    Log,
    /// The earliest offsets the Kafka topic still holds.
    Kafka,
}

/// Exit status for a configuration error, as for the service.
const EXIT_CONFIG: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => return config_error(e),
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&settings).await,
        Command::Replay {
            from,
            keep_old,
            chunk,
            memory_mb,
            unlogged_from,
        } => {
            let options = ReplayTuning {
                keep_old,
                chunk,
                memory_budget: memory_mb << 20,
                unlogged_from,
            };
            run_replay(&settings, from, options).await
        }
        Command::Verify {
            attempts,
            full_rows,
        } => run_verify(&settings, attempts, full_rows).await,
    }
}

fn config_error(e: ConfigError) -> ExitCode {
    eprintln!("projector: {e}");
    ExitCode::from(EXIT_CONFIG)
}

async fn serve(settings: &Settings) -> ExitCode {
    let config = match ProjectorConfig::from_settings(settings) {
        Ok(config) => config,
        Err(e) => return config_error(e),
    };
    telemetry::init(&config.log);
    let result = async {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown::on_signal()).await
    }
    .await;
    report_failure(result, "projector failed")
}

/// `projector replay`'s options other than the source.
struct ReplayTuning {
    keep_old: bool,
    chunk: usize,
    memory_budget: usize,
    unlogged_from: u64,
}

async fn run_replay(settings: &Settings, from: From, tuning: ReplayTuning) -> ExitCode {
    let setup = || -> Result<_, ConfigError> {
        let database = DatabaseSettings::from_settings(settings)?;
        let log = LogSettings::from_settings(settings)?;
        let source = match from {
            From::Log => ReplaySource::Log,
            From::Kafka => {
                let kafka = KafkaSettings::from_settings(settings)?;
                if kafka.brokers.is_none() {
                    return Err(ConfigError::new(
                        "KAFKA_BROKERS",
                        "is required by `replay --from kafka`",
                    ));
                }
                let group = ConsumerSettings::from_settings(settings)?.group_id;
                ReplaySource::Kafka { kafka, group }
            }
        };
        Ok((database, log, source))
    };
    let (database, log, source) = match setup() {
        Ok(setup) => setup,
        Err(e) => return config_error(e),
    };
    telemetry::init_for_command(&log);
    let options = ReplayOptions {
        source,
        keep_old: tuning.keep_old,
        chunk: tuning.chunk.max(1),
        memory_budget: tuning.memory_budget,
        unlogged_from: tuning.unlogged_from,
    };
    let result = async {
        let pool = db::connect_and_migrate(&database, "hookstream-replay").await?;
        let mut progress = ProgressReport::new(ProgressMode::for_stderr(), "replay");
        let summary =
            replay::replay(&pool, &options, &shutdown::on_signal(), &mut progress).await?;
        println!(
            "replayed {} events in {:.1} s ({:.0} events/s) into {}, now live",
            summary.events,
            summary.elapsed.as_secs_f64(),
            summary.events_per_second(),
            summary.generation
        );
        for step in &summary.steps {
            println!("{:>8.3} s  {}", step.took.as_secs_f64(), step.step);
        }
        match (&summary.previous, summary.kept_previous) {
            (Some(previous), true) => println!("kept the previous generation {previous} (retired)"),
            (Some(previous), false) => println!("dropped the previous generation {previous}"),
            (None, _) => {}
        }
        pool.close().await;
        Ok(())
    }
    .await;
    report_failure(result, "replay failed; the live projections are unchanged")
}

async fn run_verify(settings: &Settings, attempts: u32, full_rows: bool) -> ExitCode {
    let setup = || -> Result<_, ConfigError> {
        Ok((
            DatabaseSettings::from_settings(settings)?,
            LogSettings::from_settings(settings)?,
        ))
    };
    let (database, log) = match setup() {
        Ok(setup) => setup,
        Err(e) => return config_error(e),
    };
    telemetry::init_for_command(&log);
    let options = VerifyOptions {
        attempts,
        ..VerifyOptions::default()
    };
    let result = async {
        let pool = db::connect_and_migrate(&database, "hookstream-verify").await?;
        let mut progress = ProgressReport::new(ProgressMode::for_stderr(), "verify");
        let report = verify::verify(&pool, &options, &shutdown::on_signal(), &mut progress).await?;
        pool.close().await;
        Ok::<_, anyhow::Error>(report)
    }
    .await;
    match result {
        Ok(report) if report.drift.is_empty() => {
            println!(
                "no drift: {} matches a rebuild from the event log ({} rows compared)",
                report.live, report.rows
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            for difference in &report.drift {
                if full_rows {
                    println!("{}", difference.full());
                } else {
                    println!("{difference}");
                }
            }
            println!(
                "drift: {} rows of {} differ from a rebuild from the event log (in each of {} comparisons)",
                report.drift.len(),
                report.live,
                report.attempts
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "verify failed");
            eprintln!("projector verify: {e:#}");
            ExitCode::from(EXIT_CONFIG + 1)
        }
    }
}

fn report_failure(result: anyhow::Result<()>, what: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{what}");
            eprintln!("projector: {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
