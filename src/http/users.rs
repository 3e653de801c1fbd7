use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use serde::{Deserialize, Serialize};

use super::extract::{cookie, optional_json, request_is_https, CurrentUser, Json, ACCESS_COOKIE, REFRESH_COOKIE};
use super::{auth_rate_limit, ApiError, AppState};
use crate::auth::{ProfilePatch, Session};
use crate::domain::user::{AccountStatus, Address, Role, User};
use crate::domain::Timestamp;

pub fn router(state: AppState) -> Router<AppState> {
    let limited = Router::new()
        .route("/api/users/signup", post(signup))
        .route("/api/users/signin", post(signin))
        .route("/api/users/refresh", post(refresh))
        .route_layer(middleware::from_fn_with_state(state, auth_rate_limit));
    Router::new()
        .merge(limited)
        .route("/api/users/signout", post(signout))
        .route("/api/users/me", get(me).patch(update_me))
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub role: Role,
    pub status: AccountStatus,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            email: u.email,
            name: u.name,
            phone: u.phone,
            address: u.address,
            role: u.role,
            status: u.status,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    email: String,
    password: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SigninBody {
    email: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: Option<String>,
}

fn cookie_header(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"))
        .ok()
}

/// Cookies are `Secure` when configured so, and always when the client came over HTTPS.
fn secure_cookies(state: &AppState, headers: &HeaderMap) -> bool {
    state.cookie_secure || request_is_https(headers)
}

/// The session as JSON plus the same tokens as HTTP-only cookies.
fn session_response(status: StatusCode, session: Session, secure: bool) -> Response {
    let body = serde_json::json!({
        "user": UserView::from(session.user),
        "accessToken": session.access_token,
        "tokenType": "Bearer",
        "expiresIn": session.access_ttl_secs,
        "refreshToken": session.refresh_token,
        "refreshExpiresIn": session.refresh_ttl_secs,
    });
    let mut response = (status, Json(body)).into_response();
    let cookies = [
        cookie_header(ACCESS_COOKIE, &session.access_token, "/", session.access_ttl_secs, secure),
        cookie_header(REFRESH_COOKIE, &session.refresh_token, "/api/users", session.refresh_ttl_secs, secure),
    ];
    for c in cookies.into_iter().flatten() {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

async fn signup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<SignupBody>,
) -> Result<Response, ApiError> {
    let session = state.auth.signup(&body.email, &body.password, &body.name).await?;
    tracing::info!(user_id = %session.user.id, "user signed up");
    Ok(session_response(StatusCode::CREATED, session, secure_cookies(&state, &headers)))
}

async fn signin(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<SigninBody>,
) -> Result<Response, ApiError> {
    let session = state.auth.signin(&body.email, &body.password).await?;
    Ok(session_response(StatusCode::OK, session, secure_cookies(&state, &headers)))
}

/// Refresh token from the JSON body (`refreshToken`) or the `refresh_token` cookie.
async fn refresh(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let body: RefreshBody = optional_json(&body)?;
    let token = body
        .refresh_token
        .or_else(|| cookie(&headers, REFRESH_COOKIE).map(str::to_string))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "a refresh token is required"))?;
    let session = state.auth.refresh(&token).await?;
    Ok(session_response(StatusCode::OK, session, secure_cookies(&state, &headers)))
}

async fn signout(
    State(state): State<AppState>,
    headers: HeaderMap,
    CurrentUser(principal): CurrentUser,
) -> Result<Response, ApiError> {
    state.auth.signout(&principal).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let secure = secure_cookies(&state, &headers);
    for (name, path) in [(ACCESS_COOKIE, "/"), (REFRESH_COOKIE, "/api/users")] {
        if let Some(c) = cookie_header(name, "", path, 0, secure) {
            response.headers_mut().append(header::SET_COOKIE, c);
        }
    }
    Ok(response)
}

async fn me(CurrentUser(principal): CurrentUser) -> Json<UserView> {
    Json(principal.user.into())
}

async fn update_me(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Json(patch): Json<ProfilePatch>,
) -> Result<Json<UserView>, ApiError> {
    let user = state.auth.update_profile(&principal.user.id, patch).await?;
    Ok(Json(user.into()))
}
