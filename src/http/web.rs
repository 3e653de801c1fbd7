//! The web app: a storefront at `/` and an admin console at `/admin`, plain HTML, CSS and ES modules from
//! `assets/web/`, compiled into the binary. They are clients of the same REST API and WebSocket as any other.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Path;
use super::openapi::ErrorBody;
use super::{ApiError, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(storefront)).routes(routes!(admin)).routes(routes!(app_file))
}

/// Pages may load only this origin's scripts, styles and API; images may also come from http(s) URLs set as a
/// product's `imageUrl`.
const PAGE_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: http: data:; \
    connect-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

struct File {
    content_type: &'static str,
    bytes: &'static [u8],
    etag: String,
}

macro_rules! files {
    ($($name:literal => $content_type:literal),* $(,)?) => {
        [$(($name, $content_type, &include_bytes!(concat!("../../assets/web/", $name))[..])),*]
    };
}

static FILES: LazyLock<HashMap<&'static str, File>> = LazyLock::new(|| {
    files![
        "store.html" => "text/html; charset=utf-8",
        "admin.html" => "text/html; charset=utf-8",
        "app.css" => "text/css; charset=utf-8",
        "api.js" => "text/javascript; charset=utf-8",
        "ui.js" => "text/javascript; charset=utf-8",
        "store.js" => "text/javascript; charset=utf-8",
        "admin.js" => "text/javascript; charset=utf-8",
        "favicon.svg" => "image/svg+xml",
    ]
    .into_iter()
    .map(|(name, content_type, bytes)| {
        let digest = Sha256::digest(bytes);
        let etag = format!("\"{}\"", digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>());
        (name, File { content_type, bytes, etag })
    })
    .collect()
});

/// A file of the app, revalidated on every use by its `ETag` (its content's hash).
fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(file) = FILES.get(name) else {
        return ApiError::not_found("not_found", "no such file").into_response();
    };
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, HeaderValue::from_str(&file.etag).expect("a hex ETag is a valid header")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY)),
    ];
    let current = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(file.etag.as_str());
    if current {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type))], file.bytes).into_response()
}

/// The storefront: catalog, cart, checkout, orders and notifications.
#[utoipa::path(get, path = "/", tag = "web",
    responses((status = 200, description = "The storefront page", content_type = "text/html")))]
async fn storefront(headers: HeaderMap) -> Response {
    serve("store.html", &headers)
}

/// The admin console: products, stock, images, orders, users, coupons, payments, emails, cluster.
#[utoipa::path(get, path = "/admin", tag = "web",
    responses((status = 200, description = "The admin console page", content_type = "text/html")))]
async fn admin(headers: HeaderMap) -> Response {
    serve("admin.html", &headers)
}

/// The app's scripts, style sheet and icon.
#[utoipa::path(get, path = "/app/{file}", tag = "web", params(("file" = String, Path)),
    responses((status = 200, description = "The file"), (status = 404, body = ErrorBody)))]
async fn app_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match file.as_str() {
        "store.html" | "admin.html" => ApiError::not_found("not_found", "no such file").into_response(),
        name => serve(name, &headers),
    }
}
