//! `hookstream`: the whole pipeline on this machine with embedded defaults.
//!
//! Reads the same variables as the services. Unset, it uses a local
//! `hookstream` database (created if missing), an embedded Kafka-protocol
//! broker, ingest on 127.0.0.1:8080 and the read API on 127.0.0.1:8081, and
//! generates the webhook secret and API token. Ctrl-C stops everything.

use std::io::Write as _;

use hookstream_local::{Pipeline, generated_credential};
use hookstream_shared::config::Settings;
use hookstream_shared::telemetry::{self, LogSettings};

// mimalloc: the service allocates per request and per batch from several
// threads; glibc's allocator spent a tenth of ingest's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    let is_set = |vars: &[(String, String)], name: &str| {
        vars.iter().any(|(k, v)| k == name && !v.is_empty())
    };
    for (name, value) in [
        ("INGEST_LISTEN", "127.0.0.1:8080"),
        ("PROJECTOR_LISTEN", "127.0.0.1:8081"),
    ] {
        if !is_set(&vars, name) {
            vars.push((name.to_owned(), value.to_owned()));
        }
    }
    let secret_generated = !is_set(&vars, "POLAR_WEBHOOK_SECRET");
    if secret_generated {
        vars.push((
            "POLAR_WEBHOOK_SECRET".to_owned(),
            generated_credential("polar_whs_local_"),
        ));
    }
    let generated_token =
        (!is_set(&vars, "PROJECTOR_API_TOKENS")).then(|| generated_credential("local-"));
    if let Some(token) = &generated_token {
        vars.push(("PROJECTOR_API_TOKENS".to_owned(), token.clone()));
    }
    let log = match Settings::from_vars(vars.clone()).and_then(|s| LogSettings::from_settings(&s)) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("hookstream: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&log);

    let mut pipeline = match Pipeline::start(vars.clone()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hookstream: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let secret_file = if secret_generated {
        save_secret(&vars)
    } else {
        None
    };
    print_banner(
        &pipeline,
        generated_token.as_deref(),
        secret_file.as_deref(),
    );

    let shutdown = hookstream_shared::shutdown::on_signal();
    let failed = tokio::select! {
        () = shutdown.cancelled() => None,
        e = pipeline.wait_for_failure() => e.err(),
    };
    if let Some(e) = failed {
        eprintln!("hookstream: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match pipeline.stop().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookstream: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The generated webhook secret goes to a file only its owner can read,
/// never to the terminal or the log.
fn save_secret(vars: &[(String, String)]) -> Option<String> {
    let secret = vars
        .iter()
        .rev()
        .find(|(k, _)| k == "POLAR_WEBHOOK_SECRET")?
        .1
        .clone();
    let dir = std::path::Path::new(".hookstream");
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join("local.env");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&path).ok()?;
    writeln!(file, "export POLAR_WEBHOOK_SECRET={secret}").ok()?;
    Some(path.display().to_string())
}

fn print_banner(pipeline: &Pipeline, generated_token: Option<&str>, secret_file: Option<&str>) {
    let broker = match &pipeline.kafka {
        Some(k) => format!("embedded broker at {}", k.bootstrap_servers()),
        None => "KAFKA_BROKERS".to_owned(),
    };
    print!(
        "{}",
        banner(&Banner {
            broker: &broker,
            topic: &pipeline.topic,
            webhooks: &format!("http://{}/webhooks/polar", pipeline.ingest_address),
            api: &format!("http://{}", pipeline.projector_address),
            metrics: &format!(
                "http://{}/metrics (ingest), http://{}/metrics (projector)",
                pipeline.ingest_metrics_address, pipeline.projector_metrics_address
            ),
            generated_token,
            secret_file,
        })
    );
}

/// What the start-up banner says.
struct Banner<'a> {
    broker: &'a str,
    topic: &'a str,
    webhooks: &'a str,
    api: &'a str,
    metrics: &'a str,
    /// The read API token, when this run generated it; otherwise the user
    /// gave `PROJECTOR_API_TOKENS`, which is not echoed.
    generated_token: Option<&'a str>,
    secret_file: Option<&'a str>,
}

fn banner(b: &Banner<'_>) -> String {
    let Banner {
        broker,
        topic,
        webhooks,
        api,
        metrics,
        generated_token,
        secret_file,
    } = b;
    let secret = match secret_file {
        Some(path) => {
            format!("generated; set POLAR_WEBHOOK_SECRET to use yours (saved in {path})")
        }
        None => "from POLAR_WEBHOOK_SECRET".to_owned(),
    };
    // A token the user set is not printed; the sample command then names
    // where to take it from instead of pretending to be runnable as is.
    let (token, bearer) = match generated_token {
        Some(token) => ((*token).to_owned(), (*token).to_owned()),
        None => (
            "from PROJECTOR_API_TOKENS".to_owned(),
            "<one of PROJECTOR_API_TOKENS>".to_owned(),
        ),
    };
    format!(
        "\nhookstream is running ({broker}, topic {topic})
  webhooks   {webhooks}
             polar listen {webhooks}
  secret     {secret}
  read API   {api}
  token      {token}
  console    {api}/console/ (log in with PROJECTOR_CONSOLE_TOKENS, else the token above)
  metrics    {metrics}
  try        curl -H 'Authorization: Bearer {bearer}' '{api}/v1/entitlements/check?external_id=<user id>&benefit_id=<benefit id>'
Ctrl-C stops.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(generated_token: Option<&str>) -> String {
        banner(&Banner {
            broker: "embedded broker at 127.0.0.1:1",
            topic: "polar.events",
            webhooks: "http://127.0.0.1:8080/webhooks/polar",
            api: "http://127.0.0.1:8081",
            metrics: "http://127.0.0.1:9090/metrics (ingest)",
            generated_token,
            secret_file: None,
        })
    }

    #[test]
    fn a_token_the_user_set_is_named_not_printed_or_passed_off_as_one() {
        let text = with_token(None);
        assert!(
            text.contains("  token      from PROJECTOR_API_TOKENS\n"),
            "{text}"
        );
        assert!(
            text.contains("Bearer <one of PROJECTOR_API_TOKENS>"),
            "{text}"
        );
        assert!(!text.contains("Bearer (from"), "{text}");
        let text = with_token(Some("tok_123"));
        assert!(text.contains("  token      tok_123\n") && text.contains("Bearer tok_123'"));
    }
}
