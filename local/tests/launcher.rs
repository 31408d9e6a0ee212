//! The README's first command: `hookstream` starts the whole pipeline on a
//! fresh database with an embedded broker, takes a signed webhook, shows it
//! in the read API, and stops cleanly on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookstream_ingest::signature::{KeyRule, signature_header};
use hookstream_shared::config::Secret;

struct DropDatabase {
    admin_url: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                &format!("drop database if exists {} with (force)", self.name),
            ])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hookstream_runs_the_pipeline_from_one_command() {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let server = base
        .rsplit_once('/')
        .expect("url with a database")
        .0
        .to_owned();
    let name = format!("hookstream_launcher_{}", uuid_like());
    let _cleanup = DropDatabase {
        admin_url: format!("{server}/postgres"),
        name: name.clone(),
    };
    let workdir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&workdir).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_hookstream"))
        .current_dir(&workdir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // A database that does not exist yet: the launcher creates it.
        .env("DATABASE_URL", format!("{server}/{name}"))
        .env("INGEST_LISTEN", "127.0.0.1:0")
        .env("PROJECTOR_LISTEN", "127.0.0.1:0")
        .env("INGEST_METRICS_LISTEN", "127.0.0.1:0")
        .env("PROJECTOR_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("hookstream starts");

    // The banner: webhook URL, read API URL and token.
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.starts_with("Ctrl-C stops");
            banner.push(line);
            if done {
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        banner
    })
    .await
    .unwrap();
    let field = |label: &str| -> String {
        banner
            .iter()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(label)
                    .map(|rest| rest.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {label} in banner: {banner:#?}"))
    };
    let webhooks = field("webhooks");
    let api = field("read API");
    let token = field("token");
    assert!(webhooks.ends_with("/webhooks/polar"), "{webhooks}");

    // The generated secret is in the file the banner names, not on the terminal.
    let env_file = std::fs::read_to_string(workdir.join(".hookstream/local.env")).unwrap();
    let secret = env_file
        .trim()
        .strip_prefix("export POLAR_WEBHOOK_SECRET=")
        .unwrap()
        .to_owned();
    assert!(
        !banner.join("\n").contains(&secret),
        "the secret is never printed"
    );

    let body = r#"{"type":"customer.created","timestamp":"2026-01-01T00:00:00Z","api_version":"2026-10","data":{"id":"cus_local","created_at":"2026-01-01T00:00:00Z","modified_at":null,"metadata":{},"external_id":"usr_local","email":"local@example.com","email_verified":false,"type":"individual","name":null,"billing_name":null,"billing_address":null,"tax_id":null,"locale":null,"organization_id":"org","default_payment_method_id":null,"deleted_at":null,"first_user_event_at":null,"avatar_url":null}}"#;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    hookstream_shared::tls::use_ring_provider();
    let client = reqwest::Client::new();
    let response = client
        .post(&webhooks)
        .header("webhook-id", "local-1")
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            signature_header(
                KeyRule::Polar,
                &Secret::new(&secret),
                "local-1",
                now,
                body.as_bytes(),
            ),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let response = client
            .get(format!("{api}/v1/customers/external/usr_local/state"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break response.json::<serde_json::Value>().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the webhook never reached the read API"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state["email"], "local@example.com");

    // Ctrl-C stops everything cleanly.
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "hookstream exited with {exit}");
    std::fs::remove_dir_all(&workdir).unwrap();
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
