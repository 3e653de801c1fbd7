//! Orders, payments and coupons in MongoDB: read models written after their commits, listed newest first (creation
//! time, then id, both descending) through compound indexes ending in the sort.

use async_trait::async_trait;
use mongodb::bson::{self, doc, Document};
use mongodb::IndexModel;

use super::{collect, find_page, from_doc, index, store_err, time_key, to_doc, MongoStore, COUPONS, ORDERS, PAYMENTS};
use crate::domain::coupon::Coupon;
use crate::domain::order::Order;
use crate::domain::payment::{Payment, PaymentStatus};
use crate::store::{OrderQuery, Page, SalesStore, StoreError};

fn newest_first() -> Document {
    doc! {"createdKey": -1, "id": -1}
}

pub(super) fn order_indexes() -> Vec<IndexModel> {
    vec![
        index(doc! {"createdKey": 1, "id": 1}, None),
        index(doc! {"userId": 1, "createdKey": 1, "id": 1}, None),
        index(doc! {"status": 1, "createdKey": 1, "id": 1}, None),
    ]
}

pub(super) fn payment_indexes() -> Vec<IndexModel> {
    vec![
        index(doc! {"createdKey": 1, "id": 1}, None),
        index(doc! {"status": 1, "createdKey": 1, "id": 1}, None),
        index(doc! {"orderId": 1, "id": 1}, None),
    ]
}

pub(super) fn order_document(o: &Order) -> Result<Document, StoreError> {
    let mut d = to_doc(o)?;
    d.insert("_id", &o.id);
    d.insert("createdKey", time_key(&o.created_at));
    Ok(d)
}

pub(super) fn payment_document(p: &Payment) -> Result<Document, StoreError> {
    let mut d = to_doc(p)?;
    d.insert("_id", &p.id);
    d.insert("createdKey", time_key(&p.created_at));
    Ok(d)
}

pub(super) fn coupon_document(c: &Coupon) -> Result<Document, StoreError> {
    let mut d = to_doc(c)?;
    d.insert("_id", &c.code);
    Ok(d)
}

/// A status as stored (its serde name).
fn status<T: serde::Serialize>(s: &T) -> Result<bson::Bson, StoreError> {
    bson::to_bson(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl SalesStore for MongoStore {
    async fn order(&self, id: &str) -> Result<Option<Order>, StoreError> {
        let found = self.coll(ORDERS).find_one(doc! {"_id": id}).await.map_err(store_err)?;
        found.map(from_doc).transpose()
    }

    async fn list_orders(&self, query: &OrderQuery) -> Result<Page<Order>, StoreError> {
        let mut filter = Document::new();
        if let Some(user) = &query.user_id {
            filter.insert("userId", user);
        }
        if let Some(s) = &query.status {
            filter.insert("status", status(s)?);
        }
        find_page(&self.coll(ORDERS), filter, newest_first(), query.page, query.limit).await
    }

    async fn payment(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        let found = self.coll(PAYMENTS).find_one(doc! {"_id": id}).await.map_err(store_err)?;
        found.map(from_doc).transpose()
    }

    async fn payments_for_order(&self, order_id: &str) -> Result<Vec<Payment>, StoreError> {
        let cursor =
            self.coll(PAYMENTS).find(doc! {"orderId": order_id}).sort(doc! {"id": 1}).await.map_err(store_err)?;
        collect(cursor).await
    }

    async fn list_payments(
        &self,
        status_filter: Option<PaymentStatus>,
        page: u32,
        limit: u32,
    ) -> Result<Page<Payment>, StoreError> {
        let mut filter = Document::new();
        if let Some(s) = &status_filter {
            filter.insert("status", status(s)?);
        }
        find_page(&self.coll(PAYMENTS), filter, newest_first(), page, limit).await
    }

    async fn coupon(&self, code: &str) -> Result<Option<Coupon>, StoreError> {
        let found = self.coll(COUPONS).find_one(doc! {"_id": code}).await.map_err(store_err)?;
        found.map(from_doc).transpose()
    }

    async fn list_coupons(&self, page: u32, limit: u32) -> Result<Page<Coupon>, StoreError> {
        find_page(&self.coll(COUPONS), Document::new(), doc! {"_id": 1}, page, limit).await
    }
}
