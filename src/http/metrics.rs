//! `GET /metrics` (Prometheus text format) and the layer that counts and times every request by its route template.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::telemetry::metrics::{self, HTTP_DURATION, HTTP_REQUESTS};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(render))
}

/// Prometheus metrics in the text format (README: Observability), when served with the API
/// (`telemetry.metrics_addr` empty); 404 when `telemetry.metrics` is off or they have a listener of their own.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "The Prometheus text format", content_type = "text/plain", body = String),
        (status = 404, body = super::openapi::ErrorBody)))]
async fn render(State(state): State<AppState>) -> Response {
    if !state.metrics {
        return ApiError::not_found("not_found", "metrics are not served here (telemetry.metrics_addr)")
            .into_response();
    }
    metrics::text_response()
}

/// Counts and times a request under its route template (`/api/products/{id}`), never its raw path, so ids do not
/// multiply the series; requests no route matched are `unmatched`. Every label comes from a closed set: the route
/// templates, the status codes and [`method_label`].
pub async fn record(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().into());
    let method = method_label(req.method());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    ::metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    ::metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
    response
}

/// The method as a metrics label: one of the nine standard methods, else `other`. hyper accepts any token as a
/// method, so labelling by the raw method would let anonymous requests create series without end.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_nine_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for raw in ["M0000001", "M0000002", "get", "PROPFIND"] {
            assert_eq!(method_label(&Method::from_bytes(raw.as_bytes()).unwrap()), "other", "{raw}");
        }
    }
}
