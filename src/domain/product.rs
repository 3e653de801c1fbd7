//! Catalog products and their stock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::text::{self, InvalidText, Lines, TextError};
use super::{currency, required_text, Aggregate, Timestamp};

pub const MAX_PRICE_MINOR: i64 = 100_000_000_000;
pub const MAX_STOCK: i64 = 1_000_000_000;
/// The longest reservation a checkout may hold (`checkout.reservation_ttl_secs`): an outcome whose order's
/// reservation expiry was not recorded is forgotten only once this long has passed since the product last changed.
pub const MAX_RESERVATION_TTL_SECS: i64 = 7 * 24 * 3600;
/// How a product's state keeps order outcomes. 0: its stream or snapshot began before orders told products they
/// were done with them (`product.order_closed`), so it may hold outcomes nobody will close; it is migrated once
/// (`product.outcomes_migrated`). 1: orders close what they leave.
pub const OUTCOMES_FORMAT: u32 = 1;
/// Orders checked against their read model per effect, when migrating sales recorded before orders closed them.
const CHECK_BATCH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl Product {
    pub fn available(&self) -> i64 {
        self.stock_on_hand - self.stock_reserved
    }
}

/// The details an admin sets; every field optional so the same type serves create (all required), PUT (all
/// required) and PATCH (any subset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductDetails {
    pub title: Option<String>,
    pub description: Option<String>,
    pub price: Option<i64>,
    pub currency: Option<String>,
    pub category: Option<String>,
    pub image_url: Option<Option<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ProductCommand {
    Create {
        details: ProductDetails,
        initial_stock: i64,
    },
    Update {
        expected_version: u64,
        details: ProductDetails,
    },
    Delete {
        expected_version: Option<u64>,
    },
    AdjustStock {
        delta: i64,
        reason: String,
    },
    /// Holds stock for an order until `expires_at`. Idempotent per order.
    Reserve {
        order_id: String,
        quantity: i64,
        expires_at: Timestamp,
    },
    /// Turns the order's reservation into a sale: stock on hand decreases, exactly once per order.
    CommitReservation {
        order_id: String,
    },
    /// Returns the order's reserved stock. Idempotent; a no-op when nothing is reserved.
    ReleaseReservation {
        order_id: String,
        reason: String,
    },
    /// Puts back the stock an order bought (the order was cancelled after payment). Idempotent.
    Restock {
        order_id: String,
    },
    /// The order will send no further step for this product (it shipped, or was cancelled and restocked).
    /// `expires_at` is the order's reservation expiry; once it has passed, the product forgets the order.
    CloseOrder {
        order_id: String,
        expires_at: Timestamp,
    },
    /// Releases every reservation whose expiry has passed.
    ExpireReservations {
        now: Timestamp,
    },
    /// Adopts outcomes recorded before orders closed them (a state of format 0): the ones that can no longer matter
    /// are scheduled to be forgotten, and sales are checked against their orders.
    MigrateOutcomes,
    /// What the orders of sales recorded before orders closed them have become: `finished` ones (shipped, so they
    /// can never be restocked) with their reservation expiry; every order in `order_ids` has been checked.
    OrdersChecked {
        order_ids: Vec<String>,
        finished: Vec<(String, Timestamp)>,
    },
}

/// The effect a product's state can call for: asking whether the orders of old sales have finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductEffect {
    CheckOrders { order_ids: Vec<String> },
}

/// Stock held for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub quantity: i64,
    pub expires_at: Timestamp,
}

/// What became of an order's reservation; remembered so retried saga steps are no-ops. `Closed`: the order said it
/// will send no further step; kept until its reservation expiry has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Settlement {
    Committed { quantity: i64 },
    Released,
    Restocked { quantity: i64 },
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ProductEvent {
    Created {
        product: Product,
        /// [`OUTCOMES_FORMAT`]; absent (0) from streams recorded before orders closed their outcomes.
        #[serde(default)]
        format: u32,
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
    StockReserved {
        order_id: String,
        quantity: i64,
        expires_at: Timestamp,
        at: Timestamp,
    },
    ReservationCommitted {
        order_id: String,
        quantity: i64,
        on_hand_after: i64,
        at: Timestamp,
    },
    /// `reason` is `released` (by the order) or `expired`.
    ReservationReleased {
        order_id: String,
        quantity: i64,
        reason: String,
        at: Timestamp,
    },
    Restocked {
        order_id: String,
        quantity: i64,
        on_hand_after: i64,
        at: Timestamp,
    },
    OrderClosed {
        order_id: String,
        expires_at: Timestamp,
        at: Timestamp,
    },
    /// A state of format 0 adopted: released, restocked and closed outcomes with no expiry to be forgotten by are
    /// forgotten after `forget_after`, and every sale's order is to be checked.
    OutcomesMigrated {
        forget_after: Timestamp,
        at: Timestamp,
    },
    /// These orders of old sales have been checked (those found finished were closed by `order_closed` events).
    OrdersChecked {
        order_ids: Vec<String>,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProductError {
    #[error("product not found")]
    NotFound,
    #[error("product already exists")]
    AlreadyExists,
    #[error("`{field}` {message}")]
    Invalid { field: crate::domain::Name, message: String },
    #[error(transparent)]
    InvalidText(#[from] InvalidText),
    #[error("stale version {expected}: the product is at version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("stock cannot go below zero or below reserved stock: {available} available, change of {delta}")]
    InsufficientStock { available: i64, delta: i64 },
    #[error("the order has no active reservation of this product (it expired or was released)")]
    ReservationUnavailable,
}

fn invalid(field: crate::domain::Name, message: impl Into<String>) -> ProductError {
    ProductError::Invalid { field, message: message.into() }
}

impl From<TextError> for ProductError {
    fn from(e: TextError) -> Self {
        match e {
            TextError::Forbidden(e) => e.into(),
            TextError::Rule { field, message } => invalid(field, message),
        }
    }
}

/// State of one product stream: the product (`None` until created), its reservations by order id, and what it must
/// remember about settled orders to keep their saga steps idempotent.
///
/// An order's outcome is kept while the order may still send a step for it, and no longer: an order that released
/// its reservation, or closed (shipped, or cancelled and restocked), is forgotten once its reservation expiry has
/// passed. From then on a reservation for it is refused (it would already have expired), so a late or repeated
/// step finds neither a reservation nor an outcome and changes nothing. The state stays as large as the orders in
/// progress, however many orders the product has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductState {
    pub product: Option<Product>,
    #[serde(default)]
    pub reservations: BTreeMap<String, Reservation>,
    #[serde(default)]
    pub settled: BTreeMap<String, Settlement>,
    /// Settled orders that will send no further step, by reservation expiry: each is forgotten once it has passed.
    #[serde(default)]
    pub forgetting: BTreeSet<(Timestamp, String)>,
    /// The latest reservation expiry of an order forgotten here.
    #[serde(default)]
    pub forgotten_until: Option<Timestamp>,
    /// Units sold to orders and not restocked. `None` in states recorded before it was counted, which still hold
    /// every outcome: then it is summed from `settled`.
    #[serde(default)]
    units_sold: Option<i64>,
    /// [`OUTCOMES_FORMAT`], or 0 for a state whose stream or snapshot began before it.
    #[serde(default)]
    format: u32,
    /// Orders of sales recorded before orders closed their outcomes, still to be checked: one that has shipped is
    /// closed; one that has not will close the sale itself when it ships or is cancelled.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unchecked: BTreeSet<String>,
}

impl ProductState {
    fn live(&self) -> Result<&Product, ProductError> {
        match &self.product {
            Some(p) if !p.deleted => Ok(p),
            _ => Err(ProductError::NotFound),
        }
    }

    /// Whether any reservation has expired by `now`.
    pub fn expired_reservations(&self, now: Timestamp) -> bool {
        self.reservations.values().any(|r| r.expires_at <= now)
    }

    /// Units sold to orders and not restocked.
    pub fn sold(&self) -> i64 {
        self.units_sold.unwrap_or_else(|| {
            self.settled.values().map(|s| if let Settlement::Committed { quantity } = s { *quantity } else { 0 }).sum()
        })
    }

    /// Whether a reservation for an order expiring at `expires_at` would already have expired, or the product may
    /// have forgotten the order.
    fn too_late(&self, expires_at: Timestamp, now: Timestamp) -> bool {
        expires_at <= now || self.forgotten_until.is_some_and(|until| expires_at <= until)
    }

    fn forget(&mut self, order_id: &str, expires_at: Timestamp) {
        // A migrated outcome may be scheduled twice (by its migration, then by its order's close): the later one
        // finds it gone and must not push `forgotten_until` further.
        if self.settled.remove(order_id).is_some() {
            self.forgotten_until = self.forgotten_until.max(Some(expires_at));
        }
    }

    /// Drops the settled orders whose reservation expiry has passed by `now` and that will send no further step.
    fn forget_lapsed(&mut self, now: Timestamp) {
        while self.forgetting.first().is_some_and(|(expires_at, _)| *expires_at <= now) {
            if let Some((expires_at, order_id)) = self.forgetting.pop_first() {
                self.forget(&order_id, expires_at);
            }
        }
    }

    /// Records that an order will send no further step, forgetting it now if its expiry has passed.
    fn close(&mut self, order_id: &str, expires_at: Timestamp, now: Timestamp) {
        if expires_at <= now {
            self.forget(order_id, expires_at);
        } else {
            self.forgetting.insert((expires_at, order_id.to_string()));
        }
    }

    fn add_sold(&mut self, quantity: i64) {
        self.units_sold = Some(self.sold() + quantity);
    }

    /// Whether the state may hold outcomes recorded before orders closed them, and has any outcome at all.
    fn needs_migration(&self) -> bool {
        self.format < OUTCOMES_FORMAT && self.product.is_some() && !self.settled.is_empty()
    }

    /// A command the passing of time (or a recovered old state) makes due.
    pub fn due(&self, now: Timestamp) -> Option<ProductCommand> {
        if self.needs_migration() {
            return Some(ProductCommand::MigrateOutcomes);
        }
        self.expired_reservations(now).then_some(ProductCommand::ExpireReservations { now })
    }

    /// The earliest time [`Self::due`] may return a command: now for a state to migrate, else the first
    /// reservation's expiry.
    pub fn next_due(&self) -> Option<Timestamp> {
        if self.needs_migration() {
            return Some(Timestamp::MIN_UTC);
        }
        self.reservations.values().map(|r| r.expires_at).min()
    }

    pub fn next_effect(&self) -> Option<ProductEffect> {
        (!self.unchecked.is_empty()).then(|| ProductEffect::CheckOrders {
            order_ids: self.unchecked.iter().take(CHECK_BATCH).cloned().collect(),
        })
    }

    /// Schedules the outcomes of a format-0 state: those that only refuse a late reservation are forgotten after
    /// `forget_after`; sales wait for their order's word, asked for once.
    fn migrate(&mut self, forget_after: Timestamp) {
        let scheduled: std::collections::HashSet<&String> = self.forgetting.iter().map(|(_, id)| id).collect();
        let mut forget = Vec::new();
        for (order_id, outcome) in &self.settled {
            match outcome {
                Settlement::Committed { .. } => {
                    self.unchecked.insert(order_id.clone());
                }
                Settlement::Released | Settlement::Restocked { .. } | Settlement::Closed => {
                    if !scheduled.contains(order_id) {
                        forget.push(order_id.clone());
                    }
                }
            }
        }
        self.forgetting.extend(forget.into_iter().map(|order_id| (forget_after, order_id)));
        self.format = OUTCOMES_FORMAT;
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
        new.clone().or(old).ok_or_else(|| invalid(field.into(), "is required"))
    }
    let title = pick(&details.title, base.map(|p| p.title.clone()), "title")?;
    let title = required_text("title", &title, 200)?;
    let description = pick(&details.description, base.map(|p| p.description.clone()), "description")?;
    let description = text::long_text("description", &description, 5000)?;
    let price = pick(&details.price, base.map(|p| p.price), "price")?;
    if !(0..=MAX_PRICE_MINOR).contains(&price) {
        return Err(invalid("price".into(), format!("must be between 0 and {MAX_PRICE_MINOR} minor units")));
    }
    let currency = pick(&details.currency, base.map(|p| p.currency.clone()), "currency")?;
    text::check("currency", &currency, Lines::Single)?;
    if !currency::is_active(&currency) {
        return Err(invalid("currency".into(), "must be an active ISO 4217 currency code such as USD, EUR or JPY"));
    }
    let category = pick(&details.category, base.map(|p| p.category.clone()), "category")?;
    let category = required_text("category", &category, 100)?;
    let image_url = match &details.image_url {
        Some(v) => v.clone(),
        None => base.and_then(|p| p.image_url.clone()),
    };
    if let Some(url) = &image_url {
        text::check("imageUrl", url, Lines::Single)?;
        // An image elsewhere, or one uploaded here (`POST /api/products/{id}/image`, served under `/media/`).
        // A `/media/` path names an image only: no `..` or `.` segment, `?`, `#`, `\` or `%` that could make it
        // another path of this server.
        let media_path_ok = |path: &str| {
            !path.contains(['?', '#', '\\', '%']) && path.split('/').all(|segment| segment != ".." && segment != ".")
        };
        let ok = (url.starts_with("https://")
            || url.starts_with("http://")
            || url.strip_prefix("/media/").is_some_and(media_path_ok))
            && url.len() <= 2000
            && !url.contains(char::is_whitespace);
        if !ok {
            return Err(invalid(
                "imageUrl".into(),
                "must be an http(s) URL or a /media/ path of at most 2000 characters",
            ));
        }
    }
    Ok(Resolved { title, description, price, currency, category, image_url })
}

impl Aggregate for ProductState {
    const KIND: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn decide(&self, id: &str, command: &ProductCommand, now: Timestamp) -> Result<Vec<ProductEvent>, ProductError> {
        match command {
            ProductCommand::Create { details, initial_stock } => {
                if self.product.is_some() {
                    return Err(ProductError::AlreadyExists);
                }
                let r = resolve(details, None)?;
                if !(0..=MAX_STOCK).contains(initial_stock) {
                    return Err(invalid("stock".into(), format!("must be between 0 and {MAX_STOCK}")));
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
                Ok(vec![ProductEvent::Created { product, format: OUTCOMES_FORMAT }])
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
                    return Err(invalid("delta".into(), format!("must be non-zero and at most {MAX_STOCK} in size")));
                }
                let reason = required_text("reason", reason, 200)?;
                let after = current.stock_on_hand + delta;
                if after < current.stock_reserved || after > MAX_STOCK {
                    return Err(ProductError::InsufficientStock { available: current.available(), delta: *delta });
                }
                Ok(vec![ProductEvent::StockAdjusted { delta: *delta, reason, on_hand_after: after, at: now }])
            }
            ProductCommand::Reserve { order_id, quantity, expires_at } => {
                if self.reservations.contains_key(order_id) {
                    return Ok(vec![]);
                }
                if self.settled.contains_key(order_id) || self.too_late(*expires_at, now) {
                    return Err(ProductError::ReservationUnavailable);
                }
                let current = self.live()?;
                if !(1..=MAX_STOCK).contains(quantity) {
                    return Err(invalid("quantity".into(), "must be positive"));
                }
                if current.available() < *quantity {
                    return Err(ProductError::InsufficientStock { available: current.available(), delta: -quantity });
                }
                Ok(vec![ProductEvent::StockReserved {
                    order_id: order_id.clone(),
                    quantity: *quantity,
                    expires_at: *expires_at,
                    at: now,
                }])
            }
            ProductCommand::CommitReservation { order_id } => {
                let product = self.product.as_ref().ok_or(ProductError::NotFound)?;
                if let Some(Settlement::Committed { .. }) = self.settled.get(order_id) {
                    return Ok(vec![]);
                }
                let r = self.reservations.get(order_id).ok_or(ProductError::ReservationUnavailable)?;
                Ok(vec![ProductEvent::ReservationCommitted {
                    order_id: order_id.clone(),
                    quantity: r.quantity,
                    on_hand_after: product.stock_on_hand - r.quantity,
                    at: now,
                }])
            }
            ProductCommand::ReleaseReservation { order_id, reason } => Ok(self
                .reservations
                .get(order_id)
                .map(|r| ProductEvent::ReservationReleased {
                    order_id: order_id.clone(),
                    quantity: r.quantity,
                    reason: reason.clone(),
                    at: now,
                })
                .into_iter()
                .collect()),
            ProductCommand::Restock { order_id } => match (self.settled.get(order_id), &self.product) {
                (Some(Settlement::Committed { quantity }), Some(p)) => Ok(vec![ProductEvent::Restocked {
                    order_id: order_id.clone(),
                    quantity: *quantity,
                    on_hand_after: p.stock_on_hand + quantity,
                    at: now,
                }]),
                _ => Ok(vec![]),
            },
            ProductCommand::CloseOrder { order_id, expires_at } => Ok(match self.settled.get(order_id) {
                Some(Settlement::Committed { .. } | Settlement::Restocked { .. }) => {
                    vec![ProductEvent::OrderClosed { order_id: order_id.clone(), expires_at: *expires_at, at: now }]
                }
                _ => vec![],
            }),
            ProductCommand::MigrateOutcomes => {
                if !self.needs_migration() {
                    return Ok(vec![]);
                }
                // No reservation recorded in the state is younger than the product's last change, so none it
                // remembers expires later than that plus the longest reservation.
                let last_change = self.product.as_ref().map_or(now, |p| p.updated_at.min(now));
                let forget_after = last_change + chrono::Duration::seconds(MAX_RESERVATION_TTL_SECS);
                Ok(vec![ProductEvent::OutcomesMigrated { forget_after, at: now }])
            }
            ProductCommand::OrdersChecked { order_ids, finished } => {
                let mut events: Vec<ProductEvent> = finished
                    .iter()
                    .filter(|(order_id, _)| matches!(self.settled.get(order_id), Some(Settlement::Committed { .. })))
                    .map(|(order_id, expires_at)| ProductEvent::OrderClosed {
                        order_id: order_id.clone(),
                        expires_at: *expires_at,
                        at: now,
                    })
                    .collect();
                let checked: Vec<String> =
                    order_ids.iter().filter(|id| self.unchecked.contains(*id)).cloned().collect();
                if !checked.is_empty() {
                    events.push(ProductEvent::OrdersChecked { order_ids: checked, at: now });
                }
                Ok(events)
            }
            ProductCommand::ExpireReservations { now: at } => Ok(self
                .reservations
                .iter()
                .filter(|(_, r)| r.expires_at <= *at)
                .map(|(order_id, r)| ProductEvent::ReservationReleased {
                    order_id: order_id.clone(),
                    quantity: r.quantity,
                    reason: "expired".into(),
                    at: *at,
                })
                .collect()),
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        self.units_sold = Some(self.sold());
        let at = match event {
            ProductEvent::Created { product, format } => {
                self.product = Some(product.clone());
                self.format = *format;
                product.created_at
            }
            ProductEvent::Updated { title, description, price, currency, category, image_url, version, at } => {
                if let Some(p) = &mut self.product {
                    p.title = title.clone();
                    p.description = description.clone();
                    p.price = *price;
                    p.currency = currency.clone();
                    p.category = category.clone();
                    p.image_url = image_url.clone();
                    p.version = *version;
                    p.updated_at = *at;
                }
                *at
            }
            ProductEvent::Deleted { version, at } => {
                if let Some(p) = &mut self.product {
                    p.deleted = true;
                    p.version = *version;
                    p.updated_at = *at;
                }
                *at
            }
            ProductEvent::StockAdjusted { on_hand_after, at, .. } => {
                if let Some(p) = &mut self.product {
                    p.stock_on_hand = *on_hand_after;
                    p.updated_at = *at;
                }
                *at
            }
            ProductEvent::StockReserved { order_id, quantity, expires_at, at } => {
                self.reservations
                    .insert(order_id.clone(), Reservation { quantity: *quantity, expires_at: *expires_at });
                if let Some(p) = &mut self.product {
                    p.stock_reserved += quantity;
                    p.updated_at = *at;
                }
                *at
            }
            ProductEvent::ReservationCommitted { order_id, quantity, on_hand_after, at } => {
                self.reservations.remove(order_id);
                self.settled.insert(order_id.clone(), Settlement::Committed { quantity: *quantity });
                self.add_sold(*quantity);
                if let Some(p) = &mut self.product {
                    p.stock_reserved -= quantity;
                    p.stock_on_hand = *on_hand_after;
                    p.updated_at = *at;
                }
                *at
            }
            ProductEvent::ReservationReleased { order_id, quantity, at, .. } => {
                // A released order sends no further step that needs its outcome: only a reservation for it must
                // still be refused, which its expiry does once passed.
                if let Some(r) = self.reservations.remove(order_id) {
                    self.settled.insert(order_id.clone(), Settlement::Released);
                    self.close(order_id, r.expires_at, *at);
                }
                if let Some(p) = &mut self.product {
                    p.stock_reserved -= quantity;
                    p.updated_at = *at;
                }
                *at
            }
            ProductEvent::Restocked { order_id, quantity, on_hand_after, at } => {
                self.settled.insert(order_id.clone(), Settlement::Restocked { quantity: *quantity });
                self.add_sold(-quantity);
                if let Some(p) = &mut self.product {
                    p.stock_on_hand = *on_hand_after;
                    p.updated_at = *at;
                }
                *at
            }
            ProductEvent::OrderClosed { order_id, expires_at, at } => {
                self.settled.insert(order_id.clone(), Settlement::Closed);
                self.unchecked.remove(order_id);
                self.close(order_id, *expires_at, *at);
                *at
            }
            ProductEvent::OutcomesMigrated { forget_after, at } => {
                self.migrate(*forget_after);
                *at
            }
            ProductEvent::OrdersChecked { order_ids, at } => {
                for order_id in order_ids {
                    self.unchecked.remove(order_id);
                }
                *at
            }
        };
        self.forget_lapsed(at);
    }

    fn event_type(event: &ProductEvent) -> &'static str {
        match event {
            ProductEvent::Created { .. } => "product.created",
            ProductEvent::Updated { .. } => "product.updated",
            ProductEvent::Deleted { .. } => "product.deleted",
            ProductEvent::StockAdjusted { .. } => "product.stock_adjusted",
            ProductEvent::StockReserved { .. } => "product.stock_reserved",
            ProductEvent::ReservationCommitted { .. } => "product.reservation_committed",
            ProductEvent::ReservationReleased { .. } => "product.reservation_released",
            ProductEvent::Restocked { .. } => "product.restocked",
            ProductEvent::OrderClosed { .. } => "product.order_closed",
            ProductEvent::OutcomesMigrated { .. } => "product.outcomes_migrated",
            ProductEvent::OrdersChecked { .. } => "product.orders_checked",
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
        assert!(matches!(err, Err(ProductError::Invalid { field, .. }) if field == "price"));
        let mut d = details();
        d.currency = Some("usd".into());
        let err = ProductState::default().decide("p", &ProductCommand::Create { details: d, initial_stock: 1 }, now());
        assert!(matches!(err, Err(ProductError::Invalid { field, .. }) if field == "currency"));
        let mut d = details();
        d.title = None;
        let err = ProductState::default().decide("p", &ProductCommand::Create { details: d, initial_stock: 1 }, now());
        assert!(matches!(err, Err(ProductError::Invalid { field, .. }) if field == "title"));
        let err = ProductState::default().decide(
            "p",
            &ProductCommand::Create { details: details(), initial_stock: -3 },
            now(),
        );
        assert!(matches!(err, Err(ProductError::Invalid { field, .. }) if field == "stock"));
    }

    #[test]
    fn currencies_must_be_active_iso_codes() {
        for (code, ok) in [("USD", true), ("JPY", true), ("KWD", true), ("ZZZ", false), ("XXX", false), ("US", false)] {
            let d = ProductDetails { currency: Some(code.into()), ..details() };
            let r =
                ProductState::default().decide("p", &ProductCommand::Create { details: d, initial_stock: 1 }, now());
            assert_eq!(r.is_ok(), ok, "{code}");
            if !ok {
                assert!(matches!(r, Err(ProductError::Invalid { field, .. }) if field == "currency"), "{code}");
            }
        }
        let mut s = created(1);
        let patch = ProductDetails { currency: Some("ZZZ".into()), ..Default::default() };
        assert!(run(&mut s, ProductCommand::Update { expected_version: 1, details: patch }).is_err());
        assert_eq!(s.product.as_ref().unwrap().currency, "USD");
    }

    #[test]
    fn text_fields_refuse_control_and_bidi_characters() {
        let create = |d: ProductDetails| {
            ProductState::default().decide("p", &ProductCommand::Create { details: d, initial_stock: 1 }, now())
        };
        let bad = [
            ("title", ProductDetails { title: Some("Mug\u{202E}gpj.exe".into()), ..details() }),
            ("description", ProductDetails { description: Some("nul\u{0}byte".into()), ..details() }),
            ("category", ProductDetails { category: Some("kitchen\u{1B}[2J".into()), ..details() }),
            (
                "imageUrl",
                ProductDetails { image_url: Some(Some("https://img.example/\u{200B}a.png".into())), ..details() },
            ),
        ];
        for (field, d) in bad {
            assert!(
                matches!(create(d), Err(ProductError::InvalidText(InvalidText { field: f, .. })) if f == field),
                "{field}"
            );
        }
        let multi_line = ProductDetails { description: Some("Blue.\n\tDishwasher safe.\r\n".into()), ..details() };
        let events = create(multi_line).unwrap();
        let ProductEvent::Created { product, .. } = &events[0] else { panic!("{events:?}") };
        assert_eq!(product.description, "Blue.\n\tDishwasher safe.");
        let mut s = created(1);
        let err = run(&mut s, ProductCommand::AdjustStock { delta: 1, reason: "found\u{85}".into() });
        assert!(matches!(err, Err(ProductError::InvalidText(InvalidText { field, .. })) if field == "reason"));
    }

    #[test]
    fn stale_version_is_a_conflict_and_changes_nothing() {
        let mut s = created(5);
        let patch = ProductDetails { price: Some(999), ..Default::default() };
        run(&mut s, ProductCommand::Update { expected_version: 1, details: patch.clone() }).unwrap();
        assert_eq!(s.product.as_ref().unwrap().version, 2);
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
    fn saga_steps_are_idempotent() {
        let mut s = created(5);
        let later = now() + chrono::Duration::minutes(15);
        let reserve = ProductCommand::Reserve { order_id: "o1".into(), quantity: 3, expires_at: later };
        run(&mut s, reserve.clone()).unwrap();
        run(&mut s, reserve.clone()).unwrap();
        assert_eq!(s.product.as_ref().unwrap().stock_reserved, 3);
        let err = run(&mut s, ProductCommand::Reserve { order_id: "o2".into(), quantity: 3, expires_at: later });
        assert!(matches!(err, Err(ProductError::InsufficientStock { available: 2, .. })));
        for _ in 0..2 {
            run(&mut s, ProductCommand::CommitReservation { order_id: "o1".into() }).unwrap();
        }
        let p = s.product.as_ref().unwrap();
        assert_eq!((p.stock_on_hand, p.stock_reserved), (2, 0));
        // A committed order can no longer reserve or release, but can be restocked once.
        assert_eq!(run(&mut s, reserve), Err(ProductError::ReservationUnavailable));
        run(&mut s, ProductCommand::ReleaseReservation { order_id: "o1".into(), reason: "x".into() }).unwrap();
        run(&mut s, ProductCommand::Restock { order_id: "o1".into() }).unwrap();
        run(&mut s, ProductCommand::Restock { order_id: "o1".into() }).unwrap();
        assert_eq!(s.product.as_ref().unwrap().stock_on_hand, 5);
    }

    #[test]
    fn reservations_expire() {
        let mut s = created(4);
        let t = now() + chrono::Duration::seconds(1);
        run(&mut s, ProductCommand::Reserve { order_id: "a".into(), quantity: 1, expires_at: t }).unwrap();
        run(
            &mut s,
            ProductCommand::Reserve { order_id: "b".into(), quantity: 2, expires_at: t + chrono::Duration::hours(1) },
        )
        .unwrap();
        assert!(s.expired_reservations(t));
        // The actor's timer is set for the first expiry: nothing is due a moment before it, the expiry is due at it.
        assert_eq!(s.next_due(), Some(t));
        assert!(s.due(t - chrono::Duration::milliseconds(1)).is_none());
        assert!(s.due(t).is_some());
        run(&mut s, ProductCommand::ExpireReservations { now: t }).unwrap();
        assert!(!s.expired_reservations(t));
        assert_eq!(s.next_due(), Some(t + chrono::Duration::hours(1)));
        assert_eq!(s.product.as_ref().unwrap().stock_reserved, 2);
        assert_eq!(
            run(&mut s, ProductCommand::CommitReservation { order_id: "a".into() }),
            Err(ProductError::ReservationUnavailable)
        );
    }

    #[test]
    fn a_closed_order_is_forgotten_once_its_expiry_has_passed() {
        let t = now();
        let expires_at = t + chrono::Duration::minutes(15);
        let mut s = created(5);
        let at = |s: &mut ProductState, cmd: &ProductCommand, when| {
            for e in s.decide("p1", cmd, when)? {
                s.apply(&e);
            }
            Ok::<_, ProductError>(())
        };
        let reserve = ProductCommand::Reserve { order_id: "o1".into(), quantity: 2, expires_at };
        let steps = [
            reserve.clone(),
            ProductCommand::CommitReservation { order_id: "o1".into() },
            ProductCommand::CloseOrder { order_id: "o1".into(), expires_at },
        ];
        for step in &steps {
            at(&mut s, step, t).unwrap();
        }
        // Closed before its expiry: still remembered, so a late reservation is refused and a restock is a no-op.
        assert_eq!(s.settled.get("o1"), Some(&Settlement::Closed));
        assert_eq!(at(&mut s, &reserve, t), Err(ProductError::ReservationUnavailable));
        at(&mut s, &ProductCommand::Restock { order_id: "o1".into() }, t).unwrap();
        // The next event after the expiry forgets it.
        let later = expires_at + chrono::Duration::seconds(1);
        at(&mut s, &ProductCommand::AdjustStock { delta: 1, reason: "count".into() }, later).unwrap();
        assert!(s.settled.is_empty() && s.forgetting.is_empty());
        assert_eq!(s.forgotten_until, Some(expires_at));
        // Every step repeated late changes nothing.
        for step in steps.iter().chain([&ProductCommand::Restock { order_id: "o1".into() }]) {
            let _ = at(&mut s, step, later);
        }
        let p = s.product.as_ref().unwrap();
        assert_eq!((p.stock_on_hand, p.stock_reserved, s.sold()), (4, 0, 2));
        assert!(s.reservations.is_empty() && s.settled.is_empty());
    }

    #[test]
    fn states_recorded_before_the_sold_counter_still_count_their_sales() {
        let mut legacy = serde_json::to_value(created(10)).unwrap();
        let settled = serde_json::json!({
            "a": {"outcome": "committed", "quantity": 3},
            "b": {"outcome": "released"},
            "c": {"outcome": "restocked", "quantity": 2},
        });
        legacy["settled"] = settled;
        legacy["product"]["stockOnHand"] = 7.into();
        for field in ["forgetting", "forgottenUntil", "unitsSold"] {
            legacy.as_object_mut().unwrap().remove(field);
        }
        let mut s: ProductState = serde_json::from_value(legacy).unwrap();
        assert_eq!(s.sold(), 3);
        run(&mut s, ProductCommand::Restock { order_id: "a".into() }).unwrap();
        run(&mut s, ProductCommand::Restock { order_id: "a".into() }).unwrap();
        assert_eq!((s.sold(), s.product.as_ref().unwrap().stock_on_hand), (0, 10));
    }

    /// A product recorded before orders closed their outcomes: a snapshot with neither `forgetting` nor
    /// `unitsSold`, or a stream whose `created` event carries no format.
    fn old_format_state(last_change: Timestamp) -> ProductState {
        let mut old = serde_json::to_value(created(10)).unwrap();
        old["settled"] = serde_json::json!({
            "shipped": {"outcome": "committed", "quantity": 2},
            "paid": {"outcome": "committed", "quantity": 1},
            "released": {"outcome": "released"},
            "restocked": {"outcome": "restocked", "quantity": 3},
        });
        old["product"]["stockOnHand"] = 7.into();
        old["product"]["updatedAt"] = serde_json::to_value(last_change).unwrap();
        for field in ["forgetting", "forgottenUntil", "unitsSold", "format"] {
            old.as_object_mut().unwrap().remove(field);
        }
        serde_json::from_value(old).unwrap()
    }

    #[test]
    fn outcomes_recorded_before_orders_closed_them_are_forgotten_once_they_cannot_matter() {
        let t = now();
        let last_change = t - chrono::Duration::days(1);
        let mut s = old_format_state(last_change);
        let at = |s: &mut ProductState, cmd: &ProductCommand, when| {
            for e in s.decide("p1", cmd, when)? {
                s.apply(&e);
            }
            Ok::<_, ProductError>(())
        };
        assert_eq!(s.sold(), 3);
        let migrate = s.due(t).expect("an old state is migrated first");
        at(&mut s, &migrate, t).unwrap();
        assert!(s.due(t).is_none() && s.decide("p1", &migrate, t).unwrap().is_empty(), "once");
        // Released and restocked outcomes only refuse late steps: forgotten once no reservation they knew can
        // still be running, a week after the product last changed.
        let forget_after = last_change + chrono::Duration::seconds(MAX_RESERVATION_TTL_SECS);
        let scheduled: Vec<_> = s.forgetting.iter().cloned().collect();
        assert_eq!(scheduled, [(forget_after, "released".to_string()), (forget_after, "restocked".to_string())]);
        // A sale may still be restocked if its order is cancelled: its order is asked instead.
        assert_eq!(
            s.next_effect(),
            Some(ProductEffect::CheckOrders { order_ids: vec!["paid".into(), "shipped".into()] })
        );
        let shipped_expiry = last_change - chrono::Duration::days(2);
        let checked = ProductCommand::OrdersChecked {
            order_ids: vec!["paid".into(), "shipped".into()],
            finished: vec![("shipped".into(), shipped_expiry)],
        };
        at(&mut s, &checked, t).unwrap();
        assert_eq!((s.next_effect(), s.unchecked.len()), (None, 0));
        assert_eq!(s.settled.keys().collect::<Vec<_>>(), ["paid", "released", "restocked"], "the shipped sale is gone");
        assert_eq!(s.sold(), 3, "forgetting never unsells");

        // Late steps of the forgotten and the remembered orders change nothing; the paid order is cancelled and
        // restocked exactly once, then closes.
        let late = [
            ProductCommand::Restock { order_id: "shipped".into() },
            ProductCommand::Restock { order_id: "restocked".into() },
            ProductCommand::Reserve {
                order_id: "released".into(),
                quantity: 1,
                expires_at: t + chrono::Duration::minutes(5),
            },
            ProductCommand::Reserve { order_id: "shipped".into(), quantity: 1, expires_at: shipped_expiry },
        ];
        for cmd in &late {
            let _ = at(&mut s, cmd, t);
        }
        let restock = ProductCommand::Restock { order_id: "paid".into() };
        at(&mut s, &restock, t).unwrap();
        at(&mut s, &restock, t).unwrap();
        at(&mut s, &ProductCommand::CloseOrder { order_id: "paid".into(), expires_at: shipped_expiry }, t).unwrap();
        let p = s.product.as_ref().unwrap();
        assert_eq!((p.stock_on_hand, p.stock_reserved, s.sold()), (8, 0, 2));

        // Past the fallback expiry, nothing is left of the old outcomes.
        let later = forget_after + chrono::Duration::seconds(1);
        at(&mut s, &ProductCommand::AdjustStock { delta: 1, reason: "count".into() }, later).unwrap();
        assert!(s.settled.is_empty() && s.forgetting.is_empty(), "{:?} {:?}", s.settled, s.forgetting);
        for cmd in &late {
            let _ = at(&mut s, cmd, later);
        }
        let p = s.product.as_ref().unwrap();
        assert_eq!((p.stock_on_hand, p.stock_reserved, s.sold()), (9, 0, 2));
    }

    #[test]
    fn streams_recorded_before_orders_closed_outcomes_are_migrated_and_new_ones_never() {
        let mut s = created(5);
        assert!(s.due(now()).is_none(), "a new product has nothing to migrate");
        let expires_at = now() + chrono::Duration::minutes(15);
        run(&mut s, ProductCommand::Reserve { order_id: "o1".into(), quantity: 1, expires_at }).unwrap();
        run(&mut s, ProductCommand::CommitReservation { order_id: "o1".into() }).unwrap();
        assert!(s.due(now()).is_none() && s.next_effect().is_none());
        // The same history, its `created` event written before events carried a format.
        let mut old = ProductState::default();
        let mut created =
            serde_json::to_value(ProductEvent::Created { product: s.product.clone().unwrap(), format: 1 }).unwrap();
        created.as_object_mut().unwrap().remove("format");
        old.apply(&serde_json::from_value(created).unwrap());
        for cmd in [
            ProductCommand::Reserve { order_id: "o1".into(), quantity: 1, expires_at },
            ProductCommand::CommitReservation { order_id: "o1".into() },
        ] {
            run(&mut old, cmd).unwrap();
        }
        let migrate = old.due(now()).expect("migrated");
        run(&mut old, migrate).unwrap();
        assert_eq!(old.next_effect(), Some(ProductEffect::CheckOrders { order_ids: vec!["o1".into()] }));
    }

    #[test]
    fn stock_adjustment_needs_a_reason() {
        let mut s = created(5);
        let err = run(&mut s, ProductCommand::AdjustStock { delta: 1, reason: "  ".into() });
        assert!(matches!(err, Err(ProductError::Invalid { field, .. }) if field == "reason"));
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
                let p = s.product.as_ref().unwrap();
                prop_assert!(p.stock_on_hand >= 0);
                prop_assert!(p.available() >= 0);
                prop_assert_eq!(p.stock_on_hand, expected);
            }
        }

        /// Reservations, commits, releases, restocks, expiries and adjustments in any order and any repetition:
        /// stock never goes negative, reserved stock equals the open reservations, and on hand + sold is always the
        /// initial stock plus accepted adjustments.
        #[test]
        fn reservations_conserve_stock(
            initial in 0i64..50,
            ops in proptest::collection::vec((0u8..6, 0usize..4, 1i64..20, -10i64..10), 0..80),
        ) {
            let mut s = created(initial);
            let t0 = now();
            let mut adjusted = 0;
            for (op, order, qty, delta) in ops {
                let order_id = format!("o{order}");
                let cmd = match op {
                    0 => ProductCommand::Reserve { order_id, quantity: qty, expires_at: t0 + chrono::Duration::seconds(qty) },
                    1 => ProductCommand::CommitReservation { order_id },
                    2 => ProductCommand::ReleaseReservation { order_id, reason: "released".into() },
                    3 => ProductCommand::Restock { order_id },
                    4 => ProductCommand::ExpireReservations { now: t0 + chrono::Duration::seconds(delta.abs()) },
                    _ => ProductCommand::AdjustStock { delta, reason: "count".into() },
                };
                let is_adjust = matches!(cmd, ProductCommand::AdjustStock { .. });
                if run(&mut s, cmd).is_ok() && is_adjust {
                    adjusted += delta;
                }
                let p = s.product.as_ref().unwrap();
                prop_assert!(p.stock_on_hand >= 0 && p.available() >= 0);
                prop_assert_eq!(p.stock_reserved, s.reservations.values().map(|r| r.quantity).sum::<i64>());
                prop_assert_eq!(p.stock_on_hand + s.sold(), initial + adjusted);
            }
        }

        /// Only the current version is accepted; every accepted update bumps it by exactly one.
        #[test]
        fn versions_are_checked(guesses in proptest::collection::vec(0u64..6, 1..20)) {
            let mut s = created(1);
            for g in guesses {
                let current = s.product.as_ref().unwrap().version;
                let r = run(&mut s, ProductCommand::Update { expected_version: g, details: ProductDetails::default() });
                prop_assert_eq!(r.is_ok(), g == current);
                let after = s.product.as_ref().unwrap().version;
                prop_assert_eq!(after, if g == current { current + 1 } else { current });
            }
        }
    }
}
