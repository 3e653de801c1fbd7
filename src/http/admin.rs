use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::extract::{AdminUser, Json, Path, Query};
use super::users::UserView;
use super::{page_and_limit, ApiError, AppState, PageView, Pagination};
use crate::domain::user::AccountStatus;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users", get(list_users))
        .route("/api/admin/users/{id}/block", post(block))
        .route("/api/admin/users/{id}/unblock", post(unblock))
        .route("/api/admin/cluster", get(cluster))
}

/// This node, the members of the cluster and the shards each hosts; 404 `not_clustered` outside cluster mode.
async fn cluster(State(state): State<AppState>, _admin: AdminUser) -> Result<Json<Value>, ApiError> {
    let Some(node) = &state.cluster else {
        return Err(ApiError::not_found("not_clustered", "this node does not run in cluster mode (cluster.enabled)"));
    };
    let status = node.status().await;
    serde_json::to_value(status).map(Json).map_err(|e| ApiError::unavailable(e.to_string()))
}

async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<Pagination>,
) -> Result<Json<PageView<UserView>>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    let users = state.auth.list_users(page, limit).await?;
    Ok(Json(PageView::from(users.map(UserView::from))))
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
