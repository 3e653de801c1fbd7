//! Notifications and emails in MongoDB. Each is numbered from a counter document (`$inc`), increasing across all of
//! them, and is unique by a key built from the event that caused it (`{event id}|{user id or *}`,
//! `{event id}|{template}`), so a replayed event finds its key taken and stores nothing. A number is taken only
//! after the key was found free, so replays do not use up numbers; one taken by an insert that then loses a race
//! for the key is simply skipped.
//!
//! Public notifications have no user; `audience` holds the user id or `*`, so "mine and public" is one indexed
//! `$in` rather than a match on null.

use async_trait::async_trait;
use mongodb::bson::{doc, Document};
use mongodb::IndexModel;

use super::{
    collect, find_page, from_doc, index, is_duplicate, lenient_bools, store_err, to_doc, to_i64, unique, MongoStore,
    EMAILS, NOTIFICATIONS,
};
use crate::store::{Email, Notification, NotificationStore, Page, StoreError};

const PUBLIC: &str = "*";

pub(super) fn notification_indexes() -> Vec<IndexModel> {
    vec![
        index(doc! {"key": 1}, unique("event_user_unique")),
        index(doc! {"userId": 1, "id": 1}, None),
        index(doc! {"userId": 1, "read": 1}, None),
        index(doc! {"audience": 1, "id": 1}, None),
    ]
}

pub(super) fn email_indexes() -> Vec<IndexModel> {
    vec![index(doc! {"key": 1}, unique("event_template_unique"))]
}

fn notification(document: Document) -> Result<Notification, StoreError> {
    from_doc(lenient_bools(document, &["read"]))
}

impl MongoStore {
    /// Inserts `document` under a fresh number from `counter` unless a document with its `key` exists (its unique
    /// index refuses it; the number taken is then skipped); returns the number, or `None` for a duplicate.
    async fn insert_numbered(
        &self,
        collection: &str,
        counter: &str,
        key: String,
        mut document: Document,
    ) -> Result<Option<u64>, StoreError> {
        let coll = self.coll(collection);
        let id = self.take_numbers(counter, 1).await?;
        document.insert("_id", to_i64(id)?);
        document.insert("id", to_i64(id)?);
        document.insert("key", key);
        match coll.insert_one(document).await {
            Ok(_) => Ok(Some(id)),
            Err(e) if is_duplicate(&e) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }
}

#[async_trait]
impl NotificationStore for MongoStore {
    async fn insert_notification(&self, mut n: Notification) -> Result<Notification, StoreError> {
        let audience = n.user_id.clone().unwrap_or_else(|| PUBLIC.to_string());
        let key = format!("{}|{audience}", n.event_id);
        let mut document = to_doc(&n)?;
        document.insert("audience", audience);
        // Inserted at once (the first to handle an event is the usual case); a duplicate key means it was stored
        // before, by this process or another one handling the same event, and that one is returned.
        if let Some(id) = self.insert_numbered(NOTIFICATIONS, "notification", key.clone(), document).await? {
            n.id = id;
            return Ok(n);
        }
        let stored = self.coll(NOTIFICATIONS).find_one(doc! {"key": &key}).await.map_err(store_err)?;
        notification(stored.ok_or_else(|| StoreError::Corrupt(format!("notification {key} vanished")))?)
    }

    async fn list_notifications(
        &self,
        user_id: &str,
        page: u32,
        limit: u32,
    ) -> Result<(Page<Notification>, u64), StoreError> {
        let coll = self.coll(NOTIFICATIONS);
        let mine = find_page::<Document>(&coll, doc! {"userId": user_id}, doc! {"id": -1}, page, limit);
        let unread = async { coll.count_documents(doc! {"userId": user_id, "read": false}).await.map_err(store_err) };
        let (mine, unread) = tokio::try_join!(mine, unread)?;
        let Page { items, page, limit, total, total_is_exact } = mine;
        let items = items.into_iter().map(notification).collect::<Result<_, _>>()?;
        Ok((Page { items, page, limit, total, total_is_exact }, unread))
    }

    async fn mark_read(&self, user_id: &str, id: u64) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(id) else { return Ok(false) };
        let updated = self
            .coll(NOTIFICATIONS)
            .update_one(doc! {"_id": id, "userId": user_id}, doc! {"$set": {"read": true}})
            .await
            .map_err(store_err)?;
        Ok(updated.matched_count == 1)
    }

    async fn notifications_after(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let (Ok(after), Ok(limit)) = (i64::try_from(after), i64::try_from(limit)) else { return Ok(Vec::new()) };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cursor = self
            .coll(NOTIFICATIONS)
            .find(doc! {"audience": {"$in": [user_id, PUBLIC]}, "id": {"$gt": after}})
            .sort(doc! {"id": 1})
            .limit(limit)
            .await
            .map_err(store_err)?;
        collect::<Document>(cursor).await?.into_iter().map(notification).collect()
    }

    async fn insert_email(&self, email: Email) -> Result<bool, StoreError> {
        let key = format!("{}|{}", email.event_id, email.template);
        Ok(self.insert_numbered(EMAILS, "email", key, to_doc(&email)?).await?.is_some())
    }

    async fn list_emails(&self, page: u32, limit: u32) -> Result<Page<Email>, StoreError> {
        find_page(&self.coll(EMAILS), Document::new(), doc! {"_id": -1}, page, limit).await
    }
}
