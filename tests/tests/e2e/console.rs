//! The operator console in a real browser: headless Chromium (Debian's
//! `chromium`, driven through `chromedriver`) logs in, searches a customer
//! of a polarsim stream, reads its timeline and the benefit check, opens an
//! event, and re-applies a failure that a broken webhook caused. Every page
//! is saved as a screenshot under `target/console-screenshots/` and checked
//! not to be blank.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sqlx::PgPool;

use hookstream_local::Pipeline;
use hookstream_shared::signing;
use hookstream_tests::{generate, pipeline_settings, polarsim_send, read_events};

const SECRET: &str = "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
const API_TOKEN: &str = "console-api-token-0123456789abcdef012345";
const CONSOLE_TOKEN: &str = "console-operator-token-0123456789abcdef01";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless Chromium session with a profile of its own.
    async fn session(&self, profile: &Path) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-dev-shm-usage",
                    "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "chromedriver not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot start a Chromium session: {e}"),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves the page as `name.png` and checks it is not blank: some of its
/// pixels stand out from the page background.
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, &png).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let channels = frame.color_type.samples();
    let pixels = &pixels[..frame.buffer_size()];
    let background = &pixels[..channels];
    let differing = pixels
        .chunks(channels)
        .filter(|p| p.iter().zip(background).any(|(a, b)| a.abs_diff(*b) > 24))
        .count();
    let share = differing as f64 / (pixels.len() / channels) as f64;
    // Text on a page covers little of it: the sparse login form is 0.7%.
    assert!(
        share > 0.002,
        "{} looks blank: {:.2}% of its pixels differ from the background",
        path.display(),
        share * 100.0
    );
}

/// Sends one signed webhook the way Polar does (key: the secret's bytes).
async fn send_webhook(ingest: &str, webhook_id: &str, body: &str) -> u16 {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature =
        signing::signature_header(SECRET.as_bytes(), webhook_id, &timestamp, body.as_bytes());
    reqwest::Client::new()
        .post(ingest)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_until_applied(pool: &PgPool, events: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "select coalesce(sum(messages_applied), 0)::bigint from projector_offsets",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if applied >= events {
            return;
        }
        assert!(Instant::now() < deadline, "{applied} of {events} applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_operator_finds_why_a_customer_has_access_and_reapplies_a_failure_in_a_browser(
    pool: PgPool,
) {
    hookstream_shared::telemetry::init_for_tests();
    hookstream_shared::tls::use_ring_provider();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-console-seed11");
    generate(&dir, 11, 20, 45).unwrap();
    let events = read_events(&dir.join("events.jsonl")).unwrap();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    // A live customer with a benefit: the one the operator is asked about.
    let (external_id, truth) = expected["customers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, c)| {
            c["deleted"] == false && !c["granted_benefit_ids"].as_array().unwrap().is_empty()
        })
        .expect("a customer with a benefit");
    let customer_id = truth["customer_id"].as_str().unwrap();
    let benefit_id = truth["granted_benefit_ids"][0].as_str().unwrap();

    let topic = format!("e2e-console-{}", uuid::Uuid::new_v4());
    let pipeline = Pipeline::start_with_pool(
        pipeline_settings(
            &topic,
            SECRET,
            API_TOKEN,
            &[
                ("KAFKA_TOPIC_PARTITIONS", "3"),
                ("PROJECTOR_CONSOLE_TOKENS", CONSOLE_TOKEN),
            ],
        ),
        pool.clone(),
    )
    .await
    .unwrap();
    let ingest = format!("http://{}/webhooks/polar", pipeline.ingest_address);
    let console = format!("http://{}/console/", pipeline.projector_address);
    let sent = polarsim_send(
        &dir,
        &ingest,
        SECRET,
        &[
            "--dup-rate",
            "0.2",
            "--reorder-window",
            "20",
            "--seed",
            "3",
            "--quiet",
        ],
    )
    .await
    .unwrap();
    assert!(sent.success, "{}", sent.stderr);
    // A webhook the projector cannot apply: a subscription whose status is
    // a number.
    let broken = json!({
        "type": "subscription.updated",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "data": {"id": "sub_broken", "customer_id": customer_id, "status": 7,
                 "created_at": "2026-01-01T00:00:00Z", "modified_at": null},
    })
    .to_string();
    assert_eq!(send_webhook(&ingest, "wh-broken-1", &broken).await, 200);
    wait_until_applied(&pool, events.len() as i64 + 1).await;

    let driver = Driver::start();
    let profile = tempdir("console-profile");
    let browser = driver.session(&profile).await;
    let outcome = drive(
        &browser,
        &pool,
        &console,
        external_id,
        customer_id,
        benefit_id,
    )
    .await;
    browser.close().await.unwrap();
    pipeline.stop().await.unwrap();
    outcome.unwrap();
}

fn tempdir(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The element `css` selects, waiting for it to appear: after a click the
/// next page has not always loaded yet.
async fn find(
    browser: &Client,
    css: &str,
) -> Result<fantoccini::elements::Element, fantoccini::error::CmdError> {
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
}

/// What the operator does, as one fallible run so the browser is closed
/// whatever happens.
async fn drive(
    browser: &Client,
    pool: &PgPool,
    console: &str,
    external_id: &str,
    customer_id: &str,
    benefit_id: &str,
) -> anyhow::Result<()> {
    // Not logged in: the console sends the browser to the login form.
    browser.goto(console).await?;
    anyhow::ensure!(
        browser.current_url().await?.path() == "/console/login",
        "sent to the login form"
    );
    screenshot(browser, "1-login").await;
    find(browser, "#token")
        .await?
        .send_keys("wrong-token-123")
        .await?;
    find(browser, "form.login button").await?.click().await?;
    let refused = find(browser, ".problem").await?.text().await?;
    anyhow::ensure!(refused.contains("not accepted"), "{refused}");
    find(browser, "#token")
        .await?
        .send_keys(CONSOLE_TOKEN)
        .await?;
    find(browser, "form.login button").await?.click().await?;
    let received: i64 = find(browser, "#received-hour")
        .await?
        .text()
        .await?
        .parse()?;
    anyhow::ensure!(
        browser.current_url().await?.path() == "/console/",
        "logged in to the overview"
    );
    anyhow::ensure!(received > 0, "the overview counts the webhooks");
    screenshot(browser, "2-overview").await;

    // Search by the app's user id, then open the customer.
    let search = find(browser, "nav form.search input").await?;
    search.send_keys(external_id).await?;
    find(browser, "nav form.search button")
        .await?
        .click()
        .await?;
    let link = find(browser, "#results a").await?;
    anyhow::ensure!(
        link.text().await? == customer_id,
        "the search finds {external_id}"
    );
    screenshot(browser, "3-search").await;
    link.click().await?;

    // The timeline holds the customer's logged events, in occurrence order.
    find(browser, "#timeline").await?;
    let rows = browser.find_all(Locator::Css("#timeline tbody tr")).await?;
    let mut shown = Vec::new();
    for row in &rows {
        shown.push(
            row.attr("data-seq")
                .await?
                .unwrap_or_default()
                .parse::<i64>()?,
        );
    }
    let logged: Vec<i64> = sqlx::query_scalar(
        "select seq from event_log where partition_key = $1 order by occurred_at, seq",
    )
    .bind(customer_id)
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        shown.len() >= logged.len() && !logged.is_empty(),
        "{} rows for {} events",
        shown.len(),
        logged.len()
    );
    let in_order: Vec<i64> = shown
        .iter()
        .copied()
        .filter(|s| logged.contains(s))
        .collect();
    anyhow::ensure!(
        in_order == logged,
        "timeline order {shown:?}, log {logged:?}"
    );
    let timeline = find(browser, "#timeline").await?.text().await?;
    anyhow::ensure!(
        timeline.contains("current") && timeline.contains("superseded by"),
        "versions shown"
    );

    // The benefit check answers as the API does: granted.
    find(browser, "#check input[name=benefit_id]")
        .await?
        .send_keys(benefit_id)
        .await?;
    find(browser, "#check button").await?.click().await?;
    let answer = find(browser, "#answer").await?.text().await?;
    anyhow::ensure!(answer.starts_with("Granted."), "{answer}");
    anyhow::ensure!(
        answer.contains("is in force"),
        "the grant behind it: {answer}"
    );
    screenshot(browser, "4-customer").await;

    // An event: its body, where it went, what it wrote.
    find(browser, "#timeline tbody tr td a")
        .await?
        .click()
        .await?;
    let delivery = find(browser, "#delivery").await?.text().await?;
    anyhow::ensure!(
        delivery.contains("partition") && delivery.contains("offset"),
        "{delivery}"
    );
    find(browser, "#body").await?;
    screenshot(browser, "5-event").await;

    // The failure the broken webhook caused, re-applied: it still fails,
    // and the page says so.
    find(browser, "nav a[href='/console/failures']")
        .await?
        .click()
        .await?;
    let failures = find(browser, "#failures").await?.text().await?;
    anyhow::ensure!(failures.contains("wh-broken-1"), "{failures}");
    screenshot(browser, "6-failures").await;
    find(browser, "#failures button.reapply")
        .await?
        .click()
        .await?;
    let outcome = find(browser, "#outcome").await?.text().await?;
    anyhow::ensure!(
        outcome.contains("Tried 1 again: 0 applied, 1 still failing."),
        "{outcome}"
    );
    screenshot(browser, "7-reapplied").await;
    Ok(())
}
