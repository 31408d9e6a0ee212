//! Polar's API versions, as the `Polar-Version` request header picks them.
//!
//! Polar's server reads the header before anything else: no header (or an
//! empty one) serves its default, 2026-04; an unknown or malformed one is
//! answered 404 `{"detail": "Not Found"}` before authentication. Every
//! answer says the version it was served in. For the reads hookstream
//! serves, the versions differ only in seat-based prices (2027-01 has
//! `tiers`, `minimum_units` and `maximum_units` instead of `seat_tiers`).
//! Webhooks are stored as they came, in whatever version their endpoint was
//! set to (a change of the endpoint's version mixes them), so each served
//! price is put in the asked version's shape from either shape.

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

    /// Puts a served object, whichever version its parts were stored in,
    /// in this version's shapes.
    pub fn shape(self, value: &mut Value) {
        if self == Self::V2027_01 {
            each_seat_price(value, "seat_tiers", &seat_price_2027);
        } else {
            each_seat_price(value, "tiers", &seat_price_2026);
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

/// Applies `reshape` to every seat-based price in `value` that has the
/// field `other_shape` (the other versions' tier field).
fn each_seat_price(
    value: &mut Value,
    other_shape: &str,
    reshape: &dyn Fn(&mut Map<String, Value>),
) {
    match value {
        Value::Object(map) => {
            if map.get("amount_type").and_then(Value::as_str) == Some("seat_based")
                && map.get(other_shape).is_some_and(Value::is_object)
            {
                reshape(map);
            }
            for child in map.values_mut() {
                if child.is_object() || child.is_array() {
                    each_seat_price(child, other_shape, reshape);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| each_seat_price(item, other_shape, reshape)),
        _ => {}
    }
}

/// A seat-based price as 2027-01 serves it: `seat_tiers` becomes `tiers`
/// (`{type, tiers: [{bound, unit_amount}]}`, a tier's bound its
/// `max_seats`, its unit amount its price per seat as a decimal string),
/// `minimum_units` (the first tier's `min_seats`) and `maximum_units` (the
/// last tier's `max_seats`), as Polar translates them.
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

/// A 2027-01 seat-based price as 2026-04 and 2026-10 serve it, as Polar
/// translates back: the tiers in bound order (an unbounded one last), each
/// starting one past the previous bound; only tiers that overlap the
/// purchasable range (`minimum_units`, at least 1, to `maximum_units`, else
/// the last bound) are kept, the first clipped to start at the minimum and
/// the last to end at the maximum. `minimum_seats` and `maximum_seats`
/// follow from the tiers kept.
fn seat_price_2026(price: &mut Map<String, Value>) {
    let tiers = price.remove("tiers").unwrap_or(Value::Null);
    let minimum = price.remove("minimum_units").and_then(|v| v.as_i64());
    let maximum = price.remove("maximum_units").and_then(|v| v.as_i64());
    let kind = tiers
        .get("type")
        .filter(|t| !t.is_null())
        .cloned()
        .unwrap_or_else(|| Value::from("volume"));
    let mut rates: Vec<(Option<i64>, Value)> = tiers
        .get("tiers")
        .and_then(Value::as_array)
        .map(|tiers| {
            tiers
                .iter()
                .map(|t| {
                    let bound = t.get("bound").and_then(Value::as_i64);
                    (bound, integral_amount(t.get("unit_amount")))
                })
                .collect()
        })
        .unwrap_or_default();
    rates.sort_by_key(|(bound, _)| (bound.is_none(), bound.unwrap_or(0)));
    let first_min = minimum.filter(|&m| m >= 1).unwrap_or(1);
    let last_max = maximum.or_else(|| rates.last().and_then(|(bound, _)| *bound));
    let mut seat_tiers = Vec::new();
    let mut previous_bound = 0;
    for (bound, amount) in rates {
        let start = previous_bound + 1;
        if let Some(end) = bound {
            previous_bound = end;
            if end < first_min {
                continue;
            }
        }
        if last_max.is_some_and(|max| start > max) {
            break;
        }
        let max_seats = match (bound, last_max) {
            (Some(end), Some(max)) => Some(end.min(max)),
            (Some(end), None) => Some(end),
            (None, max) => max,
        };
        seat_tiers.push(json!({
            "min_seats": first_min.max(start),
            "max_seats": max_seats,
            "price_per_seat": amount,
        }));
    }
    // Polar's ProductPriceSeatTiers computes these from the tiers it holds.
    let minimum_seats = seat_tiers
        .first()
        .map_or(Value::from(1), |t| t["min_seats"].clone());
    let maximum_seats = seat_tiers
        .last()
        .map_or(Value::Null, |t| t["max_seats"].clone());
    price.insert(
        "seat_tiers".to_owned(),
        json!({
            "seat_tier_type": kind,
            "tiers": seat_tiers,
            "minimum_seats": minimum_seats,
            "maximum_seats": maximum_seats,
        }),
    );
}

/// A decimal unit amount (`"1200"`, `"1200.0"`) as the whole number of
/// cents a seat tier holds; left as it is when it is not one.
fn integral_amount(value: Option<&Value>) -> Value {
    let text = match value {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return other.clone(),
        None => return Value::Null,
    };
    match text.parse::<f64>() {
        Ok(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Value::from(n as i64),
        _ => Value::String(text.to_owned()),
    }
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
        // And back, as 2026-10 serves a price stored in 2027-01's shape.
        ApiVersion::V2026_10.shape(&mut product);
        let mut sorted = untouched.clone();
        sorted["prices"][1]["seat_tiers"]["tiers"] = json!([
            {"min_seats": 1, "max_seats": 10, "price_per_seat": 1200},
            {"min_seats": 11, "max_seats": null, "price_per_seat": 1000}
        ]);
        sorted["prices"][1]["seat_tiers"]["minimum_seats"] = json!(1);
        sorted["prices"][1]["seat_tiers"]["maximum_seats"] = Value::Null;
        assert_eq!(product, sorted);
    }

    #[test]
    fn a_2027_price_served_to_2026_keeps_only_the_purchasable_tiers() {
        let mut price = json!({"amount_type": "seat_based", "minimum_units": 5, "maximum_units": 30,
        "tiers": {"type": "graduated", "tiers": [
            {"bound": null, "unit_amount": "500"},
            {"bound": 3, "unit_amount": "900"},
            {"bound": 20, "unit_amount": "700.0"},
            {"bound": 40, "unit_amount": "600"}
        ]}});
        ApiVersion::V2026_04.shape(&mut price);
        assert_eq!(
            price,
            json!({"amount_type": "seat_based", "seat_tiers": {"seat_tier_type": "graduated", "tiers": [
                {"min_seats": 5, "max_seats": 20, "price_per_seat": 700},
                {"min_seats": 21, "max_seats": 30, "price_per_seat": 600}
            ], "minimum_seats": 5, "maximum_seats": 30}})
        );
    }
}
