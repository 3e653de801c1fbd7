use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{CurrentUser, Json, Path};
use super::openapi::ErrorBody;
use super::{ApiError, AppState};
use crate::carts::CartView;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, clear)).routes(routes!(add)).routes(routes!(set_quantity, remove))
}

#[utoipa::path(get, path = "/api/cart", tag = "cart", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = CartView), (status = 401, body = ErrorBody)))]
async fn show(State(state): State<AppState>, CurrentUser(me): CurrentUser) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.view(&me.user.id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AddBody {
    product_id: String,
    quantity: i64,
}

/// Adds to the line of that product (or starts it).
#[utoipa::path(post, path = "/api/cart/items", tag = "cart", request_body = AddBody, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = CartView), (status = 401, body = ErrorBody),
        (status = 404, description = "`product_not_found`", body = ErrorBody),
        (status = 409, description = "`insufficient_stock`, `currency_mismatch`, `cart_full`", body = ErrorBody),
        (status = 422, description = "`invalid_quantity`", body = ErrorBody)))]
async fn add(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Json(b): Json<AddBody>,
) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.add(&me.user.id, &b.product_id, b.quantity).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct QuantityBody {
    quantity: i64,
}

#[utoipa::path(patch, path = "/api/cart/items/{product_id}", tag = "cart", params(("product_id" = String, Path)),
    request_body = QuantityBody, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = CartView), (status = 401, body = ErrorBody),
        (status = 404, description = "`cart_item_not_found`", body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn set_quantity(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(product_id): Path<String>,
    Json(b): Json<QuantityBody>,
) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.set_quantity(&me.user.id, &product_id, b.quantity).await?))
}

#[utoipa::path(delete, path = "/api/cart/items/{product_id}", tag = "cart", params(("product_id" = String, Path)),
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = CartView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(product_id): Path<String>,
) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.remove(&me.user.id, &product_id).await?))
}

#[utoipa::path(delete, path = "/api/cart", tag = "cart", security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, description = "The emptied cart", body = CartView), (status = 401, body = ErrorBody)))]
async fn clear(State(state): State<AppState>, CurrentUser(me): CurrentUser) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.clear(&me.user.id).await?))
}
