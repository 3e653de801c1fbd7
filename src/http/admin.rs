use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, Json, Path, Query};
use super::openapi::ErrorBody;
use super::users::UserView;
use super::{page_and_limit, ApiError, AppState, PageView, Pagination};
use crate::cluster::node::ClusterStatus;
use crate::domain::user::AccountStatus;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(block))
        .routes(routes!(unblock))
        .routes(routes!(cluster))
}

/// This node, the members of the cluster and the shards each hosts; 404 `not_clustered` outside cluster mode.
#[utoipa::path(get, path = "/api/admin/cluster", tag = "admin", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = ClusterStatus), (status = 403, body = ErrorBody),
        (status = 404, description = "`not_clustered`", body = ErrorBody)))]
async fn cluster(State(state): State<AppState>, _admin: AdminUser) -> Result<Json<ClusterStatus>, ApiError> {
    let Some(node) = &state.cluster else {
        return Err(ApiError::not_found("not_clustered", "this node does not run in cluster mode (cluster.enabled)"));
    };
    Ok(Json(node.status().await))
}

#[utoipa::path(get, path = "/api/admin/users", tag = "admin", params(Pagination), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PageView<UserView>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<Pagination>,
) -> Result<Json<PageView<UserView>>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    let users = state.auth.list_users(page, limit).await?;
    Ok(Json(PageView::from(users.map(UserView::from))))
}

/// Blocks the account: its sessions end and its sockets close (4403).
#[utoipa::path(post, path = "/api/admin/users/{id}/block", tag = "admin", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 422, description = "`cannot_block_self`", body = ErrorBody)))]
async fn block(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.auth.set_status(&admin, &id, AccountStatus::Blocked).await?.into()))
}

#[utoipa::path(post, path = "/api/admin/users/{id}/unblock", tag = "admin", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unblock(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.auth.set_status(&admin, &id, AccountStatus::Active).await?.into()))
}
