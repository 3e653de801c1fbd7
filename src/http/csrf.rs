//! Cross-site request forgery: a browser attaches the session cookies to requests that any other site makes, so a
//! request authenticated by cookie must come from a page the server trusts.
//!
//! Unsafe methods (POST, PUT, PATCH, DELETE) carrying the `access_token` or `refresh_token` cookie, and no
//! `Authorization` header, must show an `Origin` (or, without one, a `Referer`) that is the server's own origin (the
//! request's `Host`) or one listed in `http.cors_allowed_origins`. The WebSocket upgrade applies the same check when
//! the cookie authenticates it. Requests with neither header are let through: browsers always send `Origin` on
//! cross-origin unsafe requests and on WebSocket upgrades, and clients that send neither are not browsers. A bearer
//! token is never attached by a browser on its own, so bearer requests are not checked.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::extract::{request_is_https, session_cookie, ACCESS_COOKIE, REFRESH_COOKIE};
use super::{ApiError, AppState};

/// Refuses cookie-authenticated unsafe requests from foreign origins.
pub async fn refuse_cross_site_writes(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    if unsafe_method && cookie_authenticated(req.headers()) {
        if let Err(refused) = check_origin(req.headers(), &state.http.cors_allowed_origins) {
            return refused.into_response();
        }
    }
    next.run(req).await
}

/// The request would be authenticated by a session cookie rather than a bearer token. Only a `Bearer` header
/// counts: a browser can attach other `Authorization` schemes (cached Basic credentials) to a cross-site request by
/// itself, but never a bearer token.
pub fn cookie_authenticated(headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    !bearer && (session_cookie(headers, ACCESS_COOKIE).is_some() || session_cookie(headers, REFRESH_COOKIE).is_some())
}

/// `Ok` when the request's `Origin` (else `Referer`) is the server's own or an allowed one, or when it has neither.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let claimed = match (headers.get(header::ORIGIN), headers.get(header::REFERER)) {
        (Some(origin), _) => origin.to_str().ok().and_then(normalize),
        (None, Some(referer)) => referer.to_str().ok().and_then(normalize),
        (None, None) => return Ok(()),
    };
    match claimed {
        Some(origin) if is_own(headers, &origin) || allowed.iter().any(|a| normalize(a).as_ref() == Some(&origin)) => {
            Ok(())
        }
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            "this request comes from another site; cookie-authenticated changes are accepted only from this \
             site or an allowed origin (use `Authorization: Bearer` otherwise)",
        )),
    }
}

/// The server's own origin: the `Host` it was reached at, over HTTPS, or over plain HTTP when the request itself
/// did not come over HTTPS.
fn is_own(headers: &HeaderMap, origin: &str) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let own = |scheme: &str| normalize(&format!("{scheme}://{host}")).is_some_and(|o| o == origin);
    own("https") || (!request_is_https(headers) && own("http"))
}

/// `scheme://host[:port]` of an origin or URL, lower-cased and without the scheme's default port; `None` for
/// anything but an http(s) origin (including the opaque origin `null`).
fn normalize(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default().to_ascii_lowercase();
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    const ALLOWED: &[&str] = &["https://Shop.Example:443", "http://localhost:3000"];

    fn check(pairs: &[(&'static str, &str)]) -> bool {
        let allowed: Vec<String> = ALLOWED.iter().map(|s| s.to_string()).collect();
        check_origin(&headers(pairs), &allowed).is_ok()
    }

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        assert_eq!(normalize("HTTPS://Shop.Example:443/path?q#f").as_deref(), Some("https://shop.example"));
        assert_eq!(normalize("http://shop.example:8080").as_deref(), Some("http://shop.example:8080"));
        assert_eq!(normalize("null"), None);
        assert_eq!(normalize("file:///etc/passwd"), None);
        assert_eq!(normalize("https://user@shop.example"), None);
        assert_eq!(normalize("https://"), None);
    }

    #[test]
    fn allowed_and_own_origins_pass_others_do_not() {
        assert!(check(&[("origin", "https://shop.example")]));
        assert!(check(&[("referer", "http://localhost:3000/cart")]));
        assert!(check(&[("host", "api.example:8000"), ("origin", "http://api.example:8000")]));
        assert!(check(&[("host", "api.example"), ("origin", "https://api.example")]));
        assert!(check(&[]), "non-browser clients send neither header");

        assert!(!check(&[("origin", "https://evil.example")]));
        assert!(!check(&[("origin", "null")]));
        assert!(!check(&[("origin", "https://shop.example.evil.example")]));
        assert!(!check(&[("origin", "http://shop.example")]), "the allowed origin is https only");
        assert!(!check(&[("referer", "https://evil.example/https://shop.example")]));
        assert!(!check(&[("host", "api.example"), ("origin", "http://api.example:8000")]));
        // Origin wins over Referer.
        assert!(!check(&[("origin", "https://evil.example"), ("referer", "https://shop.example/")]));
        // Behind a TLS proxy the server's own origin is https only.
        assert!(!check(&[("host", "api.example"), ("x-forwarded-proto", "https"), ("origin", "http://api.example")]));
        assert!(check(&[("host", "api.example"), ("x-forwarded-proto", "https"), ("origin", "https://api.example")]));
    }

    #[test]
    fn a_wildcard_cors_list_does_not_admit_cookie_writes() {
        let any = vec!["*".to_string()];
        assert!(check_origin(&headers(&[("origin", "https://evil.example")]), &any).is_err());
    }

    #[test]
    fn only_cookie_sessions_without_a_bearer_token_are_checked() {
        assert!(cookie_authenticated(&headers(&[("cookie", "theme=dark; access_token=abc")])));
        assert!(cookie_authenticated(&headers(&[("cookie", "refresh_token=abc")])));
        assert!(!cookie_authenticated(&headers(&[("cookie", "theme=dark")])));
        assert!(!cookie_authenticated(&headers(&[("cookie", "access_token=abc"), ("authorization", "Bearer x")])));
    }
}
