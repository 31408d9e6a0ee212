//! The read API, in Polar's own shapes (polar-sdk 1.0.2, API 2026-10), so an
//! app can point Polar's SDK at the projector with `base_url`.
//!
//! Every `/v1` route needs a bearer token from `PROJECTOR_API_TOKENS`. Reads go
//! through the views in the `projection` schema, which always point at the live
//! generation. Answers are built as JSON text by Postgres and passed through
//! without being parsed here.

mod benefit_grants;
mod catalog;
mod changes_feed;
mod checkouts;
mod customer_meters;
mod customer_ref;
mod customers;
pub mod entitlement_cache;
mod entitlements;
mod error;
pub mod failure_throttle;
mod listing;
mod members;
mod orders;
mod params;
pub mod polar_query;
mod refunds;
mod seats;
pub mod served;
mod subscriptions;
pub mod version;
pub mod waiters;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use hookstream_shared::config::Secret;
use hookstream_shared::http::{healthz, metrics_response, readyz};

use crate::metrics::ProjectorMetrics;

pub(crate) use customer_ref::CustomerRef;
pub(crate) use customers::read as customer_state;
pub use entitlement_cache::EntitlementCache;
pub(crate) use entitlements::check_once as check_entitlement;
pub use error::ApiError;
pub use failure_throttle::FailureThrottle;
use failure_throttle::{Admission, Peer};

/// What every read handler shares, behind one `Arc`: axum clones the state
/// for every request, and cloning each part (the metrics alone are dozens of
/// handles) cost 6% of the entitlement check's CPU in a profile.
#[derive(Debug, Clone)]
pub struct ApiState(Arc<ApiShared>);

#[derive(Debug)]
pub struct ApiShared {
    pub pool: PgPool,
    pub tokens: Vec<Secret>,
    pub metrics: ProjectorMetrics,
    /// The entitlement check's cache, kept exact by change notifications.
    pub cache: Arc<EntitlementCache>,
    /// Slows down clients that keep presenting wrong tokens.
    pub throttle: FailureThrottle,
}

impl ApiState {
    pub fn new(shared: ApiShared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// Every route of Polar's API the replica serves, with and without the
/// trailing slash Polar's own routes have (polar-sdk sends Polar's).
fn polar_routes() -> Router<ApiState> {
    let lists: [(&str, axum::routing::MethodRouter<ApiState>); 13] = [
        ("/v1/customers", get(customers::list)),
        ("/v1/subscriptions", get(subscriptions::list)),
        ("/v1/orders", get(orders::list)),
        ("/v1/products", get(catalog::list_products)),
        ("/v1/checkouts", get(checkouts::list)),
        ("/v1/benefits", get(catalog::list_benefits)),
        ("/v1/benefit-grants", get(benefit_grants::list)),
        ("/v1/refunds", get(refunds::list)),
        ("/v1/discounts", get(catalog::list_discounts)),
        ("/v1/meters", get(catalog::list_meters)),
        ("/v1/customer-meters", get(customer_meters::list)),
        ("/v1/members", get(members::list)),
        ("/v1/customer-seats", get(seats::list)),
    ];
    let mut router = Router::new();
    for (path, handler) in lists {
        router = router
            .route(path, handler.clone())
            .route(&format!("{path}/"), handler);
    }
    router
        .route("/v1/customers/{id}", get(customers::get_one))
        .route("/v1/customers/{id}/state", get(customers::state_by_id))
        .route("/v1/customers/{id}/members", get(members::of_customer))
        .route(
            "/v1/customers/{id}/members/{member_id}",
            get(members::get_one),
        )
        .route(
            "/v1/customers/external/{external_id}",
            get(customers::get_external),
        )
        .route(
            "/v1/customers/external/{external_id}/state",
            get(customers::state_by_external_id),
        )
        .route(
            "/v1/customers/external/{external_id}/members",
            get(members::of_external_customer),
        )
        .route(
            "/v1/customers/external/{external_id}/members/{member_external_id}",
            get(members::get_external),
        )
        .route("/v1/subscriptions/{id}", get(subscriptions::get_one))
        .route("/v1/orders/{id}", get(orders::get_one))
        .route("/v1/products/{id}", get(catalog::get_product))
        .route("/v1/checkouts/{id}", get(checkouts::get_one))
        .route("/v1/benefits/{id}", get(catalog::get_benefit))
        .route("/v1/benefits/{id}/grants", get(benefit_grants::of_benefit))
        .route("/v1/discounts/{id}", get(catalog::get_discount))
        .route("/v1/meters/{id}", get(catalog::get_meter))
        .route("/v1/customer-meters/{id}", get(customer_meters::get_one))
}

pub fn router(state: ApiState) -> Router {
    let v1 = polar_routes()
        .route("/v1/entitlements/check", get(entitlements::check))
        .route("/v1/changes", get(changes_feed::list))
        .route("/v1/changes/stream", get(changes_feed::stream))
        .route_layer(middleware::from_fn(refuse_nul))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route_layer(middleware::from_fn(version::negotiate));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(s): State<ApiState>| async move { readyz(&s.pool).await }),
        )
        .fallback(not_served_or_not_found)
        .method_not_allowed_fallback(not_served_or_not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .with_state(state)
}

/// What is not routed: under `/v1/`, a read or write of Polar's API that
/// hookstream does not serve (501 `NotServed`); elsewhere, 404 (or 405 for
/// a method a known path does not take).
async fn not_served_or_not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let path = uri.path();
    if path == "/v1" || path.starts_with("/v1/") {
        ApiError::NotServed {
            method: method.to_string(),
            path: path.to_owned(),
        }
    } else if method == axum::http::Method::GET {
        ApiError::NotFound
    } else {
        ApiError::MethodNotAllowed
    }
}

/// The metrics listener's routes: Prometheus text, and health for probes
/// that use this port.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<ApiState>| async move { metrics_response(&s.metrics.registry) }),
        )
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(s): State<ApiState>| async move { readyz(&s.pool).await }),
        )
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// Refuses a request whose path or query decodes to a NUL character (`%00`)
/// with 422, before any handler runs. Postgres text cannot hold NUL, so such
/// a value could match nothing, and reaching a query it fails there (a 500).
/// `%00` is the only way to write NUL in a URI: a raw NUL is not valid there.
async fn refuse_nul(request: Request, next: Next) -> Response {
    if request.uri().path().contains("%00") {
        return ApiError::invalid_path("must not contain a NUL character (%00)").into_response();
    }
    if let Some(query) = request.uri().query()
        && query.contains("%00")
    {
        let parameter = form_urlencoded::parse(query.as_bytes())
            .find(|(key, value)| key.contains('\0') || value.contains('\0'))
            .map_or_else(|| "query".to_owned(), |(key, _)| key.replace('\0', ""));
        return ApiError::invalid(&parameter, "must not contain a NUL character (%00)")
            .into_response();
    }
    next.run(request).await
}

/// Accepts `Authorization: Bearer <token>` for any configured token, compared
/// in constant time. A wrong or missing token is answered after the delay
/// the client's recent failures earned ([`FailureThrottle`]).
async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Peer(peer) = Peer::of(request.extensions());
    if let Admission::Refuse { retry_after } = state.throttle.admit(peer, Instant::now()) {
        return ApiError::TooManyRequests { retry_after }.into_response();
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    if presented.is_some_and(|presented| matching_token(&state.tokens, presented).is_some()) {
        return next.run(request).await;
    }
    let wait = state.throttle.failed(peer, Instant::now());
    tokio::time::sleep(wait).await;
    ApiError::Unauthorized.into_response()
}

/// The configured token `presented` is, if any. Every token is compared,
/// each in constant time, so the time taken does not say how close a guess
/// came. The read API's bearer check and the console's login both use it.
pub(crate) fn matching_token<'a>(tokens: &'a [Secret], presented: &str) -> Option<&'a Secret> {
    let mut matched = None;
    for token in tokens {
        if bool::from(token.expose().as_bytes().ct_eq(presented.as_bytes())) {
            matched = Some(token);
        }
    }
    matched
}

async fn record_metrics(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .api_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .api_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

/// A JSON text built by Postgres, sent as is.
fn json_text(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}
