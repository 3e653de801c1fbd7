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

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::extract::{CurrentUser, Query};
use super::AppState;
use crate::auth::{AuthError, Principal, SessionEnd};
use crate::store::Notification;

const UNAUTHORIZED: u16 = 4401;
const FORBIDDEN: u16 = 4403;
/// Sessions ended on another node are noticed by this periodic check (on this node, at once).
const RECHECK_EVERY: Duration = Duration::from_secs(30);
const BACKLOG_LIMIT: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/ws/notifications", get(upgrade))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    after: Option<u64>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Auth { token: String, after: Option<u64> },
    Resume { after: u64 },
    Ping,
}

async fn upgrade(
    State(state): State<AppState>,
    Query(params): Query<Params>,
    mut parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    // Credentials on the upgrade request are checked now; a bad token is refused before upgrading.
    let has_credentials = parts.headers.contains_key(axum::http::header::AUTHORIZATION)
        || super::extract::cookie(&parts.headers, super::extract::ACCESS_COOKIE).is_some();
    let principal = if has_credentials {
        match <CurrentUser as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state).await {
            Ok(CurrentUser(p)) => Some(p),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    ws.on_upgrade(move |socket| session(socket, state, principal, params.after))
}

/// Closes with a code the client can read: sends the close frame, then waits briefly for the client's reply so the
/// frame is not lost to a reset connection.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Some(Ok(_)) = socket.recv().await {} })
            .await;
    }
}

async fn send(socket: &mut WebSocket, value: serde_json::Value) -> bool {
    socket.send(Message::Text(value.to_string().into())).await.is_ok()
}

/// Waits for `{"type":"auth"}` as the first message.
async fn authenticate_late(socket: &mut WebSocket, state: &AppState) -> Option<(Principal, Option<u64>)> {
    let first = tokio::time::timeout(state.ws_auth_timeout, socket.recv()).await.ok()??.ok()?;
    let Message::Text(text) = first else { return None };
    let Ok(ClientMessage::Auth { token, after }) = serde_json::from_str(text.as_str()) else { return None };
    let principal = state.auth.authenticate(&token).await.ok()?;
    Some((principal, after))
}

async fn session(mut socket: WebSocket, state: AppState, principal: Option<Principal>, after: Option<u64>) {
    let (principal, after) = match principal {
        Some(p) => (p, after),
        None => match authenticate_late(&mut socket, &state).await {
            Some((p, late_after)) => (p, late_after.or(after)),
            None => return close(socket, UNAUTHORIZED, "authentication required").await,
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
    let mut last = 0;
    if let Some(after) = after {
        match replay(&mut socket, &state, &user_id, after).await {
            Some(seen) => last = seen.max(after),
            None => return,
        }
    }
    tracing::debug!(%user_id, "notification socket open");
    loop {
        tokio::select! {
            pushed = live.recv() => match pushed {
                Ok(n) if n.id > last && visible(&n, &user_id) => {
                    last = n.id;
                    if !send(&mut socket, json!({ "type": "notification", "notification": n })).await {
                        break;
                    }
                }
                Ok(_) => {}
                // Fell behind the live feed: catch up from the store.
                Err(RecvError::Lagged(_)) => match replay(&mut socket, &state, &user_id, last).await {
                    Some(seen) => last = last.max(seen),
                    None => break,
                },
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = match serde_json::from_str::<ClientMessage>(text.as_str()) {
                        Ok(ClientMessage::Ping) => Some(json!({ "type": "pong" })),
                        Ok(ClientMessage::Resume { after }) => match replay(&mut socket, &state, &user_id, after).await {
                            Some(seen) => {
                                last = last.max(seen);
                                None
                            }
                            None => break,
                        },
                        Ok(ClientMessage::Auth { .. }) => None,
                        Err(e) => Some(json!({ "type": "error", "message": format!("unknown message: {e}") })),
                    };
                    if let Some(r) = reply {
                        if !send(&mut socket, r).await {
                            break;
                        }
                    }
                }
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

/// Sends the stored notifications after `after`; returns the last id sent (or `after`), `None` if the socket died.
async fn replay(socket: &mut WebSocket, state: &AppState, user_id: &str, after: u64) -> Option<u64> {
    let mut last = after;
    loop {
        let batch = match state.notifications.notifications_after(user_id, last, BACKLOG_LIMIT).await {
            Ok(b) => b,
            Err(error) => {
                tracing::warn!(%error, "cannot replay notifications");
                return Some(last);
            }
        };
        let done = batch.len() < BACKLOG_LIMIT;
        for n in batch {
            last = n.id;
            if !send(socket, json!({ "type": "notification", "notification": n })).await {
                return None;
            }
        }
        if done {
            return Some(last);
        }
    }
}
