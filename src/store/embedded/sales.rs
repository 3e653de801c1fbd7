//! Orders, payments, coupons, notifications and emails in the embedded store.

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};

use super::{
    db_err, decode, documents_in, encode, read_all, read_all_u64, read_doc, EmbeddedStore, COUNTERS, COUPONS, EMAILS,
    EMAIL_KEYS, EMAIL_NEXT, NOTIFICATIONS, NOTIFICATION_KEYS, NOTIFICATION_NEXT, ORDERS, ORDERS_BY_TIME,
    ORDERS_BY_USER, PAYMENTS,
};
use crate::domain::coupon::Coupon;
use crate::domain::order::Order;
use crate::domain::payment::{Payment, PaymentStatus};
use crate::store::{page_of, Email, Notification, NotificationStore, OrderQuery, Page, SalesStore, StoreError};

/// Bumped when the order indexes change, so the next start rebuilds them.
const ORDER_INDEX_VERSION: u64 = 1;
const ORDER_INDEX_VERSION_KEY: &str = "order_index_version";

/// Sorts newest first, ties by id from the highest: the creation time counted down from the end of time, then the
/// id's bytes counted down from 255 (in hex), closed by a character above every hex digit so that an id sorts
/// before the ids it is a prefix of.
fn order_key(o: &Order) -> String {
    use std::fmt::Write;
    let micros = u64::try_from(o.created_at.timestamp_micros()).unwrap_or(0);
    let mut key = format!("{:020}|", u64::MAX - micros);
    for b in o.id.bytes() {
        let _ = write!(key, "{:02x}", 255 - b);
    }
    key.push('g');
    key
}

/// Indexes an order by user and by time. An order's user and creation time never change, so writing the entries
/// again is harmless.
pub(super) fn index_order(txn: &redb::WriteTransaction, o: &Order) -> Result<(), StoreError> {
    let key = order_key(o);
    txn.open_table(ORDERS_BY_USER)
        .map_err(db_err)?
        .insert((o.user_id.as_str(), key.as_str()), o.id.as_str())
        .map_err(db_err)?;
    txn.open_table(ORDERS_BY_TIME).map_err(db_err)?.insert(key.as_str(), o.id.as_str()).map_err(db_err)?;
    Ok(())
}

/// Opens the order indexes, building them from the stored orders when this version has not yet.
pub(super) fn prepare(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    if counters.get(ORDER_INDEX_VERSION_KEY).map_err(db_err)?.map(|v| v.value()) == Some(ORDER_INDEX_VERSION) {
        txn.open_table(ORDERS_BY_USER).map_err(db_err)?;
        txn.open_table(ORDERS_BY_TIME).map_err(db_err)?;
        return Ok(());
    }
    txn.delete_table(ORDERS_BY_USER).map_err(db_err)?;
    txn.delete_table(ORDERS_BY_TIME).map_err(db_err)?;
    txn.open_table(ORDERS_BY_USER).map_err(db_err)?;
    txn.open_table(ORDERS_BY_TIME).map_err(db_err)?;
    let orders: Vec<Order> = documents_in(txn, ORDERS)?;
    for o in &orders {
        index_order(txn, o)?;
    }
    counters.insert(ORDER_INDEX_VERSION_KEY, ORDER_INDEX_VERSION).map_err(db_err)?;
    if !orders.is_empty() {
        tracing::info!(orders = orders.len(), "built the order indexes");
    }
    Ok(())
}

/// A page of the orders whose ids `ids` yields newest first, keeping those `keep` accepts; `total` counts them all.
fn page_of_orders(
    orders: &redb::ReadOnlyTable<&str, &[u8]>,
    ids: impl Iterator<Item = Result<String, StoreError>>,
    keep: impl Fn(&Order) -> bool,
    page: u32,
    limit: u32,
) -> Result<Page<Order>, StoreError> {
    let start = (page.saturating_sub(1) as usize).saturating_mul(limit as usize);
    let (mut items, mut total) = (Vec::new(), 0u64);
    for id in ids {
        let id = id?;
        let Some(row) = orders.get(id.as_str()).map_err(db_err)? else { continue };
        let order: Order = decode(row.value())?;
        if keep(&order) {
            if total as usize >= start && items.len() < limit as usize {
                items.push(order);
            }
            total += 1;
        }
    }
    Ok(Page { items, page, limit, total, total_is_exact: true })
}

#[async_trait]
impl SalesStore for EmbeddedStore {
    async fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        let id = id.to_string();
        self.run(move |db| read_doc(db, ORDERS, &id)).await
    }

    async fn list_orders(&self, query: &OrderQuery) -> Result<Page<Order>, StoreError> {
        let q = query.clone();
        // Read through an index, newest first: a user's orders only, or every order (counted by reading each, to
        // filter by status, only when a status is asked for).
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let orders = txn.open_table(ORDERS).map_err(db_err)?;
            let keep = |o: &Order| q.status.is_none_or(|s| o.status == s);
            let id = |v: redb::AccessGuard<'_, &str>| v.value().to_string();
            match (&q.user_id, q.status) {
                (Some(user), _) => {
                    let index = txn.open_table(ORDERS_BY_USER).map_err(db_err)?;
                    let range = index.range((user.as_str(), "")..=(user.as_str(), "~")).map_err(db_err)?;
                    let ids = range.map(|row| row.map(|(_, v)| id(v)).map_err(db_err));
                    page_of_orders(&orders, ids, keep, q.page, q.limit)
                }
                (None, Some(_)) => {
                    let index = txn.open_table(ORDERS_BY_TIME).map_err(db_err)?;
                    let ids = index.iter().map_err(db_err)?.map(|row| row.map(|(_, v)| id(v)).map_err(db_err));
                    page_of_orders(&orders, ids, keep, q.page, q.limit)
                }
                (None, None) => {
                    let index = txn.open_table(ORDERS_BY_TIME).map_err(db_err)?;
                    let start = (q.page.saturating_sub(1) as usize).saturating_mul(q.limit as usize);
                    let mut items = Vec::new();
                    for row in index.iter().map_err(db_err)?.skip(start).take(q.limit as usize) {
                        let (_, v) = row.map_err(db_err)?;
                        if let Some(doc) = orders.get(v.value()).map_err(db_err)? {
                            items.push(decode(doc.value())?);
                        }
                    }
                    let total = index.len().map_err(db_err)?;
                    Ok(Page { items, page: q.page, limit: q.limit, total, total_is_exact: true })
                }
            }
        })
        .await
    }

    async fn payment(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        let id = id.to_string();
        self.run(move |db| read_doc(db, PAYMENTS, &id)).await
    }

    /// Two lookups by key: the order, then the payment it names (an order has at most one).
    async fn payments_for_order(&self, order_id: &str) -> Result<Vec<Payment>, StoreError> {
        let order_id = order_id.to_string();
        self.run(move |db| {
            let Some(order) = read_doc::<Order>(db, ORDERS, &order_id)? else { return Ok(Vec::new()) };
            let payment: Option<Payment> = read_doc(db, PAYMENTS, &order.payment_id())?;
            Ok(payment.into_iter().filter(|p| p.order_id == order_id).collect())
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
    /// Joins the group commit: notifications stored for many events at once share one fsync with the journal.
    async fn insert_notification(&self, mut n: Notification) -> Result<Notification, StoreError> {
        self.write(move |txn| {
            let key = format!("{}|{}", n.event_id, n.user_id.as_deref().unwrap_or("*"));
            let mut keys = txn.open_table(NOTIFICATION_KEYS).map_err(db_err)?;
            let stored = keys.get(key.as_str()).map_err(db_err)?.map(|id| id.value());
            if let Some(id) = stored {
                let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
                let row = table.get(id).map_err(db_err)?;
                let row =
                    row.ok_or_else(|| StoreError::Corrupt(format!("notification {id} is indexed but missing")))?;
                return decode(row.value());
            }
            n.id = next_id(txn, NOTIFICATION_NEXT)?;
            keys.insert(key.as_str(), n.id).map_err(db_err)?;
            txn.open_table(NOTIFICATIONS).map_err(db_err)?.insert(n.id, encode(&n)?.as_slice()).map_err(db_err)?;
            Ok(n)
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
        self.write(move |txn| {
            let key = format!("{}|{}", email.event_id, email.template);
            let mut keys = txn.open_table(EMAIL_KEYS).map_err(db_err)?;
            if keys.get(key.as_str()).map_err(db_err)?.is_some() {
                return Ok(false);
            }
            email.id = next_id(txn, EMAIL_NEXT)?;
            keys.insert(key.as_str(), email.id).map_err(db_err)?;
            txn.open_table(EMAILS).map_err(db_err)?.insert(email.id, encode(&email)?.as_slice()).map_err(db_err)?;
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
