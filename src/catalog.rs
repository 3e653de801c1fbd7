//! The catalog service: product writes go to the product's actor; reads go through the read-aside cache to the
//! catalog read model, which the store updates in the same commit as the product's events. Also the one effect a
//! product runs: asking the orders' read model what became of orders of sales recorded before orders closed them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::actors::{Effects, EntityError, EntityRouter};
use crate::cache::{Lookup, ProductCache};
use crate::domain::order::OrderStatus;
use crate::domain::product::{Product, ProductCommand, ProductDetails, ProductEffect, ProductError, ProductState};
use crate::store::{CatalogStore, Page, ProductQuery, SalesStore, StoreError};
use crate::telemetry::metrics::PRODUCT_CACHE;

pub type CatalogError = EntityError<ProductError>;

impl From<StoreError> for CatalogError {
    fn from(e: StoreError) -> Self {
        EntityError::Unavailable(e.to_string())
    }
}

#[derive(Clone)]
pub struct Catalog {
    products: EntityRouter<ProductState>,
    store: Arc<dyn CatalogStore>,
    cache: Arc<dyn ProductCache>,
}

fn live(state: ProductState) -> Result<Product, CatalogError> {
    state.product.ok_or(EntityError::Rejected(ProductError::NotFound))
}

impl Catalog {
    pub fn new(
        products: EntityRouter<ProductState>,
        store: Arc<dyn CatalogStore>,
        cache: Arc<dyn ProductCache>,
    ) -> Self {
        Self { products, store, cache }
    }

    pub fn router(&self) -> &EntityRouter<ProductState> {
        &self.products
    }

    pub async fn create(&self, details: ProductDetails, initial_stock: i64) -> Result<Product, CatalogError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.write(&id, ProductCommand::Create { details, initial_stock }).await
    }

    pub async fn update(
        &self,
        id: &str,
        expected_version: u64,
        details: ProductDetails,
    ) -> Result<Product, CatalogError> {
        self.write(id, ProductCommand::Update { expected_version, details }).await
    }

    pub async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), CatalogError> {
        self.write(id, ProductCommand::Delete { expected_version }).await.map(drop)
    }

    pub async fn adjust_stock(&self, id: &str, delta: i64, reason: String) -> Result<Product, CatalogError> {
        self.write(id, ProductCommand::AdjustStock { delta, reason }).await
    }

    /// The product's actor invalidates the cache after committing (see [`ProductCacheInvalidation`]).
    async fn write(&self, id: &str, command: ProductCommand) -> Result<Product, CatalogError> {
        live(self.products.execute(id, command).await?)
    }

    /// A purchasable (not deleted) product.
    pub async fn get(&self, id: &str) -> Result<Product, CatalogError> {
        let ticket = match self.cache.get(id).await {
            Lookup::Hit(p) => {
                metrics::counter!(PRODUCT_CACHE, "result" => "hit").increment(1);
                return Ok(p);
            }
            Lookup::Miss(ticket) => ticket,
        };
        metrics::counter!(PRODUCT_CACHE, "result" => "miss").increment(1);
        match self.store.product(id).await? {
            Some(p) if !p.deleted => {
                self.cache.put(&p, ticket).await;
                Ok(p)
            }
            _ => Err(EntityError::Rejected(ProductError::NotFound)),
        }
    }

    pub async fn list(&self, query: &ProductQuery) -> Result<Page<Product>, CatalogError> {
        Ok(self.store.list_products(query).await?)
    }

    pub async fn invalidate(&self, id: &str) {
        self.cache.invalidate(id).await;
    }
}

/// Invalidates a product's cache entry as soon as its actor committed a change, before the change is acknowledged.
pub struct ProductCacheInvalidation(pub Arc<dyn ProductCache>);

#[async_trait::async_trait]
impl crate::actors::CommitObserver for ProductCacheInvalidation {
    async fn committed(&self, stream: &str) {
        if let Some(id) = stream.strip_prefix("product:") {
            self.0.invalidate(id).await;
        }
    }
}

/// Runs product effects against the orders' read model, which each order updates in the commit of its events.
pub struct ProductEffects {
    pub sales: Arc<dyn SalesStore>,
}

#[async_trait]
impl Effects<ProductState> for ProductEffects {
    async fn run(&self, _id: &str, effect: ProductEffect) -> Result<ProductCommand, String> {
        match effect {
            ProductEffect::CheckOrders { order_ids } => {
                let mut finished = Vec::new();
                for order_id in &order_ids {
                    let order = self.sales.order(order_id).await.map_err(|e| e.to_string())?;
                    // Only a shipped order is done with its stock for good: it can no longer be cancelled.
                    if let Some(o) = order.filter(|o| matches!(o.status, OrderStatus::Shipped | OrderStatus::Delivered))
                    {
                        finished.push((order_id.clone(), o.reservation_expires_at));
                    }
                }
                Ok(ProductCommand::OrdersChecked { order_ids, finished })
            }
        }
    }
}
