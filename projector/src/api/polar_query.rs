//! A Polar read's query string, validated the way Polar's server (FastAPI
//! and pydantic) validates it: every problem is collected and the request
//! answered 422 with all of them; a repeated scalar takes its last value;
//! ids must be version-4 UUIDs; unknown names are ignored.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Value, json};

use super::ApiError;

/// Polar's largest page (`limit` above it is clamped, not refused).
pub const MAX_LIMIT: i64 = 100;

/// A query string being read, and what was wrong with it so far.
#[derive(Debug, Default)]
pub struct PolarQuery {
    pairs: Vec<(String, String)>,
    problems: Vec<Value>,
}

/// Polar's offset pagination.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub page: i64,
    pub limit: i64,
}

impl Page {
    pub fn offset(self) -> i64 {
        (self.page - 1).saturating_mul(self.limit)
    }

    /// Polar's `pagination` object for a total.
    pub fn pagination(self, total_count: i64) -> Value {
        json!({
            "total_count": total_count,
            "max_page": (total_count + self.limit - 1) / self.limit,
        })
    }
}

/// One sort criterion: a property and whether it runs descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Criterion<'a> {
    pub property: &'a str,
    pub descending: bool,
}

const TRUE: [&str; 6] = ["1", "on", "t", "true", "y", "yes"];
const FALSE: [&str; 6] = ["0", "off", "f", "false", "n", "no"];

impl PolarQuery {
    pub fn parse(raw: Option<&str>) -> Self {
        Self {
            pairs: raw
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
            problems: Vec::new(),
        }
    }

    /// Every value given for `name`, in order; `None` when absent.
    pub fn all(&self, name: &str) -> Option<Vec<String>> {
        let values: Vec<String> = self
            .pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect();
        (!values.is_empty()).then_some(values)
    }

    /// The value of a scalar: the last one given, as Starlette reads it.
    pub fn last(&self, name: &str) -> Option<String> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn problem(&mut self, kind: &str, loc: Value, msg: &str, input: &str) {
        self.problems
            .push(json!({"type": kind, "loc": loc, "msg": msg, "input": input}));
    }

    /// `page` (from 1) and `limit` (from 1; above 100 it is 100).
    pub fn page(&mut self) -> Page {
        let page = self.positive("page", 1);
        let limit = self.positive("limit", 10);
        Page {
            page,
            limit: limit.clamp(1, MAX_LIMIT),
        }
    }

    fn positive(&mut self, name: &str, default: i64) -> i64 {
        let Some(raw) = self.last(name) else {
            return default;
        };
        match raw.trim().parse::<i64>() {
            Ok(n) if n > 0 => n,
            Ok(_) => {
                self.problem(
                    "greater_than",
                    json!(["query", name]),
                    "Input should be greater than 0",
                    &raw,
                );
                default
            }
            Err(_) => {
                self.problem(
                    "int_parsing",
                    json!(["query", name]),
                    "Input should be a valid integer, unable to parse string as an integer",
                    &raw,
                );
                default
            }
        }
    }

    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        let raw = self.last(name)?;
        let lower = raw.to_ascii_lowercase();
        if TRUE.contains(&lower.as_str()) {
            Some(true)
        } else if FALSE.contains(&lower.as_str()) {
            Some(false)
        } else {
            self.problem(
                "bool_parsing",
                json!(["query", name]),
                "Input should be a valid boolean, unable to interpret input",
                &raw,
            );
            None
        }
    }

    /// Every value of a repeatable id parameter, each a UUID (of version 4
    /// unless `any_version`), normalised as Polar stores ids.
    pub fn uuids(&mut self, name: &str) -> Option<Vec<String>> {
        let values = self.all(name)?;
        let mut ids = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            if let Some(id) = self.uuid_at(value, json!(["query", name, i]), false) {
                ids.push(id);
            }
        }
        Some(ids)
    }

    /// A single id parameter (the last value given).
    pub fn uuid(&mut self, name: &str) -> Option<String> {
        let raw = self.last(name)?;
        self.uuid_at(&raw, json!(["query", name]), false)
    }

    /// A path segment that must be a UUID (of version 4 unless `any_version`).
    pub fn path_uuid(&mut self, value: &str, name: &str, any_version: bool) -> Option<String> {
        self.uuid_at(value, json!(["path", name]), any_version)
    }

    fn uuid_at(&mut self, value: &str, loc: Value, any_version: bool) -> Option<String> {
        match uuid::Uuid::try_parse(value) {
            Ok(id) if any_version || id.get_version_num() == 4 => Some(id.hyphenated().to_string()),
            Ok(_) => {
                self.problems.push(json!({
                    "type": "uuid_version", "loc": loc, "msg": "UUID version 4 expected",
                    "input": value, "ctx": {"expected_version": 4},
                }));
                None
            }
            Err(_) => {
                self.problem("uuid_parsing", loc, "Input should be a valid UUID", value);
                None
            }
        }
    }

    /// Every value of a repeatable text parameter.
    pub fn texts(&self, name: &str) -> Option<Vec<String>> {
        self.all(name)
    }

    /// Every value of a repeatable enum parameter, each one of `allowed`.
    pub fn enums(&mut self, name: &str, allowed: &[&str]) -> Option<Vec<String>> {
        let values = self.all(name)?;
        for (i, value) in values.iter().enumerate() {
            if !allowed.contains(&value.as_str()) {
                self.enum_problem(json!(["query", name, i]), allowed, value);
            }
        }
        Some(values)
    }

    /// A single enum parameter (the last value given).
    pub fn enum_one(&mut self, name: &str, allowed: &[&str]) -> Option<String> {
        let raw = self.last(name)?;
        if allowed.contains(&raw.as_str()) {
            Some(raw)
        } else {
            self.enum_problem(json!(["query", name]), allowed, &raw);
            None
        }
    }

    fn enum_problem(&mut self, loc: Value, allowed: &[&str], value: &str) {
        let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
        let expected = match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.problems.push(json!({
            "type": "enum", "loc": loc, "msg": format!("Input should be {expected}"),
            "input": value, "ctx": {"expected": expected},
        }));
    }

    /// A time parameter. `aware`: pydantic's `AwareDatetime` (an offset is
    /// required); otherwise `datetime`, which also takes a naive time
    /// (read as UTC), a date, or unix seconds (milliseconds past 2e10).
    pub fn time(&mut self, name: &str, aware: bool) -> Option<DateTime<Utc>> {
        let raw = self.last(name)?;
        match parse_time(&raw, aware) {
            Ok(time) => Some(time),
            Err(TimeProblem::Naive) => {
                self.problem(
                    "timezone_aware",
                    json!(["query", name]),
                    "Input should have timezone info",
                    &raw,
                );
                None
            }
            Err(TimeProblem::Unreadable) => {
                self.problem(
                    "datetime_from_date_parsing",
                    json!(["query", name]),
                    "Input should be a valid datetime or date",
                    &raw,
                );
                None
            }
        }
    }

    /// The `sorting` criteria, each one of `properties` (`-` for
    /// descending); `default` when none is given.
    pub fn sorting<'p>(
        &mut self,
        properties: &[&'p str],
        default: &[&'p str],
    ) -> Vec<Criterion<'p>> {
        let given = self.all("sorting");
        let criteria: Vec<String> =
            given.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let allowed: Vec<String> = properties
            .iter()
            .flat_map(|p| [p.to_string(), format!("-{p}")])
            .collect();
        let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        for (i, criterion) in criteria.iter().enumerate() {
            let (name, descending) = match criterion.strip_prefix('-') {
                Some(name) => (name, true),
                None => (criterion.as_str(), false),
            };
            match properties.iter().find(|p| **p == name) {
                Some(property) => out.push(Criterion {
                    property,
                    descending,
                }),
                None => self.enum_problem(json!(["query", "sorting", i]), &allowed, criterion),
            }
        }
        out
    }

    /// Polar's metadata filter, `metadata[key]=value` (repeatable): every
    /// key named, with the values any of which its text must equal.
    pub fn metadata(&self) -> Vec<(String, Vec<String>)> {
        let mut keys: Vec<(String, Vec<String>)> = Vec::new();
        for (name, value) in &self.pairs {
            let Some(key) = name
                .strip_prefix("metadata[")
                .and_then(|rest| rest.split_once(']'))
                .map(|(key, _)| key)
                .filter(|key| !key.is_empty())
            else {
                continue;
            };
            match keys.iter_mut().find(|(k, _)| k == key) {
                Some((_, values)) => values.push(value.clone()),
                None => keys.push((key.to_owned(), vec![value.clone()])),
            }
        }
        keys
    }

    /// Adds a problem found by the caller (a path value it checked).
    pub fn refuse(&mut self, loc: Value, kind: &str, msg: &str, input: &str) {
        self.problem(kind, loc, msg, input);
    }

    /// The 422 of everything found wrong, if anything was.
    pub fn finish(&mut self) -> Result<(), ApiError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(std::mem::take(&mut self.problems)))
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TimeProblem {
    Naive,
    Unreadable,
}

fn parse_time(raw: &str, aware: bool) -> Result<DateTime<Utc>, TimeProblem> {
    let text = raw.trim();
    if !aware && is_number(text) {
        let seconds: f64 = text.parse().map_err(|_| TimeProblem::Unreadable)?;
        let seconds = if seconds.abs() > 2e10 {
            seconds / 1000.0
        } else {
            seconds
        };
        let micros = (seconds * 1_000_000.0).round() as i64;
        return DateTime::from_timestamp_micros(micros).ok_or(TimeProblem::Unreadable);
    }
    let zulu = text.replace(['Z', 'z'], "+00:00");
    if let Ok(time) = DateTime::parse_from_rfc3339(&zulu) {
        return Ok(time.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
    ] {
        if let Ok(time) = DateTime::parse_from_str(&zulu, format) {
            return Ok(time.with_timezone(&Utc));
        }
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    });
    match naive {
        Some(_) if aware => Err(TimeProblem::Naive),
        Some(time) => Ok(time.and_utc()),
        None => Err(TimeProblem::Unreadable),
    }
}

fn is_number(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_pydantic_reads_them() {
        let at = |s: &str, aware| parse_time(s, aware).map(|t| t.to_rfc3339());
        assert_eq!(
            at("2026-02-03T10:00:00Z", true),
            Ok("2026-02-03T10:00:00+00:00".into())
        );
        assert_eq!(
            at("2026-02-03T10:00:00.123456+02:00", true),
            Ok("2026-02-03T08:00:00.123456+00:00".into())
        );
        assert_eq!(at("2026-02-03T10:00:00", true), Err(TimeProblem::Naive));
        assert_eq!(
            at("2026-02-03T10:00:00", false),
            Ok("2026-02-03T10:00:00+00:00".into())
        );
        assert_eq!(
            at("2026-02-03", false),
            Ok("2026-02-03T00:00:00+00:00".into())
        );
        assert_eq!(
            at("1700000000", false),
            Ok("2023-11-14T22:13:20+00:00".into())
        );
        assert_eq!(at("yesterday", false), Err(TimeProblem::Unreadable));
    }

    #[test]
    fn problems_are_collected_and_scalars_take_their_last_value() {
        let mut q = PolarQuery::parse(Some(
            "page=0&limit=500&customer_id=nope&active=maybe&status=a&status=active&limit=7",
        ));
        let page = q.page();
        assert_eq!(page.limit, 7);
        q.uuids("customer_id");
        q.boolean("active");
        q.enums("status", &["active", "canceled"]);
        let Err(ApiError::Invalid(problems)) = q.finish() else {
            panic!("a 422")
        };
        let kinds: Vec<&str> = problems
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["greater_than", "uuid_parsing", "bool_parsing", "enum"]
        );
        let mut clamped = PolarQuery::parse(Some("limit=500"));
        assert_eq!(clamped.page().limit, 100);
        assert!(clamped.finish().is_ok());
    }

    #[test]
    fn ids_must_be_version_4_and_are_normalised() {
        let mut q = PolarQuery::parse(Some(
            "id=8BC1789C-B452-4FBA-B87C-3C82C3939937&id=00000000-0000-1000-8000-000000000000",
        ));
        assert_eq!(
            q.uuids("id").unwrap(),
            vec!["8bc1789c-b452-4fba-b87c-3c82c3939937".to_owned()]
        );
        assert!(q.finish().is_err());
    }

    #[test]
    fn metadata_names_its_keys_and_their_values() {
        let q = PolarQuery::parse(Some(
            "metadata%5Bplan%5D=pro&metadata[plan]=team&metadata[seats]=3&other=1",
        ));
        assert_eq!(
            q.metadata(),
            vec![
                ("plan".to_owned(), vec!["pro".to_owned(), "team".to_owned()]),
                ("seats".to_owned(), vec!["3".to_owned()])
            ]
        );
    }
}
