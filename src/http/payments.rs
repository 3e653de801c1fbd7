use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, CurrentUser, Json, Query};
use super::openapi::ErrorBody;
use super::{page_and_limit, ApiError, AppState, PageView};
use crate::domain::payment::{Payment, PaymentStatus};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(for_order)).routes(routes!(all))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct OrderParams {
    order_id: String,
}

#[derive(Serialize, ToSchema)]
struct OrderPayments {
    items: Vec<Payment>,
}

/// The payments of one of the caller's orders.
#[utoipa::path(get, path = "/api/payments", tag = "payments", params(OrderParams), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = OrderPayments), (status = 401, body = ErrorBody),
        (status = 404, description = "`order_not_found`", body = ErrorBody)))]
async fn for_order(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Query(p): Query<OrderParams>,
) -> Result<Json<OrderPayments>, ApiError> {
    state.orders.get_for(&me.user.id, &p.order_id).await?;
    let items = state.sales.payments_for_order(&p.order_id).await?;
    Ok(Json(OrderPayments { items }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AllParams {
    page: Option<u32>,
    limit: Option<u32>,
    status: Option<PaymentStatus>,
}

/// Every payment, newest first (admin).
#[utoipa::path(get, path = "/api/admin/payments", tag = "admin", params(AllParams), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PageView<Payment>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn all(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(p): Query<AllParams>,
) -> Result<Json<PageView<Payment>>, ApiError> {
    let (page, limit) = page_and_limit(p.page, p.limit)?;
    Ok(Json(PageView::from(state.sales.list_payments(p.status, page, limit).await?)))
}
