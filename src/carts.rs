//! The cart service: one cart actor per user. Availability is checked against the catalog when items are added;
//! the cart is priced from current catalog data every time it is shown.

use serde::Serialize;

use crate::actors::{EntityError, EntityRouter};
use crate::catalog::Catalog;
use crate::domain::cart::{self, Cart, CartCommand, CartError, PricedLine, ProductAvailability};
use crate::domain::product::ProductError;
use crate::domain::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum CartServiceError {
    #[error(transparent)]
    Cart(#[from] CartError),
    #[error("product not found")]
    ProductNotFound,
    #[error("{0}")]
    Unavailable(String),
}

impl From<EntityError<CartError>> for CartServiceError {
    fn from(e: EntityError<CartError>) -> Self {
        match e {
            EntityError::Rejected(e) => Self::Cart(e),
            EntityError::Unavailable(why) => Self::Unavailable(why),
        }
    }
}

impl From<EntityError<ProductError>> for CartServiceError {
    fn from(e: EntityError<ProductError>) -> Self {
        match e {
            EntityError::Rejected(_) => Self::ProductNotFound,
            EntityError::Unavailable(why) => Self::Unavailable(why),
        }
    }
}

/// The cart priced from the catalog as it is now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartView {
    pub items: Vec<PricedLine>,
    pub currency: Option<String>,
    /// Sum of available lines, in minor units of `currency`.
    pub subtotal: i64,
    pub item_count: u64,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<Timestamp>,
}

#[derive(Clone)]
pub struct Carts {
    carts: EntityRouter<Cart>,
    catalog: Catalog,
}

impl Carts {
    pub fn new(carts: EntityRouter<Cart>, catalog: Catalog) -> Self {
        Self { carts, catalog }
    }

    pub fn router(&self) -> &EntityRouter<Cart> {
        &self.carts
    }

    pub async fn view(&self, user_id: &str) -> Result<CartView, CartServiceError> {
        let cart = self.carts.get(user_id).await.map_err(CartServiceError::from)?;
        self.price(cart).await
    }

    pub async fn add(&self, user_id: &str, product_id: &str, quantity: i64) -> Result<CartView, CartServiceError> {
        cart::check_quantity(quantity)?;
        let product = self.availability(product_id).await?;
        let command = CartCommand::AddItem { product_id: product_id.to_string(), quantity, product };
        self.run(user_id, command).await
    }

    pub async fn set_quantity(
        &self,
        user_id: &str,
        product_id: &str,
        quantity: i64,
    ) -> Result<CartView, CartServiceError> {
        cart::check_quantity(quantity)?;
        let product = self.availability(product_id).await?;
        let command = CartCommand::SetQuantity { product_id: product_id.to_string(), quantity, product };
        self.run(user_id, command).await
    }

    pub async fn remove(&self, user_id: &str, product_id: &str) -> Result<CartView, CartServiceError> {
        self.run(user_id, CartCommand::RemoveItem { product_id: product_id.to_string() }).await
    }

    pub async fn clear(&self, user_id: &str) -> Result<CartView, CartServiceError> {
        self.run(user_id, CartCommand::Clear).await
    }

    async fn run(&self, user_id: &str, command: CartCommand) -> Result<CartView, CartServiceError> {
        let cart = self.carts.execute(user_id, command).await?;
        self.price(cart).await
    }

    async fn availability(&self, product_id: &str) -> Result<ProductAvailability, CartServiceError> {
        let p = self.catalog.get(product_id).await?;
        Ok(ProductAvailability { available: p.available(), currency: p.currency })
    }

    async fn price(&self, cart: Cart) -> Result<CartView, CartServiceError> {
        let mut lines = Vec::with_capacity(cart.lines.len());
        for line in &cart.lines {
            let product = match self.catalog.get(&line.product_id).await {
                Ok(p) => Some(p),
                Err(EntityError::Rejected(_)) => None,
                Err(EntityError::Unavailable(why)) => return Err(CartServiceError::Unavailable(why)),
            };
            let entry = product.as_ref().map(|p| cart::CatalogEntry {
                title: &p.title,
                price: p.price,
                currency: &p.currency,
                available: p.available(),
            });
            lines.push(cart::priced_line(line, cart.currency.as_deref(), entry));
        }
        let (items, subtotal, item_count) = cart::price_lines(lines);
        Ok(CartView { items, currency: cart.currency, subtotal, item_count, updated_at: cart.updated_at })
    }
}
