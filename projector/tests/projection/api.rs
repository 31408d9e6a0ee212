//! The read API's contract: auth, Polar's list and error shapes, filters.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::*;

/// Three customers; cus_0 has two subscriptions (one canceled) and a grant.
async fn seed(pool: &PgPool) {
    live(pool).await;
    let s = Stream::new();
    let b = benefit("ben", s.now());
    let mut events = Vec::new();
    for i in 0..3 {
        let c = customer(
            &format!("cus_{i}"),
            Some(&format!("usr_{i}")),
            s.now(),
            None,
        );
        let t = s.tick(10);
        events.push(s.event(
            "subscription.created",
            subscription(&format!("sub_{i}"), &c, "prod_a", "active", t, None),
        ));
        if i == 0 {
            events.push(s.event(
                "subscription.created",
                subscription("sub_old", &c, "prod_b", "canceled", t, None),
            ));
            events.push(s.event(
                "benefit_grant.created",
                grant("g_0", &c, &b, Some("sub_0"), true, t, None),
            ));
        }
    }
    apply(pool, &events).await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn v1_routes_need_a_valid_bearer_token(pool: PgPool) {
    seed(&pool).await;
    for token in [None, Some("wrong-token-123")] {
        let (status, body) = get_with_token(&pool, "/v1/customers/cus_0/state", token).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"], "Unauthorized");
    }
    let (status, _) = get_with_token(&pool, "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = get_with_token(&pool, "/readyz", None).await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn subscriptions_list_filters_and_paginates_like_polar(pool: PgPool) {
    seed(&pool).await;
    let (status, all) = get(&pool, "/v1/subscriptions/?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(all["pagination"], json!({"total_count": 4, "max_page": 2}));
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let (_, page2) = get(&pool, "/v1/subscriptions/?limit=2&page=2").await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 2);
    let (_, past) = get(&pool, "/v1/subscriptions/?limit=2&page=9").await;
    assert_eq!(past["items"], json!([]));
    assert_eq!(past["pagination"]["total_count"], 4);

    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let (_, active) = get(
        &pool,
        "/v1/subscriptions/?external_customer_id=usr_0&active=true",
    )
    .await;
    assert_eq!(ids(&active), vec!["sub_0"]);
    let (_, inactive) = get(&pool, "/v1/subscriptions/?customer_id=cus_0&active=false").await;
    assert_eq!(ids(&inactive), vec!["sub_old"]);
    let (_, two) = get(
        &pool,
        "/v1/subscriptions/?customer_id=cus_1&customer_id=cus_2&sorting=-started_at",
    )
    .await;
    assert_eq!(ids(&two), vec!["sub_1", "sub_2"]);
    assert_eq!(two["items"][0]["id"], "sub_2", "newest first");
    let (_, by_product) = get(&pool, "/v1/subscriptions/?product_id=prod_b").await;
    assert_eq!(ids(&by_product), vec!["sub_old"]);

    let (status, one) = get(&pool, "/v1/subscriptions/sub_1").await;
    assert_eq!(status, 200);
    assert_eq!(
        one["customer"]["id"], "cus_1",
        "the full snapshot, embedded objects included"
    );
    let (status, missing) = get(&pool, "/v1/subscriptions/nope").await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("ResourceNotFound"))
    );

    for bad in [
        "limit=0",
        "limit=101",
        "page=0",
        "active=maybe",
        "sorting=colour",
        "limit=1&limit=2",
    ] {
        let (status, body) = get(&pool, &format!("/v1/subscriptions/?{bad}")).await;
        assert_eq!(status, 422, "{bad}");
        assert!(body["detail"][0]["loc"].is_array(), "{bad}: {body}");
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn benefit_grants_list(pool: PgPool) {
    seed(&pool).await;
    let (status, grants) = get(
        &pool,
        "/v1/benefit-grants/?external_customer_id=usr_0&is_granted=true",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        grants["pagination"],
        json!({"total_count": 1, "max_page": 1})
    );
    assert_eq!(grants["items"][0]["id"], "g_0");
    let (_, none) = get(&pool, "/v1/benefit-grants/?customer_id=cus_1").await;
    assert_eq!(none["items"], json!([]));
    assert_eq!(none["pagination"], json!({"total_count": 0, "max_page": 0}));
    let (_, by_benefit) = get(&pool, "/v1/benefit-grants?benefit_id=ben").await;
    assert_eq!(by_benefit["pagination"]["total_count"], 1);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn entitlement_check(pool: PgPool) {
    seed(&pool).await;
    let check = |q: &'static str| {
        let pool = pool.clone();
        async move { get(&pool, &format!("/v1/entitlements/check?{q}")).await }
    };
    assert_eq!(
        check("external_customer_id=usr_0&benefit_id=ben").await.1,
        json!({"granted": true, "customer_id": "cus_0", "benefit_id": "ben",
               "via": [{"customer_id": "cus_0", "member_id": null, "grant_id": "g_0"}]})
    );
    assert_eq!(
        check("customer_id=cus_0&benefit_id=ben").await.1["granted"],
        true
    );
    assert_eq!(
        check("external_customer_id=usr_1&benefit_id=ben").await.1["granted"],
        false
    );
    assert_eq!(
        check("external_customer_id=nobody&benefit_id=ben").await.1,
        json!({"granted": false, "customer_id": null, "benefit_id": "ben", "via": []})
    );
    // The person: an individual customer's own external id.
    assert_eq!(
        check("external_id=usr_0&benefit_id=ben").await.1,
        json!({"granted": true, "external_id": "usr_0", "customer_id": "cus_0", "member_id": null,
               "benefit_id": "ben", "via": [{"customer_id": "cus_0", "member_id": null, "grant_id": "g_0"}]})
    );
    assert_eq!(
        check("external_id=usr_0&customer_id=cus_1&benefit_id=ben")
            .await
            .1["granted"],
        false,
        "scoped to another customer"
    );
    assert_eq!(
        check("external_member_id=usr_0&benefit_id=ben").await.1["granted"],
        false,
        "no member event was seen, so there is no member usr_0"
    );
    for bad in [
        "external_customer_id=usr_0",
        "benefit_id=ben",
        "customer_id=cus_0&external_customer_id=usr_0&benefit_id=ben",
        "external_id=usr_0&external_member_id=usr_0&benefit_id=ben",
    ] {
        assert_eq!(check(bad).await.0, 422, "{bad}");
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn text_postgres_cannot_hold_is_refused_with_422_not_500(pool: PgPool) {
    seed(&pool).await;
    // A NUL byte, in a path segment or a query value, raw or in a list.
    for path in [
        "/v1/customers/external/%00/state",
        "/v1/customers/cus%000/state",
        "/v1/subscriptions/sub_%00",
        "/v1/subscriptions/?customer_id=cus_0&customer_id=%00",
        "/v1/benefit-grants/?external_customer_id=usr%00",
        "/v1/entitlements/check?external_customer_id=%00&benefit_id=ben",
        "/v1/entitlements/check?external_customer_id=usr_0&benefit_id=b%00n",
        "/v1/entitlements/check?external_customer_id=usr_0&benefit_id=ben&%00=x",
    ] {
        let (status, body) = get(&pool, path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"], "RequestValidationError", "{path}: {body}");
    }
    // The same routes still answer normally.
    let (status, _) = get(&pool, "/v1/customers/external/usr_0/state").await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn unknown_routes_and_methods_answer_in_polars_error_shape(pool: PgPool) {
    live(&pool).await;
    for path in ["/v1/no-such-thing", "/nothing/here", "/v1/customers/"] {
        assert_eq!(
            get(&pool, path).await,
            (
                404,
                json!({"error": "ResourceNotFound", "detail": "Not found"})
            ),
            "{path}"
        );
    }
    let post = axum::http::Request::post("/v1/subscriptions/")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(
        send(&pool, post).await,
        (
            405,
            json!({"error": "MethodNotAllowed", "detail": "Method not allowed"})
        )
    );
}
