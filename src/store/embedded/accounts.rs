//! Users, refresh tokens and revocations in the embedded store. Refresh tokens and revocations are also indexed by
//! when they expire, so that a purge reads only what has expired.

use async_trait::async_trait;
use redb::ReadableTable;

use super::{
    db_err, decode, encode, read_all, read_doc, EmbeddedStore, COUNTERS, REFRESH, REVOKED, USERS, USER_EMAILS,
};
use super::{REFRESH_BY_EXPIRY, REVOKED_BY_UNTIL};
use crate::domain::user::User;
use crate::domain::Timestamp;
use crate::store::{page_of, Page, RefreshToken, RefreshUse, RevocationStore, StoreError, UserStore};

/// Bumped when the expiry indexes change, so the next start rebuilds them.
const EXPIRY_INDEX_VERSION: u64 = 1;
const EXPIRY_INDEX_VERSION_KEY: &str = "expiry_index_version";

/// Opens the account tables, indexing stored refresh tokens and revocations by expiry when this version has not.
pub(super) fn prepare(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    if counters.get(EXPIRY_INDEX_VERSION_KEY).map_err(db_err)?.map(|v| v.value()) == Some(EXPIRY_INDEX_VERSION) {
        txn.open_table(REFRESH_BY_EXPIRY).map_err(db_err)?;
        txn.open_table(REVOKED_BY_UNTIL).map_err(db_err)?;
        return Ok(());
    }
    txn.delete_table(REFRESH_BY_EXPIRY).map_err(db_err)?;
    txn.delete_table(REVOKED_BY_UNTIL).map_err(db_err)?;
    let mut by_expiry = txn.open_table(REFRESH_BY_EXPIRY).map_err(db_err)?;
    for row in txn.open_table(REFRESH).map_err(db_err)?.iter().map_err(db_err)? {
        let (hash, token) = row.map_err(db_err)?;
        let token: RefreshToken = decode(token.value())?;
        by_expiry.insert((token.expires_at.timestamp(), hash.value()), ()).map_err(db_err)?;
    }
    let mut by_until = txn.open_table(REVOKED_BY_UNTIL).map_err(db_err)?;
    for row in txn.open_table(REVOKED).map_err(db_err)?.iter().map_err(db_err)? {
        let (key, until) = row.map_err(db_err)?;
        by_until.insert((until.value(), key.value()), ()).map_err(db_err)?;
    }
    counters.insert(EXPIRY_INDEX_VERSION_KEY, EXPIRY_INDEX_VERSION).map_err(db_err)?;
    Ok(())
}

/// Deletes from `table` the keys `index` lists as expired by `now` (seconds), and their index entries.
fn purge<V: redb::Value + 'static>(
    txn: &redb::WriteTransaction,
    index: redb::TableDefinition<(i64, &str), ()>,
    table: redb::TableDefinition<&str, V>,
    now: i64,
) -> Result<u64, StoreError> {
    let mut index = txn.open_table(index).map_err(db_err)?;
    let mut table = txn.open_table(table).map_err(db_err)?;
    let expired: Vec<(i64, String)> = index
        .range((i64::MIN, "")..(now, ""))
        .map_err(db_err)?
        .map(|row| row.map(|(k, _)| (k.value().0, k.value().1.to_string())).map_err(db_err))
        .collect::<Result<_, _>>()?;
    for (at, key) in &expired {
        index.remove((*at, key.as_str())).map_err(db_err)?;
        table.remove(key.as_str()).map_err(db_err)?;
    }
    Ok(expired.len() as u64)
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
                let mut by_expiry = txn.open_table(REFRESH_BY_EXPIRY).map_err(db_err)?;
                by_expiry.insert((token.expires_at.timestamp(), hash.as_str()), ()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn refresh_token(&self, hash: &str) -> Result<Option<RefreshToken>, StoreError> {
        let hash = hash.to_string();
        self.run(move |db| read_doc(db, REFRESH, &hash)).await
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

    async fn purge_expired_refresh_tokens(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.write(move |txn| purge(txn, REFRESH_BY_EXPIRY, REFRESH, now.timestamp())).await
    }
}

#[async_trait]
impl RevocationStore for EmbeddedStore {
    async fn revoke(&self, key: &str, until: Timestamp) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                // A later revocation never shortens an earlier one.
                let mut table = txn.open_table(REVOKED).map_err(db_err)?;
                let mut by_until = txn.open_table(REVOKED_BY_UNTIL).map_err(db_err)?;
                let before = table.get(key.as_str()).map_err(db_err)?.map(|v| v.value());
                let until = before.map_or(until.timestamp(), |b| b.max(until.timestamp()));
                if let Some(before) = before {
                    by_until.remove((before, key.as_str())).map_err(db_err)?;
                }
                table.insert(key.as_str(), until).map_err(db_err)?;
                by_until.insert((until, key.as_str()), ()).map_err(db_err)?;
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

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.write(move |txn| purge(txn, REVOKED_BY_UNTIL, REVOKED, now.timestamp())).await
    }
}
