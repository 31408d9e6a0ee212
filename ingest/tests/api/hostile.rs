//! DESIGN.md guarantee 5 against a corpus of hostile requests, sent as raw
//! bytes over TCP so that anything a client could put on the wire can be
//! tried: each is refused with the right status, stores nothing, and leaves
//! the service answering.

use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use hookstream_ingest::signature::{KeyRule, signature_header};
use hookstream_shared::config::Secret;

use crate::helpers::{SECRET, TestIngest, now, polar_event, sign};

/// One hostile request and the statuses that count as the right refusal.
struct Case {
    name: String,
    request: Vec<u8>,
    expect: &'static [u16],
}

/// A request with the given request line target, headers and body; adds
/// Host, Content-Length (unless a header sets framing) and Connection: close.
fn request(method: &str, target: &str, headers: &[(&str, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {target} HTTP/1.1\r\nhost: ingest\r\nconnection: close\r\n").into_bytes();
    let sets_framing = headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    });
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !sets_framing {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn h(name: &'static str, value: impl Into<Vec<u8>>) -> (&'static str, Vec<u8>) {
    (name, value.into())
}

/// Correct webhook headers for `body` under `id` at `ts`, then `extra`.
fn signed(id: &str, ts: i64, body: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        h("content-type", "application/json"),
        h("webhook-id", id),
        h("webhook-timestamp", ts.to_string()),
        h(
            "webhook-signature",
            signature_header(KeyRule::Polar, &Secret::new(SECRET), id, ts, body),
        ),
    ]
}

/// `headers` with `name` replaced by `value` (or removed when `None`).
fn with(
    mut headers: Vec<(&'static str, Vec<u8>)>,
    name: &'static str,
    value: Option<Vec<u8>>,
) -> Vec<(&'static str, Vec<u8>)> {
    headers.retain(|(n, _)| *n != name);
    if let Some(value) = value {
        headers.push((name, value));
    }
    headers
}

fn corpus() -> Vec<Case> {
    let ts = now();
    let body = polar_event("customer.created", serde_json::json!({"id": "cus_1"}));
    let b = body.as_bytes();
    let good = |id: &str| signed(id, ts, b);
    let post = |headers: Vec<(&'static str, Vec<u8>)>, body: &[u8]| {
        request("POST", "/webhooks/polar", &headers, body)
    };
    let mut cases: Vec<Case> = Vec::new();
    let mut add = |name: &str, request: Vec<u8>, expect: &'static [u16]| {
        cases.push(Case {
            name: name.to_owned(),
            request,
            expect,
        })
    };

    // Signature headers: missing, duplicated, malformed, of something else.
    add(
        "no headers at all",
        post(vec![h("content-type", "application/json")], b),
        &[401],
    );
    add(
        "no webhook-id",
        post(with(good("a1"), "webhook-id", None), b),
        &[401],
    );
    add(
        "no webhook-timestamp",
        post(with(good("a2"), "webhook-timestamp", None), b),
        &[401],
    );
    add(
        "no webhook-signature",
        post(with(good("a3"), "webhook-signature", None), b),
        &[401],
    );
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut headers = good("a4");
        let copy = headers.iter().find(|(n, _)| *n == name).unwrap().clone();
        headers.push(copy);
        add(&format!("{name} sent twice"), post(headers, b), &[401]);
    }
    add(
        "empty webhook-id",
        post(with(good("a5"), "webhook-id", Some(b"".to_vec())), b),
        &[401],
    );
    add(
        "empty signature",
        post(with(good("a6"), "webhook-signature", Some(b"".to_vec())), b),
        &[401],
    );
    add(
        "v1 with nothing after the comma",
        post(
            with(good("a7"), "webhook-signature", Some(b"v1,".to_vec())),
            b,
        ),
        &[401],
    );
    add(
        "v1 with non-base64",
        post(
            with(
                good("a8"),
                "webhook-signature",
                Some(b"v1,!!!not*base64".to_vec()),
            ),
            b,
        ),
        &[401],
    );
    add(
        "entry without a comma",
        post(
            with(good("a9"), "webhook-signature", Some(b"v1abcdef".to_vec())),
            b,
        ),
        &[401],
    );
    let real = sign("a10", ts, &body);
    add(
        "only unknown versions",
        post(
            with(
                good("a10"),
                "webhook-signature",
                Some(real.replace("v1,", "v2,").into_bytes()),
            ),
            b,
        ),
        &[401],
    );
    add(
        "version in upper case",
        post(
            with(
                good("a11"),
                "webhook-signature",
                Some(sign("a11", ts, &body).replace("v1,", "V1,").into_bytes()),
            ),
            b,
        ),
        &[401],
    );
    let truncated = sign("a12", ts, &body);
    add(
        "truncated signature",
        post(
            with(
                good("a12"),
                "webhook-signature",
                Some(truncated.as_bytes()[..truncated.len() - 4].to_vec()),
            ),
            b,
        ),
        &[401],
    );
    add(
        "signature of another body",
        post(
            with(
                good("a13"),
                "webhook-signature",
                Some(sign("a13", ts, "{}").into_bytes()),
            ),
            b,
        ),
        &[401],
    );
    add(
        "signature of another id",
        post(
            with(
                good("a14"),
                "webhook-signature",
                Some(sign("other", ts, &body).into_bytes()),
            ),
            b,
        ),
        &[401],
    );
    add(
        "signature of another timestamp",
        post(
            with(
                good("a15"),
                "webhook-signature",
                Some(sign("a15", ts - 1, &body).into_bytes()),
            ),
            b,
        ),
        &[401],
    );
    add(
        "signed with another secret",
        post(
            with(
                good("a16"),
                "webhook-signature",
                Some(
                    signature_header(
                        KeyRule::Polar,
                        &Secret::new("polar_whs_someone_else"),
                        "a16",
                        ts,
                        b,
                    )
                    .into_bytes(),
                ),
            ),
            b,
        ),
        &[401],
    );
    add(
        "an old signature replayed (an hour old)",
        post(signed("a17", ts - 3600, b), b),
        &[401],
    );
    add(
        "signed an hour in the future",
        post(signed("a18", ts + 3600, b), b),
        &[401],
    );
    for (label, value) in [
        ("non-numeric timestamp", "soon"),
        ("negative timestamp", "-5"),
        ("timestamp beyond i64", "99999999999999999999999"),
        ("fractional timestamp", "1763900000.5"),
        ("timestamp with spaces", " 1763900000 "),
    ] {
        add(
            label,
            post(
                with(
                    good("a19"),
                    "webhook-timestamp",
                    Some(value.as_bytes().to_vec()),
                ),
                b,
            ),
            &[401],
        );
    }
    let many_entries: String = (0..1000).map(|i| format!("v1,{i:043}= ")).collect();
    add(
        "a thousand bogus entries",
        post(
            with(
                good("a20"),
                "webhook-signature",
                Some(many_entries.into_bytes()),
            ),
            b,
        ),
        &[401],
    );
    add(
        "webhook-id not UTF-8",
        post(
            with(good("a21"), "webhook-id", Some(vec![0xff, 0xfe, b'x'])),
            b,
        ),
        &[401],
    );
    add(
        "long signature header (128 KiB)",
        post(
            with(
                good("a22"),
                "webhook-signature",
                Some(vec![b'v'; 128 * 1024]),
            ),
            b,
        ),
        &[401],
    );
    add(
        "oversized signature header (1 MiB)",
        post(
            with(
                good("a22"),
                "webhook-signature",
                Some(vec![b'v'; 1024 * 1024]),
            ),
            b,
        ),
        &[431],
    );
    let mut crowd = good("a23");
    for i in 0..200 {
        crowd.push((
            Box::leak(format!("x-filler-{i}").into_boxed_str()),
            b"1".to_vec(),
        ));
    }
    add("two hundred headers", post(crowd, b), &[431]);

    // Bodies: signed correctly, but not a Polar envelope.
    let deep = format!(
        "{{\"type\":\"customer.created\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"data\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", b"".to_vec()),
        ("not JSON", b"hello".to_vec()),
        ("not UTF-8", vec![0xff, 0xfe, 0xfd, b'{', b'}']),
        ("a JSON array", b"[]".to_vec()),
        ("a JSON string", b"\"customer.created\"".to_vec()),
        ("a JSON number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        (
            "no type",
            br#"{"timestamp":"2026-01-01T00:00:00Z","data":{}}"#.to_vec(),
        ),
        (
            "type not a string",
            br#"{"type":7,"timestamp":"2026-01-01T00:00:00Z","data":{}}"#.to_vec(),
        ),
        (
            "no data",
            br#"{"type":"customer.created","timestamp":"2026-01-01T00:00:00Z"}"#.to_vec(),
        ),
        (
            "no timestamp",
            br#"{"type":"customer.created","data":{}}"#.to_vec(),
        ),
        (
            "timestamp not a date",
            br#"{"type":"customer.created","timestamp":"yesterday","data":{}}"#.to_vec(),
        ),
        (
            "truncated JSON",
            br#"{"type":"customer.created","timestamp":"#.to_vec(),
        ),
        ("trailing garbage", format!("{body} trailing").into_bytes()),
        (
            "byte order mark first",
            [b"\xef\xbb\xbf".as_slice(), b].concat(),
        ),
        (
            "raw NUL in the JSON",
            br#"{"type":"customer.created","timestamp":"2026-01-01T00:00:00Z","data":{}}"#
                .iter()
                .copied()
                .chain([0u8])
                .collect(),
        ),
        ("nested 100000 deep", deep.into_bytes()),
    ];
    for (i, (label, bad)) in bodies.into_iter().enumerate() {
        let id = format!("b{i}");
        add(
            &format!("signed body: {label}"),
            post(signed(&id, ts, &bad), &bad),
            &[400],
        );
    }
    let huge = polar_event(
        "customer.created",
        serde_json::json!({"pad": "x".repeat(2 << 20)}),
    );
    add(
        "signed 2 MiB body",
        post(signed("c1", ts, huge.as_bytes()), huge.as_bytes()),
        &[413],
    );
    add(
        "declares 10 GB",
        post(
            with(good("c2"), "content-length", Some(b"10000000000".to_vec())),
            b"",
        ),
        &[413],
    );
    let mut chunked = with(good("c3"), "transfer-encoding", Some(b"chunked".to_vec()));
    chunked.retain(|(n, _)| *n != "content-length");
    let mut chunked_body = Vec::new();
    for _ in 0..40 {
        chunked_body.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked_body.extend(std::iter::repeat_n(b' ', 64 * 1024));
        chunked_body.extend_from_slice(b"\r\n");
    }
    chunked_body.extend_from_slice(b"0\r\n\r\n");
    add(
        "chunked body past the limit",
        post(chunked, &chunked_body),
        &[413],
    );
    add(
        "declares more than it sends",
        post(
            with(good("c4"), "content-length", Some(b"5000".to_vec())),
            b,
        ),
        &[408, 400],
    );

    // Content types.
    for (label, value) in [
        ("text/plain", Some("text/plain")),
        ("application/xml", Some("application/xml")),
        ("form", Some("application/x-www-form-urlencoded")),
    ] {
        add(
            &format!("content-type {label}"),
            post(
                with(
                    good("d1"),
                    "content-type",
                    value.map(|v| v.as_bytes().to_vec()),
                ),
                b,
            ),
            &[415],
        );
    }

    // Methods, paths and request lines.
    let unsigned = vec![h("content-type", "application/json")];
    for (label, method, target, expect) in [
        (
            "GET on the webhook path",
            "GET",
            "/webhooks/polar",
            &[405u16][..],
        ),
        ("PUT on the webhook path", "PUT", "/webhooks/polar", &[405]),
        (
            "DELETE on the webhook path",
            "DELETE",
            "/webhooks/polar",
            &[405],
        ),
        ("unknown source", "POST", "/webhooks/stripe", &[404]),
        ("source in upper case", "POST", "/webhooks/POLAR", &[404]),
        ("trailing slash", "POST", "/webhooks/polar/", &[404]),
        (
            "dot-dot segments",
            "POST",
            "/webhooks/../webhooks/polar",
            &[404],
        ),
        ("double slash", "POST", "//webhooks/polar", &[404]),
        ("encoded NUL", "POST", "/webhooks/polar%00", &[404]),
        ("encoded slash", "POST", "/webhooks/pol%2Far", &[404]),
        ("no source", "POST", "/webhooks/", &[404]),
        (
            "path 10 KiB long",
            "POST",
            &format!("/webhooks/{}", "a".repeat(10 * 1024))[..],
            &[404, 414, 431],
        ),
        (
            "absolute-form target, unsigned",
            "POST",
            "http://evil.example/webhooks/polar",
            &[401],
        ),
        (
            "unsigned on the right path",
            "POST",
            "/webhooks/polar",
            &[401],
        ),
    ] {
        add(label, request(method, target, &unsigned, b), expect);
    }
    add("not HTTP at all", b"HELLO THERE\r\n\r\n".to_vec(), &[400]);
    add("HTTP/1.0, unsigned", b"POST /webhooks/polar HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_vec(), &[401]);
    cases
}

/// Sends raw bytes and returns the response status (0 if the server closed
/// the connection without answering) and the response head and body.
async fn send_raw(address: &str, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The server may answer and close before reading everything (413, 431).
    // No half-close after writing: hyper drops a request whose client has
    // closed its sending side; `connection: close` ends the exchange instead.
    let _ = stream.write_all(bytes).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn every_hostile_request_is_refused_stores_nothing_and_harms_nothing(pool: PgPool) {
    let app = TestIngest::spawn_with(pool, &[("INGEST_BODY_TIMEOUT_MS", "500")]).await;
    let address = app.base_url.trim_start_matches("http://").to_owned();
    let cases = corpus();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in &cases {
        let (status, response) = send_raw(&address, &case.request).await;
        if !case.expect.contains(&status) {
            wrong.push(format!(
                "{}: got {status}, want {:?}",
                case.name, case.expect
            ));
            continue;
        }
        // Refusals made by ingest itself carry the stable JSON error shape,
        // and no refusal echoes a secret or a signature.
        if let Some((head, body)) = response.split_once("\r\n\r\n")
            && head.to_ascii_lowercase().contains("application/json")
        {
            let answer: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {body}", case.name));
            assert!(
                answer["error"].is_string() && answer["message"].is_string(),
                "{}: {body}",
                case.name
            );
        }
        assert!(!response.contains(SECRET), "{}", case.name);
        assert!(
            !response.contains("v1,"),
            "{}: a signature echoed",
            case.name
        );
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_eq!(app.log_count().await, 0, "a refused request stores nothing");

    // The service is unaffected: healthy, and a good webhook still lands.
    let health = app
        .client
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body = polar_event("customer.created", serde_json::json!({"id": "cus_ok"}));
    assert_eq!(
        app.webhook("after-the-storm", &body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(app.log_count().await, 1);
    app.stop().await;
}

/// Opens a connection and sends the head of a webhook that promises a
/// 100,000-byte body, then trickles the body a byte every 100 ms until the
/// server closes the connection. Returns when it has.
async fn trickle(address: String, signature: String, id: String) {
    let ts = now();
    let head = format!(
        "POST /webhooks/polar HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\n\
         webhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\n\
         content-length: 100000\r\n\r\n"
    );
    let Ok(mut stream) = TcpStream::connect(&address).await else {
        return;
    };
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    for _ in 0..600 {
        tokio::select! {
            read = stream.read(&mut sink) => {
                // An answer, or the connection closed: the server is done.
                if matches!(read, Ok(_) | Err(_)) { return; }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if stream.write_all(b" ").await.is_err() {
                    return;
                }
            }
        }
    }
}

/// DESIGN.md guarantee 6: fifty clients that never finish a body, half with
/// a signature header that cannot be one, half with one that only the body
/// could disprove, take no slot from twenty correctly signed webhooks.
#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn clients_trickling_unsigned_bodies_take_no_commit_slot(pool: PgPool) {
    let app = TestIngest::spawn_with(pool, &[("INGEST_MAX_IN_FLIGHT", "40")]).await;
    let address = app.base_url.trim_start_matches("http://").to_owned();
    let plausible = format!("v1,{}", base64_of_32_bytes());
    let tricklers: Vec<_> = (0..50)
        .map(|i| {
            let signature = if i % 2 == 0 {
                "v1,AAAA".to_owned()
            } else {
                plausible.clone()
            };
            tokio::spawn(trickle(address.clone(), signature, format!("slow-{i}")))
        })
        .collect();
    // Every trickler's head is in before the real webhooks come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let body = polar_event(
                "customer.created",
                serde_json::json!({"id": format!("cus_{i}")}),
            );
            app.webhook(&format!("real-{i}"), &body).send()
        })
        .collect();
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(app.log_count().await, 20);
    // The trickled bodies are cut off: one that cannot be signed at its
    // head, the others once they fall behind the minimum rate.
    let cut_off = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join_all(tricklers),
    )
    .await;
    assert!(
        cut_off.is_ok(),
        "trickling clients were still connected after 10 s"
    );
    app.stop().await;
}

fn base64_of_32_bytes() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

/// Reads until the server closes the connection, or `within` passes;
/// whether it closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn slow_headers_and_idle_connections_are_closed(pool: PgPool) {
    let app = TestIngest::spawn_with(pool, &[("INGEST_HEADER_TIMEOUT", "500ms")]).await;
    for address in [
        app.base_url.trim_start_matches("http://"),
        app.metrics_url.trim_start_matches("http://"),
    ] {
        // A head that never ends.
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"POST /webhooks/polar HTTP/1.1\r\nhost: ingest\r\n")
            .await
            .unwrap();
        // A keep-alive connection that goes quiet after one request.
        let mut idle = TcpStream::connect(address).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: ingest\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 256];
        let read = idle.read(&mut answer).await.unwrap();
        assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{address}");
        // A connection that never says anything.
        let mut silent = TcpStream::connect(address).await.unwrap();
        for (what, stream) in [
            ("slow head", &mut slow),
            ("idle", &mut idle),
            ("silent", &mut silent),
        ] {
            assert!(
                closed_within(stream, Duration::from_secs(5)).await,
                "{address}: a {what} connection was still open after 5 s"
            );
        }
    }
    app.stop().await;
}

#[sqlx::test(migrator = "hookstream_shared::db::MIGRATOR")]
async fn a_replayed_webhook_id_with_another_body_is_a_duplicate_and_raises_the_alarm(pool: PgPool) {
    let app = TestIngest::spawn(pool).await;
    let original = polar_event("customer.created", serde_json::json!({"id": "cus_1"}));
    let forged = polar_event(
        "customer.created",
        serde_json::json!({"id": "cus_1", "email": "x@evil.example"}),
    );
    for body in [&original, &original] {
        assert_eq!(
            app.webhook("wh-1", body).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        app.metrics().duplicate_body_mismatch.get(),
        0,
        "a true retry is no alarm"
    );
    let answer: serde_json::Value = app.answer("wh-1", &forged).await;
    assert_eq!(answer["status"], "duplicate");
    assert_eq!(app.metrics().duplicate_body_mismatch.get(), 1);
    // Within one batch too: two copies that differ, sent at once.
    let bodies = [
        polar_event("customer.created", serde_json::json!({"id": "cus_2"})),
        polar_event(
            "customer.created",
            serde_json::json!({"id": "cus_2", "name": "other"}),
        ),
    ];
    let both =
        futures::future::join_all(bodies.iter().map(|b| app.webhook("wh-2", b).send())).await;
    assert!(both.iter().all(|r| r.as_ref().unwrap().status() == 200));
    assert_eq!(app.metrics().duplicate_body_mismatch.get(), 2);
    let stored: Vec<u8> =
        sqlx::query_scalar("select body from event_log where webhook_id = 'wh-1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, original.as_bytes(), "the first body stays");
    app.stop().await;
}
