//! `ingest`: runs the webhook ingest service, or `ingest reconcile`, which
//! reads Polar's REST API into the event log once. Configuration comes from
//! the environment (see README and deploy/README.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use hookstream_ingest::config::ReconcileCommandConfig;
use hookstream_ingest::reconcile::polar_api::PolarApi;
use hookstream_ingest::reconcile::{ReconcileOptions, Reconciler};
use hookstream_ingest::{Application, IngestConfig};
use hookstream_shared::progress::{ProgressMode, ProgressReport};
use hookstream_shared::{config::Settings, db, shutdown, telemetry};

// mimalloc: the service allocates per request and per batch from several
// threads; glibc's allocator spent a tenth of ingest's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Polar's webhooks in, a durable event log out, relayed to Kafka.
#[derive(Debug, Parser)]
#[command(name = "ingest", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Read Polar's REST API into the event log once: every list in full
    /// (what changed is appended; customers Polar no longer has are recorded
    /// as deleted). The running services publish and apply it. Needs
    /// DATABASE_URL and POLAR_ACCESS_TOKEN.
    Reconcile {
        /// Also pull failed deliveries' payloads (before the scan).
        #[arg(long)]
        deliveries: bool,
        /// With --deliveries: pull the deliveries only, no scan.
        #[arg(long, requires = "deliveries")]
        no_scan: bool,
    },
}

/// Exit status for a configuration error.
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
        Command::Reconcile {
            deliveries,
            no_scan,
        } => {
            let options = ReconcileOptions {
                scan: !no_scan,
                deliveries,
            };
            reconcile(&settings, options).await
        }
    }
}

async fn serve(settings: &Settings) -> ExitCode {
    let config = match IngestConfig::from_settings(settings) {
        Ok(config) => config,
        Err(e) => return config_error(e),
    };
    telemetry::init(&config.log);
    let result = async {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown::on_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "ingest failed");
            ExitCode::FAILURE
        }
    }
}

async fn reconcile(settings: &Settings, options: ReconcileOptions) -> ExitCode {
    let config = match ReconcileCommandConfig::from_settings(settings) {
        Ok(config) => config,
        Err(e) => return config_error(e),
    };
    // The summary is the command's output: logs go to stderr.
    telemetry::init_for_command(&config.log);
    let result = async {
        let pool = db::connect_and_migrate(&config.database, "hookstream-reconcile").await?;
        let reconciler = Reconciler::new(
            PolarApi::new(&config.polar)?,
            pool.clone(),
            config.polar.endpoint_id.clone(),
        );
        let mut progress =
            ProgressReport::counting(ProgressMode::for_stderr(), "reconcile", "objects");
        let outcome = reconciler
            .run_recorded(options, &mut progress, &shutdown::on_signal())
            .await;
        progress.finish();
        pool.close().await;
        outcome
    }
    .await;
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ingest reconcile: {e:#}");
            eprintln!(
                "nothing half-written needs undoing: what was appended stays, and a rerun adds the rest"
            );
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: hookstream_shared::config::ConfigError) -> ExitCode {
    eprintln!("ingest: {e}");
    ExitCode::from(EXIT_CONFIG)
}
