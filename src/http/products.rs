use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{AdminUser, Json, Path, Query};
use super::openapi::ErrorBody;
use super::{page_and_limit, ApiError, AppState, PageView};
use crate::auth::double_option;
use crate::domain::product::{Product, ProductDetails};
use crate::store::ProductQuery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, replace, patch, remove))
        .routes(routes!(adjust_stock))
}

/// A product with its purchasable stock.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductView {
    #[serde(flatten)]
    product: Product,
    stock_available: i64,
}

impl From<Product> for ProductView {
    fn from(product: Product) -> Self {
        Self { stock_available: product.available(), product }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// From 1.
    page: Option<u32>,
    /// 1 to 100, default 20.
    limit: Option<u32>,
    /// Text search over title and description: every word must match a word of the product (a word of 3 or more
    /// characters matches the words it begins); at most 100 characters and 5 words.
    q: Option<String>,
    category: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    /// `newest` (default), `oldest`, `price_asc` (or `price`), `price_desc` (or `-price`), `title_asc`, `title_desc`.
    sort: Option<String>,
}

#[utoipa::path(get, path = "/api/products", tag = "products", params(ListParams),
    responses((status = 200, description = "A page of live products", body = PageView<ProductView>),
        (status = 400, description = "A query parameter out of bounds", body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Result<Json<PageView<ProductView>>, ApiError> {
    let (page, limit) = page_and_limit(p.page, p.limit)?;
    let invalid = |e: String| ApiError::bad_request("invalid_query", e);
    let sort = p.sort.as_deref().map(str::parse).transpose().map_err(invalid)?;
    let query = ProductQuery {
        page,
        limit,
        text: p.q,
        category: p.category.filter(|s| !s.trim().is_empty()),
        min_price: p.min_price,
        max_price: p.max_price,
        sort: sort.unwrap_or_default(),
    };
    query.validate().map_err(invalid)?;
    let found = state.catalog.list(&query).await?;
    Ok(Json(PageView::from(found.map(ProductView::from))))
}

#[utoipa::path(get, path = "/api/products/{id}", tag = "products", params(("id" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, description = "No such live product", body = ErrorBody)))]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<ProductView>, ApiError> {
    Ok(Json(state.catalog.get(&id).await?.into()))
}

/// Details where every field is given (create and PUT); `image_url: None` means "no image".
fn all_details(
    title: String,
    description: String,
    price: i64,
    currency: String,
    category: String,
    image_url: Option<String>,
) -> ProductDetails {
    ProductDetails {
        title: Some(title),
        description: Some(description),
        price: Some(price),
        currency: Some(currency),
        category: Some(category),
        image_url: Some(image_url),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = NewProduct)]
struct CreateBody {
    title: String,
    #[serde(default)]
    description: String,
    price: i64,
    currency: String,
    category: String,
    image_url: Option<String>,
    #[serde(default)]
    stock: i64,
}

#[utoipa::path(post, path = "/api/products", tag = "products", request_body = CreateBody,
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 201, description = "Created; `Location` names it", body = ProductView),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(b): Json<CreateBody>,
) -> Result<Response, ApiError> {
    let details = all_details(b.title, b.description, b.price, b.currency, b.category, b.image_url);
    let product = state.catalog.create(details, b.stock).await?;
    tracing::info!(product_id = %product.id, "product created");
    let location = format!("/api/products/{}", product.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(ProductView::from(product))).into_response())
}

/// PUT: every field is given again, with the version being replaced.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReplaceBody {
    version: u64,
    title: String,
    description: String,
    price: i64,
    currency: String,
    category: String,
    image_url: Option<String>,
}

#[utoipa::path(put, path = "/api/products/{id}", tag = "products", params(("id" = String, Path)),
    request_body = ReplaceBody, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody),
        (status = 409, description = "`version_conflict`: the product changed since that version", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn replace(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    Json(b): Json<ReplaceBody>,
) -> Result<Json<ProductView>, ApiError> {
    let details = all_details(b.title, b.description, b.price, b.currency, b.category, b.image_url);
    Ok(Json(state.catalog.update(&id, b.version, details).await?.into()))
}

/// PATCH: only the given fields change; `imageUrl: null` removes the image.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PatchBody {
    version: u64,
    title: Option<String>,
    description: Option<String>,
    price: Option<i64>,
    currency: Option<String>,
    category: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    image_url: Option<Option<String>>,
}

#[utoipa::path(patch, path = "/api/products/{id}", tag = "products", params(("id" = String, Path)),
    request_body = PatchBody, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn patch(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    Json(b): Json<PatchBody>,
) -> Result<Json<ProductView>, ApiError> {
    let details = ProductDetails {
        title: b.title,
        description: b.description,
        price: b.price,
        currency: b.currency,
        category: b.category,
        image_url: b.image_url,
    };
    Ok(Json(state.catalog.update(&id, b.version, details).await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeleteParams {
    version: Option<u64>,
}

#[utoipa::path(delete, path = "/api/products/{id}", tag = "products", params(("id" = String, Path), DeleteParams),
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    Query(p): Query<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    state.catalog.delete(&id, p.version).await?;
    tracing::info!(product_id = %id, "product deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StockBody {
    delta: i64,
    reason: String,
}

#[utoipa::path(post, path = "/api/products/{id}/stock", tag = "products", params(("id" = String, Path)),
    request_body = StockBody, security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody),
        (status = 409, description = "`insufficient_stock`: the stock would fall below what is reserved", body = ErrorBody)))]
async fn adjust_stock(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    Json(b): Json<StockBody>,
) -> Result<Json<ProductView>, ApiError> {
    Ok(Json(state.catalog.adjust_stock(&id, b.delta, b.reason).await?.into()))
}
