//! Serving HTTP/1.1 on a listener: what every listener of both services
//! shares (the webhook endpoint, the read API, the metrics listeners).
//!
//! axum's own `serve` sets no timer, so hyper closes nothing: a client that
//! sends its headers one byte a minute, or opens a connection and never
//! writes, keeps it forever. Here every connection has a header timeout,
//! which hyper counts from the moment it waits for a request's head: it
//! bounds a slow head and closes a keep-alive connection left idle as long.
//!
//! Each request carries the peer's address (axum's [`ConnectInfo`]), so a
//! handler can tell clients apart (the read API slows down one that keeps
//! presenting wrong tokens). Every connection gets `TCP_NODELAY`: without it,
//! a response written in two segments waits for the client's delayed ACK
//! (about 40 ms on Linux) before its second.
//!
//! Shutdown stops accepting, asks every connection to finish the request in
//! hand and close, and waits up to a grace period; connections still open
//! then (a change stream, a waiting read) are closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};

/// How long a connection may take to send a request's head, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits every connection of a listener gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a connection may take to send a request's head, counted
    /// from the moment it is waiting for one: so also how long a keep-alive
    /// connection may stay idle. `None` waits forever.
    pub header_timeout: Option<Duration>,
}

impl ConnectionLimits {
    /// `<prefix>_HEADER_TIMEOUT` (`10s`; `off` waits forever).
    pub fn from_settings(settings: &Settings, prefix: &str) -> Result<Self, ConfigError> {
        let name = format!("{prefix}_HEADER_TIMEOUT");
        let header_timeout = match settings.get(&name)? {
            None => Some(DEFAULT_HEADER_TIMEOUT),
            Some(_) => settings.duration(&name)?,
        };
        Ok(Self { header_timeout })
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// open connections finish for up to `grace` before closing them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors, mostly: wait for some to
                        // be freed rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let connection = http.serve_connection(TokioIo::new(tcp), with_peer(router.clone(), peer));
                let shutdown = shutdown.clone();
                connections.spawn(async move {
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        result = connection.as_mut() => finished(result),
                        () = shutdown.cancelled() => {
                            connection.as_mut().graceful_shutdown();
                            finished(connection.await);
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace_secs = grace.as_secs_f64(),
            "connections still open after the shutdown grace; closing them"
        );
        connections.shutdown().await;
    }
}

/// The router as a hyper service that adds the peer's address to each request.
fn with_peer(
    router: Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        tower::ServiceExt::oneshot(router.clone(), request)
    })
}

fn finished(result: hyper::Result<()>) {
    if let Err(e) = result {
        // A client that went away, a head too slow or malformed: the
        // connection's own business, not the service's.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
