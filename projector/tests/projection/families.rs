//! One test per event family, and the cases that catch naive receivers.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::*;

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn customer_lifecycle_updates_by_version_and_deletion_hides_it(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let created = s.now();
    let v1 = customer("cus_1", Some("usr_1"), created, None);
    let mut v2 = customer("cus_1", Some("usr_1"), created, Some(s.tick(10)));
    v2["email"] = json!("new@example.com");
    let e_created = s.event("customer.created", v1.clone());
    let e_updated = s.event("customer.updated", v2.clone());
    // The update arrives first; the older creation must not undo it.
    apply_each(&pool, &[e_updated, e_created]).await;
    let state = customer_state(&pool, "cus_1").await;
    assert_eq!(state["email"], "new@example.com");
    let (status, by_external) = get(&pool, "/v1/customers/external/usr_1/state").await;
    assert_eq!(status, 200);
    assert_eq!(by_external["id"], "cus_1");

    // Deletion clears external_id (Polar keeps it in metadata) and sets deleted_at.
    let mut deleted = customer("cus_1", None, created, Some(s.tick(10)));
    deleted["deleted_at"] = json!(ts(s.now()));
    deleted["metadata"] = json!({"__external_id": "usr_1"});
    let e = s.event("customer.deleted", deleted);
    apply(&pool, &[e]).await;
    for path in [
        "/v1/customers/cus_1/state",
        "/v1/customers/external/usr_1/state",
    ] {
        let (status, body) = get(&pool, path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            body,
            json!({"error": "ResourceNotFound", "detail": "Not found"})
        );
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn identical_subscription_events_make_one_active_subscription(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let created = s.tick(5);
    let sub = subscription("sub_1", &c, "prod_pro", "active", created, None);
    let events = [
        s.event("subscription.created", sub.clone()),
        s.event("subscription.active", sub.clone()),
        s.event("subscription.updated", sub.clone()),
    ];
    apply(&pool, &events).await;
    let state = customer_state(&pool, "cus_1").await;
    assert_eq!(active_subscription_ids(&state), vec!["sub_1"]);
    assert_eq!(state["active_subscriptions"][0]["status"], "active");
    assert_eq!(state["active_subscriptions"][0]["product_id"], "prod_pro");
    // The embedded customer made the customer known.
    assert_eq!(state["external_id"], "usr_1");
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn cancel_at_period_end_then_uncancel(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let created = s.tick(1);
    let sub = subscription("sub_1", &c, "prod", "active", created, None);
    let mut canceling = subscription("sub_1", &c, "prod", "active", created, Some(s.tick(100)));
    canceling["cancel_at_period_end"] = json!(true);
    canceling["canceled_at"] = json!(ts(s.now()));
    canceling["ends_at"] = canceling["current_period_end"].clone();
    let uncanceled = subscription("sub_1", &c, "prod", "active", created, Some(s.tick(100)));
    let events = vec![
        s.event("subscription.created", sub),
        s.event("subscription.updated", canceling.clone()),
        s.event("subscription.canceled", canceling.clone()),
        s.event("subscription.updated", uncanceled.clone()),
        s.event("subscription.uncanceled", uncanceled),
    ];
    // Uncancel delivered before the cancellation: the newer version still wins.
    let mut shuffled = events.clone();
    shuffled.reverse();
    apply_each(&pool, &shuffled).await;
    let state = customer_state(&pool, "cus_1").await;
    assert_eq!(active_subscription_ids(&state), vec!["sub_1"]);
    assert_eq!(
        state["active_subscriptions"][0]["cancel_at_period_end"],
        false
    );

    // While pending cancellation it is still active.
    let (_, subs) = get(&pool, "/v1/subscriptions/?external_customer_id=usr_1").await;
    assert_eq!(subs["items"][0]["cancel_at_period_end"], false);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn immediate_cancel_ends_the_subscription_and_its_benefit(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let b = benefit("ben_pro", s.now());
    let created = s.tick(1);
    let sub = subscription("sub_1", &c, "prod", "active", created, None);
    let g = grant("grant_1", &c, &b, Some("sub_1"), true, s.tick(1), None);
    apply(
        &pool,
        &[
            s.event("subscription.created", sub),
            s.event("benefit_grant.created", g.clone()),
        ],
    )
    .await;
    assert_eq!(
        granted_benefit_ids(&customer_state(&pool, "cus_1").await),
        vec!["ben_pro"]
    );

    let mut ended = subscription("sub_1", &c, "prod", "canceled", created, Some(s.tick(60)));
    ended["canceled_at"] = json!(ts(s.now()));
    ended["ended_at"] = json!(ts(s.now()));
    let revoked = grant(
        "grant_1",
        &c,
        &b,
        Some("sub_1"),
        false,
        g["created_at"].as_str().unwrap().parse().unwrap(),
        Some(s.tick(1)),
    );
    apply(
        &pool,
        &[
            s.event("subscription.updated", ended.clone()),
            s.event("subscription.canceled", ended.clone()),
            s.event("subscription.revoked", ended),
            s.event("benefit_grant.revoked", revoked),
        ],
    )
    .await;
    let state = customer_state(&pool, "cus_1").await;
    assert!(active_subscription_ids(&state).is_empty());
    assert!(granted_benefit_ids(&state).is_empty());
    let (_, check) = get(
        &pool,
        &with_uids("/v1/entitlements/check?external_customer_id=usr_1&benefit_id=ben_pro"),
    )
    .await;
    assert_eq!(check["granted"], false);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn plan_change_keeps_shared_benefits_and_swaps_the_rest(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let (a, shared, new) = (
        benefit("ben_a", s.now()),
        benefit("ben_shared", s.now()),
        benefit("ben_new", s.now()),
    );
    let created = s.tick(1);
    let g_a = grant("g_a", &c, &a, Some("sub_1"), true, created, None);
    let g_shared = grant("g_shared", &c, &shared, Some("sub_1"), true, created, None);
    apply(
        &pool,
        &[
            s.event(
                "subscription.created",
                subscription("sub_1", &c, "prod_basic", "active", created, None),
            ),
            s.event("benefit_grant.created", g_a.clone()),
            s.event("benefit_grant.created", g_shared),
        ],
    )
    .await;
    let changed_at = s.tick(3600);
    apply(
        &pool,
        &[
            s.event(
                "subscription.updated",
                subscription(
                    "sub_1",
                    &c,
                    "prod_team",
                    "active",
                    created,
                    Some(changed_at),
                ),
            ),
            s.event(
                "benefit_grant.revoked",
                grant(
                    "g_a",
                    &c,
                    &a,
                    Some("sub_1"),
                    false,
                    created,
                    Some(s.tick(1)),
                ),
            ),
            s.event(
                "benefit_grant.created",
                grant("g_new", &c, &new, Some("sub_1"), true, s.tick(1), None),
            ),
        ],
    )
    .await;
    let state = customer_state(&pool, "cus_1").await;
    assert_eq!(state["active_subscriptions"][0]["product_id"], "prod_team");
    assert_eq!(granted_benefit_ids(&state), vec!["ben_new", "ben_shared"]);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_benefit_granted_by_two_subscriptions_survives_one_revocation(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let shared = benefit("ben_shared", s.now());
    let t = s.tick(1);
    let g1 = grant("g1", &c, &shared, Some("sub_1"), true, t, None);
    let g2 = grant("g2", &c, &shared, Some("sub_2"), true, t, None);
    apply(
        &pool,
        &[
            s.event("benefit_grant.created", g1),
            s.event("benefit_grant.created", g2),
        ],
    )
    .await;
    apply(
        &pool,
        &[s.event(
            "benefit_grant.revoked",
            grant("g1", &c, &shared, Some("sub_1"), false, t, Some(s.tick(60))),
        )],
    )
    .await;
    let (_, check) = get(
        &pool,
        &with_uids("/v1/entitlements/check?customer_id=cus_1&benefit_id=ben_shared"),
    )
    .await;
    assert_eq!(check["granted"], true, "the other grant still gives access");
    apply(
        &pool,
        &[s.event(
            "benefit_grant.revoked",
            grant("g2", &c, &shared, Some("sub_2"), false, t, Some(s.tick(60))),
        )],
    )
    .await;
    let (_, check) = get(
        &pool,
        &with_uids("/v1/entitlements/check?customer_id=cus_1&benefit_id=ben_shared"),
    )
    .await;
    assert_eq!(check["granted"], false);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_regrant_reusing_the_grant_id_grants_again(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", None, s.now(), None);
    let b = benefit("ben", s.now());
    let t = s.tick(1);
    let events = [
        s.event(
            "benefit_grant.created",
            grant("g", &c, &b, Some("sub"), true, t, None),
        ),
        s.event(
            "benefit_grant.revoked",
            grant("g", &c, &b, Some("sub"), false, t, Some(s.tick(10))),
        ),
        s.event(
            "benefit_grant.created",
            grant("g", &c, &b, Some("sub"), true, t, Some(s.tick(10))),
        ),
    ];
    apply_each(
        &pool,
        &[events[2].clone(), events[0].clone(), events[1].clone()],
    )
    .await;
    assert_eq!(
        granted_benefit_ids(&customer_state(&pool, "cus_1").await),
        vec!["ben"]
    );
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_late_state_snapshot_does_not_undo_a_newer_revocation(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let b = benefit("ben", s.now());
    let t = s.tick(1);
    let g = grant("g", &c, &b, Some("sub"), true, t, None);
    let state_event = {
        s.tick(2);
        s.event("customer.state_changed", state(&c, &[], &[&g]))
    };
    let revoke = s.event(
        "benefit_grant.revoked",
        grant("g", &c, &b, Some("sub"), false, t, Some(s.tick(10))),
    );
    // The revocation is applied first; the older snapshot that still lists the
    // grant arrives afterwards.
    apply_each(
        &pool,
        &[
            s.event("benefit_grant.created", g.clone()),
            revoke,
            state_event,
        ],
    )
    .await;
    assert!(granted_benefit_ids(&customer_state(&pool, "cus_1").await).is_empty());
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_newer_state_snapshot_ends_what_it_omits_and_grants_what_it_lists(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let (b_old, b_new) = (benefit("ben_old", s.now()), benefit("ben_new", s.now()));
    let t = s.tick(1);
    let sub = subscription("sub_1", &c, "prod", "active", t, None);
    let g_old = grant("g_old", &c, &b_old, Some("sub_1"), true, t, None);
    apply(
        &pool,
        &[
            s.event("subscription.created", sub),
            s.event("benefit_grant.created", g_old),
        ],
    )
    .await;
    // The revocations were lost (say Polar disabled the endpoint); a later
    // snapshot lists only a grant we never saw.
    let g_new = grant("g_new", &c, &b_new, None, true, s.tick(30), None);
    s.tick(2);
    apply(
        &pool,
        &[s.event("customer.state_changed", state(&c, &[], &[&g_new]))],
    )
    .await;
    let st = customer_state(&pool, "cus_1").await;
    assert!(
        active_subscription_ids(&st).is_empty(),
        "omitted subscription counts as ended"
    );
    assert_eq!(granted_benefit_ids(&st), vec!["ben_new"]);
    assert_eq!(st["granted_benefits"][0]["benefit_type"], "feature_flag");
    // A fact newer than the snapshot decides again.
    let g_old_again = grant(
        "g_old",
        &c,
        &b_old,
        Some("sub_1"),
        true,
        t,
        Some(s.tick(60)),
    );
    apply(&pool, &[s.event("benefit_grant.updated", g_old_again)]).await;
    assert_eq!(
        granted_benefit_ids(&customer_state(&pool, "cus_1").await),
        vec!["ben_new", "ben_old"]
    );
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_event_for_a_customer_never_seen_before(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_new", Some("usr_new"), s.now(), None);
    let b = benefit("ben", s.now());
    apply(
        &pool,
        &[s.event(
            "benefit_grant.created",
            grant("g", &c, &b, None, true, s.tick(1), None),
        )],
    )
    .await;
    let (status, st) = get(&pool, "/v1/customers/external/usr_new/state").await;
    assert_eq!(status, 200);
    assert_eq!(granted_benefit_ids(&st), vec!["ben"]);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn orders_checkouts_products_and_benefits_keep_their_newest_version(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let t = s.tick(1);
    let order = |status: &str, modified: Option<chrono::DateTime<chrono::Utc>>| {
        json!({"id": "ord_1", "created_at": ts(t), "modified_at": modified.map(ts), "status": status,
               "customer_id": "cus_1", "subscription_id": null, "customer": c, "product": {"id": "reduced"}})
    };
    let checkout = |status: &str, modified: Option<chrono::DateTime<chrono::Utc>>| {
        json!({"id": "co_1", "created_at": ts(t), "modified_at": modified.map(ts), "status": status,
               "customer_id": null, "external_customer_id": "usr_1", "product": {"id": "reduced"}})
    };
    let mut p2 = product("prod_1", t);
    p2["modified_at"] = json!(ts(s.tick(5)));
    p2["name"] = json!("Renamed");
    let events = vec![
        s.event("order.created", order("pending", None)),
        s.event(
            "order.paid",
            order("paid", Some(s.now() + chrono::Duration::seconds(2))),
        ),
        s.event("checkout.created", checkout("open", None)),
        s.event(
            "checkout.updated",
            checkout("succeeded", Some(s.now() + chrono::Duration::seconds(3))),
        ),
        s.event("product.created", product("prod_1", t)),
        s.event("product.updated", p2),
        s.event("benefit.created", benefit("ben_1", t)),
    ];
    let mut reversed = events.clone();
    reversed.reverse();
    apply_each(&pool, &reversed).await;
    let row = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        row("select status from projection.orders where id = 'ord_1'").await,
        "paid"
    );
    assert_eq!(
        row("select status from projection.checkouts where id = 'co_1'").await,
        "succeeded"
    );
    assert_eq!(
        row("select snapshot::jsonb ->> 'name' from projection.products where id = 'prod_1'").await,
        "Renamed"
    );
    assert_eq!(
        name_of(&row("select id from projection.benefits").await),
        "ben_1"
    );
    // An order's reduced product is not projected over the full one.
    let products: i64 = sqlx::query_scalar("select count(*) from projection.products")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(products, 1);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn bad_events_are_recorded_and_skipped_and_unknown_types_ignored(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let c = customer("cus_1", Some("usr_1"), s.now(), None);
    let good = s.event("customer.created", c);
    let no_id = s.event("subscription.updated", json!({"status": "active"}));
    let nul = s.event(
        "customer.updated",
        json!({"id": "cus_2", "created_at": ts(s.now()), "modified_at": null, "name": "a\u{0}b"}),
    );
    let unknown = s.event("payout.created", json!({"id": "r"}));
    let mut not_json = s.event("customer.created", json!({}));
    not_json.body = b"{not json".to_vec();
    let outcome = apply(&pool, &[good, no_id, nul, unknown, not_json]).await;
    assert_eq!(outcome.failed, 3);
    assert_eq!(outcome.ignored.get("payout.created"), Some(&1));
    assert_eq!(outcome.applied.get("customer.created"), Some(&1));
    let reasons: Vec<(i64, String)> =
        sqlx::query_as("select seq, reason from projection.apply_failures order by seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        reasons.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2, 3, 5]
    );
    assert!(reasons[0].1.contains("id"), "{}", reasons[0].1);
    assert!(reasons[1].1.contains("NUL"), "{}", reasons[1].1);
    // The good event in the same batch was applied.
    assert_eq!(customer_state(&pool, "cus_1").await["id"], "cus_1");
}

/// A CustomerStateMeter, as polar-sdk 1.0.2 shapes it.
fn meter(id: &str, meter_id: &str, consumed: f64, credited: i64, at: DateTime<Utc>) -> Value {
    json!({
        "id": id, "created_at": ts(at), "modified_at": ts(at), "meter_id": meter_id,
        "consumed_units": consumed, "credited_units": credited, "balance": credited as f64 - consumed,
    })
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn meters_follow_the_newest_state(pool: PgPool) {
    live(&pool).await;
    let (api, storage) = (uid("meter_api"), uid("meter_storage"));
    let s = Stream::new();
    let c = customer("cus_m", Some("usr_m"), s.now(), None);
    let t1 = s.tick(30);
    let mut first = state(&c, &[], &[]);
    first["active_meters"] = json!([
        meter("cm_1", &api, 10.0, 100, t1),
        meter("cm_2", &storage, 0.5, 5, t1),
    ]);
    let first = s.event("customer.state_changed", first);
    let t2 = s.tick(30);
    let mut second = state(&c, &[], &[]);
    second["active_meters"] = json!([meter("cm_1", &api, 120.0, 100, t2)]);
    let second = s.event("customer.state_changed", second);
    // Delivered newest first: the older state changes nothing.
    apply_each(&pool, &[second, first]).await;

    let (status, page) = get(&pool, "/v1/customer-meters/?external_customer_id=usr_m").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["pagination"]["total_count"], json!(1), "{page}");
    let item = &page["items"][0];
    assert_eq!(item["meter_id"], json!(api));
    assert_eq!(item["customer_id"], json!("cus_m"));
    assert_eq!(item["customer"]["external_id"], json!("usr_m"));
    assert_eq!(
        (
            item["consumed_units"].as_f64(),
            item["credited_units"].as_i64(),
            item["balance"].as_f64()
        ),
        (Some(120.0), Some(100), Some(-20.0)),
        "a balance can be negative"
    );
    let (_, none) = get(
        &pool,
        &format!("/v1/customer-meters/?external_customer_id=usr_m&meter_id={storage}"),
    )
    .await;
    assert_eq!(
        none["items"],
        json!([]),
        "the newest state no longer lists it"
    );
    let (status, _) = get(&pool, "/v1/customer-meters/?sorting=name").await;
    assert_eq!(status, 422);
}
