//! From one event to the row changes it implies.
//!
//! Every Polar payload is a full snapshot of its object, so an event becomes
//! one or more versioned upserts: the object itself, and the full snapshots
//! embedded in it (a subscription's customer and product, a grant's customer,
//! benefit and member, a seat's member). `customer.state_changed` also
//! becomes a [`StateChange`], the customer's list of what is active as of the
//! event's timestamp.
//!
//! This module reads the envelope and checks what every event must pass;
//! each family's payloads are decoded in [`super::families`].

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::families::{self, Stamp};
use super::version::Version;

/// One event as the projector receives it, from Kafka or from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    /// The event's sequence number in the log: the final tie-break of versions.
    pub seq: i64,
    pub webhook_id: String,
    pub body: Vec<u8>,
}

pub use super::families::Table;

/// A value of a query column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column<'a> {
    Text(Option<Cow<'a, str>>),
    Time(Option<DateTime<Utc>>),
    Bool(bool),
    Int(Option<i64>),
    /// JSON text, kept as jsonb (what SQL filters read into).
    Json(Option<Cow<'a, str>>),
}

/// A versioned upsert of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectChange<'a> {
    pub table: Table,
    pub id: Cow<'a, str>,
    pub version: Version,
    /// The object's JSON exactly as it appeared in the event.
    pub snapshot: Cow<'a, str>,
    /// Values for [`Table::columns`], in that order.
    pub columns: Vec<Column<'a>>,
}

/// What a `customer.state_changed` says: the customer's active subscriptions
/// and granted benefits as of `state_at`, the envelope timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange<'a> {
    pub customer_id: Cow<'a, str>,
    pub state_at: DateTime<Utc>,
    pub seq: i64,
    /// The whole CustomerState as sent.
    pub snapshot: Cow<'a, str>,
}

impl Column<'_> {
    fn into_owned(self) -> Column<'static> {
        match self {
            Self::Text(text) => Column::Text(text.map(|t| Cow::Owned(t.into_owned()))),
            Self::Time(time) => Column::Time(time),
            Self::Bool(b) => Column::Bool(b),
            Self::Int(n) => Column::Int(n),
            Self::Json(text) => Column::Json(text.map(|t| Cow::Owned(t.into_owned()))),
        }
    }
}

impl ObjectChange<'_> {
    /// The same change owning its text, to outlive the event's body (a
    /// generation build keeps the newest version of every object in memory).
    pub fn into_owned(self) -> ObjectChange<'static> {
        ObjectChange {
            table: self.table,
            id: Cow::Owned(self.id.into_owned()),
            version: self.version,
            snapshot: Cow::Owned(self.snapshot.into_owned()),
            columns: self.columns.into_iter().map(Column::into_owned).collect(),
        }
    }
}

impl StateChange<'_> {
    /// As [`ObjectChange::into_owned`].
    pub fn into_owned(self) -> StateChange<'static> {
        StateChange {
            customer_id: Cow::Owned(self.customer_id.into_owned()),
            state_at: self.state_at,
            seq: self.seq,
            snapshot: Cow::Owned(self.snapshot.into_owned()),
        }
    }
}

/// Everything one event changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes<'a> {
    pub objects: Vec<ObjectChange<'a>>,
    pub state: Option<StateChange<'a>>,
}

/// The outcome of decoding one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Apply {
        event_type: Cow<'a, str>,
        changes: Changes<'a>,
    },
    /// A well-formed event of a type no projection uses (refunds, discounts,
    /// organizations...), or one this version does not know.
    Ignored { event_type: Cow<'a, str> },
}

/// Why an event cannot be applied. Stored in the failures table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// The event type, when the envelope got that far.
    pub event_type: Option<String>,
    pub reason: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    timestamp: DateTime<Utc>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The envelope's `type`, if the body is an envelope: what a failure
/// recorded for reasons other than decoding still names.
pub fn event_type(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct TypeOnly<'a> {
        #[serde(rename = "type", borrow)]
        event_type: Cow<'a, str>,
    }
    let envelope: TypeOnly<'_> = serde_json::from_slice(body).ok()?;
    (!envelope.event_type.contains('\0')).then(|| envelope.event_type.into_owned())
}

/// Decodes one event. The type comes from the signed body, not from a header.
pub fn decode(event: &IncomingEvent) -> Result<Decoded<'_>, DecodeError> {
    let envelope: Envelope<'_> = serde_json::from_slice(&event.body).map_err(|e| DecodeError {
        event_type: None,
        reason: format!("not a webhook envelope: {e}"),
    })?;
    let occurred = envelope.timestamp;
    let seq = event.seq;
    let data = envelope.data;
    if envelope.event_type.contains('\0') {
        return Err(DecodeError {
            event_type: None,
            reason: "`type` contains a NUL character".to_owned(),
        });
    }
    let fail = |reason: String| DecodeError {
        event_type: Some(envelope.event_type.to_string()),
        reason,
    };
    // Checked per event, before any coalescing, so whether an event fails
    // never depends on which other events share its batch.
    if let Some(problem) = unstorable_escape(data.get()) {
        return Err(fail(format!("`data` cannot be stored as jsonb: {problem}")));
    }
    let Some(family) = families::family_of(&envelope.event_type) else {
        return Ok(Decoded::Ignored {
            event_type: envelope.event_type,
        });
    };
    let mut changes = Changes::default();
    (family.decode)(
        &envelope.event_type,
        data,
        Stamp { occurred, seq },
        &mut changes,
    )
    .map_err(fail)?;
    // Whatever the family, no identifier may outgrow its index entry.
    for change in &changes.objects {
        families::check_identifiers(change).map_err(fail)?;
    }
    Ok(Decoded::Apply {
        event_type: envelope.event_type,
        changes,
    })
}

/// Finds the valid JSON that Postgres `jsonb` refuses: a NUL (`u0000`)
/// escape, or a UTF-16 surrogate escape that is not part of a pair.
///
/// Only escapes matter, and a Polar payload has few: the scan jumps from one
/// backslash to the next with `memchr` (a byte-at-a-time loop here was an
/// eighth of a drain's projector CPU), except right after a high surrogate,
/// whose low half must follow at once.
fn unstorable_escape(text: &str) -> Option<&'static str> {
    const LONE_HIGH: &str = "a high surrogate escape without its low half";
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut expect_low_surrogate = false;
    loop {
        if expect_low_surrogate {
            if bytes.get(i) != Some(&b'\\') {
                return Some(LONE_HIGH);
            }
        } else {
            i += memchr::memchr(b'\\', &bytes[i..])?;
        }
        // An escape: a backslash and one character, or `u` and four hex digits.
        let &kind = bytes.get(i + 1)?;
        if kind != b'u' {
            if expect_low_surrogate {
                return Some(LONE_HIGH);
            }
            i += 2;
            continue;
        }
        let code = bytes
            .get(i + 2..i + 6)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())?;
        match code {
            0 => return Some("a NUL escape (u0000)"),
            0xD800..=0xDBFF if expect_low_surrogate => {
                return Some("two high surrogate escapes in a row");
            }
            0xD800..=0xDBFF => expect_low_surrogate = true,
            0xDC00..=0xDFFF if !expect_low_surrogate => {
                return Some("a low surrogate escape without its high half");
            }
            0xDC00..=0xDFFF => expect_low_surrogate = false,
            _ if expect_low_surrogate => return Some(LONE_HIGH),
            _ => {}
        }
        i += 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_postgres_refuses_are_found() {
        assert_eq!(
            unstorable_escape(r#"{"a":"plain \u00e9 \n \\u0000"}"#),
            None,
            "an escaped backslash is not an escape"
        );
        assert!(unstorable_escape(r#"{"a":"x\u0000y"}"#).is_some());
        assert!(
            unstorable_escape(r#"{"a":"\ud83d\ude00"}"#).is_none(),
            "a surrogate pair is fine"
        );
        assert!(unstorable_escape(r#"{"a":"\ud83d"}"#).is_some());
        assert!(unstorable_escape(r#"{"a":"\ude00"}"#).is_some());
        assert!(unstorable_escape(r#"{"a":"\ud83d\u0041"}"#).is_some());
        assert!(
            unstorable_escape(r#"{"a":"\ud83dx"}"#).is_some(),
            "a high surrogate followed by plain text"
        );
        assert!(
            unstorable_escape(r#"{"a":"\ud83d\n"}"#).is_some(),
            "a high surrogate followed by another escape"
        );
        assert!(unstorable_escape(r#"{"a":"\ud83d\ud83d"}"#).is_some());
        assert!(
            unstorable_escape("\\ud83d").is_some(),
            "ends right after the high half"
        );
        assert_eq!(
            unstorable_escape(r#"{"a":"\u00"}"#),
            None,
            "a cut escape is serde_json's to refuse"
        );
        assert_eq!(unstorable_escape(r#"{"a":"x\\\\y \" \/"}"#), None);
    }

    /// The scan looked at every byte before it jumped between backslashes;
    /// on strings dense in escapes and surrogate halves both must agree.
    #[test]
    fn the_jumping_scan_agrees_with_a_byte_by_byte_one() {
        fn byte_by_byte(text: &str) -> bool {
            let bytes = text.as_bytes();
            let (mut i, mut expect_low) = (0, false);
            while i < bytes.len() {
                if bytes[i] != b'\\' {
                    if expect_low {
                        return true;
                    }
                    i += 1;
                    continue;
                }
                let Some(&kind) = bytes.get(i + 1) else {
                    return false;
                };
                if kind != b'u' {
                    if expect_low {
                        return true;
                    }
                    i += 2;
                    continue;
                }
                let Some(code) = bytes
                    .get(i + 2..i + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                else {
                    return false;
                };
                match code {
                    0 => return true,
                    0xD800..=0xDBFF if expect_low => return true,
                    0xD800..=0xDBFF => expect_low = true,
                    0xDC00..=0xDFFF if !expect_low => return true,
                    0xDC00..=0xDFFF => expect_low = false,
                    _ if expect_low => return true,
                    _ => {}
                }
                i += 6;
            }
            expect_low
        }
        let pieces = [
            "a", "\\", "\\n", "\\u", "\\ud83d", "\\ude00", "\\u0000", "\\u0041", "\\\\", "d8",
        ];
        // xorshift64: deterministic, so a failure names the same string every run.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(next() % 7) {
                text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            assert_eq!(
                unstorable_escape(&text).is_some(),
                byte_by_byte(&text),
                "{text:?}"
            );
        }
    }
}
