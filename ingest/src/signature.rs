//! Standard Webhooks v1 signature verification, on the raw body, before any
//! parsing or I/O.
//!
//! A [`VerifiedWebhook`] can only be made by [`Verifier::verify`], so code that
//! takes one cannot be handed an unverified payload.
//!
//! Signed content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256,
//! sent as space-separated `v1,<base64>` entries. How the HMAC key comes from
//! the configured secret differs by provider; see [`KeyRule`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use subtle::ConstantTimeEq;

use hookstream_shared::config::Secret;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Longest `webhook-id` accepted. Polar sends 36-byte UUIDs, Svix 31-byte ids.
const MAX_ID_LEN: usize = 256;
/// At most this many signature entries are examined: enough for any rotation,
/// and it bounds the work an attacker can ask for.
const MAX_SIGNATURE_ENTRIES: usize = 16;
const SECRET_PREFIX: &str = "whsec_";

/// How a configured secret becomes HMAC key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRule {
    /// Polar's server keys the HMAC with the raw UTF-8 bytes of the whole secret,
    /// prefix included (`polar_whs_...` or `whsec_...`). Like Polar's SDK, the
    /// base64 decoding of the part after `whsec_` is also accepted when it
    /// decodes, so a secret works whichever way the sender used it.
    Polar,
    /// The Standard Webhooks rule: `whsec_` + base64 of the key bytes.
    Standard,
}

impl FromStr for KeyRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "polar" => Ok(Self::Polar),
            "standard" => Ok(Self::Standard),
            other => Err(format!(
                "unknown key rule {other:?}; expected `polar` or `standard`"
            )),
        }
    }
}

/// HMAC keys derived from one source's secrets (several during a rotation).
#[derive(Clone)]
pub struct SigningKeys(Vec<Vec<u8>>);

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeys({} keys, redacted)", self.0.len())
    }
}

impl SigningKeys {
    /// Derives the keys; an unusable secret is an error that says which one
    /// (by position, never by value).
    pub fn derive(rule: KeyRule, secrets: &[Secret]) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("no secret given".to_owned());
        }
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for (n, secret) in secrets.iter().enumerate() {
            let secret = secret.expose();
            let position = n + 1;
            if secret.is_empty() {
                return Err(format!("secret #{position} is empty"));
            }
            match rule {
                KeyRule::Polar => {
                    keys.push(secret.as_bytes().to_vec());
                    let remainder = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
                    if let Some(decoded) = decode_padded(remainder)
                        && !decoded.is_empty()
                        && decoded != secret.as_bytes()
                    {
                        keys.push(decoded);
                    }
                }
                KeyRule::Standard => {
                    let remainder = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
                    match decode_padded(remainder) {
                        Some(decoded) if !decoded.is_empty() => keys.push(decoded),
                        _ => {
                            return Err(format!(
                                "secret #{position} is not `whsec_` followed by base64 key bytes"
                            ));
                        }
                    }
                }
            }
        }
        keys.dedup();
        Ok(Self(keys))
    }
}

/// Base64 with the padding the reference libraries add when it is missing.
fn decode_padded(text: &str) -> Option<Vec<u8>> {
    let mut padded = text.to_owned();
    while !padded.len().is_multiple_of(4) {
        padded.push('=');
    }
    STANDARD.decode(padded).ok()
}

/// Why a request failed verification. Each maps to a stable error code and a
/// metrics label; none of them carries header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("header `{0}` appears more than once")]
    DuplicateHeader(&'static str),
    #[error("header `{0}` is malformed")]
    MalformedHeader(&'static str),
    #[error("webhook-timestamp is too far in the past")]
    TimestampTooOld,
    #[error("webhook-timestamp is too far in the future")]
    TimestampInFuture,
    #[error("no v1 signature in webhook-signature")]
    NoV1Signature,
    #[error("no signature matches")]
    SignatureMismatch,
}

impl VerifyError {
    /// Label for the verification-failure metric.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::DuplicateHeader(_) => "duplicate_header",
            Self::MalformedHeader(_) => "malformed_header",
            Self::TimestampTooOld => "timestamp_too_old",
            Self::TimestampInFuture => "timestamp_in_future",
            Self::NoV1Signature => "no_v1_signature",
            Self::SignatureMismatch => "signature_mismatch",
        }
    }
}

/// A webhook whose signature checked out. Only [`Verifier::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook {
    webhook_id: String,
    body: Bytes,
}

impl VerifiedWebhook {
    pub fn webhook_id(&self) -> &str {
        &self.webhook_id
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// Checks signatures for one source.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: SigningKeys,
    tolerance: Duration,
}

impl Verifier {
    pub fn new(keys: SigningKeys, tolerance: Duration) -> Self {
        Self { keys, tolerance }
    }

    /// Verifies headers and raw body against the clock (`now`, unix seconds).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: Bytes,
        now: i64,
    ) -> Result<VerifiedWebhook, VerifyError> {
        self.check_headers(headers, now)?.verify(body)
    }

    /// Checks everything about a request that needs no body: the three
    /// headers are there once each and well formed, the timestamp is within
    /// the tolerance of `now`, and at least one `v1` signature could be an
    /// HMAC-SHA256. A request that fails here is refused before its body is
    /// read or anything is reserved for it.
    pub fn check_headers<'h>(
        &'h self,
        headers: &'h HeaderMap,
        now: i64,
    ) -> Result<SignedHeaders<'h>, VerifyError> {
        let id = single_header(headers, HEADER_ID)?;
        let timestamp_text = single_header(headers, HEADER_TIMESTAMP)?;
        let signatures = single_header(headers, HEADER_SIGNATURE)?;

        if id.len() > MAX_ID_LEN || id.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(VerifyError::MalformedHeader(HEADER_ID));
        }
        let timestamp = parse_timestamp(timestamp_text)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if timestamp < now.saturating_sub(tolerance) {
            return Err(VerifyError::TimestampTooOld);
        }
        if timestamp > now.saturating_add(tolerance) {
            return Err(VerifyError::TimestampInFuture);
        }

        let candidates: Vec<[u8; 32]> = signatures
            .split(' ')
            .filter(|entry| !entry.is_empty())
            .take(MAX_SIGNATURE_ENTRIES)
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok()?.try_into().ok())
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::NoV1Signature);
        }
        Ok(SignedHeaders {
            keys: &self.keys,
            id,
            timestamp: timestamp.to_string(),
            candidates,
        })
    }
}

/// A request's signature headers that passed [`Verifier::check_headers`]:
/// what is left is to check the signatures against the body.
#[derive(Debug)]
pub struct SignedHeaders<'h> {
    keys: &'h SigningKeys,
    id: &'h str,
    /// As signed: the decimal the header carried, without padding.
    timestamp: String,
    candidates: Vec<[u8; 32]>,
}

impl SignedHeaders<'_> {
    /// The webhook if one of its signatures is an HMAC of `body` under one
    /// of the source's keys; every key is tried against every signature,
    /// in constant time.
    pub fn verify(self, body: Bytes) -> Result<VerifiedWebhook, VerifyError> {
        let mut matched = subtle::Choice::from(0u8);
        for key in &self.keys.0 {
            let expected = sign(key, self.id, &self.timestamp, &body);
            for candidate in &self.candidates {
                matched |= expected.ct_eq(candidate);
            }
        }
        if bool::from(matched) {
            Ok(VerifiedWebhook {
                webhook_id: self.id.to_owned(),
                body,
            })
        } else {
            Err(VerifyError::SignatureMismatch)
        }
    }
}

pub use hookstream_shared::signing::sign;

/// The `webhook-signature` header value a sender would put on a message,
/// signed with the first key of the rule. For tests and the load generator.
pub fn signature_header(
    rule: KeyRule,
    secret: &Secret,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let keys = SigningKeys::derive(rule, std::slice::from_ref(secret)).expect("usable secret");
    let signature = sign(&keys.0[0], id, &timestamp.to_string(), body);
    format!("v1,{}", STANDARD.encode(signature))
}

fn single_header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(VerifyError::MissingHeader(name))?;
    if values.next().is_some() {
        return Err(VerifyError::DuplicateHeader(name));
    }
    let text = value
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))?
        .trim();
    if text.is_empty() {
        return Err(VerifyError::MissingHeader(name));
    }
    Ok(text)
}

/// Integer unix seconds, digits only (no sign, no fraction), as every sender writes it.
fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    let malformed = VerifyError::MalformedHeader(HEADER_TIMESTAMP);
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    text.parse().map_err(|_| malformed)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const POLAR_BODY: &str = r#"{"type":"customer.created","timestamp":"2025-01-01T00:00:00.000000Z","data":{"id":"11111111-2222-4333-8444-555555555555"}}"#;
    const POLAR_ID: &str = "3f2b5a1c-9d4e-4b8a-8f6e-2c1d0e9a7b65";
    const POLAR_TS: i64 = 1_735_689_600;

    fn verifier(rule: KeyRule, secrets: &[&str]) -> Verifier {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Verifier::new(
            SigningKeys::derive(rule, &secrets).expect("keys"),
            Duration::from_secs(300),
        )
    }

    fn headers(id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
        h.insert(HEADER_TIMESTAMP, HeaderValue::from_str(ts).unwrap());
        h.insert(HEADER_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    fn check(
        v: &Verifier,
        id: &str,
        ts: i64,
        body: &str,
        sig: &str,
        now: i64,
    ) -> Result<VerifiedWebhook, VerifyError> {
        v.verify(
            &headers(id, &ts.to_string(), sig),
            Bytes::copy_from_slice(body.as_bytes()),
            now,
        )
    }

    #[test]
    fn standard_webhooks_official_vectors() {
        let cases = [
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                r#"{"test": 2432232314}"#,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
            (
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                r#"{"email":"test@example.com","username":"test_user"}"#,
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
            ),
        ];
        for (secret, id, ts, body, sig) in cases {
            let v = verifier(KeyRule::Standard, &[secret]);
            let ok = check(&v, id, ts, body, sig, ts).expect("vector verifies");
            assert_eq!(ok.webhook_id(), id);
            assert_eq!(ok.body().as_ref(), body.as_bytes());
            // Polar's rule also accepts the standard key, as Polar's SDK does.
            let v = verifier(KeyRule::Polar, &[secret]);
            assert!(check(&v, id, ts, body, sig, ts).is_ok());
            let header = signature_header(
                KeyRule::Standard,
                &Secret::new(secret),
                id,
                ts,
                body.as_bytes(),
            );
            assert_eq!(header, sig);
        }
    }

    #[test]
    fn polar_rule_vectors() {
        let cases = [
            (
                "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK",
                "v1,0c64nLhN3PEeDhsbPi4jfylI5G4IJUKNkKNPxPLz6Y0=",
            ),
            (
                "whsec_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK",
                "v1,zEgY/J35/o4zvrOqWtzy3NbDPwhzJw1ry3mjjTSBxj0=",
            ),
        ];
        for (secret, sig) in cases {
            let v = verifier(KeyRule::Polar, &[secret]);
            assert!(
                check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, sig, POLAR_TS).is_ok(),
                "{secret}"
            );
            assert_eq!(
                signature_header(
                    KeyRule::Polar,
                    &Secret::new(secret),
                    POLAR_ID,
                    POLAR_TS,
                    POLAR_BODY.as_bytes()
                ),
                sig
            );
            // The standard rule decodes the key and so must not accept Polar's signature.
            if let Ok(keys) = SigningKeys::derive(KeyRule::Standard, &[Secret::new(secret)]) {
                let v = Verifier::new(keys, Duration::from_secs(300));
                assert_eq!(
                    check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, sig, POLAR_TS).unwrap_err(),
                    VerifyError::SignatureMismatch
                );
            }
        }
    }

    #[test]
    fn negative_cases() {
        let secret = "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
        let good = "v1,0c64nLhN3PEeDhsbPi4jfylI5G4IJUKNkKNPxPLz6Y0=";
        let v = verifier(KeyRule::Polar, &[secret]);
        let wrong = verifier(KeyRule::Polar, &["polar_whs_someoneElsesSecret"]);
        assert_eq!(
            check(&wrong, POLAR_ID, POLAR_TS, POLAR_BODY, good, POLAR_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let tampered_body = POLAR_BODY.replace("customer.created", "customer.deleted");
        assert_eq!(
            check(&v, POLAR_ID, POLAR_TS, &tampered_body, good, POLAR_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            check(&v, "another-id", POLAR_TS, POLAR_BODY, good, POLAR_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        // Stale and future, just outside the 5-minute tolerance; just inside passes.
        assert_eq!(
            check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, good, POLAR_TS + 301).unwrap_err(),
            VerifyError::TimestampTooOld
        );
        assert_eq!(
            check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, good, POLAR_TS - 301).unwrap_err(),
            VerifyError::TimestampInFuture
        );
        assert!(check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, good, POLAR_TS + 300).is_ok());
        assert!(check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, good, POLAR_TS - 300).is_ok());
        // A signature for a different timestamp does not verify.
        assert_eq!(
            check(&v, POLAR_ID, POLAR_TS + 1, POLAR_BODY, good, POLAR_TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        // Unknown versions are skipped; only unknown versions means no v1.
        assert_eq!(
            check(
                &v,
                POLAR_ID,
                POLAR_TS,
                POLAR_BODY,
                "v1a,abc v2,0c64nLhN3PEeDhsbPi4jfylI5G4IJUKNkKNPxPLz6Y0=",
                POLAR_TS
            )
            .unwrap_err(),
            VerifyError::NoV1Signature
        );
        assert!(
            check(
                &v,
                POLAR_ID,
                POLAR_TS,
                POLAR_BODY,
                &format!("v1a,abc v1,bm90IGEgc2ln {good}"),
                POLAR_TS
            )
            .is_ok()
        );
        // Malformed entries are skipped, not fatal.
        for sig in ["garbage", "v1", "v1,", "v1,!!!notbase64", ",,,", "v1,AAAA"] {
            assert_eq!(
                check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, sig, POLAR_TS).unwrap_err(),
                VerifyError::NoV1Signature,
                "{sig}"
            );
        }
        assert_eq!(
            check(
                &v,
                POLAR_ID,
                POLAR_TS,
                POLAR_BODY,
                "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                POLAR_TS
            )
            .unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn header_problems() {
        let v = verifier(KeyRule::Polar, &["polar_whs_x"]);
        let body = Bytes::from_static(b"{}");
        for missing in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut h = headers("id", "100", "v1,AAAA");
            h.remove(missing);
            assert_eq!(
                v.verify(&h, body.clone(), 100).unwrap_err(),
                VerifyError::MissingHeader(missing)
            );
        }
        let mut h = headers("id", "100", "v1,AAAA");
        h.append(HEADER_ID, HeaderValue::from_static("other"));
        assert_eq!(
            v.verify(&h, body.clone(), 100).unwrap_err(),
            VerifyError::DuplicateHeader(HEADER_ID)
        );
        for ts in ["-5", "1e9", "12.5", "abc", "9999999999999999999", " "] {
            let h = headers("id", ts, "v1,AAAA");
            let err = v.verify(&h, body.clone(), 100).unwrap_err();
            assert!(
                matches!(
                    err,
                    VerifyError::MalformedHeader(HEADER_TIMESTAMP)
                        | VerifyError::MissingHeader(HEADER_TIMESTAMP)
                ),
                "{ts}: {err:?}"
            );
        }
        let h = headers(&"x".repeat(MAX_ID_LEN + 1), "100", "v1,AAAA");
        assert_eq!(
            v.verify(&h, body.clone(), 100).unwrap_err(),
            VerifyError::MalformedHeader(HEADER_ID)
        );
        let mut h = headers("id", "100", "v1,AAAA");
        h.insert(HEADER_ID, HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert_eq!(
            v.verify(&h, body, 100).unwrap_err(),
            VerifyError::MalformedHeader(HEADER_ID)
        );
    }

    #[test]
    fn rotation_accepts_either_secret() {
        let old = "polar_whs_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
        let new = "whsec_ovyN6cPrTv56AApvzCaJno08SSmGJmgbWilb33N2JuK";
        let v = verifier(KeyRule::Polar, &[new, old]);
        for sig in [
            "v1,0c64nLhN3PEeDhsbPi4jfylI5G4IJUKNkKNPxPLz6Y0=",
            "v1,zEgY/J35/o4zvrOqWtzy3NbDPwhzJw1ry3mjjTSBxj0=",
        ] {
            assert!(check(&v, POLAR_ID, POLAR_TS, POLAR_BODY, sig, POLAR_TS).is_ok());
        }
    }

    #[test]
    fn unusable_secrets_are_refused_by_position() {
        assert!(SigningKeys::derive(KeyRule::Polar, &[]).is_err());
        let err = SigningKeys::derive(
            KeyRule::Standard,
            &[Secret::new("whsec_AAAA"), Secret::new("whsec_not base64!")],
        )
        .unwrap_err();
        assert!(err.contains("#2") && !err.contains("not base64"), "{err}");
        assert!(SigningKeys::derive(KeyRule::Polar, &[Secret::new("")]).is_err());
        assert!(
            !format!(
                "{:?}",
                SigningKeys::derive(KeyRule::Polar, &[Secret::new("polar_whs_abc")]).unwrap()
            )
            .contains("abc")
        );
    }
}
