//! The projector's listeners against hostile peers (DESIGN.md guarantee 6):
//! metrics only on their own listener, slow and idle connections closed,
//! token guessing slowed per client address while the right token is not.

use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use hookstream_projector::Application;

use crate::consumer::{config, topic_with};
use crate::helpers::TOKEN;

struct Served {
    api: String,
    metrics: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve(pool: &PgPool, extra: &[(&str, &str)]) -> (Served, crate::consumer::Topic) {
    let topic = topic_with(1);
    let app = Application::build_with_pool(config(&topic, extra), pool.clone())
        .await
        .unwrap();
    let api = format!("http://{}", app.address());
    let metrics = format!("http://{}", app.metrics_address());
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    (
        Served {
            api,
            metrics,
            stop,
            task,
        },
        topic,
    )
}

impl Served {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn client() -> reqwest::Client {
    hookstream_shared::tls::use_ring_provider();
    reqwest::Client::new()
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn metrics_are_served_on_their_own_listener_only(pool: PgPool) {
    let (served, _topic) = serve(&pool, &[]).await;
    let client = client();
    let on_api = client
        .get(format!("{}/metrics", served.api))
        .send()
        .await
        .unwrap();
    assert_eq!(
        on_api.status(),
        404,
        "business volume on the public listener"
    );
    let on_metrics = client
        .get(format!("{}/metrics", served.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(on_metrics.status(), 200);
    assert!(
        on_metrics
            .text()
            .await
            .unwrap()
            .contains("hookstream_projector_")
    );
    for path in ["/healthz", "/readyz"] {
        for base in [&served.api, &served.metrics] {
            let health = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(health.status(), 200, "{base}{path}");
        }
    }
    served.stop().await;
}

/// Reads until the server closes the connection or `within` passes.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn slow_headers_and_idle_connections_are_closed(pool: PgPool) {
    let (served, _topic) = serve(&pool, &[("PROJECTOR_HEADER_TIMEOUT", "500ms")]).await;
    for base in [&served.api, &served.metrics] {
        let address = base.trim_start_matches("http://");
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET /v1/subscriptions/ HTTP/1.1\r\nhost: projector\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(address).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: projector\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 256];
        let read = idle.read(&mut answer).await.unwrap();
        assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{address}");
        let mut silent = TcpStream::connect(address).await.unwrap();
        for (what, stream) in [
            ("slow head", &mut slow),
            ("idle", &mut idle),
            ("silent", &mut silent),
        ] {
            assert!(
                closed_within(stream, Duration::from_secs(5)).await,
                "{address}: a {what} connection was still open after 5 s"
            );
        }
    }
    served.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn guessing_tokens_is_slowed_per_address_and_the_right_token_is_not(pool: PgPool) {
    use hookstream_projector::api::failure_throttle::{FREE_FAILURES, MAX_WAIT, STEP};
    let (served, _topic) = serve(&pool, &[]).await;
    let client = client();
    let url = format!("{}/v1/subscriptions/", served.api);
    let ask = |token: String| {
        let request = client.get(&url).bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), retry_after)
        }
    };
    // A few mistakes are answered as they come.
    for i in 0..FREE_FAILURES {
        assert_eq!(ask(format!("wrong-{i}")).await.0, 401);
    }
    // Past them, each wrong token is answered a step after the last: the
    // last of these owes a little less than the longest wait.
    let steps = (MAX_WAIT.as_millis() / STEP.as_millis()) as usize;
    let owing = steps - 2;
    let mut guesses: Vec<_> = (0..owing)
        .map(|i| tokio::spawn(ask(format!("guess-{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The right token from the same address meanwhile: answered at once,
    // before the wrong ones owed.
    assert_eq!(ask(TOKEN.to_owned()).await.0, 200);
    let last = guesses.pop().unwrap();
    assert!(
        !last.is_finished(),
        "a wrong token was answered before its turn"
    );
    // Beyond the longest wait, 429 without a look at the token.
    guesses.extend((0..6).map(|i| tokio::spawn(ask(format!("more-{i}")))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, retry_after) = ask("one-more".to_owned()).await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
    for guess in guesses {
        let (status, _) = guess.await.unwrap();
        assert!(status == 401 || status == 429, "{status}");
    }
    assert_eq!(last.await.unwrap().0, 401);
    served.stop().await;
}
