//! Orders, payments and coupons in the embedded store.

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};

use super::{
    db_err, decode, documents_in, read_all, read_doc, EmbeddedStore, COUNTERS, COUPONS, ORDERS, ORDERS_BY_TIME,
    ORDERS_BY_USER, PAYMENTS, PAYMENTS_BY_STATUS, PAYMENTS_BY_TIME, PAYMENT_COUNTS,
};
use crate::domain::coupon::Coupon;
use crate::domain::order::Order;
use crate::domain::payment::{Payment, PaymentStatus};
use crate::store::{page_of, OrderQuery, Page, SalesStore, StoreError};

/// Bumped when the order indexes change, so the next start rebuilds them.
const ORDER_INDEX_VERSION: u64 = 1;
const ORDER_INDEX_VERSION_KEY: &str = "order_index_version";

/// Sorts newest first, ties by id from the highest: the creation time counted down from the end of time, then the
/// id's bytes counted down from 255 (in hex), closed by a character above every hex digit so that an id sorts
/// before the ids it is a prefix of.
fn newest_first_key(created_at: chrono::DateTime<chrono::Utc>, id: &str) -> String {
    use std::fmt::Write;
    let micros = u64::try_from(created_at.timestamp_micros()).unwrap_or(0);
    let mut key = format!("{:020}|", u64::MAX - micros);
    for b in id.bytes() {
        let _ = write!(key, "{:02x}", 255 - b);
    }
    key.push('g');
    key
}

fn order_key(o: &Order) -> String {
    newest_first_key(o.created_at, &o.id)
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

/// Bumped when the payment indexes change, so the next start rebuilds them.
const PAYMENT_INDEX_VERSION: u64 = 1;
const PAYMENT_INDEX_VERSION_KEY: &str = "payment_index_version";

fn status_name(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Pending => "pending",
        PaymentStatus::Captured => "captured",
        PaymentStatus::Failed => "failed",
        PaymentStatus::Refunded => "refunded",
    }
}

/// Indexes a payment by time and by status, moving its status entry (and count) when the status changed since
/// `before`, the payment as stored until this write.
pub(super) fn index_payment(
    txn: &redb::WriteTransaction,
    before: Option<PaymentStatus>,
    p: &Payment,
) -> Result<(), StoreError> {
    let key = newest_first_key(p.created_at, &p.id);
    txn.open_table(PAYMENTS_BY_TIME).map_err(db_err)?.insert(key.as_str(), p.id.as_str()).map_err(db_err)?;
    if before == Some(p.status) {
        return Ok(());
    }
    let mut by_status = txn.open_table(PAYMENTS_BY_STATUS).map_err(db_err)?;
    let mut counts = txn.open_table(PAYMENT_COUNTS).map_err(db_err)?;
    if let Some(old) = before.map(status_name) {
        by_status.remove((old, key.as_str())).map_err(db_err)?;
        let count = counts.get(old).map_err(db_err)?.map_or(0, |v| v.value());
        counts.insert(old, count.saturating_sub(1)).map_err(db_err)?;
    }
    let new = status_name(p.status);
    by_status.insert((new, key.as_str()), p.id.as_str()).map_err(db_err)?;
    let count = counts.get(new).map_err(db_err)?.map_or(0, |v| v.value());
    counts.insert(new, count + 1).map_err(db_err)?;
    Ok(())
}

/// The status of the payment stored under `id` before a write replaces it.
pub(super) fn stored_payment_status(
    txn: &redb::WriteTransaction,
    id: &str,
) -> Result<Option<PaymentStatus>, StoreError> {
    let table = txn.open_table(PAYMENTS).map_err(db_err)?;
    let row = table.get(id).map_err(db_err)?;
    Ok(row.map(|v| decode::<Payment>(v.value())).transpose()?.map(|p| p.status))
}

/// Opens the payment indexes, building them from the stored payments when this version has not yet.
pub(super) fn prepare_payments(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    if counters.get(PAYMENT_INDEX_VERSION_KEY).map_err(db_err)?.map(|v| v.value()) == Some(PAYMENT_INDEX_VERSION) {
        txn.open_table(PAYMENTS_BY_TIME).map_err(db_err)?;
        txn.open_table(PAYMENTS_BY_STATUS).map_err(db_err)?;
        txn.open_table(PAYMENT_COUNTS).map_err(db_err)?;
        return Ok(());
    }
    txn.delete_table(PAYMENTS_BY_TIME).map_err(db_err)?;
    txn.delete_table(PAYMENTS_BY_STATUS).map_err(db_err)?;
    txn.delete_table(PAYMENT_COUNTS).map_err(db_err)?;
    // Created even when there is nothing to index: readers open them.
    txn.open_table(PAYMENTS_BY_TIME).map_err(db_err)?;
    txn.open_table(PAYMENTS_BY_STATUS).map_err(db_err)?;
    txn.open_table(PAYMENT_COUNTS).map_err(db_err)?;
    let payments: Vec<Payment> = documents_in(txn, PAYMENTS)?;
    for p in &payments {
        index_payment(txn, None, p)?;
    }
    counters.insert(PAYMENT_INDEX_VERSION_KEY, PAYMENT_INDEX_VERSION).map_err(db_err)?;
    if !payments.is_empty() {
        tracing::info!(payments = payments.len(), "built the payment indexes");
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
                (Some(user), Some(_)) => {
                    let index = txn.open_table(ORDERS_BY_USER).map_err(db_err)?;
                    let range = index.range((user.as_str(), "")..=(user.as_str(), "~")).map_err(db_err)?;
                    let ids = range.map(|row| row.map(|(_, v)| id(v)).map_err(db_err));
                    page_of_orders(&orders, ids, keep, q.page, q.limit)
                }
                // Every order of the user: the index counts them, and only the page's are read.
                (Some(user), None) => {
                    let index = txn.open_table(ORDERS_BY_USER).map_err(db_err)?;
                    let mine = || index.range((user.as_str(), "")..=(user.as_str(), "~")).map_err(db_err);
                    let start = (q.page.saturating_sub(1) as usize).saturating_mul(q.limit as usize);
                    let mut items = Vec::new();
                    for row in mine()?.skip(start).take(q.limit as usize) {
                        let (_, v) = row.map_err(db_err)?;
                        if let Some(doc) = orders.get(v.value()).map_err(db_err)? {
                            items.push(decode(doc.value())?);
                        }
                    }
                    let total = mine()?.count() as u64;
                    Ok(Page { items, page: q.page, limit: q.limit, total, total_is_exact: true })
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
        // Newest first through the time index, or the status index when a status is asked for: the page alone is
        // read and decoded.
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let payments = txn.open_table(PAYMENTS).map_err(db_err)?;
            let start = (page.saturating_sub(1) as usize).saturating_mul(limit as usize);
            let mut ids = Vec::new();
            let total = match status.map(status_name) {
                Some(status) => {
                    let index = txn.open_table(PAYMENTS_BY_STATUS).map_err(db_err)?;
                    for row in
                        index.range((status, "")..=(status, "~")).map_err(db_err)?.skip(start).take(limit as usize)
                    {
                        ids.push(row.map_err(db_err)?.1.value().to_string());
                    }
                    let counts = txn.open_table(PAYMENT_COUNTS).map_err(db_err)?;
                    let total = counts.get(status).map_err(db_err)?.map_or(0, |v| v.value());
                    total
                }
                None => {
                    let index = txn.open_table(PAYMENTS_BY_TIME).map_err(db_err)?;
                    for row in index.iter().map_err(db_err)?.skip(start).take(limit as usize) {
                        ids.push(row.map_err(db_err)?.1.value().to_string());
                    }
                    index.len().map_err(db_err)?
                }
            };
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(row) = payments.get(id.as_str()).map_err(db_err)? {
                    items.push(decode(row.value())?);
                }
            }
            Ok(Page { items, page, limit, total, total_is_exact: true })
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
