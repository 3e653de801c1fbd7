//! `GET /ws/notifications`: live notifications for one signed-in user.
//!
//! Authentication: `Authorization: Bearer` or the `access_token` cookie on the upgrade request, or else a first
//! message `{"type":"auth","token":"..."}` within `notifications.ws_auth_timeout_ms` (the socket is closed with code
//! 4401 otherwise). The server then sends `{"type":"ready","userId":...}`, the notifications missed since `after`
//! (query parameter, or `after` in the auth message) and from then on every new notification of the user plus public
//! broadcasts, as `{"type":"notification","notification":{...}}`. `{"type":"resume","after":N}` replays from N;
//! `{"type":"ping"}` is answered with `{"type":"pong"}`. The socket closes with 4401 when the access token expires or
//! its session is signed out or revoked, and with 4403 when the account is blocked: at once for sessions ended on
//! this node, and within 30 s (a periodic re-check) otherwise.
//!
//! At most `notifications.max_sockets_per_user` sockets are open per user and `max_sockets_per_client` per client
//! address (authenticated or not): past either, the upgrade is answered 429 `too_many_sockets`, or, for a user
//! known only from the auth message, the socket is closed with 4429. A socket replays from the store at most once a
//! second (`resume` more often is answered with an error), so a client cannot keep the store busy with replays.
//!
//! An upgrade authenticated by the cookie must come from an allowed origin (see [`super::csrf`]), or another site
//! could open a socket in the user's name. Messages are small: before authentication one over 4 KiB closes the
//! socket with 1009, and any frame or message over 64 KiB does too, refused at its header without being read.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{CurrentUser, Query};
use super::open_counts::{Held, OpenCounts};
use super::{csrf, ApiError, AppState, ClientIp};
use crate::auth::{AuthError, Principal, SessionEnd};
use crate::bridge::recent::RecentIds;
use crate::netaddr::client_key;
use crate::store::Notification;

const UNAUTHORIZED: u16 = 4401;
const TOO_MANY: u16 = 4429;
/// Replays a socket may ask for: one a second.
const RESUME_EVERY: Duration = Duration::from_secs(1);
const FORBIDDEN: u16 = 4403;
/// Sessions ended on another node are noticed by this periodic check (on this node, at once).
const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// A client must take each message within this time or its socket is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 6455 "message too big".
const TOO_BIG: u16 = 1009;
/// Largest message before the client has authenticated: an auth message is a few hundred bytes.
const UNAUTHENTICATED_MESSAGE_LIMIT: usize = 4 * 1024;
/// Largest frame and message at any time.
const MESSAGE_LIMIT: usize = 64 * 1024;
const BACKLOG_LIMIT: usize = 500;

/// How many notification sockets may be open per user and per client address, and how many are.
pub struct SocketLimits {
    per_user: usize,
    per_client: usize,
    by_user: OpenCounts,
    by_client: OpenCounts,
}

impl SocketLimits {
    /// `by_user`: the sockets open per user, shared with the [`crate::notify::NotificationHub`], which pushes only
    /// to users with one open.
    pub fn new(per_user: usize, per_client: usize, by_user: OpenCounts) -> Self {
        Self { per_user, per_client, by_user, by_client: OpenCounts::default() }
    }

    fn hold_user(&self, user_id: &str) -> Option<Held> {
        self.by_user.try_hold(user_id, self.per_user)
    }
}

fn too_many_sockets() -> ApiError {
    let mut err = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_sockets",
        "too many notification sockets open; close one first",
    );
    err.retry_after_secs = Some(5);
    err
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Params {
    /// Replay the notifications with an id above this one first.
    after: Option<u64>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Auth { token: String, after: Option<u64> },
    Resume { after: u64 },
    Ping,
}

#[utoipa::path(get, path = "/ws/notifications", tag = "notifications", params(Params),
    description = r#"Live notifications for one signed-in user (a WebSocket; answers 101 Switching Protocols).

Authentication: `Authorization: Bearer` or the `access_token` cookie on the upgrade request, or else a first message `{"type":"auth","token":"...","after":N}` within `notifications.ws_auth_timeout_ms` (closed with 4401 otherwise). An upgrade authenticated by the cookie must come from an allowed origin.

Server messages: `{"type":"ready","userId":"..."}`; then the notifications missed since `after` (the query parameter, or `after` in the auth message) and every new notification of the user and every public broadcast, each as `{"type":"notification","notification":Notification}`; `{"type":"pong"}`.

Client messages: `{"type":"auth","token":"...","after":N}`, `{"type":"resume","after":N}` (replays from N), `{"type":"ping"}`.

At most `notifications.max_sockets_per_user` sockets per user and `max_sockets_per_client` per client address; a `resume` at most once a second.

Close codes: 4401 when the access token expires or its session is signed out or revoked, 4403 when the account is blocked, 4429 when a user known from the auth message has all their sockets open, 1009 for a message over 4 KiB before authentication or over 64 KiB at any time."#,
    responses((status = 101, description = "Switched to the WebSocket protocol"),
        (status = 401, description = "Bad credentials on the upgrade request", body = super::openapi::ErrorBody),
        (status = 403, description = "`cross_site_request` or `account_blocked`", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_sockets`: this user's or this address's sockets are all open", body = super::openapi::ErrorBody)))]
async fn upgrade(
    State(state): State<AppState>,
    Query(params): Query<Params>,
    mut parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    if csrf::cookie_authenticated(&parts.headers) {
        if let Err(refused) = csrf::check_origin(&parts.headers, &state.http.cors_allowed_origins) {
            return refused.into_response();
        }
    }
    let client = parts.extensions.get::<ClientIp>().map(|ClientIp(ip)| client_key(*ip)).unwrap_or_default();
    let Some(client_place) = state.sockets.by_client.try_hold(&client, state.sockets.per_client) else {
        return too_many_sockets().into_response();
    };
    // Credentials on the upgrade request are checked now; a bad token is refused before upgrading.
    let has_credentials = parts.headers.contains_key(axum::http::header::AUTHORIZATION)
        || super::extract::session_cookie(&parts.headers, super::extract::ACCESS_COOKIE).is_some();
    let principal = if has_credentials {
        match <CurrentUser as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state).await {
            Ok(CurrentUser(p)) => Some(p),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let user_place = match &principal {
        Some(p) => match state.sockets.hold_user(&p.user.id) {
            Some(held) => Some(held),
            None => return too_many_sockets().into_response(),
        },
        None => None,
    };
    ws.max_message_size(MESSAGE_LIMIT).max_frame_size(MESSAGE_LIMIT).on_upgrade(move |socket| async move {
        let _client_place = client_place;
        session(socket, state, principal.map(|p| (p, user_place)), params.after).await;
    })
}

/// Closes with a code the client can read: sends the close frame, then waits briefly for the client's reply so the
/// frame is not lost to a reset connection.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    if matches!(tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await, Ok(Ok(()))) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.recv().await {} })
            .await;
    }
}

/// Sends one message; `false` if the socket is gone or the client has not taken it within [`SEND_TIMEOUT`]. A
/// client that stops reading is dropped, so it cannot hold its connection (and its slot) while sign-out, blocking
/// and token expiry wait behind a send that never completes.
async fn send(socket: &mut WebSocket, value: serde_json::Value) -> bool {
    let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(value.to_string().into()))).await;
    matches!(sent, Ok(Ok(())))
}

/// A read failed because the frame or message is over [`MESSAGE_LIMIT`].
fn too_big(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// Waits for `{"type":"auth"}` as the first message; otherwise the close code and reason to send.
async fn authenticate_late(
    socket: &mut WebSocket,
    state: &AppState,
) -> Result<(Principal, Option<u64>), (u16, &'static str)> {
    const REQUIRED: (u16, &str) = (UNAUTHORIZED, "authentication required");
    const OVERSIZED: (u16, &str) = (TOO_BIG, "message too big");
    let first = match tokio::time::timeout(state.ws_auth_timeout, socket.recv()).await {
        Ok(Some(Ok(message))) => message,
        Ok(Some(Err(error))) if too_big(&error) => return Err(OVERSIZED),
        _ => return Err(REQUIRED),
    };
    let size = match &first {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        _ => 0,
    };
    if size > UNAUTHENTICATED_MESSAGE_LIMIT {
        return Err(OVERSIZED);
    }
    let Message::Text(text) = first else { return Err(REQUIRED) };
    let Ok(ClientMessage::Auth { token, after }) = serde_json::from_str(text.as_str()) else { return Err(REQUIRED) };
    let principal = state.auth.authenticate(&token).await.map_err(|_| REQUIRED)?;
    Ok((principal, after))
}

/// A socket's session: `principal` is the user known from the upgrade request with their place under the per-user
/// cap, or none when the first message must authenticate.
async fn session(
    mut socket: WebSocket,
    state: AppState,
    principal: Option<(Principal, Option<Held>)>,
    after: Option<u64>,
) {
    let (principal, after, _user_place) = match principal {
        Some((p, place)) => (p, after, place),
        None => match authenticate_late(&mut socket, &state).await {
            Ok((p, late_after)) => match state.sockets.hold_user(&p.user.id) {
                Some(place) => (p, late_after.or(after), Some(place)),
                None => return close(socket, TOO_MANY, "too many sockets").await,
            },
            Err((code, reason)) => return close(socket, code, reason).await,
        },
    };
    let user_id = principal.user.id.clone();
    let expires_in = (principal.claims.exp - chrono::Utc::now().timestamp()).max(0) as u64;
    let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
    tokio::pin!(expiry);
    // Subscribe before reading the backlog so nothing falls between the two.
    let mut live = state.hub.subscribe();
    let mut ended = state.auth.session_ends();
    if let Err(e) = state.auth.recheck(&principal.claims).await {
        return close_ended(socket, &e).await;
    }
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    if !send(&mut socket, json!({ "type": "ready", "userId": user_id })).await {
        return;
    }
    let mut sent = Sent::new();
    let mut last_resume: Option<tokio::time::Instant> = None;
    if let Some(after) = after {
        if !replay(&mut socket, &state, &user_id, after, &mut sent).await {
            return;
        }
    }
    tracing::debug!(%user_id, "notification socket open");
    loop {
        tokio::select! {
            pushed = live.recv() => match pushed {
                Ok(n) if visible(&n, &user_id) && sent.first_time(n.id) => {
                    if !send(&mut socket, json!({ "type": "notification", "notification": n })).await {
                        break;
                    }
                }
                Ok(_) => {}
                // Fell behind the live feed: catch up from the store.
                Err(RecvError::Lagged(_)) => {
                    if !replay(&mut socket, &state, &user_id, sent.catch_up_from(), &mut sent).await {
                        break;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = match serde_json::from_str::<ClientMessage>(text.as_str()) {
                        Ok(ClientMessage::Ping) => Some(json!({ "type": "pong" })),
                        Ok(ClientMessage::Resume { .. }) if last_resume.is_some_and(|at| at.elapsed() < RESUME_EVERY) => {
                            Some(json!({ "type": "error", "message": "resume at most once a second" }))
                        }
                        Ok(ClientMessage::Resume { after }) => {
                            last_resume = Some(tokio::time::Instant::now());
                            if !replay(&mut socket, &state, &user_id, after, &mut sent).await {
                                break;
                            }
                            None
                        }
                        Ok(ClientMessage::Auth { .. }) => None,
                        Err(_) => Some(json!({
                            "type": "error",
                            "message": "unknown message: expected {\"type\":\"ping\"} or {\"type\":\"resume\",\"after\":<notification id>}",
                        })),
                    };
                    if let Some(r) = reply {
                        if !send(&mut socket, r).await {
                            break;
                        }
                    }
                }
                Some(Err(error)) if too_big(&error) => return close(socket, TOO_BIG, "message too big").await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            end = ended.recv() => match end {
                Ok(end) if end.ends(&principal.claims) => {
                    let code = if matches!(end, SessionEnd::Blocked { .. }) { AuthError::AccountBlocked } else { AuthError::TokenRevoked };
                    return close_ended(socket, &code).await;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => if let Err(e) = state.auth.recheck(&principal.claims).await {
                    return close_ended(socket, &e).await;
                },
                Err(RecvError::Closed) => break,
            },
            _ = recheck.tick() => if let Err(e) = state.auth.recheck(&principal.claims).await {
                return close_ended(socket, &e).await;
            },
            _ = &mut expiry => return close(socket, UNAUTHORIZED, "token expired").await,
        }
    }
}

/// Closes a socket whose session ended: 4403 for a blocked account, 4401 otherwise (signed out, revoked, or the
/// check itself failed: revocation checks fail closed).
async fn close_ended(socket: WebSocket, why: &AuthError) {
    match why {
        AuthError::AccountBlocked => close(socket, FORBIDDEN, "account blocked").await,
        _ => close(socket, UNAUTHORIZED, "session ended").await,
    }
}

fn visible(n: &Notification, user_id: &str) -> bool {
    n.user_id.as_deref().is_none_or(|u| u == user_id)
}

/// Sends the user's stored notifications with an id above `after` that this socket has not sent yet; false when the
/// socket is gone.
async fn replay(socket: &mut WebSocket, state: &AppState, user_id: &str, after: u64, sent: &mut Sent) -> bool {
    let mut from = after;
    loop {
        let batch = match state.notifications.notifications_after(user_id, from, BACKLOG_LIMIT).await {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(%error, "cannot replay notifications");
                return true;
            }
        };
        let done = batch.len() < BACKLOG_LIMIT;
        for n in batch {
            from = n.id;
            if sent.first_time(n.id) && !send(socket, json!({ "type": "notification", "notification": n })).await {
                return false;
            }
        }
        if done {
            return true;
        }
    }
}

/// Ids a socket has sent. Live pushes do not arrive in id order: every process pushes the events it consumes, from
/// several partitions, and the id was taken by whichever process stored the notification first. So a socket
/// remembers the ids it sent rather than only the highest one.
struct Sent {
    highest: u64,
    recent: RecentIds<u64>,
}

/// How far back, in notification ids, a socket that fell behind looks for pushes it missed: far more than the
/// notifications in flight at once, whose ids may come out of order.
const REORDER_WINDOW: u64 = 1_000;

impl Sent {
    fn new() -> Self {
        Self { highest: 0, recent: RecentIds::new(4 * REORDER_WINDOW as usize) }
    }

    /// Records `id`; false when it was sent already.
    fn first_time(&mut self, id: u64) -> bool {
        let new = self.recent.insert(id);
        self.highest = self.highest.max(id);
        new
    }

    /// Where a replay after falling behind starts: a window below the highest id sent, so pushes missed out of
    /// order are found too (what was sent is not sent again).
    fn catch_up_from(&self) -> u64 {
        self.highest.saturating_sub(REORDER_WINDOW)
    }
}
