//! Query strings as Polar's SDK writes them: repeated keys for lists
//! (`customer_id=a&customer_id=b`), `true`/`false` for booleans.

use super::ApiError;

/// Decoded `key=value` pairs of a query string, in order.
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// Every value of a list parameter; `None` when absent.
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        let values: Vec<String> = self
            .0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect();
        (!values.is_empty()).then_some(values)
    }

    /// A parameter that may appear at most once.
    pub fn one(&self, key: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self
            .0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::invalid(key, "must be given at most once"));
        }
        Ok(first)
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.one(key)? {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid(key, "must be true or false")),
        }
    }

    /// An integer parameter from `min` to `max`; `None` when absent.
    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.one(key)? {
            None => Ok(None),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid(key, format!("must be an integer from {min} to {max}"))
                }),
        }
    }

    /// Polar's pagination: `page` from 1, `limit` from 1 to 100 (default 10).
    pub fn page(&self) -> Result<Page, ApiError> {
        Ok(Page {
            page: self.integer("page", 1, i64::from(i32::MAX))?.unwrap_or(1),
            limit: self.integer("limit", 1, 100)?.unwrap_or(10),
        })
    }

    /// The `sorting` criteria, each mapped to an SQL expression by `column`;
    /// unknown criteria are refused rather than silently ignored.
    pub fn sorting(
        &self,
        default: &[&str],
        column: impl Fn(&str) -> Option<&'static str>,
    ) -> Result<String, ApiError> {
        let criteria = self
            .list("sorting")
            .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let mut order = Vec::new();
        for criterion in &criteria {
            let (name, direction) = match criterion.strip_prefix('-') {
                Some(name) => (name, "desc nulls last"),
                None => (criterion.as_str(), "asc nulls last"),
            };
            let expression = column(name)
                .ok_or_else(|| ApiError::invalid("sorting", format!("cannot sort by {name:?}")))?;
            order.push(format!("{expression} {direction}"));
        }
        Ok(order.join(", "))
    }
}

/// A page request.
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
    pub fn pagination_json(self, total_count: i64) -> String {
        let max_page = (total_count + self.limit - 1) / self.limit;
        format!(r#"{{"total_count":{total_count},"max_page":{max_page}}}"#)
    }
}
