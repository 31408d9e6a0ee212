//! The webhook envelope `{"type", "timestamp", "data"}` and the Kafka key rule.
//!
//! Ingest parses only what it needs to route an event: the type, the time the
//! provider created it, and the id that decides its partition. The body itself
//! is stored and forwarded byte for byte; nothing here re-serialises it.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest event type accepted; Polar's longest is 30 bytes.
const MAX_EVENT_TYPE_LEN: usize = 128;
/// Longest id used as a Kafka key; Polar ids are 36-byte UUIDs.
const MAX_KEY_LEN: usize = 256;
/// Longest API version kept (Polar's are `YYYY-MM`).
pub const MAX_API_VERSION_LEN: usize = 32;
/// Deepest nesting of arrays and objects accepted. Polar's payloads nest about
/// six levels; the bound keeps every accepted body well inside serde_json's own
/// recursion limit (128), so the projector can always parse what ingest took.
pub const MAX_DEPTH: usize = 64;

/// What ingest reads from a verified body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `type`, e.g. `subscription.updated`.
    pub event_type: String,
    /// `timestamp`: when the provider created the event (not this delivery attempt).
    pub occurred_at: DateTime<Utc>,
    /// The Kafka key by the Polar rule, or `None` when `data` carries no usable id.
    pub partition_key: Option<String>,
    /// `api_version`: the API version the payload was written in, when the
    /// body says so in a usable form (see [`usable_api_version`]).
    pub api_version: Option<String>,
}

/// An API version worth keeping: 1 to [`MAX_API_VERSION_LEN`] visible
/// ASCII characters.
pub fn usable_api_version(text: &str) -> Option<&str> {
    (!text.is_empty()
        && text.len() <= MAX_API_VERSION_LEN
        && text.bytes().all(|b| b.is_ascii_graphic()))
    .then_some(text)
}

/// Why a body is not an envelope. The messages are safe to return to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not a JSON object with `type`, `timestamp` and `data`: {0}")]
    Malformed(String),
    #[error(
        "`type` must be a non-empty string of at most {MAX_EVENT_TYPE_LEN} printable characters"
    )]
    BadType,
    #[error("`timestamp` must be an RFC 3339 date-time, e.g. 2026-01-01T00:00:00Z")]
    BadTimestamp,
    #[error("body nests arrays and objects deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    data: DataIds<'a>,
    /// Kept raw and read only if it is a string, like the key fields.
    #[serde(borrow, default)]
    api_version: Option<&'a RawValue>,
}

/// The few fields of `data` the key rule looks at, read in the same pass as
/// the envelope. Each is kept raw and read as a string only if it is one, so an
/// unexpected type in `data` never refuses an otherwise valid event.
#[derive(Default)]
struct DataIds<'a> {
    id: Option<&'a RawValue>,
    customer_id: Option<&'a RawValue>,
    customer: Option<&'a RawValue>,
}

/// The keys of `data`, matched without allocating.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum DataKey {
    Id,
    CustomerId,
    Customer,
    #[serde(other)]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for DataIds<'a> {
    /// Only a JSON object is accepted: serde's derived impls would also read a
    /// struct from an array.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for ObjectOnly<'a> {
            type Value = DataIds<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`data` as a JSON object")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut ids = DataIds::default();
                while let Some(key) = map.next_key::<DataKey>()? {
                    match key {
                        DataKey::Id => ids.id = Some(map.next_value()?),
                        DataKey::CustomerId => ids.customer_id = Some(map.next_value()?),
                        DataKey::Customer => ids.customer = Some(map.next_value()?),
                        DataKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(ids)
            }
        }
        deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// Parses a body as an envelope. `data` must be a JSON object.
pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    if nesting_depth(body) > MAX_DEPTH {
        return Err(EnvelopeError::TooDeep);
    }
    // Validated once for the whole body; parsing from `&str` then skips
    // serde_json's per-string checks, and ignored fields are covered too.
    let body = std::str::from_utf8(body).map_err(|e| {
        EnvelopeError::Malformed(format!("body is not UTF-8 (byte {})", e.valid_up_to()))
    })?;
    let raw: RawEnvelope<'_> =
        serde_json::from_str(body).map_err(|e| EnvelopeError::Malformed(describe(&e)))?;
    let event_type = raw.event_type.into_owned();
    if event_type.is_empty()
        || event_type.len() > MAX_EVENT_TYPE_LEN
        || event_type.chars().any(char::is_control)
    {
        return Err(EnvelopeError::BadType);
    }
    let occurred_at = DateTime::parse_from_rfc3339(&raw.timestamp)
        .map_err(|_| EnvelopeError::BadTimestamp)?
        .with_timezone(&Utc);
    let partition_key = polar_partition_key(&raw.data);
    let api_version = raw
        .api_version
        .and_then(|v| serde_json::from_str::<Cow<'_, str>>(v.get()).ok())
        .and_then(|v| usable_api_version(&v).map(str::to_owned));
    Ok(Envelope {
        event_type,
        occurred_at,
        partition_key,
        api_version,
    })
}

/// The Polar key rule: the customer's id wherever the object names it
/// (`data.customer_id`, then `data.customer.id`), else the object's own id,
/// which for `customer.*` events is the customer's. One customer's events thus
/// share a partition.
fn polar_partition_key(data: &DataIds<'_>) -> Option<String> {
    let embedded_customer_id = || {
        data.customer
            .and_then(|c| serde_json::from_str::<IdOnly<'_>>(c.get()).ok())
            .and_then(|c| usable_key(c.id))
    };
    usable_key(data.customer_id)
        .or_else(embedded_customer_id)
        .or_else(|| usable_key(data.id))
}

/// A JSON string that can serve as a key: non-empty, bounded, no NUL (which a
/// Postgres `text` column refuses).
fn usable_key(raw: Option<&RawValue>) -> Option<String> {
    let s: Cow<'_, str> = serde_json::from_str(raw?.get()).ok()?;
    (!s.is_empty() && s.len() <= MAX_KEY_LEN && !s.contains('\0')).then(|| s.into_owned())
}

/// The deepest nesting of `[` and `{` outside strings. Linear, no allocation,
/// and correct for any valid JSON; for invalid JSON the parser reports the
/// error. String contents (most of a payload's bytes) are skipped with a SIMD
/// search for the closing quote.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while let Some(&byte) = body.get(i) {
        match byte {
            b'"' => {
                i += 1;
                // To the closing quote, stepping over escapes.
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[i.min(body.len())..]) {
                        None => return deepest,
                        Some(k) if body[i + k] == b'\\' => i += k + 2,
                        Some(k) => {
                            i += k + 1;
                            break;
                        }
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// serde_json's message without the input echoed back (it never echoes much,
/// but positions are all a sender needs).
fn describe(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => e.to_string(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("invalid JSON at line {} column {}", e.line(), e.column())
        }
        serde_json::error::Category::Io => "unreadable body".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(body: &str) -> Option<String> {
        parse(body.as_bytes())
            .expect("valid envelope")
            .partition_key
    }

    #[test]
    fn polar_envelope_with_api_version_parses() {
        let body = r#"{"type":"subscription.updated","timestamp":"2026-01-02T07:12:11.613683Z","api_version":"2026-10","data":{"id":"s1","customer_id":"c1"}}"#;
        let env = parse(body.as_bytes()).unwrap();
        assert_eq!(env.event_type, "subscription.updated");
        assert_eq!(
            env.occurred_at.to_rfc3339(),
            "2026-01-02T07:12:11.613683+00:00"
        );
        assert_eq!(env.partition_key.as_deref(), Some("c1"));
    }

    #[test]
    fn timestamp_without_fraction_parses() {
        let env = parse(br#"{"type":"x","timestamp":"2026-01-01T00:00:00Z","data":{}}"#).unwrap();
        assert_eq!(env.occurred_at.timestamp(), 1_767_225_600);
    }

    #[test]
    fn key_prefers_customer_id_then_embedded_customer_then_own_id() {
        let ts = r#""timestamp":"2026-01-01T00:00:00Z""#;
        assert_eq!(
            key(&format!(
                r#"{{"type":"order.paid",{ts},"data":{{"id":"o1","customer_id":"c1","customer":{{"id":"c2"}}}}}}"#
            )),
            Some("c1".into())
        );
        assert_eq!(
            key(&format!(
                r#"{{"type":"x",{ts},"data":{{"id":"o1","customer_id":null,"customer":{{"id":"c2"}}}}}}"#
            )),
            Some("c2".into())
        );
        // checkout for a new customer: no customer yet, keyed by the checkout.
        assert_eq!(
            key(&format!(
                r#"{{"type":"checkout.created",{ts},"data":{{"id":"k1","customer_id":null,"customer":null}}}}"#
            )),
            Some("k1".into())
        );
        // customer events: the object is the customer.
        assert_eq!(
            key(&format!(
                r#"{{"type":"customer.state_changed",{ts},"data":{{"id":"c9","active_subscriptions":[]}}}}"#
            )),
            Some("c9".into())
        );
        assert_eq!(key(&format!(r#"{{"type":"x",{ts},"data":{{}}}}"#)), None);
        // ids of unexpected types are ignored, not refused
        assert_eq!(
            key(&format!(
                r#"{{"type":"x",{ts},"data":{{"id":5,"customer":"c"}}}}"#
            )),
            None
        );
        assert_eq!(
            key(&format!(
                r#"{{"type":"x",{ts},"data":{{"id":"a\u0000b"}}}}"#
            )),
            None
        );
    }

    #[test]
    fn non_envelopes_are_refused() {
        for body in [
            &b"not json"[..],
            br#"{"test": 2432232314}"#,
            br#"[1,2]"#,
            br#"{"type":"x","timestamp":"2026-01-01T00:00:00Z"}"#,
            br#"{"type":"x","timestamp":"2026-01-01T00:00:00Z","data":{},"type":"y"}"#,
            b"{\"type\":\"x\",\"timestamp\":\"2026-01-01T00:00:00Z\",\"data\":{\"n\":\"\xff\"}}",
        ] {
            assert!(
                matches!(parse(body), Err(EnvelopeError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            parse(br#"{"type":"","timestamp":"2026-01-01T00:00:00Z","data":{}}"#),
            Err(EnvelopeError::BadType)
        );
        assert_eq!(
            parse(br#"{"type":"a\u0000","timestamp":"2026-01-01T00:00:00Z","data":{}}"#),
            Err(EnvelopeError::BadType)
        );
        let not_object = parse(br#"{"type":"x","timestamp":"2026-01-01T00:00:00Z","data":[]}"#);
        assert!(
            matches!(&not_object, Err(EnvelopeError::Malformed(m)) if m.contains("`data` as a JSON object")),
            "{not_object:?}"
        );
        assert_eq!(
            parse(br#"{"type":"x","timestamp":"yesterday","data":{}}"#),
            Err(EnvelopeError::BadTimestamp)
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let depth = 100_000;
        let body = format!(
            r#"{{"type":"x","timestamp":"2026-01-01T00:00:00Z","data":{{"a":{}{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(parse(body.as_bytes()), Err(EnvelopeError::TooDeep));
    }

    /// The plain byte-at-a-time definition the fast scanner must agree with.
    fn naive_depth(body: &[u8]) -> usize {
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
        for &b in body {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    proptest::proptest! {
        #[test]
        fn fast_depth_scan_agrees_with_the_plain_one(
            body in proptest::collection::vec(proptest::sample::select(b"{}[]\"\\ax:,".to_vec()), 0..200)
        ) {
            proptest::prop_assert_eq!(nesting_depth(&body), naive_depth(&body));
        }
    }

    #[test]
    fn depth_counts_only_structure_outside_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[{{{","b":[{"c":"\"[["}]}"#), 3);
        let at_limit = format!(
            r#"{{"type":"x","timestamp":"2026-01-01T00:00:00Z","data":{{"a":{}{}}}}}"#,
            "[".repeat(MAX_DEPTH - 2),
            "]".repeat(MAX_DEPTH - 2)
        );
        assert!(parse(at_limit.as_bytes()).is_ok());
    }
}
