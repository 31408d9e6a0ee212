//! Building Polar-shaped events, applying them, and reading state back.

use std::cell::Cell;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt as _;

use hookstream_projector::api::{ApiShared, ApiState, EntitlementCache, FailureThrottle, router};
use hookstream_projector::metrics::ProjectorMetrics;
use hookstream_projector::projection::{self, BatchOutcome, Generation, IncomingEvent, generation};
use hookstream_shared::config::Secret;

pub const TOKEN: &str = "test-token-0123456789abcdef0123456789";

/// Hands out events with increasing seqs and a clock that only moves forward.
/// Interior mutability lets one expression both build and time an event.
pub struct Stream {
    seq: Cell<i64>,
    now: Cell<DateTime<Utc>>,
}

impl Stream {
    pub fn new() -> Self {
        Self {
            seq: Cell::new(0),
            now: Cell::new("2026-01-01T00:00:00Z".parse().unwrap()),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now.get()
    }

    /// Moves the clock on and returns the new time.
    pub fn tick(&self, seconds: i64) -> DateTime<Utc> {
        self.now.set(self.now.get() + Duration::seconds(seconds));
        self.now.get()
    }

    /// An event of `event_type` about `data`, sent at the current time.
    pub fn event(&self, event_type: &str, data: Value) -> IncomingEvent {
        self.seq.set(self.seq.get() + 1);
        let body = json!({
            "type": event_type,
            "timestamp": ts(self.now.get()),
            "api_version": "2026-10",
            "data": data,
        });
        let seq = self.seq.get();
        IncomingEvent {
            seq,
            webhook_id: format!("wh-{seq}"),
            body: body.to_string().into_bytes(),
        }
    }
}

/// A version-4 UUID named by `name`, the same on every call: Polar's ids are
/// UUIDs, and its read API refuses anything else with 422. The name is
/// remembered, so assertions can speak of `pro` rather than its id.
pub fn uid(name: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    let id = uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string();
    NAMES.lock().unwrap().insert(id.clone(), name.to_owned());
    id
}

static NAMES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

/// The name `uid` made `id` from, or `id` itself.
pub fn name_of(id: &str) -> String {
    NAMES
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .unwrap_or_else(|| id.to_owned())
}

/// `name` if it is a UUID already, else `uid(name)`.
fn as_uuid(name: &str) -> String {
    if uuid::Uuid::try_parse(name).is_ok() {
        name.to_owned()
    } else {
        uid(name)
    }
}

/// An entitlement query with its `benefit_id` named (`benefit_id=pro`)
/// turned into the benefit's id, as `benefit` made it.
pub fn with_uids(query: &str) -> String {
    if let Some((path, query)) = query.split_once('?') {
        return format!("{path}?{}", with_uids(query));
    }
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("benefit_id", name)) if !name.is_empty() => {
                format!("benefit_id={}", as_uuid(name))
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub fn customer(
    id: &str,
    external_id: Option<&str>,
    created: DateTime<Utc>,
    modified: Option<DateTime<Utc>>,
) -> Value {
    json!({
        "id": id, "created_at": ts(created), "modified_at": modified.map(ts), "metadata": {},
        "external_id": external_id, "email": format!("{id}@example.com"), "email_verified": false,
        "type": "individual", "name": "Ada", "billing_name": null, "billing_address": null, "tax_id": null,
        "locale": null, "organization_id": "org", "default_payment_method_id": null, "deleted_at": null,
        "first_user_event_at": null, "avatar_url": null,
    })
}

/// A benefit; a readable `id` (`pro`) becomes `uid(id)`: benefit ids are
/// UUIDs in Polar, and the entitlement check refuses anything else.
pub fn benefit(id: &str, created: DateTime<Utc>) -> Value {
    let description = id;
    let id = as_uuid(id);
    json!({
        "id": id, "created_at": ts(created), "modified_at": null, "type": "feature_flag",
        "description": description, "selectable": true, "deletable": true, "is_deleted": false,
        "organization_id": "org", "metadata": {"feature": description}, "visibility": "public",
        "properties": {}, "visibility_configurable": true,
    })
}

pub fn product(id: &str, created: DateTime<Utc>) -> Value {
    json!({"id": id, "created_at": ts(created), "modified_at": null, "name": id, "prices": [], "benefits": []})
}

/// A subscription snapshot; `customer` is embedded as Polar does.
pub fn subscription(
    id: &str,
    customer: &Value,
    product_id: &str,
    status: &str,
    created: DateTime<Utc>,
    modified: Option<DateTime<Utc>>,
) -> Value {
    json!({
        "created_at": ts(created), "modified_at": modified.map(ts), "id": id, "amount": 2900, "currency": "usd",
        "recurring_interval": "month", "recurring_interval_count": 1, "status": status,
        "current_period_start": ts(created), "current_period_end": ts(created + Duration::days(30)),
        "trial_start": null, "trial_end": null, "cancel_at_period_end": false, "canceled_at": null,
        "started_at": ts(created), "ends_at": null, "ended_at": null, "past_due_at": null,
        "customer_id": customer["id"], "product_id": product_id, "discount_id": null, "checkout_id": null,
        "seats": null, "units": null, "metadata": {}, "custom_field_data": {},
        "customer": customer, "product": null, "discount": null, "prices": [], "meters": [], "pending_update": null,
    })
}

/// A benefit grant snapshot, with its customer and benefit embedded.
pub fn grant(
    id: &str,
    customer: &Value,
    benefit: &Value,
    subscription_id: Option<&str>,
    granted: bool,
    created: DateTime<Utc>,
    modified: Option<DateTime<Utc>>,
) -> Value {
    json!({
        "created_at": ts(created), "modified_at": modified.map(ts), "id": id,
        "granted_at": if granted { Value::String(ts(modified.unwrap_or(created))) } else { Value::Null },
        "is_granted": granted, "revoked_at": if granted { Value::Null } else { Value::String(ts(modified.unwrap_or(created))) },
        "is_revoked": !granted, "subscription_id": subscription_id, "order_id": null,
        "customer_id": customer["id"], "member_id": null, "benefit_id": benefit["id"], "error": null,
        "customer": customer, "member": null, "benefit": benefit, "properties": {}, "previous_properties": {},
    })
}

/// A CustomerState listing these subscriptions and grants (full snapshots,
/// reduced to the listing shapes).
pub fn state(customer: &Value, subscriptions: &[&Value], grants: &[&Value]) -> Value {
    let mut state = customer.clone();
    state["active_subscriptions"] = subscriptions
        .iter()
        .map(|s| json!({
            "id": s["id"], "created_at": s["created_at"], "modified_at": s["modified_at"], "custom_field_data": {},
            "metadata": {}, "status": s["status"], "amount": s["amount"], "currency": s["currency"],
            "recurring_interval": s["recurring_interval"], "current_period_start": s["current_period_start"],
            "current_period_end": s["current_period_end"], "trial_start": null, "trial_end": null,
            "cancel_at_period_end": s["cancel_at_period_end"], "canceled_at": null, "started_at": s["started_at"],
            "ends_at": null, "product_id": s["product_id"], "discount_id": null, "seats": null, "units": null, "meters": [],
        }))
        .collect();
    state["granted_benefits"] = grants
        .iter()
        .map(|g| json!({
            "id": g["id"], "created_at": g["created_at"], "modified_at": g["modified_at"], "granted_at": g["granted_at"],
            "benefit_id": g["benefit_id"], "benefit_type": g["benefit"]["type"], "benefit_metadata": g["benefit"]["metadata"],
            "properties": {},
        }))
        .collect();
    state["active_meters"] = json!([]);
    state
}

/// Applies events in one batch to the live generation, as the consumer does.
pub async fn apply(pool: &PgPool, events: &[IncomingEvent]) -> BatchOutcome {
    let mut tx = pool.begin().await.unwrap();
    let live = generation::lock_live(&mut tx).await.unwrap();
    let outcome = projection::apply(&mut tx, &live, events).await.unwrap();
    tx.commit().await.unwrap();
    outcome
}

/// Applies events one batch per event, in the given order.
pub async fn apply_each(pool: &PgPool, events: &[IncomingEvent]) {
    for event in events {
        apply(pool, std::slice::from_ref(event)).await;
    }
}

/// Applies events into `generation` in batches of `batch` events.
pub async fn apply_into(
    pool: &PgPool,
    generation: &Generation,
    events: &[IncomingEvent],
    batch: usize,
) {
    for chunk in events.chunks(batch.max(1)) {
        let mut tx = pool.begin().await.unwrap();
        projection::apply(&mut tx, generation, chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
}

pub async fn live(pool: &PgPool) -> Generation {
    generation::ensure_live(pool).await.unwrap()
}

/// GET a read API path with the test token; returns status and JSON.
pub async fn get(pool: &PgPool, path: &str) -> (u16, Value) {
    get_with_token(pool, path, Some(TOKEN)).await
}

/// The read API over `pool`, as the projector serves it.
fn read_api(pool: &PgPool) -> axum::Router {
    router(read_api_state(pool))
}

/// The read API's state over `pool`.
pub fn read_api_state(pool: &PgPool) -> ApiState {
    ApiState::new(ApiShared {
        pool: pool.clone(),
        tokens: vec![Secret::new(TOKEN)],
        metrics: ProjectorMetrics::new(),
        // Never listening here, so always bypassed: these tests read Postgres.
        cache: Arc::new(EntitlementCache::new(
            1000,
            std::time::Duration::from_secs(60),
        )),
        throttle: FailureThrottle::new(),
    })
}

pub async fn get_with_token(pool: &PgPool, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(pool, request.body(Body::empty()).unwrap()).await
}

/// Sends any request to the read API; returns status and JSON.
pub async fn send(pool: &PgPool, request: Request<Body>) -> (u16, Value) {
    let app = read_api(pool);
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// Ids of the active subscriptions in a customer's state, sorted.
pub fn active_subscription_ids(state: &Value) -> Vec<String> {
    sorted(
        state["active_subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned()),
    )
}

/// Distinct benefit ids granted in a customer's state, sorted.
pub fn granted_benefit_ids(state: &Value) -> Vec<String> {
    let mut ids = sorted(
        state["granted_benefits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| name_of(g["benefit_id"].as_str().unwrap())),
    );
    ids.dedup();
    ids
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.collect();
    v.sort();
    v
}

pub async fn customer_state(pool: &PgPool, customer_id: &str) -> Value {
    let (status, state) = get(pool, &format!("/v1/customers/{customer_id}/state")).await;
    assert_eq!(status, 200, "state of {customer_id}: {state}");
    state
}

/// `postgres://…/<the test's database>` for the projector binary.
pub fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}?sslmode=disable",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options
            .get_database()
            .expect("sqlx::test names the database")
    )
}
