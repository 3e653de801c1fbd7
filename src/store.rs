//! Storage interfaces: the event journal (with snapshots and the outbox), the catalog read model, user accounts
//! and token revocations. Every write is a single atomic write per entity, so the same interface maps onto
//! MongoDB documents (one document per commit with a unique `(stream, seq)` index) as well as the embedded store.
//! The product listing's rules, shared by every store, are in `listing`.

pub mod chaos;
pub mod embedded;
pub mod mongo;
pub mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::coupon::Coupon;
use crate::domain::order::{Order, OrderStatus};
use crate::domain::payment::{Payment, PaymentStatus};
use crate::domain::product::Product;
use crate::domain::user::User;
use crate::domain::Timestamp;

mod listing;
pub use listing::{
    product_words, search_words, ListingBounds, ProductQuery, ProductSort, SearchTerm, MAX_LISTING_DEPTH,
    MAX_QUERY_CHARS, MAX_QUERY_WORDS, MIN_PREFIX_CHARS,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first: the expected sequence number is stale.
    #[error("stream {stream} is at sequence {actual}, expected {expected}")]
    Conflict { stream: String, expected: u64, actual: u64 },
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    /// The store cannot be reached or failed; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A persisted domain event, as journaled and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// `{stream}/{seq}`: unique, so consumers can drop duplicates.
    pub id: String,
    /// `{kind}:{entity id}`.
    pub stream: String,
    pub seq: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub recorded_at: Timestamp,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub seq: u64,
    pub state: serde_json::Value,
}

/// Read-model documents maintained alongside the journal for queries the entities cannot answer.
#[derive(Debug, Clone)]
pub enum ReadModel {
    Product(Product),
    Order(Box<Order>),
    Payment(Payment),
    Coupon(Coupon),
}

/// One atomic append: refused with [`StoreError::Conflict`] unless the stream is exactly at `expected_seq`.
#[derive(Debug, Clone)]
pub struct Commit {
    pub stream: String,
    pub expected_seq: u64,
    pub events: Vec<EventRecord>,
    pub snapshot: Option<Snapshot>,
    pub read_model: Option<ReadModel>,
    /// Whether the entity has work left (a saga step, a reservation to expire) and must be kept running.
    pub active: bool,
}

/// What an entity recovers from: its latest snapshot and the events after it.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub snapshot: Option<Snapshot>,
    pub events: Vec<EventRecord>,
}

#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub position: u64,
    pub event: EventRecord,
}

/// Whose events an outbox relay publishes.
#[derive(Clone, Default)]
pub enum OutboxScope {
    /// Every pending event: one process, or processes that each relay everything (consumers drop the repeats).
    #[default]
    All,
    /// The events of the streams (`kind:id`) the predicate covers: in a cluster, those of the entities this node
    /// hosts, so that each event is published once, by the node that wrote it, or after a crash by the node that
    /// took its shard over.
    Hosted(std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl OutboxScope {
    pub fn covers(&self, stream: &str) -> bool {
        match self {
            Self::All => true,
            Self::Hosted(hosts) => hosts(stream),
        }
    }
}

#[async_trait]
pub trait EventStore: Send + Sync {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    async fn history(&self, stream: &str) -> Result<History, StoreError>;
    /// Committed events not yet handed to the bus, oldest first, of the streams `scope` covers.
    async fn outbox_pending(&self, limit: usize, scope: &OutboxScope) -> Result<Vec<OutboxEntry>, StoreError>;
    async fn outbox_ack(&self, positions: &[u64]) -> Result<(), StoreError>;
    /// Streams whose last commit left them with work to do, as `kind:id`.
    async fn active_streams(&self) -> Result<Vec<String>, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: u32,
    pub limit: u32,
    /// How many items the listing holds, or, when `total_is_exact` is false, at least how many: a bounded product
    /// listing stops counting (see [`ListingBounds`]).
    pub total: u64,
    pub total_is_exact: bool,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            page: self.page,
            limit: self.limit,
            total: self.total,
            total_is_exact: self.total_is_exact,
        }
    }
}

#[async_trait]
pub trait CatalogStore: Send + Sync {
    async fn product(&self, id: &str) -> Result<Option<Product>, StoreError>;
    async fn list_products(&self, query: &ProductQuery) -> Result<Page<Product>, StoreError>;
}

/// A refresh token as stored: only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub user_id: String,
    pub family_id: String,
    pub expires_at: Timestamp,
    pub used: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// The token was valid and unused; it is now marked used.
    Consumed(RefreshToken),
    /// The token had been used before: a replay.
    Reused(RefreshToken),
    Unknown,
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Fails with `Duplicate("email")` when the email is taken.
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn user(&self, id: &str) -> Result<Option<User>, StoreError>;
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
    /// Replaces the user if the stored version is `user.version - 1`.
    async fn update_user(&self, user: &User) -> Result<(), StoreError>;
    async fn list_users(&self, page: u32, limit: u32) -> Result<Page<User>, StoreError>;
    async fn insert_refresh_token(&self, hash: &str, token: &RefreshToken) -> Result<(), StoreError>;
    /// The stored token, without using it.
    async fn refresh_token(&self, hash: &str) -> Result<Option<RefreshToken>, StoreError>;
    /// Atomically marks the token used and says whether it was already.
    async fn use_refresh_token(&self, hash: &str) -> Result<RefreshUse, StoreError>;
    /// Deletes the refresh tokens expired by `now` (used or not: an expired token is refused either way); returns
    /// how many.
    async fn purge_expired_refresh_tokens(&self, now: Timestamp) -> Result<u64, StoreError>;
}

/// Revoked token ids and token families, each remembered until the tokens would have expired anyway.
#[async_trait]
pub trait RevocationStore: Send + Sync {
    async fn revoke(&self, key: &str, until: Timestamp) -> Result<(), StoreError>;
    async fn any_revoked(&self, keys: &[String]) -> Result<bool, StoreError>;
    /// Deletes the revocations whose `until` has passed by `now` (the tokens they name have expired); returns how
    /// many.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;
}

#[derive(Debug, Clone, Default)]
pub struct OrderQuery {
    pub user_id: Option<String>,
    pub status: Option<OrderStatus>,
    pub page: u32,
    pub limit: u32,
}

/// Read models of the sales side: orders, payments, coupons.
#[async_trait]
pub trait SalesStore: Send + Sync {
    async fn order(&self, id: &str) -> Result<Option<Order>, StoreError>;
    /// Newest first.
    async fn list_orders(&self, query: &OrderQuery) -> Result<Page<Order>, StoreError>;
    async fn payment(&self, id: &str) -> Result<Option<Payment>, StoreError>;
    async fn payments_for_order(&self, order_id: &str) -> Result<Vec<Payment>, StoreError>;
    /// Newest first.
    async fn list_payments(
        &self,
        status: Option<PaymentStatus>,
        page: u32,
        limit: u32,
    ) -> Result<Page<Payment>, StoreError>;
    async fn coupon(&self, code: &str) -> Result<Option<Coupon>, StoreError>;
    async fn list_coupons(&self, page: u32, limit: u32) -> Result<Page<Coupon>, StoreError>;
}

/// A stored notification. `user_id: None` is a public broadcast (e.g. a new product).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Increasing across all notifications; clients resume after the last id they saw.
    pub id: u64,
    pub user_id: Option<String>,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    /// The event that caused it; a replayed event never creates a second notification.
    pub event_id: String,
    pub read: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A rendered transactional email, as handed to the mail sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Email {
    pub id: u64,
    pub to: String,
    pub template: String,
    pub subject: String,
    pub body: String,
    pub event_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Stores `n` with a fresh id unless a notification for the same event and user exists, and returns the stored
    /// one either way: every process that handles an event may call it, and all get the same notification.
    async fn insert_notification(&self, n: Notification) -> Result<Notification, StoreError>;
    /// The user's own notifications, newest first, with the unread count.
    async fn list_notifications(
        &self,
        user_id: &str,
        page: u32,
        limit: u32,
    ) -> Result<(Page<Notification>, u64), StoreError>;
    /// Returns false if no such notification belongs to the user.
    async fn mark_read(&self, user_id: &str, id: u64) -> Result<bool, StoreError>;
    /// The user's and public notifications with an id above `after`, oldest first.
    async fn notifications_after(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError>;
    /// Stores an email unless one for the same event and template exists; returns false for a duplicate.
    async fn insert_email(&self, email: Email) -> Result<bool, StoreError>;
    /// Newest first.
    async fn list_emails(&self, page: u32, limit: u32) -> Result<Page<Email>, StoreError>;
}

/// Everything the application persists, kept by one backend (embedded or MongoDB).
pub trait Store: EventStore + CatalogStore + UserStore + RevocationStore + SalesStore + NotificationStore {}

impl<T> Store for T where T: EventStore + CatalogStore + UserStore + RevocationStore + SalesStore + NotificationStore {}

/// Cuts one page (from 1) out of an already sorted list.
pub fn page_of<T>(items: Vec<T>, page: u32, limit: u32) -> Page<T> {
    let total = items.len() as u64;
    let start = (page.saturating_sub(1) as usize).saturating_mul(limit as usize);
    Page {
        items: items.into_iter().skip(start).take(limit as usize).collect(),
        page,
        limit,
        total,
        total_is_exact: true,
    }
}
