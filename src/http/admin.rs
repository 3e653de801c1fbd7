use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::extract::{AdminUser, Json, Path, Query};
use super::users::UserView;
use super::{page_and_limit, page_json, ApiError, AppState, Pagination};
use crate::domain::user::AccountStatus;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users", get(list_users))
        .route("/api/admin/users/{id}/block", post(block))
        .route("/api/admin/users/{id}/unblock", post(unblock))
}

async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<Pagination>,
) -> Result<Json<Value>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    let users = state.auth.list_users(page, limit).await?;
    Ok(Json(page_json(users.map(UserView::from))))
}

async fn block(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.auth.set_status(&admin, &id, AccountStatus::Blocked).await?.into()))
}

async fn unblock(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.auth.set_status(&admin, &id, AccountStatus::Active).await?.into()))
}
