//! The read API's contract: auth, Polar's list and error shapes, filters.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::*;

/// Three customers; cus_0 has two subscriptions (one canceled) and a grant.
/// Every id is `uid` of its name.
async fn seed(pool: &PgPool) {
    live(pool).await;
    let s = Stream::new();
    let b = benefit(&uid("ben"), s.now());
    let mut events = Vec::new();
    for i in 0..3 {
        let c = customer(
            &uid(&format!("cus_{i}")),
            Some(&format!("usr_{i}")),
            s.now(),
            None,
        );
        let t = s.tick(10);
        events.push(s.event(
            "subscription.created",
            subscription(
                &uid(&format!("sub_{i}")),
                &c,
                &uid("prod_a"),
                "active",
                t,
                None,
            ),
        ));
        if i == 0 {
            events.push(s.event(
                "subscription.created",
                subscription(&uid("sub_old"), &c, &uid("prod_b"), "canceled", t, None),
            ));
            events.push(s.event(
                "benefit_grant.created",
                grant(&uid("g_0"), &c, &b, Some(&uid("sub_0")), true, t, None),
            ));
        }
    }
    apply(pool, &events).await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn v1_routes_need_a_valid_bearer_token(pool: PgPool) {
    seed(&pool).await;
    for token in [None, Some("wrong-token-123")] {
        let path = format!("/v1/customers/{}/state", uid("cus_0"));
        let (status, body) = get_with_token(&pool, &path, token).await;
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
    let sorted = |names: &[&str]| -> Vec<String> {
        let mut ids: Vec<String> = names.iter().map(|n| uid(n)).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&active), sorted(&["sub_0"]));
    let (_, inactive) = get(
        &pool,
        &format!(
            "/v1/subscriptions/?customer_id={}&active=false",
            uid("cus_0")
        ),
    )
    .await;
    assert_eq!(ids(&inactive), sorted(&["sub_old"]));
    let (_, two) = get(
        &pool,
        &format!(
            "/v1/subscriptions/?customer_id={}&customer_id={}&sorting=-started_at",
            uid("cus_1"),
            uid("cus_2")
        ),
    )
    .await;
    assert_eq!(ids(&two), sorted(&["sub_1", "sub_2"]));
    assert_eq!(two["items"][0]["id"], uid("sub_2"), "newest first");
    let (_, by_product) = get(
        &pool,
        &format!("/v1/subscriptions/?product_id={}", uid("prod_b")),
    )
    .await;
    assert_eq!(ids(&by_product), sorted(&["sub_old"]));

    let (status, one) = get(&pool, &format!("/v1/subscriptions/{}", uid("sub_1"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        one["customer"]["id"],
        uid("cus_1"),
        "the full snapshot, embedded objects included"
    );
    let (status, missing) = get(&pool, &format!("/v1/subscriptions/{}", uid("nope"))).await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("ResourceNotFound"))
    );
    // Polar clamps a limit above 100 and reads a repeated scalar's last value.
    let (status, clamped) = get(&pool, "/v1/subscriptions/?limit=101&limit=2").await;
    assert_eq!(
        (status, clamped["pagination"]["max_page"].as_i64()),
        (200, Some(2))
    );

    for bad in [
        "limit=0",
        "page=0",
        "active=maybe",
        "sorting=colour",
        "status=bogus",
        "customer_id=cus_0",
        "started_after=yesterday",
    ] {
        let (status, body) = get(&pool, &format!("/v1/subscriptions/?{bad}")).await;
        assert_eq!(status, 422, "{bad}");
        assert!(body["detail"][0]["loc"].is_array(), "{bad}: {body}");
    }
    let (status, _) = get(&pool, "/v1/subscriptions/nope").await;
    assert_eq!(status, 422, "ids are UUIDs");
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
    assert_eq!(grants["items"][0]["id"], uid("g_0"));
    let (_, none) = get(
        &pool,
        &format!("/v1/benefit-grants/?customer_id={}", uid("cus_1")),
    )
    .await;
    assert_eq!(none["items"], json!([]));
    assert_eq!(none["pagination"], json!({"total_count": 0, "max_page": 0}));
    let (_, by_benefit) = get(
        &pool,
        &format!("/v1/benefit-grants?benefit_id={}", uid("ben")),
    )
    .await;
    assert_eq!(by_benefit["pagination"]["total_count"], 1);
    let (_, of_benefit) = get(&pool, &format!("/v1/benefits/{}/grants", uid("ben"))).await;
    assert_eq!(of_benefit["items"][0]["id"], uid("g_0"));
    let (status, _) = get(
        &pool,
        &format!("/v1/benefits/{}/grants", uid("no-such-benefit")),
    )
    .await;
    assert_eq!(status, 404);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn entitlement_check(pool: PgPool) {
    seed(&pool).await;
    let (cus0, cus1, ben, g0) = (uid("cus_0"), uid("cus_1"), uid("ben"), uid("g_0"));
    let check = |q: String| {
        let pool = pool.clone();
        async move { get(&pool, &format!("/v1/entitlements/check?{q}")).await }
    };
    assert_eq!(
        check(format!("external_customer_id=usr_0&benefit_id={ben}"))
            .await
            .1,
        json!({"granted": true, "customer_id": cus0, "benefit_id": ben,
               "via": [{"customer_id": cus0, "member_id": null, "grant_id": g0}]})
    );
    assert_eq!(
        check(format!("customer_id={cus0}&benefit_id={ben}"))
            .await
            .1["granted"],
        true
    );
    assert_eq!(
        check(format!("external_customer_id=usr_1&benefit_id={ben}"))
            .await
            .1["granted"],
        false
    );
    assert_eq!(
        check(format!("external_customer_id=nobody&benefit_id={ben}"))
            .await
            .1,
        json!({"granted": false, "customer_id": null, "benefit_id": ben, "via": []})
    );
    // The person: an individual customer's own external id.
    assert_eq!(
        check(format!("external_id=usr_0&benefit_id={ben}")).await.1,
        json!({"granted": true, "external_id": "usr_0", "customer_id": cus0, "member_id": null,
               "benefit_id": ben, "via": [{"customer_id": cus0, "member_id": null, "grant_id": g0}]})
    );
    assert_eq!(
        check(format!(
            "external_id=usr_0&customer_id={cus1}&benefit_id={ben}"
        ))
        .await
        .1["granted"],
        false,
        "scoped to another customer"
    );
    assert_eq!(
        check(format!("external_member_id=usr_0&benefit_id={ben}"))
            .await
            .1["granted"],
        false,
        "no member event was seen, so there is no member usr_0"
    );
    for bad in [
        "external_customer_id=usr_0".to_owned(),
        format!("benefit_id={ben}"),
        format!("customer_id={cus0}&external_customer_id=usr_0&benefit_id={ben}"),
        format!("external_id=usr_0&external_member_id=usr_0&benefit_id={ben}"),
        // Polar's ids are UUIDs: anything else is refused, never "not granted".
        "external_customer_id=usr_0&benefit_id=not-a-uuid".to_owned(),
    ] {
        assert_eq!(check(bad.clone()).await.0, 422, "{bad}");
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
        "/v1/customers/external/usr_0/members/%00",
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
    // Polar's routes hookstream does not serve, and writes: 501, never the
    // 404 an SDK would take for "this object does not exist".
    for (method, path) in [
        ("GET", "/v1/license-keys/"),
        ("GET", "/v1/customer-portal/customers/me"),
        ("POST", "/v1/customers/"),
        (
            "PATCH",
            "/v1/subscriptions/00000000-0000-4000-8000-000000000000",
        ),
        ("GET", "/v1/no-such-thing"),
    ] {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            send(&pool, request).await,
            (
                501,
                json!({"error": "NotServed",
                       "detail": format!("{method} {path} is served by Polar's API, not by hookstream")})
            ),
            "{method} {path}"
        );
    }
    assert_eq!(
        get(&pool, "/nothing/here").await,
        (
            404,
            json!({"error": "ResourceNotFound", "detail": "Not found"})
        )
    );
    let post = axum::http::Request::post("/healthz")
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

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_polar_version_header_picks_the_shapes_and_an_unknown_one_is_404(pool: PgPool) {
    live(&pool).await;
    let read = |version: Option<&'static str>| {
        let pool = pool.clone();
        async move {
            let mut request = axum::http::Request::get("/v1/subscriptions/")
                .header("authorization", format!("Bearer {TOKEN}"));
            if let Some(version) = version {
                request = request.header("polar-version", version);
            }
            let response = tower::ServiceExt::oneshot(
                hookstream_projector::api::router(read_api_state(&pool)),
                request.body(axum::body::Body::empty()).unwrap(),
            )
            .await
            .unwrap();
            let served = response
                .headers()
                .get("polar-version")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), served)
        }
    };
    assert_eq!(read(None).await, (200, Some("2026-04".to_owned())));
    assert_eq!(read(Some("")).await, (200, Some("2026-04".to_owned())));
    for version in ["2026-04", "2026-10", "2027-01"] {
        assert_eq!(read(Some(version)).await, (200, Some(version.to_owned())));
    }
    // Unknown: 404 before authentication, as Polar's middleware answers.
    assert_eq!(read(Some("2025-01")).await, (404, None));
}
