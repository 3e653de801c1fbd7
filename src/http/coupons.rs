use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, Json, Path, Query};
use super::openapi::ErrorBody;
use super::{page_and_limit, ApiError, AppState, PageView, Pagination};
use crate::actors::EntityError;
use crate::auth::double_option;
use crate::domain::coupon::{self, Coupon, CouponCommand, CouponError, CouponTerms, Discount};
use crate::domain::Timestamp;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create)).routes(routes!(show, update))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponView {
    code: String,
    discount: Discount,
    min_order: Option<i64>,
    /// The currency of `minOrder`; orders in another currency do not qualify.
    min_order_currency: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Timestamp>,
    usage_limit: Option<u32>,
    per_user_limit: Option<u32>,
    active: bool,
    /// Uses currently counted (held by orders in progress or paid).
    uses: usize,
    #[schema(value_type = String, format = DateTime)]
    created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    updated_at: Timestamp,
}

impl From<Coupon> for CouponView {
    fn from(c: Coupon) -> Self {
        Self {
            uses: c.redemptions.len(),
            code: c.code,
            discount: c.discount,
            min_order: c.min_order,
            min_order_currency: c.min_order_currency,
            expires_at: c.expires_at,
            usage_limit: c.usage_limit,
            per_user_limit: c.per_user_limit,
            active: c.active,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = NewCoupon)]
struct CreateBody {
    /// Letters, digits, `-` and `_`, 3 to 32; compared ignoring case.
    code: String,
    discount: Discount,
    /// The smallest subtotal the coupon applies to, in minor units of `minOrderCurrency`.
    min_order: Option<i64>,
    /// Required with `minOrder` on a percent coupon; a fixed coupon's minimum is in the currency of its amount.
    min_order_currency: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Timestamp>,
    usage_limit: Option<u32>,
    per_user_limit: Option<u32>,
}

fn coupon_result(
    r: Result<crate::domain::coupon::CouponState, EntityError<CouponError>>,
) -> Result<CouponView, ApiError> {
    r?.coupon.map(CouponView::from).ok_or_else(|| CouponError::NotFound.into())
}

#[utoipa::path(post, path = "/api/admin/coupons", tag = "coupons", request_body = CreateBody, security(("bearer" = []), ("cookie" = [])),
    responses((status = 201, body = CouponView), (status = 403, body = ErrorBody),
        (status = 409, description = "`coupon_exists`", body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(b): Json<CreateBody>,
) -> Result<Response, ApiError> {
    let code = coupon::normalize_code(&b.code)?;
    let terms = CouponTerms {
        discount: b.discount,
        min_order: b.min_order,
        min_order_currency: b.min_order_currency.map(|c| c.trim().to_ascii_uppercase()),
        expires_at: b.expires_at,
        usage_limit: b.usage_limit,
        per_user_limit: b.per_user_limit,
    };
    let view = coupon_result(state.coupons.execute(&code, CouponCommand::Create(terms)).await)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[utoipa::path(get, path = "/api/admin/coupons", tag = "coupons", params(Pagination), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = PageView<CouponView>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(q): Query<Pagination>,
) -> Result<Json<PageView<CouponView>>, ApiError> {
    let (page, limit) = page_and_limit(q.page, q.limit)?;
    Ok(Json(PageView::from(state.sales.list_coupons(page, limit).await?.map(CouponView::from))))
}

#[utoipa::path(get, path = "/api/admin/coupons/{code}", tag = "coupons", params(("code" = String, Path)), security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = CouponView), (status = 403, body = ErrorBody),
        (status = 404, description = "`coupon_not_found`", body = ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(code): Path<String>,
) -> Result<Json<CouponView>, ApiError> {
    let code = coupon::normalize_code(&code)?;
    let found = state.sales.coupon(&code).await?.ok_or(CouponError::NotFound)?;
    Ok(Json(found.into()))
}

/// `null` removes a limit or the expiry; an absent field stays as it is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateBody {
    active: Option<bool>,
    #[serde(default, deserialize_with = "double_option")]
    usage_limit: Option<Option<u32>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Option<String>>, format = DateTime)]
    expires_at: Option<Option<Timestamp>>,
}

#[utoipa::path(patch, path = "/api/admin/coupons/{code}", tag = "coupons", params(("code" = String, Path)),
    request_body = UpdateBody, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = CouponView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(code): Path<String>,
    Json(b): Json<UpdateBody>,
) -> Result<Json<CouponView>, ApiError> {
    let code = coupon::normalize_code(&code)?;
    if state.sales.coupon(&code).await?.is_none() {
        return Err(CouponError::NotFound.into());
    }
    let cmd = CouponCommand::Update { active: b.active, usage_limit: b.usage_limit, expires_at: b.expires_at };
    Ok(Json(coupon_result(state.coupons.execute(&code, cmd).await)?))
}
