//! The API's OpenAPI 3.1 description and its interactive docs.
//!
//! The document is built from the handlers' `#[utoipa::path]` attributes and the types' `ToSchema` derives, as the
//! resource routers register them (`utoipa_axum::routes!` adds a route and its description together, so what is
//! served and what is described cannot drift). It is served at `GET /api/openapi.json`; `GET /docs` shows it in
//! Swagger UI (`src/http/web.rs`).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Every error the API answers: a stable `code` to branch on and a `message` for people. `Retry-After` comes with
/// 429 and 503. The codes: `account_blocked`, `auth_busy`, `cannot_block_self`, `cart_empty`, `cart_full`,
/// `cart_item_not_found`, `coupon_currency_mismatch`, `coupon_exists`, `coupon_expired`, `coupon_inactive`,
/// `coupon_minimum_not_met`, `coupon_not_found`, `coupon_per_user_limit_reached`, `coupon_usage_limit_reached`,
/// `cross_site_request`, `currency_mismatch`, `email_taken`, `forbidden`, `idempotency_key_required`,
/// `idempotency_key_reused`, `insufficient_stock`, `internal_error`, `invalid_body`, `invalid_credentials`,
/// `invalid_email`, `invalid_idempotency_key`, `invalid_path`, `invalid_payment_method`, `invalid_quantity`,
/// `invalid_query`, `invalid_text`, `invalid_token`, `invalid_transition`, `malformed_json`, `method_not_allowed`,
/// `not_clustered`, `not_found`, `notification_not_found`, `order_not_found`, `payload_too_large`,
/// `product_exists`, `product_not_found`, `product_unavailable`, `rate_limited`, `refresh_token_reused`,
/// `reservation_unavailable`, `service_unavailable`, `token_expired`, `token_revoked`, `unauthenticated`,
/// `unsupported_media_type`, `user_not_found`, `validation_failed`, `version_conflict`, `weak_password`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable, snake_case.
    #[schema(example = "insufficient_stock")]
    code: String,
    message: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CommerceX",
        description = "An event-driven e-commerce backend: accounts, catalog, carts, checkout with a saga, payments, \
coupons and notifications. Errors share one shape (`ErrorBody`). Authenticate with `Authorization: Bearer <access \
token>` or the `access_token` cookie that sign-in sets; a write authenticated by cookie must come from the same site \
or an allowed origin. Listings take `page` (from 1) and `limit` (1 to 100, default 20) and answer with `total`, \
`totalPages` and `totalIsExact` (false when the listing stopped counting: the totals are then lower bounds)."
    ),
    modifiers(&Security),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "users", description = "Accounts and sessions"),
        (name = "products", description = "The catalog"),
        (name = "cart", description = "The signed-in user's cart"),
        (name = "orders", description = "Checkout and orders"),
        (name = "payments", description = "Payments"),
        (name = "coupons", description = "Coupons (admin)"),
        (name = "notifications", description = "Notifications, stored and pushed"),
        (name = "admin", description = "Administration"),
        (name = "web", description = "The storefront and admin console pages, and their files"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let cookie = ApiKeyValue::with_description(
            super::extract::ACCESS_COOKIE,
            "the access token as the cookie sign-in and refresh set (HttpOnly)",
        );
        components.add_security_scheme("cookie", SecurityScheme::ApiKey(ApiKey::Cookie(cookie)));
    }
}

static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Keeps the document the routers described (the same for every app the process builds), each operation named
/// after its method and path (`get_api_products_id`): handler names repeat across resources.
pub fn publish(document: utoipa::openapi::OpenApi) {
    DOCUMENT.get_or_init(|| {
        let mut document = document;
        for (path, item) in document.paths.paths.iter_mut() {
            let name: Vec<&str> =
                path.split('/').filter(|s| !s.is_empty()).map(|s| s.trim_matches(|c| c == '{' || c == '}')).collect();
            let name = name.join("_").replace(['-', '.'], "_");
            let operations = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("patch", &mut item.patch),
                ("delete", &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    operation.operation_id = Some(format!("{method}_{name}"));
                }
            }
        }
        document.to_pretty_json().expect("the OpenAPI document serializes")
    });
}

/// The document as JSON, once [`publish`]ed.
pub fn document() -> &'static str {
    DOCUMENT.get().map_or("{}", String::as_str)
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value)))]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}
