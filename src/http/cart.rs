use axum::extract::State;
use axum::routing::{get, patch};
use axum::Router;
use serde::Deserialize;

use super::extract::{CurrentUser, Json, Path};
use super::{ApiError, AppState};
use crate::carts::CartView;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/cart", get(show).delete(clear))
        .route("/api/cart/items", axum::routing::post(add))
        .route("/api/cart/items/{product_id}", patch(set_quantity).delete(remove))
}

async fn show(State(state): State<AppState>, CurrentUser(me): CurrentUser) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.view(&me.user.id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AddBody {
    product_id: String,
    quantity: i64,
}

async fn add(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Json(b): Json<AddBody>,
) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.add(&me.user.id, &b.product_id, b.quantity).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantityBody {
    quantity: i64,
}

async fn set_quantity(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(product_id): Path<String>,
    Json(b): Json<QuantityBody>,
) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.set_quantity(&me.user.id, &product_id, b.quantity).await?))
}

async fn remove(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(product_id): Path<String>,
) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.remove(&me.user.id, &product_id).await?))
}

async fn clear(State(state): State<AppState>, CurrentUser(me): CurrentUser) -> Result<Json<CartView>, ApiError> {
    Ok(Json(state.carts.clear(&me.user.id).await?))
}
