use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use super::extract::{AdminUser, Json, Path, Query};
use super::{page_and_limit, ApiError, AppState, PageView};
use crate::auth::double_option;
use crate::domain::product::{Product, ProductDetails};
use crate::store::ProductQuery;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/products", get(list).post(create))
        .route("/api/products/{id}", get(show).put(replace).patch(patch).delete(remove))
        .route("/api/products/{id}/stock", post(adjust_stock))
}

/// A product with its purchasable stock.
#[derive(Serialize)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListParams {
    page: Option<u32>,
    limit: Option<u32>,
    /// Text search over title and description.
    q: Option<String>,
    category: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    sort: Option<String>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
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
#[derive(Deserialize)]
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
#[derive(Deserialize)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    version: Option<u64>,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StockBody {
    delta: i64,
    reason: String,
}

async fn adjust_stock(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    Json(b): Json<StockBody>,
) -> Result<Json<ProductView>, ApiError> {
    Ok(Json(state.catalog.adjust_stock(&id, b.delta, b.reason).await?.into()))
}
