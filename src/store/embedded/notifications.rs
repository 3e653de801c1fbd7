//! Notifications and emails in the embedded store, read through indexes so that a page costs what the page holds,
//! whatever the tables hold:
//! - `notifications_by_user`: `(user id, notification id)` for each user's own notifications, and `("*", id)` for
//!   the public ones (product announcements), so a user's page and a socket's catch-up read only their own entries;
//! - `notification_counts`: each user's `(total, unread)`, kept with every insert and every change of `read`;
//! - emails are keyed by their increasing number, so a page newest first is a walk back from the end.
//!
//! Stores written before the indexes existed are indexed once, on open ([`prepare`]).

use async_trait::async_trait;
use redb::{ReadableTable, ReadableTableMetadata};

use super::{db_err, decode, encode, EmbeddedStore, COUNTERS, EMAILS, EMAIL_KEYS, EMAIL_NEXT};
use super::{NOTIFICATIONS, NOTIFICATIONS_BY_USER, NOTIFICATION_COUNTS, NOTIFICATION_KEYS, NOTIFICATION_NEXT};
use crate::store::{Email, Notification, NotificationStore, Page, StoreError};

/// Where public notifications (no user) are indexed; user ids never take this value.
const PUBLIC: &str = "*";

/// Bumped when the notification indexes change, so the next start rebuilds them.
const INDEX_VERSION: u64 = 1;
const INDEX_VERSION_KEY: &str = "notification_index_version";

/// Opens the notification tables, building the indexes from the stored notifications when this version has not.
pub(super) fn prepare(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    for table in [NOTIFICATIONS, EMAILS] {
        txn.open_table(table).map_err(db_err)?;
    }
    txn.open_table(NOTIFICATION_KEYS).map_err(db_err)?;
    txn.open_table(EMAIL_KEYS).map_err(db_err)?;
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    if counters.get(INDEX_VERSION_KEY).map_err(db_err)?.map(|v| v.value()) == Some(INDEX_VERSION) {
        txn.open_table(NOTIFICATIONS_BY_USER).map_err(db_err)?;
        txn.open_table(NOTIFICATION_COUNTS).map_err(db_err)?;
        return Ok(());
    }
    txn.delete_table(NOTIFICATIONS_BY_USER).map_err(db_err)?;
    txn.delete_table(NOTIFICATION_COUNTS).map_err(db_err)?;
    // Created even when there is nothing to index: readers open them.
    txn.open_table(NOTIFICATIONS_BY_USER).map_err(db_err)?;
    txn.open_table(NOTIFICATION_COUNTS).map_err(db_err)?;
    let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
    let mut indexed = 0u64;
    for row in table.iter().map_err(db_err)? {
        let n: Notification = decode(row.map_err(db_err)?.1.value())?;
        index(txn, &n)?;
        indexed += 1;
    }
    counters.insert(INDEX_VERSION_KEY, INDEX_VERSION).map_err(db_err)?;
    if indexed > 0 {
        tracing::info!(notifications = indexed, "built the notification indexes");
    }
    Ok(())
}

/// Adds a stored notification to the user index and its user's counts.
fn index(txn: &redb::WriteTransaction, n: &Notification) -> Result<(), StoreError> {
    let owner = n.user_id.as_deref().unwrap_or(PUBLIC);
    txn.open_table(NOTIFICATIONS_BY_USER).map_err(db_err)?.insert((owner, n.id), ()).map_err(db_err)?;
    if let Some(user) = n.user_id.as_deref() {
        let mut counts = txn.open_table(NOTIFICATION_COUNTS).map_err(db_err)?;
        let (total, unread) = counts.get(user).map_err(db_err)?.map_or((0, 0), |v| v.value());
        counts.insert(user, (total + 1, unread + u64::from(!n.read))).map_err(db_err)?;
    }
    Ok(())
}

/// Stores `n` under a fresh number unless its event already notified its user (or everyone); returns what is stored.
fn store(txn: &redb::WriteTransaction, mut n: Notification) -> Result<Notification, StoreError> {
    let key = format!("{}|{}", n.event_id, n.user_id.as_deref().unwrap_or(PUBLIC));
    let mut keys = txn.open_table(NOTIFICATION_KEYS).map_err(db_err)?;
    if let Some(id) = keys.get(key.as_str()).map_err(db_err)?.map(|id| id.value()) {
        let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
        let row = table.get(id).map_err(db_err)?;
        let row = row.ok_or_else(|| StoreError::Corrupt(format!("notification {id} is indexed but missing")))?;
        return decode(row.value());
    }
    n.id = next_id(txn, NOTIFICATION_NEXT)?;
    keys.insert(key.as_str(), n.id).map_err(db_err)?;
    txn.open_table(NOTIFICATIONS).map_err(db_err)?.insert(n.id, encode(&n)?.as_slice()).map_err(db_err)?;
    index(txn, &n)?;
    Ok(n)
}

/// Takes the next value of a counter inside a write transaction.
pub(super) fn next_id(txn: &redb::WriteTransaction, counter: &str) -> Result<u64, StoreError> {
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let id = counters.get(counter).map_err(db_err)?.map_or(1, |v| v.value());
    counters.insert(counter, id + 1).map_err(db_err)?;
    Ok(id)
}

/// What a read touched: index entries and rows decoded. Tests hold it against the page size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reads {
    pub entries: usize,
    pub rows: usize,
}

/// One page of the user's notifications, newest first, with the unread count.
pub(super) fn user_page(
    txn: &redb::ReadTransaction,
    user: &str,
    page: u32,
    limit: u32,
    reads: &mut Reads,
) -> Result<(Page<Notification>, u64), StoreError> {
    let (total, unread) =
        txn.open_table(NOTIFICATION_COUNTS).map_err(db_err)?.get(user).map_err(db_err)?.map_or((0, 0), |v| v.value());
    let index = txn.open_table(NOTIFICATIONS_BY_USER).map_err(db_err)?;
    let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
    let start = (page.saturating_sub(1) as usize).saturating_mul(limit as usize);
    let mut items = Vec::new();
    if (start as u64) < total {
        // A deep page walks the user's entries before it; only the page's rows are decoded.
        let walk = index.range((user, 0)..=(user, u64::MAX)).map_err(db_err)?.rev().take(start + limit as usize);
        for (walked, entry) in walk.enumerate() {
            reads.entries += 1;
            let id = entry.map_err(db_err)?.0.value().1;
            if walked >= start {
                items.push(notification(&table, id, reads)?);
            }
        }
    }
    Ok((Page { items, page, limit, total, total_is_exact: true }, unread))
}

/// The user's own and the public notifications numbered above `after`, oldest first, at most `limit`: the two index
/// ranges merged by number.
pub(super) fn user_after(
    txn: &redb::ReadTransaction,
    user: &str,
    after: u64,
    limit: usize,
    reads: &mut Reads,
) -> Result<Vec<Notification>, StoreError> {
    let index = txn.open_table(NOTIFICATIONS_BY_USER).map_err(db_err)?;
    let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
    let from = after.saturating_add(1);
    let ids = |owner: &str| -> Result<Vec<u64>, StoreError> {
        let range = index.range((owner, from)..=(owner, u64::MAX)).map_err(db_err)?;
        range.take(limit).map(|entry| Ok(entry.map_err(db_err)?.0.value().1)).collect()
    };
    let (own, public) = (ids(user)?, ids(PUBLIC)?);
    reads.entries += own.len() + public.len();
    let mut merged: Vec<u64> = own.into_iter().chain(public).collect();
    merged.sort_unstable();
    merged.truncate(limit);
    merged.into_iter().map(|id| notification(&table, id, reads)).collect()
}

fn notification(
    table: &redb::ReadOnlyTable<u64, &[u8]>,
    id: u64,
    reads: &mut Reads,
) -> Result<Notification, StoreError> {
    reads.rows += 1;
    let row = table.get(id).map_err(db_err)?;
    let row = row.ok_or_else(|| StoreError::Corrupt(format!("notification {id} is indexed but missing")))?;
    decode(row.value())
}

/// Whether notification `id` is the user's, and if so whether it is unread.
enum Owned {
    NotTheirs,
    Read,
    Unread,
}

fn owned(n: Option<Notification>, user: &str) -> Owned {
    match n {
        Some(n) if n.user_id.as_deref() == Some(user) => {
            if n.read {
                Owned::Read
            } else {
                Owned::Unread
            }
        }
        _ => Owned::NotTheirs,
    }
}

#[async_trait]
impl NotificationStore for EmbeddedStore {
    /// Joins the group commit: notifications stored for many events at once share one fsync with the journal.
    async fn insert_notification(&self, n: Notification) -> Result<Notification, StoreError> {
        self.write(move |txn| store(txn, n)).await
    }

    async fn list_notifications(
        &self,
        user_id: &str,
        page: u32,
        limit: u32,
    ) -> Result<(Page<Notification>, u64), StoreError> {
        let user = user_id.to_string();
        self.run(move |db| user_page(&db.begin_read().map_err(db_err)?, &user, page, limit, &mut Reads::default()))
            .await
    }

    /// Reads first and writes only a change, through the group commit: marking what is already read, or what is
    /// not the caller's, writes nothing.
    async fn mark_read(&self, user_id: &str, id: u64) -> Result<bool, StoreError> {
        let user = user_id.to_string();
        let current = {
            let user = user.clone();
            self.run(move |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
                let n: Option<Notification> = table.get(id).map_err(db_err)?.map(|v| decode(v.value())).transpose()?;
                Ok(owned(n, &user))
            })
            .await?
        };
        match current {
            Owned::NotTheirs => return Ok(false),
            Owned::Read => return Ok(true),
            Owned::Unread => {}
        }
        self.write(move |txn| {
            let mut table = txn.open_table(NOTIFICATIONS).map_err(db_err)?;
            let n: Option<Notification> = table.get(id).map_err(db_err)?.map(|v| decode(v.value())).transpose()?;
            let Some(mut n) = n.filter(|n| n.user_id.as_deref() == Some(user.as_str())) else { return Ok(false) };
            if n.read {
                return Ok(true);
            }
            n.read = true;
            let bytes = encode(&n)?;
            let mut counts = txn.open_table(NOTIFICATION_COUNTS).map_err(db_err)?;
            let (total, unread) = counts.get(user.as_str()).map_err(db_err)?.map_or((0, 0), |v| v.value());
            table.insert(id, bytes.as_slice()).map_err(db_err)?;
            counts.insert(user.as_str(), (total, unread.saturating_sub(1))).map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn notifications_after(
        &self,
        user_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let user = user_id.to_string();
        self.run(move |db| user_after(&db.begin_read().map_err(db_err)?, &user, after, limit, &mut Reads::default()))
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

    /// Newest first: a walk back from the highest number, reading only the page.
    async fn list_emails(&self, page: u32, limit: u32) -> Result<Page<Email>, StoreError> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(EMAILS).map_err(db_err)?;
            let start = (page.saturating_sub(1) as usize).saturating_mul(limit as usize);
            let mut items = Vec::new();
            for row in table.iter().map_err(db_err)?.rev().skip(start).take(limit as usize) {
                items.push(decode(row.map_err(db_err)?.1.value())?);
            }
            Ok(Page { items, page, limit, total: table.len().map_err(db_err)?, total_is_exact: true })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(user: Option<&str>, event: &str) -> Notification {
        Notification {
            id: 0,
            user_id: user.map(str::to_string),
            kind: "order.paid".into(),
            title: "Paid".into(),
            body: "Your order is paid".into(),
            data: serde_json::json!({}),
            event_id: event.into(),
            read: false,
            created_at: chrono::Utc::now(),
        }
    }

    /// A store holding `others` notifications of other users and as many public ones, then 30 of `me`'s.
    fn filled(others: usize) -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        for i in 0..others {
            store_note(&txn, note(Some(&format!("user-{}", i % 97)), &format!("order:o{i}/2")));
            store_note(&txn, note(None, &format!("product:p{i}/1")));
        }
        for i in 0..30 {
            store_note(&txn, note(Some("me"), &format!("order:mine{i}/2")));
        }
        txn.commit().unwrap();
        (dir, store)
    }

    fn store_note(txn: &redb::WriteTransaction, n: Notification) {
        store(txn, n).unwrap();
    }

    /// What a 1-item page, the tenth page of 3, and a socket's catch-up after the user's 25th read.
    fn reads_of_a_page(store: &EmbeddedStore) -> (Reads, Reads, Reads) {
        let txn = store.db.begin_read().unwrap();
        let (mut first, mut tenth, mut after) = (Reads::default(), Reads::default(), Reads::default());
        let (page, unread) = user_page(&txn, "me", 1, 1, &mut first).unwrap();
        assert_eq!((page.items.len(), page.total, unread), (1, 30, 30));
        assert_eq!(page.items[0].event_id, "order:mine29/2", "newest first");
        let (page, _) = user_page(&txn, "me", 10, 3, &mut tenth).unwrap();
        assert_eq!(
            page.items.iter().map(|n| n.event_id.as_str()).collect::<Vec<_>>(),
            ["order:mine2/2", "order:mine1/2", "order:mine0/2"]
        );
        let (page, _) = user_page(&txn, "me", 1, 100, &mut Reads::default()).unwrap();
        let twenty_fifth = page.items[5].id;
        let caught_up = user_after(&txn, "me", twenty_fifth, 10, &mut after).unwrap();
        assert_eq!(caught_up.len(), 5, "the user's last five; every public one is older");
        (first, tenth, after)
    }

    /// A new store answers every read, with nothing indexed yet (schemathesis found 503s here).
    #[tokio::test]
    async fn a_new_store_answers_every_listing() {
        use crate::domain::payment::PaymentStatus;
        use crate::store::SalesStore;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (page, unread) = store.list_notifications("nobody", 1, 20).await.unwrap();
        assert_eq!((page.items.len(), page.total, unread), (0, 0, 0));
        assert!(store.notifications_after("nobody", 0, 10).await.unwrap().is_empty());
        assert!(store.list_emails(1, 20).await.unwrap().items.is_empty());
        for status in [None, Some(PaymentStatus::Pending)] {
            assert_eq!(store.list_payments(status, 1, 20).await.unwrap().total, 0);
        }
        // Public notifications alone leave no counts behind, and a user's page is still empty.
        store.insert_notification(note(None, "product:p1/1")).await.unwrap();
        assert_eq!(store.list_notifications("nobody", u32::MAX, 100).await.unwrap().0.total, 0);
    }

    #[test]
    fn a_page_reads_what_the_page_holds_whatever_the_table_holds() {
        let (_small_dir, small) = filled(1_000);
        let (_large_dir, large) = filled(20_000);
        let (first, tenth, after) = reads_of_a_page(&small);
        assert_eq!(first, Reads { entries: 1, rows: 1 });
        // A deep page walks the user's own entries before it, and decodes only the page.
        assert_eq!(tenth, Reads { entries: 30, rows: 3 });
        assert_eq!(after, Reads { entries: 5, rows: 5 });
        assert_eq!(reads_of_a_page(&large), (first, tenth, after), "20x the table, the same reads");
    }

    /// Security review M3: marking read what is not the caller's, or is read already, wrote (and fsynced) anyway.
    #[tokio::test]
    async fn marking_read_writes_only_a_change() {
        let (_dir, store) = filled(10);
        let txn = store.db.begin_read().unwrap();
        let (page, _) = user_page(&txn, "me", 1, 1, &mut Reads::default()).unwrap();
        drop(txn);
        let mine = page.items[0].id;
        let writes = || store.writes.load(std::sync::atomic::Ordering::Relaxed);
        let before = writes();
        for id in [1, 2, 999_999, 0] {
            assert!(!store.mark_read("me", id).await.unwrap(), "{id} is not mine");
        }
        assert_eq!(writes(), before, "nothing of mine: nothing written");
        assert!(store.mark_read("me", mine).await.unwrap());
        assert_eq!(writes(), before + 1);
        assert!(store.mark_read("me", mine).await.unwrap(), "read already: still mine");
        assert_eq!(writes(), before + 1, "read already: nothing written");
        let (_, unread) = store.list_notifications("me", 1, 1).await.unwrap();
        assert_eq!(unread, 29);
    }

    #[test]
    fn catch_up_merges_own_and_public_notifications_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        for (user, event) in [(Some("me"), "a"), (None, "b"), (Some("you"), "c"), (None, "d"), (Some("me"), "e")] {
            store_note(&txn, note(user, event));
        }
        txn.commit().unwrap();
        let txn = store.db.begin_read().unwrap();
        let events = |after, limit| {
            let found = user_after(&txn, "me", after, limit, &mut Reads::default()).unwrap();
            found.into_iter().map(|n| n.event_id).collect::<Vec<_>>()
        };
        assert_eq!(events(0, 10), ["a", "b", "d", "e"]);
        assert_eq!(events(0, 2), ["a", "b"]);
        assert_eq!(events(2, 2), ["d", "e"]);
    }

    #[test]
    fn a_store_written_before_the_index_is_indexed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let txn = store.db.begin_write().unwrap();
            for (user, event) in [(Some("me"), "a"), (None, "b"), (Some("me"), "c")] {
                store_note(&txn, note(user, event));
            }
            // As an older version left it: the notifications, without their indexes.
            txn.delete_table(NOTIFICATIONS_BY_USER).unwrap();
            txn.delete_table(NOTIFICATION_COUNTS).unwrap();
            txn.open_table(COUNTERS).unwrap().remove(INDEX_VERSION_KEY).unwrap();
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let txn = store.db.begin_read().unwrap();
        let (page, unread) = user_page(&txn, "me", 1, 10, &mut Reads::default()).unwrap();
        assert_eq!(page.items.iter().map(|n| n.event_id.as_str()).collect::<Vec<_>>(), ["c", "a"]);
        assert_eq!((page.total, unread), (2, 2));
        assert_eq!(user_after(&txn, "me", 0, 10, &mut Reads::default()).unwrap().len(), 3);
    }
}
