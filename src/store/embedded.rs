//! The default store: one `redb` file in the data directory. Every call runs on the blocking pool, never on the
//! async workers. A commit writes the events, the stream head, an optional snapshot, the read model and the outbox
//! entries in one transaction, so nothing is half-written after a crash.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    page_of, CatalogStore, Commit, Email, EventRecord, EventStore, History, Notification, NotificationStore,
    OrderQuery, OutboxEntry, Page, ProductQuery, ReadModel, RefreshToken, RefreshUse, RevocationStore, SalesStore,
    Snapshot, StoreError, UserStore,
};
use crate::domain::coupon::Coupon;
use crate::domain::order::Order;
use crate::domain::payment::{Payment, PaymentStatus};
use crate::domain::product::Product;
use crate::domain::user::User;
use crate::domain::Timestamp;

const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const HEADS: TableDefinition<&str, u64> = TableDefinition::new("stream_heads");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const ACTIVE: TableDefinition<&str, ()> = TableDefinition::new("active_streams");
const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const USER_EMAILS: TableDefinition<&str, &str> = TableDefinition::new("user_emails");
const REFRESH: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
const REVOKED: TableDefinition<&str, i64> = TableDefinition::new("revocations");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const PAYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("payments");
const COUPONS: TableDefinition<&str, &[u8]> = TableDefinition::new("coupons");
const NOTIFICATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("notifications");
/// `{event id}|{user id}` -> notification id, so a replayed event is recognised.
const NOTIFICATION_KEYS: TableDefinition<&str, u64> = TableDefinition::new("notification_keys");
const EMAILS: TableDefinition<u64, &[u8]> = TableDefinition::new("emails");
const EMAIL_KEYS: TableDefinition<&str, u64> = TableDefinition::new("email_keys");

const OUTBOX_NEXT: &str = "outbox_next";
const NOTIFICATION_NEXT: &str = "notification_next";
const EMAIL_NEXT: &str = "email_next";

type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

/// Tells when the database file is closed: every clone of the store dropped and every blocking operation finished.
pub struct CloseWatch(std::sync::Weak<Database>);

impl CloseWatch {
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The JSON document stored under `key`, if any.
fn read_doc<T: DeserializeOwned>(db: &Database, table: JsonTable, key: &str) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(table).map_err(db_err)?;
    let found = table.get(key).map_err(db_err)?;
    found.map(|v| decode(v.value())).transpose()
}

/// Every JSON document of a table, in key order.
fn read_all<T: DeserializeOwned>(db: &Database, table: JsonTable) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(table).map_err(db_err)?;
    let mut all = Vec::with_capacity(table.len().map_err(db_err)? as usize);
    for row in table.iter().map_err(db_err)? {
        let (_, v) = row.map_err(db_err)?;
        all.push(decode(v.value())?);
    }
    Ok(all)
}

/// Every JSON document of a table keyed by sequence number, in key order.
fn read_all_u64<T: DeserializeOwned>(db: &Database, table: TableDefinition<u64, &[u8]>) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(table).map_err(db_err)?;
    let mut all = Vec::new();
    for row in table.iter().map_err(db_err)? {
        all.push(decode(row.map_err(db_err)?.1.value())?);
    }
    Ok(all)
}

impl EmbeddedStore {
    /// Opens (creating if needed) `commercex.redb` in `data_dir`. Fails if another process has it open.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display())))?;
        let db = Database::create(data_dir.join("commercex.redb")).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(EVENTS).map_err(db_err)?;
            txn.open_table(HEADS).map_err(db_err)?;
            txn.open_table(SNAPSHOTS).map_err(db_err)?;
            txn.open_table(OUTBOX).map_err(db_err)?;
            txn.open_table(COUNTERS).map_err(db_err)?;
            txn.open_table(ACTIVE).map_err(db_err)?;
            txn.open_table(PRODUCTS).map_err(db_err)?;
            txn.open_table(USERS).map_err(db_err)?;
            txn.open_table(USER_EMAILS).map_err(db_err)?;
            txn.open_table(REFRESH).map_err(db_err)?;
            txn.open_table(REVOKED).map_err(db_err)?;
            for table in [ORDERS, PAYMENTS, COUPONS] {
                txn.open_table(table).map_err(db_err)?;
            }
            txn.open_table(NOTIFICATIONS).map_err(db_err)?;
            txn.open_table(NOTIFICATION_KEYS).map_err(db_err)?;
            txn.open_table(EMAILS).map_err(db_err)?;
            txn.open_table(EMAIL_KEYS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self { db: Arc::new(db) })
    }

    pub fn close_watch(&self) -> CloseWatch {
        CloseWatch(Arc::downgrade(&self.db))
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn commit_blocking(db: &Database, commit: Commit) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut heads = txn.open_table(HEADS).map_err(db_err)?;
        let actual = heads.get(commit.stream.as_str()).map_err(db_err)?.map_or(0, |v| v.value());
        if actual != commit.expected_seq {
            return Err(StoreError::Conflict { stream: commit.stream, expected: commit.expected_seq, actual });
        }
        let mut events = txn.open_table(EVENTS).map_err(db_err)?;
        let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
        let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let mut position = counters.get(OUTBOX_NEXT).map_err(db_err)?.map_or(0, |v| v.value());
        let mut head = actual;
        for event in &commit.events {
            if event.seq != head + 1 {
                return Err(StoreError::Corrupt(format!("event {} does not follow sequence {head}", event.id)));
            }
            let bytes = encode(event)?;
            events.insert((commit.stream.as_str(), event.seq), bytes.as_slice()).map_err(db_err)?;
            outbox.insert(position, bytes.as_slice()).map_err(db_err)?;
            position += 1;
            head = event.seq;
        }
        counters.insert(OUTBOX_NEXT, position).map_err(db_err)?;
        heads.insert(commit.stream.as_str(), head).map_err(db_err)?;
        let mut active = txn.open_table(ACTIVE).map_err(db_err)?;
        if commit.active {
            active.insert(commit.stream.as_str(), ()).map_err(db_err)?;
        } else {
            active.remove(commit.stream.as_str()).map_err(db_err)?;
        }
        if let Some(snapshot) = &commit.snapshot {
            let mut snapshots = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            snapshots.insert(commit.stream.as_str(), encode(snapshot)?.as_slice()).map_err(db_err)?;
        }
        let document = match &commit.read_model {
            Some(ReadModel::Product(p)) => Some((PRODUCTS, p.id.as_str(), encode(p)?)),
            Some(ReadModel::Order(o)) => Some((ORDERS, o.id.as_str(), encode(o)?)),
            Some(ReadModel::Payment(p)) => Some((PAYMENTS, p.id.as_str(), encode(p)?)),
            Some(ReadModel::Coupon(c)) => Some((COUPONS, c.code.as_str(), encode(c)?)),
            None => None,
        };
        if let Some((table, key, bytes)) = document {
            txn.open_table(table).map_err(db_err)?.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.run(move |db| commit_blocking(db, commit)).await
    }

    async fn history(&self, stream: &str) -> Result<History, StoreError> {
        let stream = stream.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let snapshots = txn.open_table(SNAPSHOTS).map_err(db_err)?;
            let snapshot: Option<Snapshot> =
                snapshots.get(stream.as_str()).map_err(db_err)?.map(|v| decode(v.value())).transpose()?;
            let from = snapshot.as_ref().map_or(0, |s| s.seq) + 1;
            let table = txn.open_table(EVENTS).map_err(db_err)?;
            let mut events = Vec::new();
            for row in table.range((stream.as_str(), from)..=(stream.as_str(), u64::MAX)).map_err(db_err)? {
                let (_, v) = row.map_err(db_err)?;
                events.push(decode::<EventRecord>(v.value())?);
            }
            Ok(History { snapshot, events })
        })
        .await
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(OUTBOX).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)?.take(limit) {
                let (k, v) = row.map_err(db_err)?;
                out.push(OutboxEntry { position: k.value(), event: decode(v.value())? });
            }
            Ok(out)
        })
        .await
    }

    async fn outbox_ack(&self, positions: &[u64]) -> Result<(), StoreError> {
        let positions = positions.to_vec();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(OUTBOX).map_err(db_err)?;
                for p in positions {
                    table.remove(p).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn active_streams(&self) -> Result<Vec<String>, StoreError> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(ACTIVE).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)? {
                out.push(row.map_err(db_err)?.0.value().to_string());
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            txn.open_table(HEADS).map_err(db_err)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl CatalogStore for EmbeddedStore {
    async fn product(&self, id: &str) -> Result<Option<Product>, StoreError> {
        let id = id.to_string();
        self.run(move |db| read_doc(db, PRODUCTS, &id)).await
    }

    async fn list_products(&self, query: &ProductQuery) -> Result<Page<Product>, StoreError> {
        let query = query.clone();
        self.run(move |db| Ok(query.paginate(read_all::<Product>(db, PRODUCTS)?.into_iter()))).await
    }
}

#[async_trait]
impl UserStore for EmbeddedStore {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut emails = txn.open_table(USER_EMAILS).map_err(db_err)?;
                if emails.get(user.email.as_str()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Duplicate("email"));
                }
                emails.insert(user.email.as_str(), user.id.as_str()).map_err(db_err)?;
                let mut users = txn.open_table(USERS).map_err(db_err)?;
                users.insert(user.id.as_str(), encode(&user)?.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_string();
        self.run(move |db| read_doc(db, USERS, &id)).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let email = email.to_string();
        self.run(move |db| {
            let id = {
                let txn = db.begin_read().map_err(db_err)?;
                let emails = txn.open_table(USER_EMAILS).map_err(db_err)?;
                let found = emails.get(email.as_str()).map_err(db_err)?;
                found.map(|v| v.value().to_string())
            };
            // A user is inserted together with its email entry, so the email's id is always present in USERS.
            id.map_or(Ok(None), |id| read_doc(db, USERS, &id))
        })
        .await
    }

    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        let user = user.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut users = txn.open_table(USERS).map_err(db_err)?;
                let current: User = match users.get(user.id.as_str()).map_err(db_err)? {
                    Some(v) => decode(v.value())?,
                    None => {
                        return Err(StoreError::Conflict {
                            stream: user.id.clone(),
                            expected: user.version - 1,
                            actual: 0,
                        })
                    }
                };
                if current.version + 1 != user.version || current.email != user.email {
                    return Err(StoreError::Conflict {
                        stream: user.id.clone(),
                        expected: user.version - 1,
                        actual: current.version,
                    });
                }
                users.insert(user.id.as_str(), encode(&user)?.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn list_users(&self, page: u32, limit: u32) -> Result<Page<User>, StoreError> {
        self.run(move |db| {
            let mut all: Vec<User> = read_all(db, USERS)?;
            all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
            Ok(page_of(all, page, limit))
        })
        .await
    }

    async fn insert_refresh_token(&self, hash: &str, token: &RefreshToken) -> Result<(), StoreError> {
        let (hash, token) = (hash.to_string(), token.clone());
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(REFRESH).map_err(db_err)?;
                if table.get(hash.as_str()).map_err(db_err)?.is_some() {
                    return Err(StoreError::Duplicate("refresh token"));
                }
                table.insert(hash.as_str(), encode(&token)?.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn use_refresh_token(&self, hash: &str) -> Result<RefreshUse, StoreError> {
        let hash = hash.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let outcome = {
                let mut table = txn.open_table(REFRESH).map_err(db_err)?;
                let stored: Option<RefreshToken> =
                    table.get(hash.as_str()).map_err(db_err)?.map(|v| decode(v.value())).transpose()?;
                match stored {
                    None => RefreshUse::Unknown,
                    Some(t) if t.used => RefreshUse::Reused(t),
                    Some(mut t) => {
                        t.used = true;
                        table.insert(hash.as_str(), encode(&t)?.as_slice()).map_err(db_err)?;
                        RefreshUse::Consumed(t)
                    }
                }
            };
            txn.commit().map_err(db_err)?;
            Ok(outcome)
        })
        .await
    }
}

#[async_trait]
impl SalesStore for EmbeddedStore {
    async fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        let id = id.to_string();
        self.run(move |db| read_doc(db, ORDERS, &id)).await
    }

    async fn list_orders(&self, query: &OrderQuery) -> Result<Page<Order>, StoreError> {
        let q = query.clone();
        self.run(move |db| {
            let mut orders: Vec<Order> = read_all(db, ORDERS)?;
            orders.retain(|o| {
                q.user_id.as_ref().is_none_or(|u| &o.user_id == u) && q.status.is_none_or(|s| o.status == s)
            });
            orders.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
            Ok(page_of(orders, q.page, q.limit))
        })
        .await
    }

    async fn payments_for_order(&self, order_id: &str) -> Result<Vec<Payment>, StoreError> {
        let order_id = order_id.to_string();
        self.run(move |db| {
            let mut payments: Vec<Payment> = read_all(db, PAYMENTS)?;
            payments.retain(|p| p.order_id == order_id);
            Ok(payments)
        })
        .await
    }

    async fn list_payments(
        &self,
        status: Option<PaymentStatus>,
        page: u32,
        limit: u32,
    ) -> Result<Page<Payment>, StoreError> {
        self.run(move |db| {
            let mut payments: Vec<Payment> = read_all(db, PAYMENTS)?;
            payments.retain(|p| status.is_none_or(|s| p.status == s));
            payments.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
            Ok(page_of(payments, page, limit))
        })
        .await
    }

    async fn coupon(&self, code: &str) -> Result<Option<Coupon>, StoreError> {
        let code = code.to_string();
        self.run(move |db| read_doc(db, COUPONS, &code)).await
    }

    async fn list_coupons(&self, page: u32, limit: u32) -> Result<Page<Coupon>, StoreError> {
        self.run(move |db| Ok(page_of(read_all(db, COUPONS)?, page, limit))).await
    }
}

/// Takes the next value of a counter inside a write transaction.
fn next_id(txn: &redb::WriteTransaction, counter: &str) -> Result<u64, StoreError> {
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let id = counters.get(counter).map_err(db_err)?.map_or(1, |v| v.value());
    counters.insert(counter, id + 1).map_err(db_err)?;
    Ok(id)
}

#[async_trait]
impl NotificationStore for EmbeddedStore {
    async fn insert_notification(&self, mut n: Notification) -> Result<Option<Notification>, StoreError> {
        self.run(move |db| {
            let key = format!("{}|{}", n.event_id, n.user_id.as_deref().unwrap_or("*"));
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut keys = txn.open_table(NOTIFICATION_KEYS).map_err(db_err)?;
                if keys.get(key.as_str()).map_err(db_err)?.is_some() {
                    return Ok(None);
                }
                n.id = next_id(&txn, NOTIFICATION_NEXT)?;
                keys.insert(key.as_str(), n.id).map_err(db_err)?;
                txn.open_table(NOTIFICATIONS).map_err(db_err)?.insert(n.id, encode(&n)?.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(Some(n))
        })
        .await
    }

    async fn list_notifications(
        &self,
        user_id: &str,
        page: u32,
        limit: u32,
    ) -> Result<(Page<Notification>, u64), StoreError> {
        let user_id = user_id.to_string();
        self.run(move |db| {
            let mut mine: Vec<Notification> = read_all_u64(db, NOTIFICATIONS)?;
            mine.retain(|n| n.user_id.as_deref() == Some(user_id.as_str()));
            let unread = mine.iter().filter(|n| !n.read).count() as u64;
            mine.reverse();
            Ok((page_of(mine, page, limit), unread))
        })
        .await
    }

    async fn mark_read(&self, user_id: &str, id: u64) -> Result<bool, StoreError> {
        let user_id = user_id.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let found = {
                let mut table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
                let current: Option<Notification> =
                    table.get(id).map_err(db_err)?.map(|v| decode(v.value())).transpose()?;
                match current {
                    Some(mut n) if n.user_id.as_deref() == Some(user_id.as_str()) => {
                        n.read = true;
                        table.insert(id, encode(&n)?.as_slice()).map_err(db_err)?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(db_err)?;
            Ok(found)
        })
        .await
    }

    async fn notifications_after(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let user_id = user_id.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.range(after.saturating_add(1)..).map_err(db_err)? {
                let n: Notification = decode(row.map_err(db_err)?.1.value())?;
                if n.user_id.is_none() || n.user_id.as_deref() == Some(user_id.as_str()) {
                    out.push(n);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn insert_email(&self, mut email: Email) -> Result<bool, StoreError> {
        self.run(move |db| {
            let key = format!("{}|{}", email.event_id, email.template);
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut keys = txn.open_table(EMAIL_KEYS).map_err(db_err)?;
                if keys.get(key.as_str()).map_err(db_err)?.is_some() {
                    return Ok(false);
                }
                email.id = next_id(&txn, EMAIL_NEXT)?;
                keys.insert(key.as_str(), email.id).map_err(db_err)?;
                txn.open_table(EMAILS).map_err(db_err)?.insert(email.id, encode(&email)?.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn list_emails(&self, page: u32, limit: u32) -> Result<Page<Email>, StoreError> {
        self.run(move |db| {
            let mut emails: Vec<Email> = read_all_u64(db, EMAILS)?;
            emails.reverse();
            Ok(page_of(emails, page, limit))
        })
        .await
    }
}

#[async_trait]
impl RevocationStore for EmbeddedStore {
    async fn revoke(&self, key: &str, until: Timestamp) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(REVOKED).map_err(db_err)?;
                table.insert(key.as_str(), until.timestamp()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn any_revoked(&self, keys: &[String]) -> Result<bool, StoreError> {
        let keys = keys.to_vec();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(REVOKED).map_err(db_err)?;
            for key in &keys {
                if table.get(key.as_str()).map_err(db_err)?.is_some() {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stream: &str, seq: u64) -> EventRecord {
        EventRecord {
            id: format!("{stream}/{seq}"),
            stream: stream.into(),
            seq,
            event_type: "test.event".into(),
            recorded_at: chrono::Utc::now(),
            payload: serde_json::json!({ "n": seq }),
        }
    }

    fn commit(stream: &str, expected: u64, seqs: std::ops::RangeInclusive<u64>) -> Commit {
        Commit {
            stream: stream.into(),
            expected_seq: expected,
            events: seqs.map(|s| record(stream, s)).collect(),
            snapshot: None,
            read_model: None,
            active: false,
        }
    }

    #[tokio::test]
    async fn a_stale_writer_is_refused_by_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.commit(commit("cart:a", 0, 1..=2)).await.unwrap();
        let err = store.commit(commit("cart:a", 0, 1..=1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { expected: 0, actual: 2, .. }));
        store.commit(commit("cart:a", 2, 3..=3)).await.unwrap();
        let h = store.history("cart:a").await.unwrap();
        assert_eq!(h.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(store.history("cart:ab").await.unwrap().events.is_empty());
    }

    #[tokio::test]
    async fn history_starts_after_the_snapshot_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.commit(commit("p:1", 0, 1..=3)).await.unwrap();
            let mut c = commit("p:1", 3, 4..=4);
            c.snapshot = Some(Snapshot { seq: 4, state: serde_json::json!({"s": 4}) });
            store.commit(c).await.unwrap();
            store.commit(commit("p:1", 4, 5..=6)).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let h = store.history("p:1").await.unwrap();
        assert_eq!(h.snapshot.unwrap().seq, 4);
        assert_eq!(h.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6]);
        let pending = store.outbox_pending(100).await.unwrap();
        assert_eq!(pending.len(), 6);
        store.outbox_ack(&pending[..4].iter().map(|e| e.position).collect::<Vec<_>>()).await.unwrap();
        let rest = store.outbox_pending(100).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.event.seq).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[tokio::test]
    async fn refresh_tokens_are_single_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let t =
            RefreshToken { user_id: "u".into(), family_id: "f".into(), expires_at: chrono::Utc::now(), used: false };
        store.insert_refresh_token("h", &t).await.unwrap();
        assert!(matches!(store.use_refresh_token("h").await.unwrap(), RefreshUse::Consumed(_)));
        assert!(matches!(store.use_refresh_token("h").await.unwrap(), RefreshUse::Reused(_)));
        assert_eq!(store.use_refresh_token("nope").await.unwrap(), RefreshUse::Unknown);
    }
}
