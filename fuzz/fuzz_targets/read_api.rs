//! The read API's request handling on arbitrary paths and query strings:
//! routing, the NUL guard, parameter validation and the entitlement check's
//! subject rules, with a valid token. Its database is one that refuses every
//! connection, so a request that got as far as a query answers 500: any text
//! Postgres cannot hold (a NUL) must be refused before that, with a 4xx, and
//! nothing may panic.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

use hookstream_projector::api::{ApiShared, ApiState, EntitlementCache, router};
use hookstream_projector::metrics::ProjectorMetrics;
use hookstream_shared::config::Secret;

/// Prefixes that reach each family of routes.
const ROUTES: &[&str] = &[
    "/v1/entitlements/check",
    "/v1/customers/",
    "/v1/customers/external/",
    "/v1/subscriptions/",
    "/v1/benefit-grants/",
    "/v1/members/",
    "/v1/customer-meters/",
    "/v1/",
    "/",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn app() -> axum::Router {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(1))
        .connect_lazy("postgres://fuzz@127.0.0.1:9/none")
        .expect("a lazy pool");
    router(ApiState::new(ApiShared {
        pool,
        tokens: vec![Secret::new("fuzz-token")],
        metrics: ProjectorMetrics::new(),
        cache: Arc::new(EntitlementCache::new(0, Duration::from_secs(1))),
    }))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    let uri = format!(
        "{}{path}?{query}",
        ROUTES[usize::from(selector) % ROUTES.len()]
    );
    let Ok(request) = Request::get(&uri)
        .header("authorization", "Bearer fuzz-token")
        .body(Body::empty())
    else {
        return; // not a URI: hyper would refuse it before the router
    };
    let decoded_nul = request.uri().path().contains("%00")
        || request.uri().query().is_some_and(|q| q.contains("%00"));
    let response = runtime()
        .block_on(async {
            // Built once, inside the runtime: the pool spawns its tasks on it.
            static APP: OnceLock<axum::Router> = OnceLock::new();
            APP.get_or_init(app).clone().oneshot(request).await
        })
        .expect("infallible");
    if decoded_nul {
        assert!(
            response.status().is_client_error(),
            "{uri}: a NUL answered {}",
            response.status()
        );
    }
});
