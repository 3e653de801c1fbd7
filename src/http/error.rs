//! The one error shape of the API: `{"error": {"code": "<stable_snake_case>", "message": "..."}}`.
//! Infrastructure details never reach the client; they are logged once, inside the request's span.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::AuthError;
use crate::carts::CartServiceError;
use crate::domain::cart::CartError;
use crate::domain::coupon::CouponError;
use crate::domain::order::OrderError;
use crate::domain::product::ProductError;
use crate::domain::user::UserError;
use crate::orders::CheckoutError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Logged, never sent.
    pub internal: Option<String>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), internal: None, retry_after_secs: None }
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            internal: Some(detail.into()),
            retry_after_secs: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the service is temporarily unavailable; retry shortly",
            )
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self {
            internal: Some(detail.into()),
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error")
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A body over `http.body_limit_bytes`, whether declared by `Content-Length` or found while reading it.
    pub fn payload_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
    }

    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "you are not allowed to do this")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(detail) = &self.internal {
            if self.status.is_server_error() {
                tracing::error!(code = self.code, status = self.status.as_u16(), detail = %detail, "request failed");
            }
        }
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let code = match e {
            UserError::InvalidEmail => "invalid_email",
            UserError::WeakPassword(_) => "weak_password",
            UserError::Invalid { .. } => "validation_failed",
            UserError::InvalidText(_) => "invalid_text",
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            AuthError::Invalid(u) => return u.clone().into(),
            AuthError::EmailTaken => (S::CONFLICT, "email_taken"),
            AuthError::InvalidCredentials => (S::UNAUTHORIZED, "invalid_credentials"),
            AuthError::MissingToken => (S::UNAUTHORIZED, "unauthenticated"),
            AuthError::InvalidToken => (S::UNAUTHORIZED, "invalid_token"),
            AuthError::TokenExpired => (S::UNAUTHORIZED, "token_expired"),
            AuthError::TokenRevoked => (S::UNAUTHORIZED, "token_revoked"),
            AuthError::RefreshReused => (S::UNAUTHORIZED, "refresh_token_reused"),
            AuthError::AccountBlocked => (S::FORBIDDEN, "account_blocked"),
            AuthError::UserNotFound => (S::NOT_FOUND, "user_not_found"),
            AuthError::CannotBlockSelf => (S::UNPROCESSABLE_ENTITY, "cannot_block_self"),
            AuthError::Store(s) => return s.clone().into(),
            AuthError::Hashing(detail) => return ApiError::internal(detail.clone()),
            AuthError::Busy => {
                let mut err = ApiError::new(S::SERVICE_UNAVAILABLE, "auth_busy", e.to_string());
                err.retry_after_secs = Some(1);
                return err;
            }
        };
        let mut err = ApiError::new(status, code, e.to_string());
        if status == S::UNAUTHORIZED {
            err.internal = None;
        }
        err
    }
}

impl From<ProductError> for ApiError {
    fn from(product: ProductError) -> Self {
        use StatusCode as S;
        let (status, code) = match &product {
            ProductError::NotFound => (S::NOT_FOUND, "product_not_found"),
            ProductError::AlreadyExists => (S::CONFLICT, "product_exists"),
            ProductError::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
            ProductError::InvalidText(_) => (S::UNPROCESSABLE_ENTITY, "invalid_text"),
            ProductError::VersionConflict { .. } => (S::CONFLICT, "version_conflict"),
            ProductError::InsufficientStock { .. } => (S::CONFLICT, "insufficient_stock"),
            ProductError::ReservationUnavailable => (S::CONFLICT, "reservation_unavailable"),
        };
        ApiError::new(status, code, product.to_string())
    }
}

impl From<CartServiceError> for ApiError {
    fn from(e: CartServiceError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            CartServiceError::Unavailable(why) => return ApiError::unavailable(why.clone()),
            CartServiceError::ProductNotFound => (S::NOT_FOUND, "product_not_found"),
            CartServiceError::Cart(c) => match c {
                CartError::InvalidQuantity => (S::UNPROCESSABLE_ENTITY, "invalid_quantity"),
                CartError::InsufficientStock { .. } => (S::CONFLICT, "insufficient_stock"),
                CartError::CurrencyMismatch { .. } => (S::UNPROCESSABLE_ENTITY, "currency_mismatch"),
                CartError::CartFull => (S::UNPROCESSABLE_ENTITY, "cart_full"),
                CartError::LineNotFound => (S::NOT_FOUND, "cart_item_not_found"),
            },
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<CouponError> for ApiError {
    fn from(e: CouponError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            CouponError::NotFound => (S::NOT_FOUND, "coupon_not_found"),
            CouponError::AlreadyExists => (S::CONFLICT, "coupon_exists"),
            CouponError::Invalid { .. } => (S::UNPROCESSABLE_ENTITY, "validation_failed"),
            CouponError::InvalidText(_) => (S::UNPROCESSABLE_ENTITY, "invalid_text"),
            CouponError::Inactive => (S::UNPROCESSABLE_ENTITY, "coupon_inactive"),
            CouponError::Expired => (S::UNPROCESSABLE_ENTITY, "coupon_expired"),
            CouponError::UsageLimitReached => (S::CONFLICT, "coupon_usage_limit_reached"),
            CouponError::PerUserLimitReached => (S::CONFLICT, "coupon_per_user_limit_reached"),
            CouponError::MinimumNotMet { .. } => (S::UNPROCESSABLE_ENTITY, "coupon_minimum_not_met"),
            CouponError::CurrencyMismatch(_) => (S::UNPROCESSABLE_ENTITY, "coupon_currency_mismatch"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// A domain rejection maps to its own error; an unavailable entity to 503.
impl<E: Into<ApiError>> From<crate::actors::EntityError<E>> for ApiError {
    fn from(e: crate::actors::EntityError<E>) -> Self {
        match e {
            crate::actors::EntityError::Rejected(e) => e.into(),
            crate::actors::EntityError::Unavailable(why) => ApiError::unavailable(why),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        let (status, code) = match &e {
            OrderError::NotFound => (StatusCode::NOT_FOUND, "order_not_found"),
            OrderError::Empty => (StatusCode::UNPROCESSABLE_ENTITY, "cart_empty"),
            OrderError::InvalidTransition { .. } => (StatusCode::CONFLICT, "invalid_transition"),
            OrderError::CurrencyMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<CheckoutError> for ApiError {
    fn from(e: CheckoutError) -> Self {
        use StatusCode as S;
        let (status, code) = match e {
            CheckoutError::Coupon(c) => return c.into(),
            CheckoutError::Address(u) => return u.into(),
            CheckoutError::Order(o) => return o.into(),
            CheckoutError::Unavailable(why) => return ApiError::unavailable(why),
            CheckoutError::CartEmpty => (S::UNPROCESSABLE_ENTITY, "cart_empty"),
            CheckoutError::ProductUnavailable(_) => (S::CONFLICT, "product_unavailable"),
            CheckoutError::InsufficientStock { .. } => (S::CONFLICT, "insufficient_stock"),
            CheckoutError::InvalidPaymentMethod => (S::UNPROCESSABLE_ENTITY, "invalid_payment_method"),
            CheckoutError::InvalidIdempotencyKey => (S::BAD_REQUEST, "invalid_idempotency_key"),
            CheckoutError::IdempotencyKeyReused(_) => (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            CheckoutError::OrderNotFound => (S::NOT_FOUND, "order_not_found"),
            CheckoutError::CouponNotApplicable => (S::UNPROCESSABLE_ENTITY, "coupon_not_applicable"),
            CheckoutError::RateLimited { scope, retry_after } => return super::rate_limited(scope, retry_after),
            CheckoutError::TooManyPendingOrders { .. } => {
                let mut err = ApiError::new(S::TOO_MANY_REQUESTS, "too_many_pending_orders", e.to_string());
                err.retry_after_secs = Some(5);
                return err;
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}
