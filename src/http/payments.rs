use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{AdminUser, CurrentUser, Json, Query};
use super::{page_and_limit, ApiError, AppState, PageView};
use crate::domain::payment::{Payment, PaymentStatus};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/payments", get(for_order)).route("/api/admin/payments", get(all))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OrderParams {
    order_id: String,
}

/// The payments of one of the caller's orders.
async fn for_order(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Query(p): Query<OrderParams>,
) -> Result<Json<Value>, ApiError> {
    state.orders.get_for(&me.user.id, &p.order_id).await?;
    let payments = state.sales.payments_for_order(&p.order_id).await?;
    Ok(Json(json!({ "items": payments })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllParams {
    page: Option<u32>,
    limit: Option<u32>,
    status: Option<PaymentStatus>,
}

async fn all(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(p): Query<AllParams>,
) -> Result<Json<PageView<Payment>>, ApiError> {
    let (page, limit) = page_and_limit(p.page, p.limit)?;
    Ok(Json(PageView::from(state.sales.list_payments(p.status, page, limit).await?)))
}
