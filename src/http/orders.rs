use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, CurrentUser, Json, Path, Query};
use super::openapi::ErrorBody;
use super::{page_and_limit, ApiError, AppState, PageView, Pagination};
use crate::domain::order::{Order, OrderCommand, OrderLine, OrderStatus, StatusEntry};
use crate::domain::user::Address;
use crate::domain::Timestamp;
use crate::orders::CheckoutRequest;
use crate::store::OrderQuery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(checkout))
        .routes(routes!(mine))
        .routes(routes!(show))
        .routes(routes!(cancel))
        .routes(routes!(all))
        .routes(routes!(ship))
        .routes(routes!(deliver))
}

/// An order as clients see it (the saga's bookkeeping stays inside).
#[derive(Serialize, ToSchema)]
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
    #[schema(value_type = String, format = DateTime)]
    reservation_expires_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
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

/// What the client chooses; lines, prices, discount and totals are the server's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CheckoutBody {
    /// A payment test token (`pm_card_visa`, `pm_card_chargeDeclined`, ...).
    payment_method: String,
    coupon_code: Option<String>,
    shipping_address: Option<Address>,
}

/// 202: the order exists and its saga runs on; follow it with `GET /api/orders/{id}` or the WebSocket.
#[utoipa::path(post, path = "/api/cart/checkout", tag = "orders", request_body = CheckoutBody, security(("bearer" = []), ("cookie" = [])),
    params(("Idempotency-Key" = String, Header, description = "Visible ASCII, chosen by the client: a retry with the \
same key and request answers the same order; the same key with another request is `422 idempotency_key_reused`")),
    responses((status = 202, description = "Placed; `Location` names the order", body = OrderView),
        (status = 400, description = "`idempotency_key_required`, `invalid_idempotency_key`", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 409, description = "`insufficient_stock`, `product_unavailable`, `currency_mismatch`", body = ErrorBody),
        (status = 422, description = "`cart_empty`, `invalid_payment_method`, `idempotency_key_reused`, `coupon_not_applicable` (an unknown code and one that does not apply get the same answer)", body = ErrorBody),
        (status = 429, description = "`rate_limited` (checkouts or coupon codes tried per minute), `too_many_pending_orders`; with `Retry-After`", body = ErrorBody)))]
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

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/api/orders", tag = "orders", params(Pagination), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PageView<OrderView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn mine(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Query(p): Query<Pagination>,
) -> Result<Json<PageView<OrderView>>, ApiError> {
    let (page, limit) = page_and_limit(p.page, p.limit)?;
    let query = OrderQuery { user_id: Some(me.user.id.clone()), status: None, page, limit };
    Ok(Json(PageView::from(state.orders.list(&query).await?.map(OrderView::from))))
}

/// One of the caller's own orders. Anyone else's is `order_not_found`, for an administrator too (administrators
/// find any order in `GET /api/admin/orders`).
#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = OrderView), (status = 401, body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.orders.get_for(&me.user.id, &id).await?.into()))
}

/// 202: cancellation is recorded; releasing stock and refunding follow.
#[utoipa::path(post, path = "/api/orders/{id}/cancel", tag = "orders", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 202, body = OrderView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`invalid_transition`: shipped, delivered or already ended", body = ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let order = state.orders.cancel(&me.user.id, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(OrderView::from(order))).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct AllParams {
    page: Option<u32>,
    limit: Option<u32>,
    /// An order status (`pending`, `stock_reserved`, `paid`, `shipped`, `delivered`, `rejected`, `payment_failed`,
    /// `cancelled`, `refunded`).
    status: Option<String>,
    user_id: Option<String>,
}

/// Every order, newest first (admin).
#[utoipa::path(get, path = "/api/admin/orders", tag = "admin", params(AllParams), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PageView<OrderView>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
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

#[utoipa::path(post, path = "/api/admin/orders/{id}/ship", tag = "admin", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = OrderView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`invalid_transition`: only a paid order ships", body = ErrorBody)))]
async fn ship(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.orders.command(&id, OrderCommand::Ship).await?.into()))
}

#[utoipa::path(post, path = "/api/admin/orders/{id}/deliver", tag = "admin", params(("id" = String, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = OrderView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`invalid_transition`: only a shipped order is delivered", body = ErrorBody)))]
async fn deliver(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    Ok(Json(state.orders.command(&id, OrderCommand::Deliver).await?.into()))
}
