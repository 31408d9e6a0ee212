//! The operator console over HTTP: login and sessions, every page, the
//! benefit check, and re-applying failures. Events go through the real
//! event log (the timeline reads it) and are applied as the consumer does.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt as _;

use hookstream_projector::api::{ApiShared, ApiState, EntitlementCache, FailureThrottle, router};
use hookstream_projector::applied::{self, Placement};
use hookstream_projector::console::{self, ConsoleShared, ConsoleState};
use hookstream_projector::metrics::ProjectorMetrics;
use hookstream_projector::projection::IncomingEvent;
use hookstream_shared::config::Secret;
use hookstream_shared::envelope;
use hookstream_shared::event_log::{self, NewEvent};

use crate::helpers::*;

const OPERATOR_TOKEN: &str = "operator-token-0123456789abcdef012345";

/// The read API and the console over `pool`, as the projector serves them.
fn app(pool: &PgPool) -> axum::Router {
    let api = ApiState::new(ApiShared {
        pool: pool.clone(),
        tokens: vec![Secret::new(TOKEN)],
        metrics: ProjectorMetrics::new(),
        cache: Arc::new(EntitlementCache::new(
            10,
            std::time::Duration::from_secs(60),
        )),
        throttle: FailureThrottle::new(),
    });
    router(api.clone()).merge(console::router(ConsoleState::new(ConsoleShared {
        api,
        tokens: vec![Secret::new(OPERATOR_TOKEN)],
        topic: "polar.events".to_owned(),
        group: "hookstream-projector".to_owned(),
        feed_on: true,
        throttle: FailureThrottle::new(),
    })))
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    server_timing: Option<String>,
    html: String,
}

async fn read(response: Response<Body>) -> Page {
    let header = |name: header::HeaderName| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let status = response.status().as_u16();
    let location = header(header::LOCATION);
    let set_cookie = header(header::SET_COOKIE);
    let server_timing = header(header::HeaderName::from_static("server-timing"));
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Page {
        status,
        location,
        set_cookie,
        server_timing,
        html: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn get_page(pool: &PgPool, path: &str, cookie: Option<&str>) -> Page {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    read(
        app(pool)
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap(),
    )
    .await
}

async fn post_form(pool: &PgPool, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
    post_form_with(pool, path, cookie, form, &[]).await
}

/// As [`post_form`], with more request headers (what a browser adds).
async fn post_form_with(
    pool: &PgPool,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Page {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    read(
        app(pool)
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap(),
    )
    .await
}

/// Logs in; returns the `name=value` to send back as the cookie.
async fn login(pool: &PgPool) -> String {
    let page = post_form(
        pool,
        "/console/login",
        None,
        &[("token", OPERATOR_TOKEN), ("next", "/console/")],
    )
    .await;
    assert_eq!(page.status, 303);
    let cookie = page.set_cookie.expect("a session cookie");
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token the page's forms carry.
fn csrf(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token")
        + 19;
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

/// Appends events to the log as ingest would (each delivered `deliveries`
/// times) and applies them, in log order, as the consumer does. Returns
/// each event's seq in the log.
async fn log_and_apply(pool: &PgPool, events: &[IncomingEvent], deliveries: usize) -> Vec<i64> {
    let new: Vec<NewEvent> = events
        .iter()
        .map(|e| {
            let parsed = envelope::parse(&e.body).unwrap();
            NewEvent::from_envelope("polar", &e.webhook_id, parsed, e.body.clone().into())
        })
        .collect();
    let mut seqs = Vec::new();
    for copy in 0..deliveries {
        let outcomes = event_log::append_batch(pool, &new).await.unwrap();
        if copy == 0 {
            seqs = outcomes.iter().map(|o| o.seq()).collect();
        }
    }
    let logged: Vec<IncomingEvent> = events
        .iter()
        .zip(&seqs)
        .map(|(e, &seq)| IncomingEvent { seq, ..e.clone() })
        .collect();
    apply(pool, &logged).await;
    seqs
}

/// Ada (cus_ada, usr_ada) subscribes and is granted `ben_pro`; Bob's grant
/// of `ben_pro` is revoked.
async fn seed(pool: &PgPool) -> Vec<i64> {
    live(pool).await;
    let s = Stream::new();
    let pro = benefit("ben_pro", s.now());
    let ada = customer("cus_ada", Some("usr_ada"), s.now(), None);
    let bob = customer("cus_bob", Some("usr_bob"), s.now(), None);
    let t = s.tick(10);
    let events = vec![
        s.event("customer.created", ada.clone()),
        s.event("customer.created", bob.clone()),
        s.event(
            "subscription.created",
            subscription("sub_ada", &ada, "prod", "incomplete", t, None),
        ),
        {
            s.tick(5);
            s.event(
                "subscription.active",
                subscription("sub_ada", &ada, "prod", "active", t, Some(s.now())),
            )
        },
        s.event(
            "benefit_grant.created",
            grant("g_ada", &ada, &pro, Some("sub_ada"), true, s.now(), None),
        ),
        s.event(
            "benefit_grant.created",
            grant("g_bob", &bob, &pro, None, true, s.now(), None),
        ),
        {
            s.tick(5);
            s.event(
                "benefit_grant.revoked",
                grant("g_bob", &bob, &pro, None, false, t, Some(s.now())),
            )
        },
    ];
    log_and_apply(pool, &events, 1).await
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn without_a_session_pages_send_to_the_login_form_and_actions_are_refused(pool: PgPool) {
    seed(&pool).await;
    for path in [
        "/console/",
        "/console/customers?q=usr_ada",
        "/console/customers/cus_ada",
        "/console/events/1",
        "/console/failures",
    ] {
        for cookie in [None, Some("hookstream_console=4102444800.forged")] {
            let page = get_page(&pool, path, cookie).await;
            assert_eq!(page.status, 303, "{path}");
            let location = page.location.unwrap();
            assert!(
                location.starts_with("/console/login?next="),
                "{path}: {location}"
            );
            assert!(
                !page.html.contains("cus_ada"),
                "{path}: nothing of the customer"
            );
        }
    }
    let refused = post_form(
        &pool,
        "/console/failures/reapply",
        None,
        &[("all", "true"), ("csrf", "x")],
    )
    .await;
    assert_eq!(refused.status, 401);

    let wrong = post_form(
        &pool,
        "/console/login",
        None,
        &[("token", "not-the-token"), ("next", "/console/")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookie.is_none());
    assert!(wrong.html.contains("not accepted"));
    assert!(
        !wrong.html.contains("not-the-token"),
        "the token is not echoed"
    );
    // The read API's bearer token is not the console's.
    let api_token = post_form(&pool, "/console/login", None, &[("token", TOKEN)]).await;
    assert_eq!(api_token.status, 401);

    let form = get_page(&pool, "/console/login?next=%2Fconsole%2Ffailures", None).await;
    assert_eq!(form.status, 200);
    assert!(form.html.contains(r#"name="token""#));
    assert!(form.html.contains(r#"value="/console/failures""#));
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_login_sets_a_strict_http_only_session_that_opens_every_page(pool: PgPool) {
    let seqs = seed(&pool).await;
    let page = post_form(
        &pool,
        "/console/login",
        None,
        &[("token", OPERATOR_TOKEN), ("next", "/console/failures")],
    )
    .await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/console/failures"))
    );
    let set_cookie = page.set_cookie.unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains(OPERATOR_TOKEN));
    let offsite = post_form(
        &pool,
        "/console/login",
        None,
        &[("token", OPERATOR_TOKEN), ("next", "https://evil.example/")],
    )
    .await;
    assert_eq!(offsite.location.as_deref(), Some("/console/"));

    let cookie = login(&pool).await;
    let event = format!("/console/events/{}", seqs[0]);
    for (path, shows) in [
        ("/console/", "webhooks received, last hour"),
        ("/console/customers?q=usr_ada", "/console/customers/cus_ada"),
        ("/console/customers/cus_ada", "Timeline"),
        (event.as_str(), "customer.created"),
        ("/console/failures", "could not be applied"),
    ] {
        let page = get_page(&pool, path, Some(&cookie)).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.html.contains(shows), "{path} shows {shows}");
        for secret in [OPERATOR_TOKEN, TOKEN] {
            assert!(!page.html.contains(secret), "{path} renders no token");
        }
        assert!(page.server_timing.unwrap().starts_with("app;dur="));
    }
    let missing = get_page(&pool, "/console/customers/nobody", Some(&cookie)).await;
    assert_eq!(missing.status, 404);
    let nul = get_page(&pool, "/console/customers?q=%00", Some(&cookie)).await;
    assert_eq!(nul.status, 400);
    let not_a_seq = get_page(&pool, "/console/events/abc", Some(&cookie)).await;
    assert_eq!(not_a_seq.status, 400);

    let overview = get_page(&pool, "/console/", Some(&cookie)).await;
    let logout = post_form(
        &pool,
        "/console/logout",
        Some(&cookie),
        &[("csrf", &csrf(&overview.html))],
    )
    .await;
    assert_eq!(logout.status, 303);
    assert!(logout.set_cookie.unwrap().contains("Max-Age=0"));
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn search_finds_customers_by_external_id_email_id_and_member(pool: PgPool) {
    seed(&pool).await;
    let cookie = login(&pool).await;
    for q in ["usr_ada", "CUS_ADA@example.com", "cus_ada"] {
        let page = get_page(
            &pool,
            &format!("/console/customers?q={}", q.replace('@', "%40")),
            Some(&cookie),
        )
        .await;
        assert!(page.html.contains("/console/customers/cus_ada"), "{q}");
        assert!(!page.html.contains("/console/customers/cus_bob"), "{q}");
    }
    let none = get_page(&pool, "/console/customers?q=%3Cscript%3E", Some(&cookie)).await;
    assert!(none.html.contains("No customer matches"));
    assert!(none.html.contains("&lt;script&gt;"), "the query is escaped");
    assert!(!none.html.contains("<script>"));
}

/// Rows of the timeline table, each `(seq, row html)`, in page order.
fn timeline_rows(html: &str) -> Vec<(i64, String)> {
    let table = &html[html.find(r#"id="timeline""#).expect("a timeline")..];
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split("<tr data-seq=\"")
        .skip(1)
        .map(|row| {
            let seq = row[..row.find('"').unwrap()].parse().unwrap();
            (seq, row.to_owned())
        })
        .collect()
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_timeline_lists_events_in_occurrence_order_with_duplicates_and_which_version_won(
    pool: PgPool,
) {
    live(&pool).await;
    let s = Stream::new();
    let ada = customer("cus_ada", Some("usr_ada"), s.now(), None);
    let created = s.tick(10);
    let first = s.event(
        "subscription.created",
        subscription("sub_ada", &ada, "prod", "incomplete", created, None),
    );
    s.tick(5);
    let second = s.event(
        "subscription.updated",
        subscription("sub_ada", &ada, "prod", "active", created, Some(s.now())),
    );
    let other = customer("cus_other", None, s.now(), None);
    let unrelated = s.event("customer.created", other);
    // Delivered newest first, and the older one twice.
    let newer_seq = log_and_apply(&pool, &[second], 1).await[0];
    let older_seq = log_and_apply(&pool, std::slice::from_ref(&first), 2).await[0];
    log_and_apply(&pool, &[unrelated], 1).await;
    assert!(older_seq > newer_seq, "logged out of order");

    let cookie = login(&pool).await;
    let page = get_page(&pool, "/console/customers/cus_ada", Some(&cookie)).await;
    let rows = timeline_rows(&page.html);
    assert_eq!(
        rows.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        vec![older_seq, newer_seq],
        "occurrence order, not log order; only this customer's events"
    );
    let (_, older) = &rows[0];
    assert!(older.contains("subscription.created"));
    assert!(older.contains("once + 1 duplicate"), "{older}");
    assert!(older.contains("superseded by"), "{older}");
    assert!(
        older.contains(&format!("/console/events/{newer_seq}")),
        "by which event"
    );
    let (_, newer) = &rows[1];
    assert!(newer.contains("current"), "{newer}");
    assert!(newer.contains(">once<"), "{newer}");

    let event = get_page(
        &pool,
        &format!("/console/events/{older_seq}"),
        Some(&cookie),
    )
    .await;
    assert!(event.html.contains("Duplicate deliveries"));
    assert!(event.html.contains("subscriptions"), "the rows it wrote");
    assert!(event.html.contains(&format!(
        "superseded by <a href=\"/console/events/{newer_seq}\""
    )));
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_benefit_check_answers_as_the_api_does_and_says_why(pool: PgPool) {
    seed(&pool).await;
    let cookie = login(&pool).await;
    for (customer, granted, why) in [
        ("cus_ada", true, "is in force"),
        ("cus_bob", false, "was revoked"),
    ] {
        let page = get_page(
            &pool,
            &with_uids(&format!("/console/customers/{customer}?benefit_id=ben_pro")),
            Some(&cookie),
        )
        .await;
        assert_eq!(page.status, 200);
        let answer = &page.html[page.html.find(r#"id="answer""#).expect("an answer")..];
        assert!(
            answer.contains(if granted { "Granted." } else { "Not granted." }),
            "{customer}"
        );
        assert!(answer.contains(why), "{customer}: {answer}");
        let (_, api) = get(
            &pool,
            &with_uids(&format!(
                "/v1/entitlements/check?customer_id={customer}&benefit_id=ben_pro"
            )),
        )
        .await;
        assert_eq!(api["granted"], json!(granted));
        let shown = answer[answer.find("<pre>").unwrap() + 5..answer.find("</pre>").unwrap()]
            .replace("&quot;", "\"");
        assert_eq!(
            serde_json::from_str::<Value>(&shown).unwrap(),
            api,
            "the API's own answer"
        );
    }
    let never = get_page(
        &pool,
        &with_uids("/console/customers/cus_ada?benefit_id=ben_unknown"),
        Some(&cookie),
    )
    .await;
    assert!(never.html.contains("No grant of this benefit"));
    assert!(never.html.contains("never seen a benefit with this id"));
    let state = get_page(&pool, "/console/customers/cus_ada", Some(&cookie)).await;
    assert!(
        state.html.contains("sub_ada") && state.html.contains("g_ada"),
        "the state as served"
    );
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_event_page_says_where_the_event_went(pool: PgPool) {
    let seqs = seed(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    applied::record_placements(
        &mut tx,
        "polar.events",
        &[
            Placement {
                partition: 3,
                offset: 40,
                seq: seqs[1],
            },
            Placement {
                partition: 3,
                offset: 41,
                seq: seqs[0],
            },
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let cookie = login(&pool).await;
    let page = get_page(
        &pool,
        &format!("/console/events/{}", seqs[0]),
        Some(&cookie),
    )
    .await;
    assert!(
        page.html.contains("partition 3, offset 41"),
        "found by its seq"
    );
    assert!(
        page.html.contains(
            "{\n  &quot;api_version&quot;: &quot;2026-10&quot;,\n  &quot;data&quot;: {\n    &quot;"
        ),
        "pretty-printed"
    );
    assert!(page.html.contains("published") || page.html.contains("waiting to be published"));
    let unplaced = get_page(
        &pool,
        &format!("/console/events/{}", seqs[2]),
        Some(&cookie),
    )
    .await;
    assert!(unplaced.html.contains("not applied from Kafka"));
    let missing = get_page(&pool, "/console/events/999999", Some(&cookie)).await;
    assert_eq!(missing.status, 404);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn failures_are_reapplied_with_the_sessions_csrf_token_and_the_outcome_shown(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let ada = customer("cus_ada", Some("usr_ada"), s.now(), None);
    let good = s.event(
        "subscription.created",
        subscription("sub_ada", &ada, "prod", "active", s.tick(1), None),
    );
    let mut broken_data = subscription("sub_broken", &ada, "prod", "active", s.tick(1), None);
    broken_data["status"] = json!(7);
    let broken = s.event("subscription.created", broken_data);
    let new: Vec<NewEvent> = [&good, &broken]
        .iter()
        .map(|e| {
            NewEvent::from_envelope(
                "polar",
                &e.webhook_id,
                envelope::parse(&e.body).unwrap(),
                e.body.clone().into(),
            )
        })
        .collect();
    let seqs: Vec<i64> = event_log::append_batch(&pool, &new)
        .await
        .unwrap()
        .iter()
        .map(|o| o.seq())
        .collect();
    // The broken one fails now; the good one failed under an older projector
    // (its failure row is what that version left).
    let outcome = apply(
        &pool,
        &[IncomingEvent {
            seq: seqs[1],
            ..broken.clone()
        }],
    )
    .await;
    assert_eq!(outcome.failed, 1);
    sqlx::query("insert into projection.apply_failures (seq, webhook_id, event_type, reason) values ($1, $2, 'subscription.created', 'unknown field (an older version)')")
        .bind(seqs[0])
        .bind(&good.webhook_id)
        .execute(&pool)
        .await
        .unwrap();

    let cookie = login(&pool).await;
    let page = get_page(&pool, "/console/failures", Some(&cookie)).await;
    assert!(page.html.contains("2 events could not be applied"));
    assert!(page.html.contains("an older version"));
    let token = csrf(&page.html);
    let good_seq = seqs[0].to_string();

    for bad_token in ["", "forged"] {
        let refused = post_form(
            &pool,
            "/console/failures/reapply",
            Some(&cookie),
            &[("csrf", bad_token), ("seq", &good_seq)],
        )
        .await;
        assert_eq!(refused.status, 403);
    }
    let still: i64 = sqlx::query_scalar("select count(*) from projection.apply_failures")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(still, 2, "a refused POST changes nothing");

    let done = post_form(
        &pool,
        "/console/failures/reapply",
        Some(&cookie),
        &[("csrf", &token), ("seq", &good_seq)],
    )
    .await;
    assert_eq!(done.status, 303);
    let shown = get_page(&pool, &done.location.unwrap(), Some(&cookie)).await;
    assert!(
        shown
            .html
            .contains("Tried 1 again: 1 applied, 0 still failing."),
        "{}",
        shown.html
    );
    assert!(shown.html.contains("1 event could not be applied"));
    let state = customer_state(&pool, "cus_ada").await;
    assert_eq!(
        active_subscription_ids(&state),
        vec!["sub_ada"],
        "applied this time"
    );

    let all = post_form(
        &pool,
        "/console/failures/reapply",
        Some(&cookie),
        &[("csrf", &token), ("all", "true")],
    )
    .await;
    let shown = get_page(&pool, &all.location.unwrap(), Some(&cookie)).await;
    assert!(
        shown
            .html
            .contains("Tried 1 again: 0 applied, 1 still failing."),
        "{}",
        shown.html
    );
    assert!(
        shown.html.contains("1 event could not be applied"),
        "the reason is kept"
    );
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn the_overview_counts_traffic_and_shows_unknown_types_and_failures(pool: PgPool) {
    let seqs = seed(&pool).await;
    let s = Stream::new();
    let odd = IncomingEvent {
        webhook_id: "wh-odd".to_owned(),
        ..s.event("organization.renamed_in_2027", json!({"id": "org"}))
    };
    let odd_seq = log_and_apply(&pool, std::slice::from_ref(&odd), 1).await[0];
    let mut tx = pool.begin().await.unwrap();
    let placements: Vec<Placement> = seqs
        .iter()
        .enumerate()
        .map(|(i, &seq)| Placement {
            partition: 0,
            offset: i as i64,
            seq,
        })
        .collect();
    applied::record_placements(&mut tx, "polar.events", &placements)
        .await
        .unwrap();
    applied::record_unknown_types(
        &mut tx,
        [&"organization.renamed_in_2027".to_owned()],
        &[IncomingEvent {
            seq: odd_seq,
            ..odd
        }],
    )
    .await
    .unwrap();
    sqlx::query("insert into projector_offsets (consumer_group, topic, partition, next_offset) values ('hookstream-projector', 'polar.events', 0, 7)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let cookie = login(&pool).await;
    let page = get_page(&pool, "/console/", Some(&cookie)).await;
    let value = |id: &str| -> String {
        let at = page.html.find(&format!(r#"id="{id}">"#)).unwrap() + id.len() + 6;
        page.html[at..at + page.html[at..].find('<').unwrap()].to_owned()
    };
    assert_eq!(value("received-hour"), (seqs.len() + 1).to_string());
    assert_eq!(value("applied-hour"), seqs.len().to_string());
    assert_eq!(value("failure-count"), "0");
    assert!(page.html.contains("organization.renamed_in_2027"));
    assert!(page.html.contains(r#"id="chart-hour""#) && page.html.contains("<rect"));
    assert!(page.html.contains(r#"id="partitions""#));
    assert!(page.html.contains("hookstream_gen_"), "the live generation");
    assert!(page.html.contains("Never run"), "no reconcile yet");
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_cookie_copied_before_logout_stops_working_at_logout(pool: PgPool) {
    live(&pool).await;
    let cookie = login(&pool).await;
    let overview = get_page(&pool, "/console/", Some(&cookie)).await;
    assert_eq!(overview.status, 200, "{}", overview.html);
    let copied = cookie.clone();
    let out = post_form(
        &pool,
        "/console/logout",
        Some(&cookie),
        &[("csrf", &csrf(&overview.html))],
    )
    .await;
    assert_eq!(out.status, 303);
    let after = get_page(&pool, "/console/", Some(&copied)).await;
    assert_eq!(after.status, 303, "the copy was ended with the session");
    assert!(after.location.unwrap().starts_with("/console/login"));
    // Another session of the same token is not affected.
    let other = login(&pool).await;
    assert_eq!(get_page(&pool, "/console/", Some(&other)).await.status, 200);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_login_posted_from_another_site_is_refused(pool: PgPool) {
    let form = [("token", OPERATOR_TOKEN), ("next", "/console/")];
    for headers in [
        &[("sec-fetch-site", "cross-site")][..],
        &[("sec-fetch-site", "same-site")],
        &[
            ("host", "console.example"),
            ("origin", "https://evil.example"),
        ],
    ] {
        let page = post_form_with(&pool, "/console/login", None, &form, headers).await;
        assert_eq!(page.status, 403, "{headers:?}");
        assert!(page.set_cookie.is_none(), "{headers:?}: logged in anyway");
    }
    for headers in [
        &[("sec-fetch-site", "same-origin")][..],
        &[
            ("host", "console.example"),
            ("origin", "https://console.example"),
        ],
    ] {
        let page = post_form_with(&pool, "/console/login", None, &form, headers).await;
        assert_eq!(page.status, 303, "{headers:?}");
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn control_characters_in_next_are_ignored_not_a_500(pool: PgPool) {
    for next in [
        "/console/\r\nSet-Cookie: x=1",
        "/console/\u{1}",
        "/console/\u{7f}x",
    ] {
        let page = post_form(
            &pool,
            "/console/login",
            None,
            &[("token", OPERATOR_TOKEN), ("next", next)],
        )
        .await;
        assert_eq!(page.status, 303, "{next:?}");
        assert_eq!(page.location.as_deref(), Some("/console/"), "{next:?}");
        let form = get_page(
            &pool,
            &format!(
                "/console/login?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", next)
                    .finish()
            ),
            None,
        )
        .await;
        assert_eq!(form.status, 200, "{next:?}");
    }
}
