//! Members and seats: "does user X have benefit Y?" for seat holders, by the
//! rule polarsim's README states (and `projection::api::entitlements` says
//! how it is answered), against polarsim's ground truth and in the cases
//! that trip receivers.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use hookstream_projector::projection::IncomingEvent;

use crate::helpers::*;
use crate::order_independence::{expected, stream};

pub fn team(id: &str, external_id: &str, created: DateTime<Utc>) -> Value {
    let mut c = customer(id, Some(external_id), created, None);
    c["type"] = json!("team");
    c
}

pub fn member(
    id: &str,
    customer_id: &str,
    external_id: Option<&str>,
    role: &str,
    created: DateTime<Utc>,
    modified: Option<DateTime<Utc>>,
) -> Value {
    json!({
        "id": id, "created_at": ts(created), "modified_at": modified.map(ts), "customer_id": customer_id,
        "email": format!("{id}@example.com"), "name": null, "external_id": external_id, "role": role,
    })
}

/// A seat on `subscription_id`; a revoked seat names nobody, as in Polar.
pub fn seat(
    id: &str,
    subscription_id: &str,
    holder: Option<&Value>,
    status: &str,
    created: DateTime<Utc>,
    modified: Option<DateTime<Utc>>,
) -> Value {
    let at = modified.unwrap_or(created);
    json!({
        "created_at": ts(created), "modified_at": modified.map(ts), "id": id,
        "subscription_id": subscription_id, "order_id": null, "status": status,
        "customer_id": holder.map(|m| m["customer_id"].clone()),
        "member_id": holder.map(|m| m["id"].clone()), "member": holder,
        "email": holder.map(|m| m["email"].clone()), "customer_email": holder.map(|m| m["email"].clone()),
        "invitation_token_expires_at": null,
        "claimed_at": (status != "pending").then(|| ts(created)),
        "revoked_at": (status == "revoked").then(|| ts(at)),
        "seat_metadata": {},
    })
}

/// `grant` given to `holder`, a member of the grant's customer.
pub fn to_member(mut grant: Value, holder: &Value) -> Value {
    grant["member_id"] = holder["id"].clone();
    grant["member"] = holder.clone();
    grant
}

async fn check(pool: &PgPool, query: &str) -> Value {
    let (status, body) = get(
        pool,
        &format!("/v1/entitlements/check?{}", with_uids(query)),
    )
    .await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

async fn granted(pool: &PgPool, query: &str) -> bool {
    check(pool, query).await["granted"] == json!(true)
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn every_entitlement_polarsim_expects_is_answered_by_external_id(pool: PgPool) {
    let events = stream(5, 160);
    let truth = expected(5, 160);
    let g = live(&pool).await;
    apply_into(&pool, &g, &events, 500).await;

    let rows = truth["entitlements"].as_array().unwrap();
    assert!(rows.len() > 300, "a stream with teams: {} rows", rows.len());
    let mut anywhere: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut wrong = Vec::new();
    for row in rows {
        let (x, c, b) = (
            row["external_id"].as_str().unwrap(),
            row["customer_id"].as_str().unwrap(),
            row["benefit_id"].as_str().unwrap(),
        );
        let want = row["granted"].as_bool().unwrap();
        *anywhere.entry((x.to_owned(), b.to_owned())).or_default() |= want;
        let answer = check(
            &pool,
            &format!("external_id={x}&customer_id={c}&benefit_id={b}"),
        )
        .await;
        if answer["granted"] != json!(want) {
            wrong.push(format!("{row} answered {answer}"));
        } else if want {
            // It says which grant of whom: one of X's member in C, or C's own.
            let via = answer["via"].as_array().unwrap();
            assert!(
                via.iter().all(|v| v["customer_id"] == json!(c)),
                "{row}: {answer}"
            );
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows wrong:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
    for ((x, b), want) in &anywhere {
        assert_eq!(
            granted(&pool, &format!("external_id={x}&benefit_id={b}")).await,
            *want,
            "{x} / {b} without a customer"
        );
    }
    // The cases the rule exists for are in the stream.
    let teams: Vec<&Value> = truth["customers"]
        .as_object()
        .unwrap()
        .values()
        .filter(|c| c["type"] == json!("team"))
        .collect();
    assert!(teams.len() >= 5, "{} teams", teams.len());
    let in_several: usize = {
        let mut customers_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for row in rows {
            customers_of
                .entry(row["external_id"].as_str().unwrap())
                .or_default()
                .insert(row["customer_id"].as_str().unwrap());
        }
        customers_of.values().filter(|c| c.len() > 1).count()
    };
    assert!(in_several > 0, "an external id in several customers");

    // Members, as Polar lists them: the live ones of each live customer.
    for c in truth["customers"].as_object().unwrap().values() {
        let id = c["customer_id"].as_str().unwrap();
        let (status, page) = get(&pool, &format!("/v1/members/?customer_id={id}&limit=100")).await;
        assert_eq!(status, 200);
        let listed: BTreeSet<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        let want: BTreeSet<&str> = if c["deleted"] == json!(true) {
            BTreeSet::new()
        } else {
            c["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["deleted"] == json!(false))
                .map(|m| m["member_id"].as_str().unwrap())
                .collect()
        };
        assert_eq!(listed, want, "members of {id}");
        // The same through the routes polar-sdk 1.0.2 calls.
        let (status, page) = get(&pool, &format!("/v1/customers/{id}/members?limit=100")).await;
        if c["deleted"] == json!(true) {
            assert_eq!(status, 404, "members of deleted {id}");
        } else {
            assert_eq!(status, 200);
            let listed: BTreeSet<&str> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap())
                .collect();
            assert_eq!(listed, want, "/v1/customers/{id}/members");
            if let Some(member) = want.iter().next() {
                let (status, one) =
                    get(&pool, &format!("/v1/customers/{id}/members/{member}")).await;
                assert_eq!((status, one["id"].as_str()), (200, Some(*member)));
            }
        }
        // And each live member's granted grants, by the grants list's filter.
        for m in c["members"].as_array().unwrap() {
            if m["deleted"] == json!(true) || c["deleted"] == json!(true) {
                continue;
            }
            let member_id = m["member_id"].as_str().unwrap();
            let (_, grants) = get(
                &pool,
                &format!("/v1/benefit-grants/?member_id={member_id}&is_granted=true&limit=100"),
            )
            .await;
            let mut benefits: Vec<&str> = grants["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["benefit_id"].as_str().unwrap())
                .collect();
            benefits.sort();
            benefits.dedup();
            let mut want: Vec<&str> = m["granted_benefit_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_str().unwrap())
                .collect();
            want.sort();
            assert_eq!(benefits, want, "granted grants of member {member_id}");
        }
    }
}

/// A team of two members with one seat-based subscription, and an
/// individual customer whose external id is also the second member's.
struct Team {
    team: Value,
    ada: Value,
    solo: Value,
    pro: Value,
    t0: DateTime<Utc>,
}

impl Team {
    /// ada's grant of `pro` through the team's seat subscription.
    fn ada_grant(
        &self,
        granted: bool,
        created: DateTime<Utc>,
        modified: Option<DateTime<Utc>>,
    ) -> Value {
        let g = grant(
            "g_ada",
            &self.team,
            &self.pro,
            Some("sub_team"),
            granted,
            created,
            modified,
        );
        to_member(g, &self.ada)
    }

    /// ada's seat, claimed.
    fn ada_seat(&self, created: DateTime<Utc>, modified: Option<DateTime<Utc>>) -> Value {
        seat(
            "seat_1",
            "sub_team",
            Some(&self.ada),
            "claimed",
            created,
            modified,
        )
    }
}

fn team_setup(s: &Stream) -> (Team, Vec<IncomingEvent>) {
    let t0 = s.now();
    let team_customer = team("cus_team", "acme", t0);
    let owner = member("mem_owner", "cus_team", Some("acme"), "owner", t0, None);
    let ada = member("mem_ada", "cus_team", Some("ada"), "member", t0, None);
    let solo = customer("cus_solo", Some("ada"), t0, None);
    let pro = benefit("pro", t0);
    let events = vec![
        s.event("customer.created", team_customer.clone()),
        s.event("customer.created", solo.clone()),
        s.event("benefit.created", pro.clone()),
        s.event("member.created", owner),
    ];
    (
        Team {
            team: team_customer,
            ada,
            solo,
            pro,
            t0,
        },
        events,
    )
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_seat_claimed_before_its_member_is_announced_still_counts(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let (t, mut events) = team_setup(&s);
    let at = s.tick(10);
    events.push(s.event("customer_seat.claimed", t.ada_seat(at, None)));
    events.push(s.event("benefit_grant.created", t.ada_grant(true, at, None)));
    apply_each(&pool, &events).await;
    assert!(granted(&pool, "external_id=ada&benefit_id=pro").await);
    assert!(
        granted(
            &pool,
            "external_member_id=ada&customer_id=cus_team&benefit_id=pro"
        )
        .await
    );
    // The member's own event, older than the seat, arrives last.
    apply(&pool, &[s.event("member.created", t.ada.clone())]).await;
    let answer = check(&pool, "external_id=ada&benefit_id=pro").await;
    assert_eq!(
        answer["via"],
        json!([{"customer_id": "cus_team", "member_id": "mem_ada", "grant_id": "g_ada"}])
    );
    let (_, members) = get(&pool, "/v1/members/?external_customer_id=acme").await;
    assert_eq!(members["pagination"]["total_count"], json!(2), "{members}");
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_revoked_seat_ends_access_before_the_grant_revocation_arrives(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let (t, mut events) = team_setup(&s);
    let claimed = s.tick(10);
    events.push(s.event("customer_seat.claimed", t.ada_seat(claimed, None)));
    events.push(s.event("benefit_grant.created", t.ada_grant(true, claimed, None)));
    apply(&pool, &events).await;
    assert!(granted(&pool, "external_member_id=ada&benefit_id=pro").await);

    let revoked = s.tick(60);
    apply(
        &pool,
        &[s.event(
            "customer_seat.revoked",
            seat(
                "seat_1",
                "sub_team",
                None,
                "revoked",
                claimed,
                Some(revoked),
            ),
        )],
    )
    .await;
    assert!(
        !granted(&pool, "external_member_id=ada&benefit_id=pro").await,
        "the grant row still says granted, but its seat is gone"
    );
    assert!(
        granted(&pool, "external_customer_id=acme&benefit_id=pro").await,
        "the team as a whole follows Polar's grants and state, not seats"
    );
    let revoked_grant = s.tick(2);
    apply(
        &pool,
        &[s.event(
            "benefit_grant.revoked",
            t.ada_grant(false, claimed, Some(revoked_grant)),
        )],
    )
    .await;
    assert!(!granted(&pool, "external_id=ada&benefit_id=pro").await);
    // Given the seat back: the same seat and grant ids, newer versions. The
    // grant arrives before the seat's claim.
    let again = s.tick(60);
    apply(
        &pool,
        &[s.event(
            "benefit_grant.created",
            t.ada_grant(true, claimed, Some(again)),
        )],
    )
    .await;
    assert!(granted(&pool, "external_id=ada&benefit_id=pro").await);
    apply(
        &pool,
        &[s.event("customer_seat.claimed", t.ada_seat(claimed, Some(again)))],
    )
    .await;
    assert!(granted(&pool, "external_id=ada&benefit_id=pro").await);
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn one_external_id_in_two_teams_keeps_what_the_other_team_gives(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let (t, mut events) = team_setup(&s);
    let at = s.tick(10);
    let other = team("cus_other", "globex", t.t0);
    let ada_there = member("mem_ada_2", "cus_other", Some("ada"), "member", at, None);
    events.extend([
        s.event("customer.created", other.clone()),
        s.event("member.created", t.ada.clone()),
        s.event("member.created", ada_there.clone()),
        s.event(
            "benefit_grant.created",
            to_member(
                grant("g_1", &t.team, &t.pro, Some("sub_team"), true, at, None),
                &t.ada,
            ),
        ),
        s.event(
            "benefit_grant.created",
            to_member(
                grant("g_2", &other, &t.pro, Some("sub_other"), true, at, None),
                &ada_there,
            ),
        ),
    ]);
    apply(&pool, &events).await;
    let answer = check(&pool, "external_id=ada&benefit_id=pro").await;
    assert_eq!(answer["via"].as_array().unwrap().len(), 2, "{answer}");

    let revoked = s.tick(60);
    apply(
        &pool,
        &[s.event(
            "benefit_grant.revoked",
            to_member(
                grant(
                    "g_1",
                    &t.team,
                    &t.pro,
                    Some("sub_team"),
                    false,
                    at,
                    Some(revoked),
                ),
                &t.ada,
            ),
        )],
    )
    .await;
    assert!(granted(&pool, "external_id=ada&benefit_id=pro").await);
    assert!(!granted(&pool, "external_id=ada&customer_id=cus_team&benefit_id=pro").await);
    assert!(
        granted(
            &pool,
            "external_id=ada&external_customer_id=globex&benefit_id=pro"
        )
        .await
    );
    assert_eq!(
        check(&pool, "external_id=ada&benefit_id=pro").await["via"],
        json!([{"customer_id": "cus_other", "member_id": "mem_ada_2", "grant_id": "g_2"}])
    );
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_deleted_member_loses_access_at_once_and_leaves_the_list(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let (t, mut events) = team_setup(&s);
    let at = s.tick(10);
    events.extend([
        s.event("member.created", t.ada.clone()),
        s.event("benefit_grant.created", t.ada_grant(true, at, None)),
    ]);
    apply(&pool, &events).await;
    assert!(granted(&pool, "external_member_id=ada&benefit_id=pro").await);
    let deleted_at = s.tick(60);
    let mut gone = t.ada.clone();
    gone["modified_at"] = json!(ts(deleted_at));
    let deletion = s.event("member.deleted", gone);
    // A grant event embedding the member as it was before, delivered late,
    // must not bring it back.
    let late = s.event("benefit_grant.cycled", t.ada_grant(true, at, Some(at)));
    apply_each(&pool, &[deletion, late]).await;
    assert!(!granted(&pool, "external_member_id=ada&benefit_id=pro").await);
    assert!(!granted(&pool, "external_id=ada&customer_id=cus_team&benefit_id=pro").await);
    let (_, members) = get(&pool, "/v1/customers/external/acme/members").await;
    let ids: Vec<&str> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mem_owner"]);
    let (_, owners) = get(&pool, "/v1/customers/external/acme/members?role=owner").await;
    assert_eq!(owners["items"][0]["id"], json!("mem_owner"), "{owners}");
    assert_eq!(
        get(&pool, "/v1/customers/external/acme/members/ada")
            .await
            .0,
        404,
        "a deleted member"
    );
    // Deleting the customer removes its members from every answer.
    let mut team_gone = t.team.clone();
    team_gone["modified_at"] = json!(ts(s.tick(10)));
    team_gone["deleted_at"] = team_gone["modified_at"].clone();
    apply(&pool, &[s.event("customer.deleted", team_gone)]).await;
    let (_, members) = get(&pool, "/v1/members/?external_customer_id=acme").await;
    assert_eq!(members["items"], json!([]));
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn an_individual_customer_and_a_member_sharing_an_external_id(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let (t, mut events) = team_setup(&s);
    let at = s.tick(10);
    let basic = benefit("basic", t.t0);
    events.extend([
        s.event("benefit.created", basic.clone()),
        s.event("member.created", t.ada.clone()),
        // The team's seat gives ada `pro`; ada's own purchase gives `basic`.
        s.event(
            "benefit_grant.created",
            to_member(
                grant("g_team", &t.team, &t.pro, Some("sub_team"), true, at, None),
                &t.ada,
            ),
        ),
        s.event(
            "benefit_grant.created",
            grant("g_solo", &t.solo, &basic, Some("sub_solo"), true, at, None),
        ),
    ]);
    apply(&pool, &events).await;
    for (query, want) in [
        ("external_id=ada&benefit_id=pro", true),
        ("external_id=ada&benefit_id=basic", true),
        ("external_customer_id=ada&benefit_id=pro", false),
        ("external_customer_id=ada&benefit_id=basic", true),
        ("external_member_id=ada&benefit_id=pro", true),
        ("external_member_id=ada&benefit_id=basic", false),
        ("external_id=ada&customer_id=cus_solo&benefit_id=pro", false),
        (
            "external_id=ada&customer_id=cus_team&benefit_id=basic",
            false,
        ),
        // The team's own external id is its owner's: ada's grant is not its.
        ("external_id=acme&benefit_id=pro", false),
        ("external_customer_id=acme&benefit_id=pro", true),
    ] {
        assert_eq!(granted(&pool, query).await, want, "{query}");
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn unknown_member_and_seat_fields_are_kept_not_refused(pool: PgPool) {
    live(&pool).await;
    let s = Stream::new();
    let (t, mut events) = team_setup(&s);
    let mut ada = t.ada.clone();
    ada["nickname"] = json!("ada-l");
    let mut claimed = t.ada_seat(s.tick(10), None);
    claimed["seat_color"] = json!({"hue": 200});
    events.extend([
        s.event("member.created", ada),
        s.event("customer_seat.claimed", claimed),
    ]);
    let outcome = apply(&pool, &events).await;
    assert_eq!(outcome.failed, 0);
    let (_, members) = get(
        &pool,
        "/v1/customers/external/acme/members?sorting=-created_at",
    )
    .await;
    let listed = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == json!("mem_ada"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["nickname"], json!("ada-l"), "{members}");
    let seat: Value =
        sqlx::query_scalar("select snapshot from projection.customer_seats where id = 'seat_1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(seat["seat_color"], json!({"hue": 200}));
}
