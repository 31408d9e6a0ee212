//! Console sessions: a login with one of the console's tokens sets a cookie
//! that proves it, and every page and action asks for that cookie.
//!
//! The cookie holds an expiry, a random nonce and an HMAC of both keyed by
//! the token that logged in, never the token itself. So a live session needs
//! no row, survives a restart, works on any replica, and ends when its token
//! is removed from the configuration. A logout records the nonce
//! (`console_ended_sessions`, until the expiry), so a copy of the cookie
//! taken before it stops working at once. The CSRF token of a form is an
//! HMAC of the session under the same key: only a page rendered for that
//! session can carry it.
//!
//! A login is a POST a browser on another site could make (login CSRF: the
//! victim ends up in the attacker's session), so it must come from a page of
//! the console's own origin (`Sec-Fetch-Site`, or `Origin` against `Host`).
//! Wrong tokens are slowed down per client address, like the read API's.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Form;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use maud::html;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use hookstream_shared::config::Secret;

use super::layout::{self, Page};
use super::{ConsoleState, PREFIX};
use crate::api::failure_throttle::{Admission, Peer};
use crate::api::matching_token;

/// The session cookie's name.
pub const COOKIE: &str = "hookstream_console";
/// How long a login lasts.
const SESSION_LENGTH: Duration = Duration::from_secs(12 * 3600);
/// Added to every refused login, to slow down guessing.
const REFUSAL_DELAY: Duration = Duration::from_millis(250);

/// A request from a logged-in operator. Extracting it refuses everyone else:
/// a page request is sent to the login form, anything else gets 401.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The token forms must carry back (`csrf` field).
    pub csrf: String,
    /// The session's own nonce, recorded when it is logged out.
    nonce: String,
    /// When the session would end by itself (unix seconds).
    expires: u64,
}

impl Operator {
    /// Refuses a form whose `csrf` field is not this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), CsrfRefused> {
        if bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes())) {
            Ok(())
        } else {
            Err(CsrfRefused)
        }
    }
}

/// A form without this session's CSRF token: 403, and nothing done.
#[derive(Debug)]
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            layout::message_page(
                "Refused",
                "This form's security token is missing or stale. Reload the page and try again.",
            ),
        )
            .into_response()
    }
}

impl FromRequestParts<ConsoleState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let cookie = session_cookie(&parts.headers);
        if let Some(operator) = cookie.and_then(|c| verify(&state.tokens, c, now())) {
            match ended(&state.api.pool, &operator.nonce).await {
                Ok(false) => return Ok(operator),
                Ok(true) => {}
                Err(e) => return Err(super::ConsoleError::from(e).into_response()),
            }
        }
        if parts.method == axum::http::Method::GET {
            let next = parts
                .uri
                .path_and_query()
                .map_or(PREFIX, |p| p.as_str())
                .to_owned();
            let target = format!(
                "{PREFIX}login?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &next)
                    .finish()
            );
            Err(Redirect::to(&target).into_response())
        } else {
            Err((
                StatusCode::UNAUTHORIZED,
                layout::message_page("Log in first", "Your session has ended; log in again."),
            )
                .into_response())
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(key: &Secret, message: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes any key");
    mac.update(message.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn session_value(key: &Secret, expires: u64, nonce: &str) -> String {
    format!(
        "{expires}.{nonce}.{}",
        mac(
            key,
            &format!("hookstream console session {expires} {nonce}")
        )
    )
}

/// A fresh session nonce: 128 random bits.
fn new_nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether the session with `nonce` was logged out.
async fn ended(pool: &sqlx::PgPool, nonce: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from console_ended_sessions where nonce = $1) as "ended!""#,
        nonce
    )
    .fetch_one(pool)
    .await
}

/// Ends the session with `nonce` (which would have expired at `expires`).
async fn end(pool: &sqlx::PgPool, nonce: &str, expires: u64) -> sqlx::Result<()> {
    let expires_at =
        chrono::DateTime::from_timestamp(i64::try_from(expires).unwrap_or(i64::MAX), 0)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    sqlx::query!(
        "insert into console_ended_sessions (nonce, expires_at) values ($1, $2)
         on conflict (nonce) do nothing",
        nonce,
        expires_at
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets logged-out sessions that would have expired by now.
pub async fn prune_ended(pool: &sqlx::PgPool) -> sqlx::Result<u64> {
    let pruned = sqlx::query!("delete from console_ended_sessions where expires_at < now()")
        .execute(pool)
        .await?;
    Ok(pruned.rows_affected())
}

fn csrf_for(key: &Secret, session: &str) -> String {
    mac(key, &format!("hookstream console csrf {session}"))
}

/// The operator a cookie value proves, if it is unexpired and made with one
/// of `tokens`. Every token is tried, so the time taken does not say which.
fn verify(tokens: &[Secret], value: &str, now: u64) -> Option<Operator> {
    let mut parts = value.splitn(3, '.');
    let expires: u64 = parts.next()?.parse().ok()?;
    let nonce = parts.next()?;
    parts.next()?;
    if expires <= now {
        return None;
    }
    let mut found = None;
    for token in tokens {
        let expected = session_value(token, expires, nonce);
        if bool::from(expected.as_bytes().ct_eq(value.as_bytes())) {
            found = Some(token);
        }
    }
    found.map(|key| Operator {
        csrf: csrf_for(key, value),
        nonce: nonce.to_owned(),
        expires,
    })
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// `Secure` only when the request came over HTTPS (through a proxy that
/// says so): a browser drops a Secure cookie set over plain HTTP.
fn cookie_header(value: &str, max_age: u64, headers: &HeaderMap) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={value}; Path={PREFIX}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).expect("the cookie is ASCII")
}

/// Only a path inside the console is followed after login, so the login
/// form cannot be used to send an operator elsewhere; and only one of
/// visible ASCII, which a `Location` header can carry (a control character
/// would make the redirect itself fail).
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with(PREFIX)
                && next.bytes().all(|b| b.is_ascii_graphic())
                && !next.contains("//")
                && !next.contains('\\')
                && !next.starts_with(&format!("{PREFIX}login")) =>
        {
            next
        }
        _ => PREFIX,
    }
}

/// Whether a form POST comes from a page of the console's own origin, as
/// far as the browser says: `Sec-Fetch-Site` (every current browser sends
/// it) must be `same-origin`; without it, an `Origin` must name the host the
/// request was sent to. A client that sends neither is no browser, and no
/// browser can be made to send its request.
fn from_own_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let authority = origin
        .split_once("://")
        .map_or(origin, |(_, authority)| authority);
    ["x-forwarded-host", "host"].iter().any(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|host| host.eq_ignore_ascii_case(authority))
    })
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_form(Query(query): Query<LoginQuery>) -> Response {
    login_page(query.next.as_deref(), None).into_response()
}

fn login_page(next: Option<&str>, problem: Option<&str>) -> maud::Markup {
    layout::bare(Page {
        title: "Log in",
        body: html! {
            form.login method="post" action={ (PREFIX) "login" } {
                h1 { "hookstream console" }
                @if let Some(problem) = problem {
                    p.problem role="alert" { (problem) }
                }
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                input type="hidden" name="next" value=(safe_next(next));
                button type="submit" { "Log in" }
                p.hint { "One of PROJECTOR_CONSOLE_TOKENS (or, if unset, PROJECTOR_API_TOKENS)." }
            }
        },
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm").finish_non_exhaustive()
    }
}

pub async fn login(
    State(state): State<ConsoleState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !from_own_origin(&headers) {
        tracing::info!("console login refused: posted from another site");
        return (
            StatusCode::FORBIDDEN,
            layout::message_page(
                "Refused",
                "A login must come from the console's own login page.",
            ),
        )
            .into_response();
    }
    if let Admission::Refuse { retry_after } = state.throttle.admit(peer, Instant::now()) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(
                header::RETRY_AFTER,
                retry_after.as_secs().max(1).to_string(),
            )],
            layout::message_page(
                "Too many attempts",
                "Too many wrong tokens from this address; wait a moment and try again.",
            ),
        )
            .into_response();
    }
    let Some(token) = matching_token(&state.tokens, form.token.trim()) else {
        tracing::info!("console login refused");
        let wait = state.throttle.failed(peer, Instant::now());
        tokio::time::sleep(wait.max(REFUSAL_DELAY)).await;
        return (
            StatusCode::UNAUTHORIZED,
            login_page(form.next.as_deref(), Some("That token is not accepted.")),
        )
            .into_response();
    };
    let value = session_value(token, now() + SESSION_LENGTH.as_secs(), &new_nonce());
    tracing::info!("console login");
    (
        [(
            header::SET_COOKIE,
            cookie_header(&value, SESSION_LENGTH.as_secs(), &headers),
        )],
        Redirect::to(safe_next(form.next.as_deref())),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

pub async fn logout(
    operator: Operator,
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Err(refused) = operator.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    if let Err(e) = end(&state.api.pool, &operator.nonce, operator.expires).await {
        return super::ConsoleError::from(e).into_response();
    }
    tracing::info!("console logout");
    (
        [(header::SET_COOKIE, cookie_header("", 0, &headers))],
        Redirect::to(&format!("{PREFIX}login")),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<Secret> {
        vec![Secret::new("first-token-1"), Secret::new("second-token-2")]
    }

    #[test]
    fn a_session_is_proven_by_its_token_until_it_expires() {
        let value = session_value(&tokens()[1], 2_000, "nonce1");
        assert!(
            !value.contains("second-token"),
            "the token is not in the cookie"
        );
        let operator = verify(&tokens(), &value, 1_000).expect("valid");
        assert_eq!(operator.csrf, csrf_for(&tokens()[1], &value));
        assert!(verify(&tokens(), &value, 2_000).is_none(), "expired");
        assert!(
            verify(&tokens()[..1], &value, 1_000).is_none(),
            "token removed"
        );
        let forged = value.replacen("2000", "9999", 1);
        assert!(
            verify(&tokens(), &forged, 1_000).is_none(),
            "expiry is signed"
        );
        let forged = value.replacen("nonce1", "nonce2", 1);
        assert!(
            verify(&tokens(), &forged, 1_000).is_none(),
            "the nonce is signed"
        );
        assert!(verify(&tokens(), "garbage", 1_000).is_none());
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let one = verify(&tokens(), &session_value(&tokens()[0], 2_000, "a"), 1).unwrap();
        let two = verify(&tokens(), &session_value(&tokens()[0], 2_000, "b"), 1).unwrap();
        assert_ne!(one.csrf, two.csrf);
        assert!(one.check_csrf(&one.csrf).is_ok());
        assert!(one.check_csrf(&two.csrf).is_err());
        assert!(one.check_csrf("").is_err());
    }

    #[test]
    fn a_login_must_come_from_the_console_own_origin() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        assert!(from_own_origin(&headers(&[(
            "sec-fetch-site",
            "same-origin"
        )])));
        for site in ["cross-site", "same-site", "none"] {
            assert!(
                !from_own_origin(&headers(&[("sec-fetch-site", site)])),
                "{site}"
            );
        }
        let host = ("host", "console.example:8081");
        assert!(from_own_origin(&headers(&[
            host,
            ("origin", "https://console.example:8081")
        ])));
        assert!(!from_own_origin(&headers(&[
            host,
            ("origin", "https://evil.example")
        ])));
        assert!(!from_own_origin(&headers(&[host, ("origin", "null")])));
        assert!(from_own_origin(&headers(&[
            host,
            ("x-forwarded-host", "hooks.example"),
            ("origin", "https://hooks.example")
        ])));
        assert!(
            from_own_origin(&headers(&[host])),
            "no browser said anything"
        );
    }

    #[test]
    fn only_console_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/console/failures")), "/console/failures");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/console//evil",
            "/v1/x",
            "/console/login",
            "/console/\r\nSet-Cookie: x=1",
            "/console/\u{7f}",
            "/console/caf\u{e9}",
        ] {
            assert_eq!(safe_next(Some(bad)), PREFIX, "{bad}");
        }
        assert_eq!(safe_next(None), PREFIX);
    }
}
