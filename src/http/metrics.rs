//! `GET /metrics` (Prometheus text format) and the layer that counts and times every request by its route template.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::telemetry::metrics::{self, HTTP_DURATION, HTTP_REQUESTS};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(render))
}

/// Prometheus metrics in the text format (README: Observability); 404 when `telemetry.metrics` is off.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String),
        (status = 404, body = super::openapi::ErrorBody)))]
async fn render(State(state): State<AppState>) -> Response {
    if !state.metrics {
        return ApiError::not_found("not_found", "metrics are turned off (telemetry.metrics)").into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics::render()).into_response()
}

/// Counts and times a request under its route template (`/api/products/{id}`), never its raw path, so ids do not
/// multiply the series; requests no route matched are `unmatched`.
pub async fn record(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().into());
    let method = req.method().as_str().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    ::metrics::histogram!(HTTP_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
    response
}
