use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use super::extract::{AdminUser, CurrentUser, Json, Path, Query};
use super::{page_and_limit, ApiError, AppState, PageView};
use crate::domain::order::{Order, OrderCommand, OrderLine, OrderStatus, StatusEntry};
use crate::domain::user::Address;
use crate::domain::Timestamp;
use crate::orders::CheckoutRequest;
use crate::store::OrderQuery;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/cart/checkout", post(checkout))
        .route("/api/orders", get(mine))
        .route("/api/orders/{id}", get(show))
        .route("/api/orders/{id}/cancel", post(cancel))
        .route("/api/admin/orders", get(all))
        .route("/api/admin/orders/{id}/ship", post(ship))
        .route("/api/admin/orders/{id}/deliver", post(deliver))
}

/// An order as clients see it (the saga's bookkeeping stays inside).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    id: String,
    user_id: String,
    status: OrderStatus,
    lines: Vec<OrderLine>,
    currency: String,
    subtotal: i64,
    discount: i64,
    total: i64,
    coupon_code: Option<String>,
    payment_method: String,
    payment_id: String,
    shipping_address: Option<Address>,
    history: Vec<StatusEntry>,
    reservation_expires_at: Timestamp,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        Self {
            payment_id: o.payment_id(),
            id: o.id,
            user_id: o.user_id,
            status: o.status,
            lines: o.lines,
            currency: o.currency,
            subtotal: o.subtotal,
            discount: o.discount,
            total: o.total,
            coupon_code: o.coupon_code,
            payment_method: o.payment_method,
            shipping_address: o.shipping_address,
            history: o.history,
            reservation_expires_at: o.reservation_expires_at,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CheckoutBody {
    payment_method: String,
    coupon_code: Option<String>,
    shipping_address: Option<Address>,
}

/// 202: the order exists and its saga runs on; follow it with `GET /api/orders/{id}` or the WebSocket.
async fn checkout(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    headers: HeaderMap,
    Json(body): Json<CheckoutBody>,
) -> Result<Response, ApiError> {
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::bad_request("idempotency_key_required", "send an `Idempotency-Key` header"))?
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid_idempotency_key", "`Idempotency-Key` must be visible ASCII"))?;
    let request = CheckoutRequest {
        payment_method: body.payment_method,
        coupon_code: body.coupon_code,
        shipping_address: body.shipping_address,
    };
    let order = state.orders.checkout(&me.user, key, request).await?;
    tracing::Span::current().record("order_id", order.id.as_str());
    let location = format!("/api/orders/{}", order.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(OrderView::from(order))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MineParams {
    page: Option<u32>,
    limit: Option<u32>,
}

async fn mine(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Query(p): Query<MineParams>,
) -> Result<Json<PageView<OrderView>>, ApiError> {
    let (page, limit) = page_and_limit(p.page, p.limit)?;
    let query = OrderQuery { user_id: Some(me.user.id.clone()), status: None, page, limit };
    Ok(Json(PageView::from(state.orders.list(&query).await?.map(OrderView::from))))
}

async fn show(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.orders.get_for(&me.user.id, &id).await?.into()))
}

/// 202: cancellation is recorded; releasing stock and refunding follow.
async fn cancel(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let order = state.orders.cancel(&me.user.id, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(OrderView::from(order))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AllParams {
    page: Option<u32>,
    limit: Option<u32>,
    status: Option<String>,
    user_id: Option<String>,
}

async fn all(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(p): Query<AllParams>,
) -> Result<Json<PageView<OrderView>>, ApiError> {
    let (page, limit) = page_and_limit(p.page, p.limit)?;
    let status = p
        .status
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| ApiError::bad_request("invalid_query", e))?;
    let query = OrderQuery { user_id: p.user_id, status, page, limit };
    Ok(Json(PageView::from(state.orders.list(&query).await?.map(OrderView::from))))
}

async fn ship(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.orders.command(&id, OrderCommand::Ship).await?.into()))
}

async fn deliver(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.orders.command(&id, OrderCommand::Deliver).await?.into()))
}
