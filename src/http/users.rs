use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{
    cookie_name, optional_json, request_is_https, session_cookie, CurrentUser, Json, Query, ACCESS_COOKIE,
    REFRESH_COOKIE,
};
use super::openapi::ErrorBody;
use super::{auth_rate_limit, check_limit, ApiError, AppState};
use crate::auth::{ProfilePatch, Session};
use crate::domain::user::{AccountStatus, Address, Role, User};
use crate::domain::Timestamp;
use sha2::Digest as _;

pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    let limited = OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(signin))
        .routes(routes!(refresh))
        .route_layer(middleware::from_fn_with_state(state, auth_rate_limit));
    OpenApiRouter::new().merge(limited).routes(routes!(signout)).routes(routes!(me, update_me))
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub role: Role,
    pub status: AccountStatus,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SignupBody {
    email: String,
    password: String,
    name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SigninBody {
    email: String,
    password: String,
}

/// How a client keeps its session: `tokens` (the default) returns the tokens in the body as well as in the cookies;
/// `cookie` (the web app) leaves them out of the body, so no script on the page ever holds one.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SessionParams {
    /// `cookie` or `tokens` (the default).
    #[param(value_type = Option<String>)]
    session: Option<SessionMode>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
enum SessionMode {
    #[default]
    Tokens,
    Cookie,
}

/// The refresh token, unless it comes as the `refresh_token` cookie (then the body may be empty).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: Option<String>,
}

/// A session cookie: `__Host-`-named at `Path=/` where it is `Secure`; otherwise plain, the refresh token's at
/// `/api/users` only.
fn cookie_header(name: &'static str, value: &str, max_age: u64, secure: bool) -> Option<HeaderValue> {
    let path = if name == REFRESH_COOKIE && !secure { "/api/users" } else { "/" };
    let (name, secure) = (cookie_name(name, secure), if secure { "; Secure" } else { "" });
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"))
        .ok()
}

/// Cookies are `Secure` when configured so, and always when the client came over HTTPS.
fn secure_cookies(state: &AppState, headers: &HeaderMap) -> bool {
    state.cookie_secure || request_is_https(headers)
}

/// A session: the user and its tokens, also set as HTTP-only cookies (`access_token` and `refresh_token`, named
/// `__Host-access_token` and `__Host-refresh_token` where they are `Secure`). The tokens are left out of the body
/// for a client that keeps its session in the cookies (`?session=cookie`, or a refresh by cookie).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SessionView {
    user: UserView,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds the access token lives.
    expires_in: u64,
    /// Single use: refreshing returns a new one, and presenting a used one revokes the whole sign-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    refresh_expires_in: u64,
}

/// The session as JSON (with the tokens unless `mode` is `cookie`) plus the tokens as HTTP-only cookies.
fn session_response(status: StatusCode, session: Session, secure: bool, mode: SessionMode) -> Response {
    let in_body = |token: &String| (mode == SessionMode::Tokens).then(|| token.clone());
    let body = SessionView {
        user: UserView::from(session.user),
        access_token: in_body(&session.access_token),
        token_type: "Bearer",
        expires_in: session.access_ttl_secs,
        refresh_token: in_body(&session.refresh_token),
        refresh_expires_in: session.refresh_ttl_secs,
    };
    let mut response = (status, Json(body)).into_response();
    let cookies = [
        cookie_header(ACCESS_COOKIE, &session.access_token, session.access_ttl_secs, secure),
        cookie_header(REFRESH_COOKIE, &session.refresh_token, session.refresh_ttl_secs, secure),
    ];
    for c in cookies.into_iter().flatten() {
        response.headers_mut().append(header::SET_COOKIE, c);
    }
    response
}

#[utoipa::path(post, path = "/api/users/signup", tag = "users", request_body = SignupBody, params(SessionParams),
    responses((status = 201, description = "Signed up and signed in", body = SessionView),
        (status = 409, description = "`email_taken`", body = ErrorBody),
        (status = 422, description = "`invalid_email`, `weak_password`, `invalid_text`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (per client address)", body = ErrorBody)))]
async fn signup(
    State(state): State<AppState>,
    Query(params): Query<SessionParams>,
    headers: HeaderMap,
    Json(body): Json<SignupBody>,
) -> Result<Response, ApiError> {
    let session = state.auth.signup(&body.email, &body.password, &body.name).await?;
    tracing::info!(user_id = %session.user.id, "user signed up");
    let mode = params.session.unwrap_or_default();
    Ok(session_response(StatusCode::CREATED, session, secure_cookies(&state, &headers), mode))
}

#[utoipa::path(post, path = "/api/users/signin", tag = "users", request_body = SigninBody, params(SessionParams),
    responses((status = 200, body = SessionView),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        (status = 403, description = "`account_blocked`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this address, or on this account from any",
            body = ErrorBody),
        (status = 503, description = "`auth_busy`", body = ErrorBody)))]
async fn signin(
    State(state): State<AppState>,
    Query(params): Query<SessionParams>,
    headers: HeaderMap,
    Json(body): Json<SigninBody>,
) -> Result<Response, ApiError> {
    // Attempts on one account are counted whatever address they come from, before any hashing: guesses spread over
    // many addresses are slowed as well. The key is a digest, so no address is kept in Redis.
    if let Ok(email) = crate::domain::user::normalize_email(&body.email) {
        let account = crate::auth::tokens::hex(&sha2::Sha256::digest(email.as_bytes())[..16]);
        check_limit(state.limits.signin_per_account.as_ref(), "signin_account", &account).await?;
    }
    let session = state.auth.signin(&body.email, &body.password).await?;
    let mode = params.session.unwrap_or_default();
    Ok(session_response(StatusCode::OK, session, secure_cookies(&state, &headers), mode))
}

/// Refresh token from the JSON body (`refreshToken`) or the `refresh_token` cookie. Renewed by the cookie, the new
/// tokens go only into the cookies: a script on the page (an injected one included) cannot mint a token it can read.
#[utoipa::path(post, path = "/api/users/refresh", tag = "users", request_body(content = Option<RefreshBody>),
    responses((status = 200, body = SessionView),
        (status = 401, description = "`unauthenticated`, `invalid_token`, `token_expired`, `refresh_token_reused`", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
async fn refresh(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let body: RefreshBody = optional_json(&body)?;
    let (token, mode) = match body.refresh_token.filter(|t| !t.is_empty()) {
        Some(token) => (token, SessionMode::Tokens),
        None => match session_cookie(&headers, REFRESH_COOKIE) {
            Some(token) => (token.to_string(), SessionMode::Cookie),
            None => {
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "a refresh token is required"))
            }
        },
    };
    let session = state.auth.refresh(&token).await?;
    Ok(session_response(StatusCode::OK, session, secure_cookies(&state, &headers), mode))
}

#[utoipa::path(post, path = "/api/users/signout", tag = "users", security(("bearer" = []), ("cookie" = [])),
    responses((status = 204, description = "Signed out: this sign-in's tokens are revoked, its sockets closed"),
        (status = 401, body = ErrorBody)))]
async fn signout(
    State(state): State<AppState>,
    headers: HeaderMap,
    CurrentUser(principal): CurrentUser,
) -> Result<Response, ApiError> {
    state.auth.signout(&principal).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let secure = secure_cookies(&state, &headers);
    for name in [ACCESS_COOKIE, REFRESH_COOKIE] {
        if let Some(c) = cookie_header(name, "", 0, secure) {
            response.headers_mut().append(header::SET_COOKIE, c);
        }
    }
    Ok(response)
}

#[utoipa::path(get, path = "/api/users/me", tag = "users", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody)))]
async fn me(CurrentUser(principal): CurrentUser) -> Json<UserView> {
    Json(principal.user.into())
}

#[utoipa::path(patch, path = "/api/users/me", tag = "users", request_body = ProfilePatch,
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_me(
    State(state): State<AppState>,
    CurrentUser(principal): CurrentUser,
    Json(patch): Json<ProfilePatch>,
) -> Result<Json<UserView>, ApiError> {
    let user = state.auth.update_profile(&principal.user.id, patch).await?;
    Ok(Json(user.into()))
}
