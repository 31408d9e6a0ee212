//! Polar's API versions, as the `Polar-Version` request header picks them.
//!
//! Polar's server reads the header before anything else: no header (or an
//! empty one) serves its default, 2026-04; an unknown or malformed one is
//! answered 404 `{"detail": "Not Found"}` before authentication. Every
//! answer says the version it was served in. For the reads hookstream
//! serves, the versions differ only in seat-based prices (2027-01 has
//! `tiers`, `minimum_units` and `maximum_units` instead of `seat_tiers`),
//! whatever version the stored webhooks were written in.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The request header, and the answer header that echoes it.
pub const HEADER: &str = "polar-version";

/// A version of Polar's API that hookstream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    V2026_04,
    V2026_10,
    V2027_01,
}

impl ApiVersion {
    /// What Polar serves without a `Polar-Version` header.
    pub const DEFAULT: Self = Self::V2026_04;

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "2026-04" => Self::V2026_04,
            "2026-10" => Self::V2026_10,
            "2027-01" => Self::V2027_01,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2026_04 => "2026-04",
            Self::V2026_10 => "2026-10",
            Self::V2027_01 => "2027-01",
        }
    }

    /// Puts a served object (in the 2026-10 shapes webhooks are stored in)
    /// in this version's shapes.
    pub fn shape(self, value: &mut Value) {
        if self == Self::V2027_01 {
            shape_2027(value);
        }
    }
}

/// Reads `Polar-Version` into the request (as an extension handlers take),
/// refuses an unknown one as Polar does, and says the version served.
pub async fn negotiate(mut request: Request, next: Next) -> Response {
    let version = match request.headers().get(HEADER).map(HeaderValue::to_str) {
        None => ApiVersion::DEFAULT,
        Some(Ok("")) => ApiVersion::DEFAULT,
        Some(Ok(text)) => match ApiVersion::parse(text) {
            Some(version) => version,
            None => return unknown_version(),
        },
        Some(Err(_)) => return unknown_version(),
    };
    request.extensions_mut().insert(version);
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(HEADER, HeaderValue::from_static(version.as_str()));
    response
}

fn unknown_version() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"detail": "Not Found"})),
    )
        .into_response()
}

/// Every seat-based price in `value`, as 2027-01 serves it: `seat_tiers`
/// becomes `tiers` (`{type, tiers: [{bound, unit_amount}]}`, a tier's bound
/// its `max_seats`, its unit amount its price per seat as a decimal
/// string), `minimum_units` (the first tier's `min_seats`) and
/// `maximum_units` (the last tier's `max_seats`), as Polar translates them.
fn shape_2027(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("amount_type").and_then(Value::as_str) == Some("seat_based")
                && map.contains_key("seat_tiers")
            {
                seat_price_2027(map);
            }
            for child in map.values_mut() {
                if child.is_object() || child.is_array() {
                    shape_2027(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(shape_2027),
        _ => {}
    }
}

fn seat_price_2027(price: &mut Map<String, Value>) {
    let seat_tiers = price.remove("seat_tiers").unwrap_or(Value::Null);
    let mut tiers: Vec<Value> = seat_tiers
        .get("tiers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    tiers.sort_by_key(|t| t.get("min_seats").and_then(Value::as_i64).unwrap_or(0));
    let kind = seat_tiers
        .get("seat_tier_type")
        .filter(|t| !t.is_null())
        .cloned()
        .unwrap_or_else(|| Value::from("volume"));
    let bounds: Vec<Value> = tiers
        .iter()
        .map(|t| {
            json!({
                "bound": t.get("max_seats").cloned().unwrap_or(Value::Null),
                "unit_amount": decimal_text(t.get("price_per_seat")),
            })
        })
        .collect();
    let first = |key: &str| tiers.first().and_then(|t| t.get(key)).cloned();
    let last = |key: &str| tiers.last().and_then(|t| t.get(key)).cloned();
    let minimum = first("min_seats").unwrap_or(Value::Null);
    let maximum = last("max_seats").unwrap_or(Value::Null);
    price.insert("tiers".to_owned(), json!({"type": kind, "tiers": bounds}));
    price.insert("minimum_units".to_owned(), minimum);
    price.insert("maximum_units".to_owned(), maximum);
}

/// A price as Polar's `Decimal` renders it: the number's own text.
fn decimal_text(value: Option<&Value>) -> Value {
    match value {
        Some(Value::Number(n)) => Value::String(n.to_string()),
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::String("None".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_based_prices_take_2027_01_shapes_anywhere_they_are() {
        let mut product = json!({"prices": [
            {"amount_type": "fixed", "price_amount": 900},
            {"amount_type": "seat_based", "seat_tiers": {"seat_tier_type": "volume", "tiers": [
                {"min_seats": 11, "max_seats": null, "price_per_seat": 1000},
                {"min_seats": 1, "max_seats": 10, "price_per_seat": 1200}
            ]}}
        ]});
        let untouched = product.clone();
        ApiVersion::V2026_10.shape(&mut product);
        assert_eq!(product, untouched);
        ApiVersion::V2027_01.shape(&mut product);
        let seat = &product["prices"][1];
        assert!(seat.get("seat_tiers").is_none());
        assert_eq!(
            seat["tiers"],
            json!({"type": "volume", "tiers": [
                {"bound": 10, "unit_amount": "1200"}, {"bound": null, "unit_amount": "1000"}
            ]})
        );
        assert_eq!(seat["minimum_units"], 1);
        assert_eq!(seat["maximum_units"], Value::Null);
        assert_eq!(product["prices"][0], untouched["prices"][0]);
    }
}
