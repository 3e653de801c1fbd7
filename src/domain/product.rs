//! Catalog products and their stock.

use serde::{Deserialize, Serialize};

use super::{required_text, Aggregate, Timestamp};

pub const MAX_PRICE_MINOR: i64 = 100_000_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: String,
    pub title: String,
    pub description: String,
    /// Price in integer minor units of `currency` (cents for USD).
    pub price: i64,
    pub currency: String,
    pub category: String,
    pub image_url: Option<String>,
    pub stock_on_hand: i64,
    pub stock_reserved: i64,
    /// Bumped by every change to the product's details (not by stock movements), checked by optimistic updates.
    pub version: u64,
    pub deleted: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Product {
    pub fn available(&self) -> i64 {
        self.stock_on_hand - self.stock_reserved
    }
}

/// The details an admin sets; every field optional so the same type serves create (all required), PUT (all
/// required) and PATCH (any subset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductDetails {
    pub title: Option<String>,
    pub description: Option<String>,
    pub price: Option<i64>,
    pub currency: Option<String>,
    pub category: Option<String>,
    pub image_url: Option<Option<String>>,
}

#[derive(Debug, Clone)]
pub enum ProductCommand {
    Create { details: ProductDetails, initial_stock: i64 },
    Update { expected_version: u64, details: ProductDetails },
    Delete { expected_version: Option<u64> },
    AdjustStock { delta: i64, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ProductEvent {
    Created {
        product: Product,
    },
    Updated {
        title: String,
        description: String,
        price: i64,
        currency: String,
        category: String,
        image_url: Option<String>,
        version: u64,
        at: Timestamp,
    },
    Deleted {
        version: u64,
        at: Timestamp,
    },
    StockAdjusted {
        delta: i64,
        reason: String,
        on_hand_after: i64,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("product not found")]
    NotFound,
    #[error("product already exists")]
    AlreadyExists,
    #[error("`{field}` {message}")]
    Invalid { field: &'static str, message: String },
    #[error("stale version {expected}: the product is at version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("stock cannot go below zero or below reserved stock: {available} available, change of {delta}")]
    InsufficientStock { available: i64, delta: i64 },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ProductError {
    ProductError::Invalid { field, message: message.into() }
}

/// State of one product stream: `None` until created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductState(pub Option<Product>);

impl ProductState {
    fn live(&self) -> Result<&Product, ProductError> {
        match &self.0 {
            Some(p) if !p.deleted => Ok(p),
            _ => Err(ProductError::NotFound),
        }
    }
}

struct Resolved {
    title: String,
    description: String,
    price: i64,
    currency: String,
    category: String,
    image_url: Option<String>,
}

/// Validates `details` over `base` (the current product for updates).
fn resolve(details: &ProductDetails, base: Option<&Product>) -> Result<Resolved, ProductError> {
    fn pick<T: Clone>(new: &Option<T>, old: Option<T>, field: &'static str) -> Result<T, ProductError> {
        new.clone().or(old).ok_or_else(|| invalid(field, "is required"))
    }
    let title = pick(&details.title, base.map(|p| p.title.clone()), "title")?;
    let title = required_text(&title, 200).map_err(|m| invalid("title", m))?;
    let description = pick(&details.description, base.map(|p| p.description.clone()), "description")?;
    if description.chars().count() > 5000 {
        return Err(invalid("description", "must be at most 5000 characters"));
    }
    let price = pick(&details.price, base.map(|p| p.price), "price")?;
    if !(0..=MAX_PRICE_MINOR).contains(&price) {
        return Err(invalid("price", format!("must be between 0 and {MAX_PRICE_MINOR} minor units")));
    }
    let currency = pick(&details.currency, base.map(|p| p.currency.clone()), "currency")?;
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(invalid("currency", "must be a three-letter ISO 4217 code such as USD"));
    }
    let category = pick(&details.category, base.map(|p| p.category.clone()), "category")?;
    let category = required_text(&category, 100).map_err(|m| invalid("category", m))?;
    let image_url = match &details.image_url {
        Some(v) => v.clone(),
        None => base.and_then(|p| p.image_url.clone()),
    };
    if let Some(url) = &image_url {
        let ok = (url.starts_with("https://") || url.starts_with("http://"))
            && url.len() <= 2000
            && !url.contains(char::is_whitespace);
        if !ok {
            return Err(invalid("imageUrl", "must be an http(s) URL of at most 2000 characters"));
        }
    }
    Ok(Resolved { title, description: description.trim().to_string(), price, currency, category, image_url })
}

impl Aggregate for ProductState {
    const KIND: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn decide(&self, id: &str, command: &ProductCommand, now: Timestamp) -> Result<Vec<ProductEvent>, ProductError> {
        match command {
            ProductCommand::Create { details, initial_stock } => {
                if self.0.is_some() {
                    return Err(ProductError::AlreadyExists);
                }
                let r = resolve(details, None)?;
                if !(0..=MAX_STOCK).contains(initial_stock) {
                    return Err(invalid("stock", format!("must be between 0 and {MAX_STOCK}")));
                }
                let product = Product {
                    id: id.to_string(),
                    title: r.title,
                    description: r.description,
                    price: r.price,
                    currency: r.currency,
                    category: r.category,
                    image_url: r.image_url,
                    stock_on_hand: *initial_stock,
                    stock_reserved: 0,
                    version: 1,
                    deleted: false,
                    created_at: now,
                    updated_at: now,
                };
                Ok(vec![ProductEvent::Created { product }])
            }
            ProductCommand::Update { expected_version, details } => {
                let current = self.live()?;
                if *expected_version != current.version {
                    return Err(ProductError::VersionConflict { expected: *expected_version, actual: current.version });
                }
                let r = resolve(details, Some(current))?;
                Ok(vec![ProductEvent::Updated {
                    title: r.title,
                    description: r.description,
                    price: r.price,
                    currency: r.currency,
                    category: r.category,
                    image_url: r.image_url,
                    version: current.version + 1,
                    at: now,
                }])
            }
            ProductCommand::Delete { expected_version } => {
                let current = self.live()?;
                if let Some(expected) = expected_version {
                    if *expected != current.version {
                        return Err(ProductError::VersionConflict { expected: *expected, actual: current.version });
                    }
                }
                Ok(vec![ProductEvent::Deleted { version: current.version + 1, at: now }])
            }
            ProductCommand::AdjustStock { delta, reason } => {
                let current = self.live()?;
                if *delta == 0 || delta.abs() > MAX_STOCK {
                    return Err(invalid("delta", format!("must be non-zero and at most {MAX_STOCK} in size")));
                }
                let reason = required_text(reason, 200).map_err(|m| invalid("reason", m))?;
                let after = current.stock_on_hand + delta;
                if after < current.stock_reserved || after > MAX_STOCK {
                    return Err(ProductError::InsufficientStock { available: current.available(), delta: *delta });
                }
                Ok(vec![ProductEvent::StockAdjusted { delta: *delta, reason, on_hand_after: after, at: now }])
            }
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::Created { product } => self.0 = Some(product.clone()),
            ProductEvent::Updated { title, description, price, currency, category, image_url, version, at } => {
                if let Some(p) = &mut self.0 {
                    p.title = title.clone();
                    p.description = description.clone();
                    p.price = *price;
                    p.currency = currency.clone();
                    p.category = category.clone();
                    p.image_url = image_url.clone();
                    p.version = *version;
                    p.updated_at = *at;
                }
            }
            ProductEvent::Deleted { version, at } => {
                if let Some(p) = &mut self.0 {
                    p.deleted = true;
                    p.version = *version;
                    p.updated_at = *at;
                }
            }
            ProductEvent::StockAdjusted { on_hand_after, at, .. } => {
                if let Some(p) = &mut self.0 {
                    p.stock_on_hand = *on_hand_after;
                    p.updated_at = *at;
                }
            }
        }
    }

    fn event_type(event: &ProductEvent) -> &'static str {
        match event {
            ProductEvent::Created { .. } => "product.created",
            ProductEvent::Updated { .. } => "product.updated",
            ProductEvent::Deleted { .. } => "product.deleted",
            ProductEvent::StockAdjusted { .. } => "product.stock_adjusted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> Timestamp {
        chrono::Utc::now()
    }

    fn details() -> ProductDetails {
        ProductDetails {
            title: Some("Mug".into()),
            description: Some("A mug".into()),
            price: Some(1299),
            currency: Some("USD".into()),
            category: Some("kitchen".into()),
            image_url: Some(Some("https://img.example/mug.png".into())),
        }
    }

    fn run(state: &mut ProductState, cmd: ProductCommand) -> Result<(), ProductError> {
        for e in state.decide("p1", &cmd, now())? {
            state.apply(&e);
        }
        Ok(())
    }

    fn created(stock: i64) -> ProductState {
        let mut s = ProductState::default();
        run(&mut s, ProductCommand::Create { details: details(), initial_stock: stock }).unwrap();
        s
    }

    #[test]
    fn create_validates_every_field() {
        let mut d = details();
        d.price = Some(-1);
        let err = ProductState::default().decide("p", &ProductCommand::Create { details: d, initial_stock: 1 }, now());
        assert!(matches!(err, Err(ProductError::Invalid { field: "price", .. })));
        let mut d = details();
        d.currency = Some("usd".into());
        let err = ProductState::default().decide("p", &ProductCommand::Create { details: d, initial_stock: 1 }, now());
        assert!(matches!(err, Err(ProductError::Invalid { field: "currency", .. })));
        let mut d = details();
        d.title = None;
        let err = ProductState::default().decide("p", &ProductCommand::Create { details: d, initial_stock: 1 }, now());
        assert!(matches!(err, Err(ProductError::Invalid { field: "title", .. })));
        let err = ProductState::default().decide(
            "p",
            &ProductCommand::Create { details: details(), initial_stock: -3 },
            now(),
        );
        assert!(matches!(err, Err(ProductError::Invalid { field: "stock", .. })));
    }

    #[test]
    fn stale_version_is_a_conflict_and_changes_nothing() {
        let mut s = created(5);
        let patch = ProductDetails { price: Some(999), ..Default::default() };
        run(&mut s, ProductCommand::Update { expected_version: 1, details: patch.clone() }).unwrap();
        assert_eq!(s.0.as_ref().unwrap().version, 2);
        let before = s.clone();
        let err = run(&mut s, ProductCommand::Update { expected_version: 1, details: patch });
        assert_eq!(err, Err(ProductError::VersionConflict { expected: 1, actual: 2 }));
        assert_eq!(s, before);
    }

    #[test]
    fn deleted_products_refuse_everything() {
        let mut s = created(5);
        run(&mut s, ProductCommand::Delete { expected_version: None }).unwrap();
        let err = run(&mut s, ProductCommand::AdjustStock { delta: 1, reason: "restock".into() });
        assert_eq!(err, Err(ProductError::NotFound));
        let err = run(&mut s, ProductCommand::Create { details: details(), initial_stock: 1 });
        assert_eq!(err, Err(ProductError::AlreadyExists));
    }

    #[test]
    fn stock_adjustment_needs_a_reason() {
        let mut s = created(5);
        let err = run(&mut s, ProductCommand::AdjustStock { delta: 1, reason: "  ".into() });
        assert!(matches!(err, Err(ProductError::Invalid { field: "reason", .. })));
    }

    proptest! {
        /// Whatever sequence of adjustments is attempted, stock on hand never goes below zero, and it always equals
        /// the initial stock plus the accepted deltas.
        #[test]
        fn stock_never_negative(initial in 0i64..1000, deltas in proptest::collection::vec(-500i64..500, 0..60)) {
            let mut s = created(initial);
            let mut expected = initial;
            for d in deltas {
                if run(&mut s, ProductCommand::AdjustStock { delta: d, reason: "count".into() }).is_ok() {
                    expected += d;
                }
                let p = s.0.as_ref().unwrap();
                prop_assert!(p.stock_on_hand >= 0);
                prop_assert!(p.available() >= 0);
                prop_assert_eq!(p.stock_on_hand, expected);
            }
        }

        /// Only the current version is accepted; every accepted update bumps it by exactly one.
        #[test]
        fn versions_are_checked(guesses in proptest::collection::vec(0u64..6, 1..20)) {
            let mut s = created(1);
            for g in guesses {
                let current = s.0.as_ref().unwrap().version;
                let r = run(&mut s, ProductCommand::Update { expected_version: g, details: ProductDetails::default() });
                prop_assert_eq!(r.is_ok(), g == current);
                let after = s.0.as_ref().unwrap().version;
                prop_assert_eq!(after, if g == current { current + 1 } else { current });
            }
        }
    }
}
