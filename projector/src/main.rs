//! `projector`: runs the projector service (consumer and read API).
//! Configuration comes from the environment (see README and deploy/README.md).

use hookstream_projector::{Application, ProjectorConfig};
use hookstream_shared::{config::Settings, shutdown, telemetry};

// mimalloc: the service allocates per request and per batch from several
// threads; glibc's allocator spent a tenth of ingest's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Settings::from_env().and_then(|s| ProjectorConfig::from_settings(&s)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("projector: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    let result = async {
        let app = Application::build(config).await?;
        app.run_until_stopped(shutdown::on_signal()).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "projector failed");
            std::process::ExitCode::FAILURE
        }
    }
}
