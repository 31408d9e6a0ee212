//! Arbitrary `webhook-*` header values and body through the verifier: it
//! must answer Ok or a reason, never panic, whatever the bytes.
#![no_main]

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use hookstream_ingest::signature::{KeyRule, SigningKeys, Verifier};
use hookstream_shared::config::Secret;

const NOW: i64 = 1_763_900_000;

fuzz_target!(|data: &[u8]| {
    // Four fields separated by 0x00: id, timestamp, signature(s), body.
    let mut parts = data.splitn(4, |&b| b == 0);
    let (id, timestamp, signature, body) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp),
        ("webhook-signature", signature),
    ] {
        // Bytes no HTTP parser would hand over are not worth trying.
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let keys = SigningKeys::derive(
        KeyRule::Polar,
        &[Secret::new(
            "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK",
        )],
    )
    .expect("the key derives");
    let verifier = Verifier::new(keys, Duration::from_secs(300));
    let _ = verifier.verify(&headers, Bytes::copy_from_slice(body), NOW);
});
