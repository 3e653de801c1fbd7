//! Users, refresh tokens and revocations in MongoDB. Emails are unique by index; a user update is a replace
//! filtered on the version it follows; a refresh token is used by one atomic find-and-modify from `used: false`.

use async_trait::async_trait;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::IndexModel;

use super::{
    find_page, from_doc, index, is_duplicate, lenient_bools, store_err, time_key, to_doc, to_i64, unique, MongoStore,
    REFRESH, REVOKED, USERS,
};
use crate::domain::user::User;
use crate::domain::Timestamp;
use crate::store::{Page, RefreshToken, RefreshUse, RevocationStore, StoreError, UserStore};

pub(super) fn user_indexes() -> Vec<IndexModel> {
    vec![index(doc! {"email": 1}, unique("email_unique")), index(doc! {"createdKey": 1, "id": 1}, None)]
}

/// Revocations expire by themselves (MongoDB's TTL monitor removes them about a minute after `until`); reads also
/// check `until`, since the monitor is late.
pub(super) fn revocation_indexes() -> Vec<IndexModel> {
    let ttl = IndexOptions::builder().expire_after(std::time::Duration::ZERO).build();
    vec![index(doc! {"until": 1}, Some(ttl))]
}

/// Refresh tokens expire the same way, by `expiry` (the token's `expiresAt` as a BSON date, which TTL indexes need).
pub(super) fn refresh_token_indexes() -> Vec<IndexModel> {
    let ttl = IndexOptions::builder().expire_after(std::time::Duration::ZERO).build();
    vec![index(doc! {"expiry": 1}, Some(ttl))]
}

fn user_document(user: &User) -> Result<Document, StoreError> {
    let mut d = to_doc(user)?;
    d.insert("_id", &user.id);
    d.insert("createdKey", time_key(&user.created_at));
    Ok(d)
}

/// The timestamp as a BSON date, rounded up to the millisecond so that nothing expires early.
fn date(t: &Timestamp) -> DateTime {
    let millis = t.timestamp_millis() + i64::from(t.timestamp_subsec_nanos() % 1_000_000 != 0);
    DateTime::from_millis(millis)
}

fn refresh_token(document: Document) -> Result<RefreshToken, StoreError> {
    from_doc(lenient_bools(document, &["used"]))
}

impl MongoStore {
    async fn user_where(&self, filter: Document) -> Result<Option<User>, StoreError> {
        let found = self.coll(USERS).find_one(filter).await.map_err(store_err)?;
        found.map(from_doc).transpose()
    }
}

#[async_trait]
impl UserStore for MongoStore {
    async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        match self.coll(USERS).insert_one(user_document(user)?).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => {
                if self.user_by_email(&user.email).await?.is_some() {
                    Err(StoreError::Duplicate("email"))
                } else {
                    Err(StoreError::Duplicate("user id"))
                }
            }
            Err(e) => Err(store_err(e)),
        }
    }

    async fn user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.user_where(doc! {"_id": id}).await
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.user_where(doc! {"email": email}).await
    }

    async fn update_user(&self, user: &User) -> Result<(), StoreError> {
        let expected = user.version.saturating_sub(1);
        // The email is the unique key the user was found by: an update never changes it.
        let filter = doc! {"_id": &user.id, "version": to_i64(expected)?, "email": &user.email};
        let replaced = self.coll(USERS).replace_one(filter, user_document(user)?).await.map_err(store_err)?;
        if replaced.matched_count == 1 {
            return Ok(());
        }
        let actual = self.user(&user.id).await?.map_or(0, |current| current.version);
        Err(StoreError::Conflict { stream: user.id.clone(), expected, actual })
    }

    async fn list_users(&self, page: u32, limit: u32) -> Result<Page<User>, StoreError> {
        find_page(&self.coll(USERS), Document::new(), doc! {"createdKey": 1, "id": 1}, page, limit).await
    }

    async fn insert_refresh_token(&self, hash: &str, token: &RefreshToken) -> Result<(), StoreError> {
        let mut d = to_doc(token)?;
        d.insert("_id", hash);
        d.insert("expiry", date(&token.expires_at));
        match self.coll(REFRESH).insert_one(d).await {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate(&e) => Err(StoreError::Duplicate("refresh token")),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn refresh_token(&self, hash: &str) -> Result<Option<RefreshToken>, StoreError> {
        let found = self.coll(REFRESH).find_one(doc! {"_id": hash}).await.map_err(store_err)?;
        found.map(refresh_token).transpose()
    }

    async fn use_refresh_token(&self, hash: &str) -> Result<RefreshUse, StoreError> {
        let consumed = self
            .coll(REFRESH)
            .find_one_and_update(doc! {"_id": hash, "used": false}, doc! {"$set": {"used": true}})
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_err)?;
        if let Some(token) = consumed {
            return Ok(RefreshUse::Consumed(refresh_token(token)?));
        }
        // Not unused: either used before (a replay) or never issued.
        Ok(match self.refresh_token(hash).await? {
            Some(token) => RefreshUse::Reused(token),
            None => RefreshUse::Unknown,
        })
    }

    /// The TTL index removes them too, about a minute late; this removes them now (a server without a TTL monitor
    /// relies on it).
    async fn purge_expired_refresh_tokens(&self, now: Timestamp) -> Result<u64, StoreError> {
        let deleted = self.coll(REFRESH).delete_many(doc! {"expiry": {"$lt": date(&now)}}).await.map_err(store_err)?;
        Ok(deleted.deleted_count)
    }
}

#[async_trait]
impl RevocationStore for MongoStore {
    async fn revoke(&self, key: &str, until: Timestamp) -> Result<(), StoreError> {
        // `$max`: revoking again never shortens a revocation.
        let (filter, update) = (doc! {"_id": key}, doc! {"$max": {"until": date(&until)}});
        match self.coll(REVOKED).update_one(filter.clone(), update.clone()).upsert(true).await {
            Ok(_) => Ok(()),
            // Created by a concurrent revocation of the same key between the match and the insert.
            Err(e) if is_duplicate(&e) => {
                self.coll(REVOKED).update_one(filter, update).await.map(drop).map_err(store_err)
            }
            Err(e) => Err(store_err(e)),
        }
    }

    async fn any_revoked(&self, keys: &[String]) -> Result<bool, StoreError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let now = DateTime::now();
        let found = self
            .coll(REVOKED)
            .find_one(doc! {"_id": {"$in": keys}, "until": {"$gt": now}})
            .projection(doc! {"_id": 1})
            .await
            .map_err(store_err)?;
        Ok(found.is_some())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let deleted = self.coll(REVOKED).delete_many(doc! {"until": {"$lt": date(&now)}}).await.map_err(store_err)?;
        Ok(deleted.deleted_count)
    }
}
