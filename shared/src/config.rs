//! Settings from environment variables, with an optional TOML file underneath.
//!
//! Every service builds one typed config from a [`Settings`] at start. A missing
//! or malformed value becomes a [`ConfigError`] that names the setting, and the
//! service stops before it binds a port or touches the database.
//!
//! The file (path in `HOOKSTREAM_CONFIG`) uses the same names as the variables
//! (`KAFKA_TOPIC = "polar.events"`) plus structured tables such as ingest's
//! `[sources.<name>]`. A variable set in the environment wins over the file.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The variable that points at the optional configuration file.
pub const CONFIG_FILE_VAR: &str = "HOOKSTREAM_CONFIG";

/// A setting that is missing or cannot be used, with the setting's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {setting}: {problem}")]
pub struct ConfigError {
    /// The variable (or file key) at fault, e.g. `KAFKA_BROKERS`.
    pub setting: String,
    /// What is wrong with it, without echoing secret values.
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

/// A string that must never be printed: webhook secrets, API tokens, URLs with
/// passwords. `Debug` and `Display` show only that something is there.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A snapshot of the environment and the optional file, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    vars: HashMap<String, String>,
    file: toml::Table,
}

impl Settings {
    /// Reads the process environment and, if `HOOKSTREAM_CONFIG` is set, the file it names.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Builds settings from explicit pairs, as tests and embedded runs do, so that
    /// nothing depends on the shared process environment.
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let file = match vars.get(CONFIG_FILE_VAR).filter(|p| !p.is_empty()) {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(CONFIG_FILE_VAR, format!("cannot read {path}: {e}"))
                })?;
                text.parse::<toml::Table>().map_err(|e| {
                    ConfigError::new(CONFIG_FILE_VAR, format!("{path} is not valid TOML: {e}"))
                })?
            }
            None => toml::Table::new(),
        };
        Ok(Self { vars, file })
    }

    /// The raw value of a setting: the environment first, then the file.
    /// Empty strings count as unset, as shells make it easy to export `X=`.
    pub fn get(&self, name: &str) -> Result<Option<String>, ConfigError> {
        if let Some(v) = self.vars.get(name) {
            return Ok(Some(v.clone()).filter(|v| !v.is_empty()));
        }
        match self.file.get(name) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone()).filter(|v| !v.is_empty())),
            Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
            Some(toml::Value::Float(f)) => Ok(Some(f.to_string())),
            Some(toml::Value::Boolean(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(ConfigError::new(
                name,
                format!(
                    "expected a string or number in the file, found {}",
                    other.type_str()
                ),
            )),
        }
    }

    /// A setting that must be present.
    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name)?
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    /// A setting with a default, parsed with `FromStr`.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name)? {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(name, format!("cannot parse {raw:?}: {e}"))),
        }
    }

    /// A positive integer with a default, refusing 0 where 0 would make no sense
    /// (a batch of zero, a pool of zero connections).
    pub fn positive_or(&self, name: &str, default: usize) -> Result<usize, ConfigError> {
        let value: usize = self.parse_or(name, default)?;
        if value == 0 {
            return Err(ConfigError::new(name, "must be greater than 0"));
        }
        Ok(value)
    }

    /// A duration given in milliseconds.
    pub fn millis_or(&self, name: &str, default_ms: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.parse_or(name, default_ms)?))
    }

    /// A duration given in seconds.
    pub fn secs_or(&self, name: &str, default_s: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.parse_or(name, default_s)?))
    }

    /// A duration as seconds or with a unit (`900`, `90s`, `30m`, `6h`, `7d`);
    /// `None` when unset, `0` or `off`.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        let Some(text) = self.get(name)? else {
            return Ok(None);
        };
        let text = text.trim();
        if text == "0" || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => text.split_at(at),
            None => (text, "s"),
        };
        let millis_per_unit = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => 0,
        };
        match number.parse::<u64>() {
            Ok(n) if n > 0 && millis_per_unit > 0 => Ok(Some(Duration::from_millis(
                n.saturating_mul(millis_per_unit),
            ))),
            _ => Err(ConfigError::new(
                name,
                "must be a duration such as 900, 500ms, 90s, 30m, 6h or 1d (or off)",
            )),
        }
    }

    /// A comma-separated list; blanks around items are trimmed, empty items dropped.
    pub fn list(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        Ok(self
            .get(name)?
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A structured table from the file, such as `sources`.
    pub fn file_table(&self, name: &str) -> Option<&toml::Table> {
        self.file.get(name).and_then(toml::Value::as_table)
    }

    /// The raw environment, for settings with a prefix (`KAFKA_PROPERTY_*`).
    pub fn vars_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|rest| (rest, v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("settings")
    }

    #[test]
    fn parse_errors_name_the_setting() {
        let s = settings(&[("INGEST_MAX_BATCH", "lots")]);
        let err = s.parse_or("INGEST_MAX_BATCH", 10usize).unwrap_err();
        assert_eq!(err.setting, "INGEST_MAX_BATCH");
        assert!(err.to_string().contains("INGEST_MAX_BATCH"), "{err}");
    }

    #[test]
    fn zero_is_refused_where_positive_is_required() {
        let s = settings(&[("N", "0")]);
        assert_eq!(s.positive_or("N", 3).unwrap_err().setting, "N");
        assert_eq!(s.positive_or("M", 3), Ok(3));
    }

    #[test]
    fn lists_are_trimmed_and_empty_is_unset() {
        let s = settings(&[("L", " a, b ,,c "), ("E", "")]);
        assert_eq!(s.list("L").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(s.get("E").unwrap(), None);
        assert_eq!(s.required("E").unwrap_err().setting, "E");
    }

    #[test]
    fn environment_wins_over_file() {
        let dir = std::env::temp_dir().join(format!("hookstream-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, "KAFKA_TOPIC = \"from.file\"\nINGEST_MAX_BATCH = 7\n").unwrap();
        let path = dir.to_str().unwrap();
        let s = settings(&[(CONFIG_FILE_VAR, path), ("KAFKA_TOPIC", "from.env")]);
        assert_eq!(s.get("KAFKA_TOPIC").unwrap().as_deref(), Some("from.env"));
        assert_eq!(s.parse_or("INGEST_MAX_BATCH", 1usize).unwrap(), 7);
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn unreadable_file_names_the_file_setting() {
        let err =
            Settings::from_vars([(CONFIG_FILE_VAR, "/nonexistent/hookstream.toml")]).unwrap_err();
        assert_eq!(err.setting, CONFIG_FILE_VAR);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("whsec_topsecret");
        assert!(!format!("{s:?} {s}").contains("topsecret"));
        assert_eq!(s.expose(), "whsec_topsecret");
    }
}
