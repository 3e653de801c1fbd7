use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::store::{Email, Notification};

use super::extract::{AdminUser, CurrentUser, Json, Path, Query};
use super::openapi::ErrorBody;
use super::{page_and_limit, ApiError, AppState, PageView, Pagination};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(mark_read)).routes(routes!(emails))
}

/// A page of the caller's notifications and how many of all of them are unread.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct NotificationsPage {
    #[serde(flatten)]
    page: PageView<Notification>,
    unread_count: u64,
}

/// The caller's notifications (and public ones), newest first, with the number still unread.
#[utoipa::path(get, path = "/api/notifications", tag = "notifications", params(Pagination), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = NotificationsPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Query(q): Query<Pagination>,
) -> Result<Json<NotificationsPage>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    let (found, unread) = state.notifications.list_notifications(&me.user.id, page, limit).await?;
    Ok(Json(NotificationsPage { page: found.into(), unread_count: unread }))
}

#[utoipa::path(post, path = "/api/notifications/{id}/read", tag = "notifications", params(("id" = u64, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 204, description = "Marked read"), (status = 401, body = ErrorBody),
        (status = 404, description = "`notification_not_found`", body = ErrorBody)))]
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
#[utoipa::path(get, path = "/api/admin/emails", tag = "admin", params(Pagination), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PageView<Email>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn emails(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<Pagination>,
) -> Result<Json<PageView<Email>>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    Ok(Json(PageView::from(state.notifications.list_emails(page, limit).await?)))
}
