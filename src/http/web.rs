//! The pages the binary serves and their files, compiled in from `assets/`: the storefront at `/` and the admin
//! console at `/admin` (plain HTML, CSS and ES modules from `assets/web/`, clients of the same REST API and WebSocket
//! as any other), and the API's interactive docs at `/docs` (Swagger UI, vendored in `assets/docs/`).

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Path;
use super::openapi::ErrorBody;
use super::{etag_matches, ApiError, AppState};
use crate::auth::tokens::hex;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(storefront))
        .routes(routes!(admin))
        .routes(routes!(app_file))
        .routes(routes!(docs))
        .routes(routes!(docs_file))
}

/// How a group of files is served: its caching and the `Content-Security-Policy` of its pages.
struct Serving {
    cache: &'static str,
    /// `None`: the web app's policy, which names the configured image origins ([`app_policy`]).
    policy: Option<&'static str>,
}

/// The web app: revalidated on every use (by `ETag`), so a new binary's files are picked up at once. Pages may load
/// only this origin's scripts, styles, API and images, and images from the origins in `media.image_origins`.
const APP: Serving = Serving { cache: "no-cache", policy: None };

/// The web app's `Content-Security-Policy`: images from this origin, `data:` (the placeholder) and `image_origins`
/// (a CDN, validated as origins at start-up), so a product's `imageUrl` elsewhere cannot make every product view a
/// request to a third party.
pub fn app_policy(image_origins: &[String]) -> HeaderValue {
    let images: String = image_origins.iter().map(|origin| format!(" {origin}")).collect();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{images}; connect-src 'self'; \
         manifest-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// Swagger UI: kept a day. It sets inline styles and shows data: images.
const DOCS: Serving = Serving {
    cache: "public, max-age=86400",
    policy: Some(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
        connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
};

struct File {
    content_type: &'static str,
    serving: &'static Serving,
    bytes: &'static [u8],
    etag: String,
}

macro_rules! files {
    ($($path:literal => $content_type:expr, $serving:expr;)*) => {
        [$(($path, $content_type, &$serving, &include_bytes!(concat!("../../assets/", $path))[..])),*]
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file, by its path under `assets/`, with its content's hash as `ETag`.
static FILES: LazyLock<HashMap<&'static str, File>> = LazyLock::new(|| {
    files![
        "web/store.html" => HTML, APP;
        "web/admin.html" => HTML, APP;
        "web/app.css" => CSS, APP;
        "web/api.js" => JS, APP;
        "web/ui.js" => JS, APP;
        "web/store.js" => JS, APP;
        "web/admin.js" => JS, APP;
        "web/favicon.svg" => "image/svg+xml", APP;
        "docs/index.html" => HTML, DOCS;
        "docs/init.js" => JS, DOCS;
        "docs/swagger-ui-bundle.js" => JS, DOCS;
        "docs/swagger-ui.css" => CSS, DOCS;
    ]
    .into_iter()
    .map(|(path, content_type, serving, bytes)| {
        let etag = format!("\"{}\"", hex(&Sha256::digest(bytes)[..12]));
        (path, File { content_type, serving, bytes, etag })
    })
    .collect()
});

/// The file at `path` under `assets/`, or 404; `304` when the client's copy is current.
fn serve(state: &AppState, path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = FILES.get(path) else {
        return ApiError::not_found("not_found", "no such file").into_response();
    };
    let policy = file.serving.policy.map_or_else(|| state.web_policy.clone(), HeaderValue::from_static);
    let common = [
        (header::CACHE_CONTROL, HeaderValue::from_static(file.serving.cache)),
        (header::ETAG, HeaderValue::from_str(&file.etag).expect("a hex ETag is a valid header")),
        (header::CONTENT_SECURITY_POLICY, policy),
    ];
    if etag_matches(headers, &file.etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type))], file.bytes).into_response()
}

/// A file of a group under `/{group}/{file}`; the group's pages have routes of their own.
fn serve_in(state: &AppState, group: &str, file: &str, headers: &HeaderMap) -> Response {
    if file.ends_with(".html") {
        return ApiError::not_found("not_found", "no such file").into_response();
    }
    serve(state, &format!("{group}/{file}"), headers)
}

/// The storefront: catalog, cart, checkout, orders and notifications.
#[utoipa::path(get, path = "/", tag = "web",
    responses((status = 200, description = "The storefront page", content_type = "text/html")))]
async fn storefront(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, "web/store.html", &headers)
}

/// The admin console: products, stock, images, orders, users, coupons, payments, emails, cluster.
#[utoipa::path(get, path = "/admin", tag = "web",
    responses((status = 200, description = "The admin console page", content_type = "text/html")))]
async fn admin(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, "web/admin.html", &headers)
}

/// The app's scripts, style sheet and icon.
#[utoipa::path(get, path = "/app/{file}", tag = "web", params(("file" = String, Path)),
    responses((status = 200, description = "The file"), (status = 404, body = ErrorBody)))]
async fn app_file(State(state): State<AppState>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve_in(&state, "web", &file, &headers)
}

/// Interactive docs for the OpenAPI document (Swagger UI).
#[utoipa::path(get, path = "/docs", tag = "web",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
async fn docs(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, "docs/index.html", &headers)
}

/// The docs page's scripts and style sheet.
#[utoipa::path(get, path = "/docs/{file}", tag = "web",
    params(("file" = String, Path, description = "`swagger-ui-bundle.js`, `swagger-ui.css` or `init.js`")),
    responses((status = 200, description = "The file, cached for a day", body = String),
        (status = 404, body = ErrorBody)))]
async fn docs_file(State(state): State<AppState>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve_in(&state, "docs", &file, &headers)
}
