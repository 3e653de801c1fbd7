use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::extract::{AdminUser, CurrentUser, Json, Path, Query};
use super::{page_and_limit, page_json, ApiError, AppState, Pagination};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/notifications", get(list))
        .route("/api/notifications/{id}/read", post(mark_read))
        .route("/api/admin/emails", get(emails))
}

/// The caller's notifications, newest first, with the number still unread.
async fn list(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Query(q): Query<Pagination>,
) -> Result<Json<Value>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    let (found, unread) = state.notifications.list_notifications(&me.user.id, page, limit).await?;
    let mut body = page_json(found);
    body["unreadCount"] = unread.into();
    Ok(Json(body))
}

async fn mark_read(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    if state.notifications.mark_read(&me.user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("notification_not_found", "notification not found"))
    }
}

/// Every transactional email the mail sender was handed, newest first.
async fn emails(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<Pagination>,
) -> Result<Json<Value>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    Ok(Json(page_json(state.notifications.list_emails(page, limit).await?)))
}
