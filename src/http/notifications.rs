use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;

use crate::store::{Email, Notification};

use super::extract::{AdminUser, CurrentUser, Json, Path, Query};
use super::{page_and_limit, ApiError, AppState, PageView, Pagination};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/notifications", get(list))
        .route("/api/notifications/{id}/read", post(mark_read))
        .route("/api/admin/emails", get(emails))
}

/// A page of the caller's notifications and how many of all of them are unread.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationsPage {
    #[serde(flatten)]
    page: PageView<Notification>,
    unread_count: u64,
}

/// The caller's notifications, newest first, with the number still unread.
async fn list(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Query(q): Query<Pagination>,
) -> Result<Json<NotificationsPage>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    let (found, unread) = state.notifications.list_notifications(&me.user.id, page, limit).await?;
    Ok(Json(NotificationsPage { page: found.into(), unread_count: unread }))
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
) -> Result<Json<PageView<Email>>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    Ok(Json(PageView::from(state.notifications.list_emails(page, limit).await?)))
}
