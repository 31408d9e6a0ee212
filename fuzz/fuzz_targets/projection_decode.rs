//! Projection apply's pure half on arbitrary JSON: every event type the
//! projector knows, with arbitrary `data`, is decoded into row changes or
//! refused with a reason (which apply records as a failure), never a panic.
//! The database half is exercised by the projector's integration tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

use hookstream_projector::projection::IncomingEvent;
use hookstream_projector::projection::decode::decode;

const TYPES: &[&str] = &[
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.state_changed",
    "subscription.created",
    "subscription.updated",
    "subscription.active",
    "subscription.canceled",
    "subscription.uncanceled",
    "subscription.revoked",
    "benefit_grant.created",
    "benefit_grant.updated",
    "benefit_grant.revoked",
    "order.created",
    "order.paid",
    "order.updated",
    "order.refunded",
    "checkout.created",
    "checkout.updated",
    "product.created",
    "product.updated",
    "benefit.created",
    "benefit.updated",
    "member.created",
    "member.updated",
    "member.deleted",
    "customer_seat.assigned",
    "customer_seat.claimed",
    "customer_seat.revoked",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let body = match serde_json::from_slice::<serde_json::Value>(rest) {
        // Arbitrary JSON as the data of a known event type...
        Ok(data) => serde_json::json!({
            "type": TYPES[usize::from(selector) % TYPES.len()],
            "timestamp": "2026-01-01T00:00:00Z",
            "data": data,
        })
        .to_string()
        .into_bytes(),
        // ...or arbitrary bytes as the whole body.
        Err(_) => rest.to_vec(),
    };
    let event = IncomingEvent {
        seq: 1,
        webhook_id: "fuzz".to_owned(),
        body,
    };
    let _ = decode(&event);
});
