//! The REST facade: one router per resource, assembled by [`app`] with the cross-cutting layers (request ids,
//! tracing, metrics, panic catching, security headers, CORS, body limit, cross-site checks, request deadline), and
//! the accept loop that serves it.

mod admin;
mod cart;
mod coupons;
pub mod csrf;
pub mod error;
pub mod extract;
mod health;
mod media;
mod metrics;
mod notifications;
mod open_counts;
pub mod openapi;
mod orders;
mod payments;
mod products;
pub mod server;
mod users;
mod web;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;
pub use health::ReadyCache;
pub use open_counts::OpenCounts;
pub use web::app_policy as web_policy;
pub use ws::SocketLimits;

use crate::auth::AuthService;
use crate::carts::Carts;
use crate::catalog::Catalog;
use crate::config::HttpConfig;
use crate::netaddr::{client_ip, client_key};
use crate::ratelimit::{RateLimit, RateLimits};
use crate::store::EventStore;

/// Everything a handler can reach, shared: cloning it (axum does for every request and every layer that reads it)
/// is one reference count, not one per service.
#[derive(Clone)]
pub struct AppState(Arc<AppServices>);

impl AppState {
    pub fn new(services: AppServices) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

/// The services behind [`AppState`].
pub struct AppServices {
    pub auth: Arc<AuthService>,
    pub catalog: Catalog,
    pub carts: Carts,
    pub orders: crate::orders::Orders,
    pub coupons: crate::actors::EntityRouter<crate::domain::coupon::CouponState>,
    pub payments: crate::actors::EntityRouter<crate::domain::payment::PaymentState>,
    pub sales: Arc<dyn crate::store::SalesStore>,
    pub notifications: Arc<dyn crate::store::NotificationStore>,
    pub hub: crate::notify::NotificationHub,
    pub ws_auth_timeout: Duration,
    /// Notification sockets open per user and per client address, and their caps.
    pub sockets: SocketLimits,
    /// The entity runtime's shared context (clock, fault points).
    pub ctx: Arc<crate::actors::EntityContext>,
    /// Every rate limit: sign-in and sign-up, refresh, per account, checkout, coupon codes.
    pub limits: RateLimits,
    /// The last `/ready` answer, reused for a second.
    pub ready: ReadyCache,
    /// What `/ready` checks besides the entity supervisors.
    pub dependencies: Arc<Dependencies>,
    pub cookie_secure: bool,
    pub http: Arc<HttpConfig>,
    /// Cluster mode: this node's membership (`GET /api/admin/cluster`).
    pub cluster: Option<Arc<crate::cluster::ClusterNode>>,
    /// Serve `GET /metrics` with the API (`telemetry.metrics` on, `telemetry.metrics_addr` empty).
    pub metrics: bool,
    /// Product images (`media.*`).
    pub media: crate::media::MediaStore,
    /// The web app's `Content-Security-Policy`, naming `media.image_origins`.
    pub web_policy: HeaderValue,
    /// Largest accepted image upload (`media.max_image_bytes`); every other body is bounded by `http.body_limit_bytes`.
    pub max_image_bytes: usize,
}

/// The services outside this process (or inside it, on the embedded defaults) that requests depend on.
pub struct Dependencies {
    pub store_backend: &'static str,
    pub store: Arc<dyn EventStore>,
    pub revocations: Arc<dyn crate::store::RevocationStore>,
    pub bus: Arc<dyn crate::bridge::EventBus>,
    pub cache: Arc<dyn crate::cache::ProductCache>,
}

pub fn app(state: AppState) -> Router {
    let http = state.http.clone();
    let cors = (!http.cors_allowed_origins.is_empty()).then(|| cors_layer(&http.cors_allowed_origins));
    let request_id = HeaderName::from_static("x-request-id");
    let layers = ServiceBuilder::new()
        .layer(middleware::from_fn(metrics::record))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            let empty = tracing::field::Empty;
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id, user_id = empty, order_id = empty)
        }))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| ApiError::internal("handler panicked").into_response()))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(middleware::from_fn(strict_transport_security))
        .option_layer(cors)
        .layer(middleware::from_fn_with_state(
            BodyLimits { default: http.body_limit_bytes, image: state.max_image_bytes },
            refuse_declared_oversize,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), csrf::refuse_cross_site_writes))
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .layer(middleware::from_fn_with_state(Duration::from_millis(http.request_timeout_ms), deadline))
        .layer(middleware::from_fn_with_state(http.clone(), client_address));

    let (api, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(products::router())
        .merge(users::router(state.clone()))
        .merge(cart::router())
        .merge(orders::router())
        .merge(payments::router())
        .merge(notifications::router())
        .merge(coupons::router())
        .merge(admin::router())
        .merge(ws::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .merge(media::router())
        .merge(web::router())
        .split_for_parts();
    openapi::publish(document);
    Router::new()
        .merge(api)
        .fallback(|| async { ApiError::not_found("not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(layers)
        .with_state(state)
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    let layer = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("idempotency-key")]);
    if origins.iter().any(|o| o == "*") {
        layer
    } else {
        layer.allow_credentials(true)
    }
}

/// `http.body_limit_bytes` for every body but an image upload's (`media.max_image_bytes`).
#[derive(Clone, Copy)]
struct BodyLimits {
    default: usize,
    image: usize,
}

impl BodyLimits {
    /// The limit of the route the request was routed to.
    fn of(self, req: &Request) -> usize {
        let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        if req.method() == Method::POST && route == Some(media::UPLOAD_ROUTE) {
            self.image
        } else {
            self.default
        }
    }
}

/// Whether `If-None-Match` names `etag` (a list, a weak form or `*` included): the client's copy is current.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    let Some(wanted) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else { return false };
    wanted.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Answers 413 to a request whose `Content-Length` is over the limit before reading any of its body, whatever the
/// route. Bodies without a declared length are cut off by the body limit as they are read.
async fn refuse_declared_oversize(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let limit = limits.of(&req);
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return ApiError::payload_too_large().into_response();
    }
    next.run(req).await
}

/// `Strict-Transport-Security` on answers to requests that came over HTTPS (as the TLS-terminating proxy says):
/// the browser then never tries plain HTTP for this host for a year. Not on plain HTTP, where it means nothing and
/// would pin a development host.
async fn strict_transport_security(req: Request, next: Next) -> Response {
    let https = extract::request_is_https(req.headers());
    let mut response = next.run(req).await;
    if https {
        response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    response
}

/// Answers 503 when a request runs past its deadline.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable("request deadline exceeded").into_response(),
    }
}

/// The address a request came from, as [`client_ip`] tells it through `http.trusted_proxies`: what per-client
/// limits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub std::net::IpAddr);

/// Records the request's [`ClientIp`].
async fn client_address(State(http): State<Arc<HttpConfig>>, mut req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        let client = client_ip(peer.ip(), req.headers(), &http.trusted_proxies);
        req.extensions_mut().insert(ClientIp(client));
    }
    next.run(req).await
}

/// Per-client limits on the authentication endpoints, keyed by the client's address (an IPv6 /64): refresh has a
/// budget of its own, so sign-in attempts cannot end every session's refreshes.
async fn auth_rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>().copied() {
        let refresh = req.extensions().get::<MatchedPath>().is_some_and(|p| p.as_str() == "/api/users/refresh");
        let (limit, scope) = if refresh { (&state.limits.refresh, "refresh") } else { (&state.limits.auth, "auth") };
        if let Err(wait) = limit.check(&client_key(ip)).await {
            return rate_limited(scope, wait).into_response();
        }
    }
    next.run(req).await
}

/// 429 `rate_limited` with `Retry-After`, counted under `scope`.
pub fn rate_limited(scope: &'static str, wait: Duration) -> ApiError {
    ::metrics::counter!(crate::telemetry::metrics::RATE_LIMITED, "scope" => scope).increment(1);
    let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many attempts; slow down");
    err.retry_after_secs = Some(wait.as_secs().max(1));
    err
}

/// Takes one request from `key`'s budget in `limit`, or answers 429.
pub async fn check_limit(limit: &dyn RateLimit, scope: &'static str, key: &str) -> Result<(), ApiError> {
    limit.check(key).await.map_err(|wait| rate_limited(scope, wait))
}

/// Common pagination parameters: `page` from 1, `limit` 1..=100 (default 20).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Pagination {
    pub page: Option<u32>,
    pub limit: Option<u32>,
}

pub fn page_and_limit(page: Option<u32>, limit: Option<u32>) -> Result<(u32, u32), ApiError> {
    let page = page.unwrap_or(1);
    let limit = limit.unwrap_or(20);
    if page == 0 {
        return Err(ApiError::bad_request("invalid_query", "`page` starts at 1"));
    }
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "`limit` must be between 1 and 100"));
    }
    Ok((page, limit))
}

/// A page of results with its position in the whole listing. When `totalIsExact` is false, `total` and `totalPages`
/// are lower bounds: the listing stopped counting.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PageView<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub limit: u32,
    pub total: u64,
    pub total_is_exact: bool,
    pub total_pages: u64,
}

impl<T> From<crate::store::Page<T>> for PageView<T> {
    fn from(page: crate::store::Page<T>) -> Self {
        Self {
            total_pages: page.total.div_ceil(u64::from(page.limit.max(1))),
            items: page.items,
            page: page.page,
            limit: page.limit,
            total: page.total,
            total_is_exact: page.total_is_exact,
        }
    }
}
