//! Access tokens: every request carries the token as `?token=`, as the
//! cookie set on the first visit, or as `Authorization: Bearer`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::query::param;
use super::state::Shared;
use super::ServerError;

/// Longest accepted token.
pub const MAX_TOKEN_LEN: usize = 256;

/// Shortest accepted token: shorter ones are guessable.
const MIN_TOKEN_LEN: usize = 16;

/// 128 random bits as 32 hex digits.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a user-given token: length, and characters that survive URLs and
/// cookies unescaped.
pub(super) fn check_token(t: &str) -> Result<String, ServerError> {
    let t = t.trim();
    let bad = |reason: String| Err(ServerError::BadToken { reason });
    if t.len() < MIN_TOKEN_LEN || t.len() > MAX_TOKEN_LEN {
        return bad(format!(
            "it has {} characters; use {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}",
            t.len()
        ));
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
    {
        return bad("use only letters, digits and - _ . ~".into());
    }
    Ok(t.to_string())
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn from_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn from_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

const DENIED: &str = "heapscope: this server needs its access token. Open the URL heapscope \
printed when it started (http://HOST:PORT/?token=...), or send `Authorization: Bearer TOKEN`.\n";

/// Rejects requests without the token (401); a valid `?token=` sets the cookie.
pub(super) async fn require_token(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let query_token = req.uri().query().and_then(|q| param(q, "token"));
    let in_query = query_token
        .as_deref()
        .is_some_and(|t| same(t, &shared.token));
    let ok = in_query
        || from_cookie(req.headers(), &shared.cookie).is_some_and(|t| same(t, &shared.token))
        || from_bearer(req.headers()).is_some_and(|t| same(t, &shared.token));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            DENIED,
        )
            .into_response();
    }
    let mut resp = next.run(req).await;
    if in_query {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            shared.cookie, shared.token
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = random_token().expect("random");
        assert_eq!(t.len(), 32);
        assert!(check_token(&t).is_ok());
        assert!(check_token("short").is_err());
        assert!(check_token("0123456789abcdef;x").is_err());
        assert!(check_token(&"a".repeat(MAX_TOKEN_LEN + 1)).is_err());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn cookie_and_bearer() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; heapscope_token_7878=xyz"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert_eq!(from_cookie(&h, "heapscope_token_7878"), Some("xyz"));
        assert_eq!(from_cookie(&h, "heapscope_token_1"), None);
        assert_eq!(from_bearer(&h), Some("tok"));
    }
}
