//! The HTTP floor under ingest, for `loadgen ingest`: the same stack
//! (tokio, hyper and axum served as ingest serves them, mimalloc) answering the same signed webhook
//! requests, but doing nothing with them beyond reading the body and
//! answering ingest's 200. Its CPU per request is what no change to ingest's
//! own work can remove.
//!
//! `FLOOR_LISTEN` (an address) is where it listens.

use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The `seq` answered, counting up as ingest's would.
static NEXT_SEQ: AtomicI64 = AtomicI64::new(1);

async fn receive(body: Body) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match axum::body::to_bytes(body, 1024 * 1024).await {
        Ok(_) => axum::Json(serde_json::json!({
            "status": "accepted",
            "seq": NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
        }))
        .into_response(),
        Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::var("FLOOR_LISTEN").context("FLOOR_LISTEN is not set")?;
    let app = Router::new()
        .route("/webhooks/{source}", post(receive))
        .route("/readyz", get(|| async { "ready" }));
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on FLOOR_LISTEN={listen}"))?;
    hookstream_shared::server::serve(
        listener,
        app,
        hookstream_shared::server::ConnectionLimits::default(),
        tokio_util::sync::CancellationToken::new(),
        std::time::Duration::ZERO,
    )
    .await;
    Ok(())
}
