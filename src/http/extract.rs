//! Extractors whose rejections use the API's error shape, and the authentication extractors.

mod input;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::auth::{AuthError, Principal};

/// JSON body or response. A body must be a JSON object sent as `application/json`; malformed JSON, wrong types,
/// missing and unknown fields and oversized bodies become 4xx errors that name the field by its JSON path.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large()
            } else {
                ApiError::bad_request("invalid_body", "the request body could not be read")
            }
        })?;
        input::parse_body(&bytes).map(Json)
    }
}

/// `application/json`, or any `application/*+json`, with or without parameters.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses an optional JSON body from raw bytes (empty means `T::default()`).
pub fn optional_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    input::parse_body(bytes)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(input::query_error)
    }
}

pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|p| Path(p.0)).map_err(input::path_error)
    }
}

pub const ACCESS_COOKIE: &str = "access_token";
pub const REFRESH_COOKIE: &str = "refresh_token";

/// The name a session cookie is set under: with the `__Host-` prefix where cookies are `Secure`, so that no other
/// host of the domain (a sibling subdomain) can set or shadow it: the browser accepts a `__Host-` cookie only with
/// `Secure`, `Path=/` and no `Domain`.
pub fn cookie_name(name: &'static str, secure: bool) -> String {
    if secure {
        format!("__Host-{name}")
    } else {
        name.to_string()
    }
}

/// A session cookie (`access_token` or `refresh_token`): its `__Host-` form, or the plain one on a request that
/// did not come over HTTPS (where `Secure` cookies are not sent anyway). Over HTTPS a plain-named cookie is
/// ignored: another host of the domain could have set it.
pub fn session_cookie<'a>(headers: &'a axum::http::HeaderMap, name: &'static str) -> Option<&'a str> {
    cookie(headers, &cookie_name(name, true))
        .or_else(|| if request_is_https(headers) { None } else { cookie(headers, name) })
        .filter(|v| !v.is_empty())
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(parts: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    parts
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The client reached us over HTTPS, as a TLS-terminating proxy in front says: `X-Forwarded-Proto: https` or
/// `Forwarded: proto=https` (the first, client-facing, hop of each). A client faking it over plain HTTP only gets
/// cookies it will not send back over plain HTTP.
pub fn request_is_https(headers: &axum::http::HeaderMap) -> bool {
    let first = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.split(',').next());
    let forwarded_proto = first("x-forwarded-proto").map(str::trim);
    let forwarded = first("forwarded")
        .into_iter()
        .flat_map(|hop| hop.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case("proto"))
        .map(|(_, value)| value.trim().trim_matches('"'));
    [forwarded_proto, forwarded].into_iter().flatten().any(|proto| proto.eq_ignore_ascii_case("https"))
}

/// The access token from `Authorization: Bearer` or, failing that, the `access_token` cookie.
fn access_token(parts: &Parts) -> Result<&str, AuthError> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::InvalidToken)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::InvalidToken)?;
        return if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            Ok(token.trim())
        } else {
            Err(AuthError::InvalidToken)
        };
    }
    session_cookie(&parts.headers, ACCESS_COOKIE).ok_or(AuthError::MissingToken)
}

/// A signed-in user (any role).
pub struct CurrentUser(pub Principal);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = access_token(parts)?;
        let principal = state.auth.authenticate(token).await?;
        tracing::Span::current().record("user_id", principal.user.id.as_str());
        Ok(CurrentUser(principal))
    }
}

/// A signed-in administrator; anyone else gets 403.
pub struct AdminUser(pub Principal);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let CurrentUser(principal) = CurrentUser::from_request_parts(parts, state).await?;
        if principal.is_admin() {
            Ok(AdminUser(principal))
        } else {
            Err(ApiError::forbidden())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn https(pairs: &[(&'static str, &str)]) -> bool {
        let headers: axum::http::HeaderMap =
            pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), v.parse().unwrap())).collect();
        request_is_https(&headers)
    }

    #[test]
    fn https_is_read_from_the_first_forwarded_hop() {
        assert!(!https(&[]));
        assert!(https(&[("x-forwarded-proto", "HTTPS")]));
        assert!(https(&[("x-forwarded-proto", "https, http")]));
        assert!(!https(&[("x-forwarded-proto", "http, https")]));
        assert!(https(&[("forwarded", "for=192.0.2.60;proto=https;by=203.0.113.43")]));
        assert!(https(&[("forwarded", "for=\"[2001:db8::1]\"; Proto=\"https\", for=10.0.0.1;proto=http")]));
        assert!(!https(&[("forwarded", "for=192.0.2.60;proto=http, for=10.0.0.1;proto=https")]));
    }
}
