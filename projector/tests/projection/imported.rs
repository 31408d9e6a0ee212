//! Subscriptions imported from another provider (`subscription.migrated`),
//! and paused and resumed ones: right in the customer's state, in the lists
//! and in the entitlement check from their first event, whichever of
//! Polar's events about them arrives first.

use chrono::Duration;
use serde_json::{Value, json};
use sqlx::PgPool;

use hookstream_projector::projection::IncomingEvent;

use crate::helpers::*;

/// `subscription.migrated` as Polar sends it: the envelope also names the
/// provider the subscription came from.
fn migrated(stream: &Stream, subscription: &Value) -> IncomingEvent {
    let mut event = stream.event("subscription.migrated", subscription.clone());
    let mut body: Value = serde_json::from_slice(&event.body).unwrap();
    body["provider"] = json!("stripe");
    body["provider_subscription_id"] = json!("sub_1Pimported");
    event.body = body.to_string().into_bytes();
    event
}

async fn failures(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("select seq, reason from projection.apply_failures order by seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn entitled(pool: &PgPool, benefit: &str) -> bool {
    let (status, answer) = get(
        pool,
        &format!("/v1/entitlements/check?external_customer_id=usr_ada&benefit_id={benefit}"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["granted"].as_bool().unwrap()
}

async fn listed(pool: &PgPool, query: &str) -> Vec<String> {
    let (status, page) = get(pool, &format!("/v1/subscriptions/?{query}")).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| name_of(s["id"].as_str().unwrap()))
        .collect()
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_imported_subscription_counts_from_its_first_event_and_pauses_and_resumes(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let t0 = s.now();
    let ada = customer(&uid("ada"), Some("usr_ada"), t0, None);
    let pro = benefit("pro", t0);
    let plan = uid("plan");
    apply_each(
        &pool,
        &[
            s.event("customer.created", ada.clone()),
            s.event("benefit.created", pro.clone()),
            s.event("product.created", product(&plan, t0)),
        ],
    )
    .await;
    let sub_id = uid("imported");
    // Imported paused (no webhook says so), then taken over by Polar.
    let imported = {
        let mut sub = subscription(&sub_id, &ada, &plan, "paused", t0, None);
        sub["metadata"] =
            json!({"provider": "stripe", "provider_subscription_id": "sub_1Pimported"});
        sub
    };
    let taken_over_at = s.tick(3 * 86_400);
    let mut active = imported.clone();
    active["status"] = json!("active");
    active["modified_at"] = json!(ts(taken_over_at));
    let migration = migrated(&s, &active);
    let update = s.event("subscription.updated", active.clone());

    // The migration alone: the subscription is active, listed and in the state.
    apply(&pool, std::slice::from_ref(&migration)).await;
    assert!(failures(&pool).await.is_empty());
    let state = customer_state(&pool, ada["id"].as_str().unwrap()).await;
    assert_eq!(active_subscription_ids(&state), vec![sub_id.clone()]);
    assert_eq!(listed(&pool, "active=true").await, ["imported"]);
    // Its update, delivered after it, changes nothing; the older paused
    // snapshot of the import (an API scan's, say) cannot undo it.
    let stale_import = s.event("subscription.updated", imported.clone());
    apply_each(&pool, &[update, stale_import]).await;
    assert_eq!(listed(&pool, "status=active").await, ["imported"]);
    assert_eq!(listed(&pool, "status=paused").await, Vec::<String>::new());

    // Its benefits follow.
    let granted_at = s.tick(5);
    let grant_id = uid("g-imported");
    let held = grant(&grant_id, &ada, &pro, Some(&sub_id), true, granted_at, None);
    apply(&pool, &[s.event("benefit_grant.created", held.clone())]).await;
    let pro_id = pro["id"].as_str().unwrap().to_owned();
    assert!(entitled(&pool, &pro_id).await);

    // Paused at the period's end: not active (nor past due), and its grants
    // are revoked.
    let paused_at = s.tick(30 * 86_400);
    let mut paused = active.clone();
    paused["status"] = json!("paused");
    paused["modified_at"] = json!(ts(paused_at));
    paused["paused_at"] = json!(ts(paused_at));
    let revoked = grant(
        &grant_id,
        &ada,
        &pro,
        Some(&sub_id),
        false,
        granted_at,
        Some(s.tick(1)),
    );
    apply_each(
        &pool,
        &[
            s.event("subscription.paused", paused.clone()),
            s.event("benefit_grant.revoked", revoked),
        ],
    )
    .await;
    let state = customer_state(&pool, ada["id"].as_str().unwrap()).await;
    assert!(active_subscription_ids(&state).is_empty(), "{state}");
    assert_eq!(listed(&pool, "status=paused").await, ["imported"]);
    assert_eq!(listed(&pool, "active=true").await, Vec::<String>::new());
    assert_eq!(listed(&pool, "active=false").await, Vec::<String>::new());
    assert!(!entitled(&pool, &pro_id).await);

    // Resumed: a fresh period, the same grant given again. The resume is
    // applied before the update that came with it, and still wins.
    let resumed_at = s.tick(10 * 86_400);
    let mut resumed = active.clone();
    resumed["modified_at"] = json!(ts(resumed_at));
    resumed["current_period_start"] = json!(ts(resumed_at));
    resumed["current_period_end"] = json!(ts(resumed_at + Duration::days(30)));
    let regranted = grant(
        &grant_id,
        &ada,
        &pro,
        Some(&sub_id),
        true,
        granted_at,
        Some(s.tick(1)),
    );
    let resume = s.event("subscription.resumed", resumed.clone());
    let paused_again_late = s.event("subscription.updated", paused);
    apply_each(
        &pool,
        &[
            resume,
            paused_again_late,
            s.event("benefit_grant.created", regranted),
        ],
    )
    .await;
    let state = customer_state(&pool, ada["id"].as_str().unwrap()).await;
    assert_eq!(active_subscription_ids(&state), vec![sub_id.clone()]);
    assert_eq!(
        state["active_subscriptions"][0]["current_period_start"],
        json!(ts(resumed_at))
    );
    assert!(entitled(&pool, &pro_id).await);
    assert!(failures(&pool).await.is_empty());
}
