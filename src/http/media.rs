//! Product images: `POST /api/products/{id}/image` (admin) stores one in the media store and points the product at
//! it; `GET /media/products/{id}/{file}` serves it. Names are content hashes, so responses may be cached for a year.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, Json, Path, Query};
use super::openapi::ErrorBody;
use super::products::ProductView;
use super::{etag_matches, ApiError, AppState};
use crate::actors::EntityError;
use crate::domain::product::{ProductDetails, ProductError};
use crate::media::MediaError;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upload_image)).routes(routes!(product_image))
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::UnsupportedFormat => {
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", e.to_string())
            }
            MediaError::InvalidName => ApiError::not_found("product_not_found", "no such product"),
            MediaError::Unavailable(e) => ApiError::unavailable(format!("media store: {e}")),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UploadParams {
    /// The product version the image replaces the image of (409 `version_conflict` if it has moved on). Without
    /// it, the image goes onto whatever the product is now.
    version: Option<u64>,
}

/// Times an upload without `version` is set again when an edit lands between reading the product and setting it.
const UNVERSIONED_ATTEMPTS: usize = 3;

/// The upload's route, whose bodies are bounded by `media.max_image_bytes` instead of `http.body_limit_bytes`.
pub(super) const UPLOAD_ROUTE: &str = "/api/products/{id}/image";

/// Upload the product's image: the raw bytes of a JPEG, PNG or WebP (recognised by content, whatever the
/// `Content-Type`), at most `media.max_image_bytes`. The product's `imageUrl` becomes the image's `/media/` path.
#[utoipa::path(post, path = "/api/products/{id}/image", tag = "products",
    params(("id" = String, Path), UploadParams),
    request_body(content = Vec<u8>, content_type = "image/*", description = "The image's bytes"),
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, description = "The product, with its new `imageUrl`", body = ProductView),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, description = "Over `media.max_image_bytes`", body = ErrorBody),
        (status = 415, description = "Not a JPEG, PNG or WebP image", body = ErrorBody)))]
async fn upload_image(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    Query(p): Query<UploadParams>,
    body: Body,
) -> Result<Json<ProductView>, ApiError> {
    let current = state.catalog.get(&id).await?;
    if let Some(expected) = p.version.filter(|v| *v != current.version) {
        // Refused before the image is stored, so a stale upload leaves nothing behind.
        let actual = current.version;
        return Err(ProductError::VersionConflict { expected, actual }.into());
    }
    let bytes = axum::body::to_bytes(body, state.max_image_bytes).await.map_err(|_| ApiError::payload_too_large())?;
    let image = state.media.put_product_image(&id, bytes).await?;
    let details = ProductDetails { image_url: Some(Some(image.url())), ..ProductDetails::default() };
    let (mut version, mut attempt) = (p.version.unwrap_or(current.version), 1);
    let product = loop {
        match state.catalog.update(&id, version, details.clone()).await {
            Err(EntityError::Rejected(ProductError::VersionConflict { actual, .. }))
                if p.version.is_none() && attempt < UNVERSIONED_ATTEMPTS =>
            {
                (version, attempt) = (actual, attempt + 1);
            }
            updated => break updated?,
        }
    };
    tracing::info!(product_id = %id, image = %image.name, "product image set");
    Ok(Json(product.into()))
}

/// A product image. Its name is its content's hash: cached for a year, revalidated by `ETag`.
#[utoipa::path(get, path = "/media/products/{id}/{file}", tag = "products",
    params(("id" = String, Path), ("file" = String, Path)),
    responses((status = 200, description = "The image", content_type = "image/*", body = Vec<u8>),
        (status = 304, description = "The client's copy is current"), (status = 404, body = ErrorBody)))]
async fn product_image(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("not_found", "no such image");
    let etag = format!("\"{}\"", file.split('.').next().unwrap_or_default());
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        (header::ETAG, HeaderValue::from_str(&etag).map_err(|_| not_found())?),
    ];
    // The name is the content's hash: a client holding that tag holds these bytes, so only existence is asked.
    if etag_matches(&headers, &etag) {
        if !state.media.has_product_image(&id, &file).await? {
            return Err(not_found());
        }
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    // Streamed from the store as the client reads: a slow or stalled client holds no more than a chunk of it.
    let image = state.media.product_image(&id, &file).await?.ok_or_else(not_found)?;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(image.format.content_type())),
        (header::CONTENT_LENGTH, HeaderValue::from(image.size)),
    ];
    Ok((cache, headers, Body::from_stream(image.stream)).into_response())
}
