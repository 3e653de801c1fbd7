//! The default store: one `redb` file in the data directory. Every call runs on the blocking pool, never on the
//! async workers. A commit writes the events, the stream head, an optional snapshot, the read model (for a product,
//! with the catalog indexes) and the outbox entries in one transaction, so nothing is half-written after a crash.

mod accounts;
mod catalog;
mod notifications;
mod sales;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

use super::{Commit, EventRecord, EventStore, History, OutboxEntry, OutboxScope, ReadModel, Snapshot, StoreError};
use crate::telemetry::metrics::{STORE_GROUP_COMMIT_DURATION, STORE_GROUP_COMMIT_WRITES};

pub(super) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
pub(super) const HEADS: TableDefinition<&str, u64> = TableDefinition::new("stream_heads");
pub(super) const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
pub(super) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub(super) const ACTIVE: TableDefinition<&str, ()> = TableDefinition::new("active_streams");
pub(super) const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const USER_EMAILS: TableDefinition<&str, &str> = TableDefinition::new("user_emails");
pub(super) const REFRESH: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
pub(super) const REVOKED: TableDefinition<&str, i64> = TableDefinition::new("revocations");
/// `(expiry in seconds, key)` of refresh tokens (by hash) and revocations, for purging what has expired.
pub(super) const REFRESH_BY_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("refresh_tokens_by_expiry");
pub(super) const REVOKED_BY_UNTIL: TableDefinition<(i64, &str), ()> = TableDefinition::new("revocations_by_until");
pub(super) const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
/// Orders newest first: `(user id, order key)` and `order key` (see `sales::order_key`) to the order's id.
pub(super) const ORDERS_BY_USER: TableDefinition<(&str, &str), &str> = TableDefinition::new("orders_by_user");
pub(super) const ORDERS_BY_TIME: TableDefinition<&str, &str> = TableDefinition::new("orders_by_time");
pub(super) const PAYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("payments");
/// Payments newest first: `payment key` (as the order key) and `(status, payment key)` to the payment's id, and the
/// number of payments in each status.
pub(super) const PAYMENTS_BY_TIME: TableDefinition<&str, &str> = TableDefinition::new("payments_by_time");
pub(super) const PAYMENTS_BY_STATUS: TableDefinition<(&str, &str), &str> = TableDefinition::new("payments_by_status");
pub(super) const PAYMENT_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("payment_counts");
pub(super) const COUPONS: TableDefinition<&str, &[u8]> = TableDefinition::new("coupons");
pub(super) const NOTIFICATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("notifications");
/// `{event id}|{user id}` -> notification id, so a replayed event is recognised.
pub(super) const NOTIFICATION_KEYS: TableDefinition<&str, u64> = TableDefinition::new("notification_keys");
/// `(user id, notification id)`, and `("*", id)` for public notifications (see `notifications`).
pub(super) const NOTIFICATIONS_BY_USER: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("notifications_by_user");
/// User id -> (notifications, unread notifications).
pub(super) const NOTIFICATION_COUNTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("notification_counts");
pub(super) const EMAILS: TableDefinition<u64, &[u8]> = TableDefinition::new("emails");
pub(super) const EMAIL_KEYS: TableDefinition<&str, u64> = TableDefinition::new("email_keys");

pub(super) const OUTBOX_NEXT: &str = "outbox_next";
pub(super) const NOTIFICATION_NEXT: &str = "notification_next";
pub(super) const EMAIL_NEXT: &str = "email_next";

pub(super) type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Journal commits and the writes event sinks make go to the group committer (see [`group_commit`]).
    commits: std::sync::mpsc::Sender<Queued>,
    /// Writes handed to the committer, for tests that count what a call writes.
    writes: Arc<std::sync::atomic::AtomicU64>,
}

/// A write waiting for the group committer, which says how it went.
type Queued = Box<dyn GroupWrite>;

/// `store.cache_mib` unless configured.
pub const DEFAULT_CACHE_MIB: u64 = 64;

/// Most writes in one transaction.
const GROUP_MAX: usize = 256;

/// A write that joins the committer's next transaction. It checks whatever can refuse it before writing anything,
/// so a refusal (`Conflict` or `Corrupt`) leaves the transaction as it was and fails this write alone; any other
/// error is the database's and fails the whole group.
trait GroupWrite: Send {
    fn write(&mut self, txn: &redb::WriteTransaction) -> Result<(), StoreError>;
    /// Answers the caller once the transaction is durable, or failed.
    fn finish(self: Box<Self>, outcome: Result<(), StoreError>);
}

/// A closure to run in the group's transaction, its value, and its caller.
struct Pending<T, F> {
    write: Option<F>,
    value: Option<T>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> GroupWrite for Pending<T, F>
where
    T: Send,
    F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn write(&mut self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let write = self.write.take().ok_or_else(|| StoreError::Corrupt("a group write ran twice".into()))?;
        self.value = Some(write(txn)?);
        Ok(())
    }

    fn finish(self: Box<Self>, outcome: Result<(), StoreError>) {
        let value = self.value.ok_or_else(|| StoreError::Unavailable("the write did not run".into()));
        let _ = self.reply.send(outcome.and(value));
    }
}

/// Tells when the database file is closed: every clone of the store dropped and every blocking operation finished.
pub struct CloseWatch(std::sync::Weak<Database>);

impl CloseWatch {
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(e.into().to_string())
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The JSON document stored under `key`, if any.
pub(super) fn read_doc<T: DeserializeOwned>(
    db: &Database,
    table: JsonTable,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(table).map_err(db_err)?;
    let found = table.get(key).map_err(db_err)?;
    found.map(|v| decode(v.value())).transpose()
}

/// Every JSON document of a table as a write transaction sees it (for building indexes at start-up), in key order.
pub(super) fn documents_in<T: DeserializeOwned>(
    txn: &redb::WriteTransaction,
    table: JsonTable,
) -> Result<Vec<T>, StoreError> {
    let table = txn.open_table(table).map_err(db_err)?;
    let mut all = Vec::new();
    for row in table.iter().map_err(db_err)? {
        all.push(decode(row.map_err(db_err)?.1.value())?);
    }
    Ok(all)
}

/// Every JSON document of a table, in key order.
pub(super) fn read_all<T: DeserializeOwned>(db: &Database, table: JsonTable) -> Result<Vec<T>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(table).map_err(db_err)?;
    let mut all = Vec::with_capacity(table.len().map_err(db_err)? as usize);
    for row in table.iter().map_err(db_err)? {
        let (_, v) = row.map_err(db_err)?;
        all.push(decode(v.value())?);
    }
    Ok(all)
}

impl EmbeddedStore {
    /// Opens (creating if needed) `commercex.redb` in `data_dir`. Fails if another process has it open.
    ///
    /// The store holds password hashes and refresh-token digests: the directory is made private to the owner
    /// (0700) and the file readable by the owner only (0600), also when they were created earlier with looser modes.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_MIB)
    }

    /// [`Self::open`], keeping at most `cache_mib` MiB of the file's pages in memory (`store.cache_mib`).
    pub fn open_with_cache(data_dir: &Path, cache_mib: u64) -> Result<Self, StoreError> {
        let io = |what: &str, e: std::io::Error| {
            StoreError::Unavailable(format!("cannot {what} {}: {e}", data_dir.display()))
        };
        let created = !data_dir.exists();
        std::fs::create_dir_all(data_dir).map_err(|e| io("create", e))?;
        let file = data_dir.join("commercex.redb");
        let cache = usize::try_from(cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let db = Database::builder().set_cache_size(cache).create(&file).map_err(db_err)?;
        make_private(data_dir, &file, created);
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
            accounts::prepare(&txn)?;
            sales::prepare(&txn)?;
            sales::prepare_payments(&txn)?;
            notifications::prepare(&txn)?;
            catalog::prepare(&txn)?;
        }
        txn.commit().map_err(db_err)?;
        let db = Arc::new(db);
        let (commits, queue) = std::sync::mpsc::channel::<Queued>();
        // The committer holds the database only while it writes, so dropping the last store clone closes the file.
        let committer = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("store-commits".into())
            .spawn(move || group_commit(&committer, &queue))
            .map_err(|e| io("start the committer for", e))?;
        Ok(Self { db, commits, writes: Arc::default() })
    }

    pub fn close_watch(&self) -> CloseWatch {
        CloseWatch(Arc::downgrade(&self.db))
    }

    /// Runs `write` in the group committer's next transaction, shared with the other writes waiting, and returns
    /// its value once that transaction is durable. `write` must refuse (`Conflict`, `Corrupt`) before writing.
    pub(super) async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pending = Box::new(Pending { write: Some(write), value: None, reply });
        self.commits.send(pending).map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        done.await.map_err(|_| StoreError::Unavailable("the store committer stopped".into()))?
    }

    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
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

/// Makes the store file 0600 and the data directory 0700. A directory this process did not create is tightened
/// only if it belongs to the same user as the store file and is not a shared sticky directory (such as /tmp);
/// otherwise, and when a change is not permitted (a volume owned by another user), the looser mode is logged as a
/// warning rather than stopping start-up.
#[cfg(unix)]
fn make_private(dir: &Path, file: &Path, created: bool) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tighten = |path: &Path, mode: u32| {
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), %error, "cannot restrict the permissions of the store");
        }
    };
    tighten(file, 0o600);
    let (Ok(dir_meta), Ok(file_meta)) = (std::fs::metadata(dir), std::fs::metadata(file)) else { return };
    let open_to_others = dir_meta.mode() & 0o077 != 0;
    let sticky = dir_meta.mode() & 0o1000 != 0;
    if created || (dir_meta.uid() == file_meta.uid() && !sticky) {
        if open_to_others {
            tighten(dir, 0o700);
        }
    } else if open_to_others {
        tracing::warn!(path = %dir.display(), mode = format!("{:o}", dir_meta.mode() & 0o7777), "the data directory is open to other users; it holds password hashes");
    }
}

#[cfg(not(unix))]
fn make_private(_dir: &Path, _file: &Path, _created: bool) {}

/// The group committer: takes the writes waiting (up to [`GROUP_MAX`]: journal commits, and the notifications and
/// emails event sinks store) and runs them in one transaction, so they share one fsync. A commit is checked against
/// the stream heads as the transaction sees them (earlier commits of the group included) before anything of it is
/// written, so a conflicting commit fails alone and is not written; the others are acknowledged only once the
/// transaction is durable. One entity has at most one commit in flight (its actor waits for it), so an entity's
/// commits stay in order. The thread ends when every store clone is gone.
fn group_commit(db: &std::sync::Weak<Database>, queue: &std::sync::mpsc::Receiver<Queued>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let outcomes = match db.upgrade() {
            Some(db) => write_group(&db, &mut group),
            None => group.iter().map(|_| Err(StoreError::Unavailable("the store is closed".into()))).collect(),
        };
        metrics::histogram!(STORE_GROUP_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
        metrics::histogram!(STORE_GROUP_COMMIT_WRITES).record(group.len() as f64);
        for (write, outcome) in group.into_iter().zip(outcomes) {
            write.finish(outcome);
        }
    }
}

/// Runs `writes` in one transaction; one outcome per write, in order.
fn write_group(db: &Database, writes: &mut [Queued]) -> Vec<Result<(), StoreError>> {
    let n = writes.len();
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            let error = db_err(e);
            return (0..n).map(|_| Err(error.clone())).collect();
        }
    };
    let mut outcomes = Vec::with_capacity(n);
    for write in writes.iter_mut() {
        match write.write(&txn) {
            Ok(()) => outcomes.push(Ok(())),
            Err(error @ (StoreError::Conflict { .. } | StoreError::Corrupt(_))) => outcomes.push(Err(error)),
            // A failure of the database itself: nothing of the group is written.
            Err(error) => return (0..n).map(|_| Err(error.clone())).collect(),
        }
    }
    match txn.commit() {
        Ok(()) => outcomes,
        Err(e) => {
            let error = db_err(e);
            (0..n).map(|_| Err(error.clone())).collect()
        }
    }
}

/// Commits in one group, as the committer would write them; one result per commit.
#[cfg(test)]
fn commit_group(db: &Database, commits: Vec<Commit>) -> Vec<Result<(), StoreError>> {
    let mut writes: Vec<Queued> = commits
        .into_iter()
        .map(|commit| {
            let write = move |txn: &redb::WriteTransaction| write_commit(txn, commit);
            Box::new(Pending { write: Some(write), value: None, reply: tokio::sync::oneshot::channel().0 }) as Queued
        })
        .collect();
    write_group(db, &mut writes)
}

/// One commit in a transaction of its own, as the committer would write it alone.
#[cfg(test)]
fn commit_blocking(db: &Database, commit: Commit) -> Result<(), StoreError> {
    commit_group(db, vec![commit]).remove(0)
}

/// Adds one commit to the transaction, or refuses it (conflict, or events out of sequence) having written nothing.
fn write_commit(txn: &redb::WriteTransaction, commit: Commit) -> Result<(), StoreError> {
    let mut heads = txn.open_table(HEADS).map_err(db_err)?;
    let actual = heads.get(commit.stream.as_str()).map_err(db_err)?.map_or(0, |v| v.value());
    if actual != commit.expected_seq {
        return Err(StoreError::Conflict { stream: commit.stream, expected: commit.expected_seq, actual });
    }
    // Everything that can refuse the commit is checked and encoded before the first write.
    let mut head = actual;
    let mut encoded = Vec::with_capacity(commit.events.len());
    for event in &commit.events {
        if event.seq != head + 1 {
            return Err(StoreError::Corrupt(format!("event {} does not follow sequence {head}", event.id)));
        }
        encoded.push((event.seq, encode(event)?));
        head = event.seq;
    }
    let snapshot = commit.snapshot.as_ref().map(encode).transpose()?;
    let payment_before = match &commit.read_model {
        Some(ReadModel::Payment(p)) => sales::stored_payment_status(txn, &p.id)?,
        _ => None,
    };
    let document = match &commit.read_model {
        Some(ReadModel::Product(p)) => Some((PRODUCTS, p.id.as_str(), encode(p)?)),
        Some(ReadModel::Order(o)) => Some((ORDERS, o.id.as_str(), encode(o)?)),
        Some(ReadModel::Payment(p)) => Some((PAYMENTS, p.id.as_str(), encode(p)?)),
        Some(ReadModel::Coupon(c)) => Some((COUPONS, c.code.as_str(), encode(c)?)),
        None => None,
    };
    let mut events = txn.open_table(EVENTS).map_err(db_err)?;
    let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
    let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
    let mut position = counters.get(OUTBOX_NEXT).map_err(db_err)?.map_or(0, |v| v.value());
    for (seq, bytes) in &encoded {
        events.insert((commit.stream.as_str(), *seq), bytes.as_slice()).map_err(db_err)?;
        outbox.insert(position, bytes.as_slice()).map_err(db_err)?;
        position += 1;
    }
    counters.insert(OUTBOX_NEXT, position).map_err(db_err)?;
    heads.insert(commit.stream.as_str(), head).map_err(db_err)?;
    let mut active = txn.open_table(ACTIVE).map_err(db_err)?;
    if commit.active {
        active.insert(commit.stream.as_str(), ()).map_err(db_err)?;
    } else {
        active.remove(commit.stream.as_str()).map_err(db_err)?;
    }
    if let Some(snapshot) = snapshot {
        txn.open_table(SNAPSHOTS)
            .map_err(db_err)?
            .insert(commit.stream.as_str(), snapshot.as_slice())
            .map_err(db_err)?;
    }
    match &commit.read_model {
        Some(ReadModel::Product(p)) => catalog::index_product(txn, &mut counters, p)?,
        Some(ReadModel::Order(o)) => sales::index_order(txn, o)?,
        Some(ReadModel::Payment(p)) => sales::index_payment(txn, payment_before, p)?,
        _ => {}
    }
    if let Some((table, key, bytes)) = document {
        txn.open_table(table).map_err(db_err)?.insert(key, bytes.as_slice()).map_err(db_err)?;
    }
    Ok(())
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.write(move |txn| write_commit(txn, commit)).await
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

    async fn outbox_pending(&self, limit: usize, scope: &OutboxScope) -> Result<Vec<OutboxEntry>, StoreError> {
        let scope = scope.clone();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(OUTBOX).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)? {
                if out.len() == limit {
                    break;
                }
                let (k, v) = row.map_err(db_err)?;
                let event: EventRecord = decode(v.value())?;
                if scope.covers(&event.stream) {
                    out.push(OutboxEntry { position: k.value(), event });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn outbox_ack(&self, positions: &[u64]) -> Result<(), StoreError> {
        let positions = positions.to_vec();
        self.write(move |txn| {
            let mut table = txn.open_table(OUTBOX).map_err(db_err)?;
            for p in positions {
                table.remove(p).map_err(db_err)?;
            }
            Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OrderQuery, RefreshToken, RefreshUse, SalesStore, UserStore};

    #[tokio::test]
    async fn orders_stored_before_the_order_indexes_are_listed_after_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let at = |s: i64| chrono::DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            // Orders as a store without the indexes holds them: documents only.
            let txn = store.db.begin_write().unwrap();
            {
                let mut orders = txn.open_table(ORDERS).unwrap();
                for (id, user, created) in [("o1", "u1", 1), ("o2", "u2", 2), ("o3", "u1", 3)] {
                    let o = crate::domain::order::Order {
                        id: id.into(),
                        user_id: user.into(),
                        lines: Vec::new(),
                        currency: "USD".into(),
                        subtotal: 100,
                        discount: 0,
                        total: 100,
                        coupon_code: None,
                        payment_method: "pm_card_visa".into(),
                        shipping_address: None,
                        status: crate::domain::order::OrderStatus::Paid,
                        history: Vec::new(),
                        reservation_expires_at: at(created + 900),
                        progress: Default::default(),
                        created_at: at(created),
                        updated_at: at(created),
                        request_hash: None,
                    };
                    orders.insert(id, encode(&o).unwrap().as_slice()).unwrap();
                }
                txn.delete_table(ORDERS_BY_USER).unwrap();
                txn.delete_table(ORDERS_BY_TIME).unwrap();
                txn.open_table(COUNTERS).unwrap().remove("order_index_version").unwrap();
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let ids = |page: crate::store::Page<crate::domain::order::Order>| {
            (page.items.into_iter().map(|o| o.id).collect::<Vec<_>>(), page.total)
        };
        let mine = OrderQuery { user_id: Some("u1".into()), status: None, page: 1, limit: 10 };
        assert_eq!(ids(store.list_orders(&mine).await.unwrap()), (vec!["o3".into(), "o1".into()], 2));
        let all = OrderQuery { user_id: None, status: None, page: 1, limit: 2 };
        assert_eq!(ids(store.list_orders(&all).await.unwrap()), (vec!["o3".into(), "o2".into()], 3));
    }

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
    async fn a_group_commit_refuses_the_conflicting_commit_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let group = vec![
            commit("cart:a", 0, 1..=1),
            commit("cart:a", 0, 1..=1),
            commit("cart:b", 0, 1..=2),
            commit("cart:a", 1, 2..=2),
            commit("cart:c", 0, 2..=2),
        ];
        let results = commit_group(&store.db, group);
        assert!(results[0].is_ok() && results[2].is_ok() && results[3].is_ok(), "{results:?}");
        assert!(matches!(results[1], Err(StoreError::Conflict { expected: 0, actual: 1, .. })), "{results:?}");
        assert!(matches!(results[4], Err(StoreError::Corrupt(_))), "{results:?}");
        let seqs = |h: History| h.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.history("cart:a").await.unwrap()), [1, 2]);
        assert_eq!(seqs(store.history("cart:b").await.unwrap()), [1, 2]);
        assert!(store.history("cart:c").await.unwrap().events.is_empty(), "a refused commit writes nothing");
        let outbox = store.outbox_pending(100, &OutboxScope::All).await.unwrap();
        assert_eq!(outbox.len(), 4, "one outbox entry per written event");
    }

    #[tokio::test]
    async fn concurrent_commits_of_many_entities_all_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut writers = tokio::task::JoinSet::new();
        for e in 0..32 {
            let store = store.clone();
            writers.spawn(async move {
                let stream = format!("cart:{e}");
                for seq in 1..=20 {
                    store.commit(commit(&stream, seq - 1, seq..=seq)).await.unwrap();
                }
            });
        }
        writers.join_all().await;
        for e in 0..32 {
            let h = store.history(&format!("cart:{e}")).await.unwrap();
            assert_eq!(h.events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
        }
        assert_eq!(store.outbox_pending(10_000, &OutboxScope::All).await.unwrap().len(), 32 * 20);
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
        let pending = store.outbox_pending(100, &OutboxScope::All).await.unwrap();
        assert_eq!(pending.len(), 6);
        store.outbox_ack(&pending[..4].iter().map(|e| e.position).collect::<Vec<_>>()).await.unwrap();
        let rest = store.outbox_pending(100, &OutboxScope::All).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.event.seq).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[cfg(unix)]
    #[test]
    fn the_data_directory_and_store_file_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(EmbeddedStore::open(&data).unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("commercex.redb")), 0o600);
        // A shared sticky directory (like /tmp) is left as it is: only the store file is made private.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        drop(EmbeddedStore::open(&shared).unwrap());
        assert_eq!(std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o1777);
        assert_eq!(mode(&shared.join("commercex.redb")), 0o600);
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
