//! The MongoDB store: the same traits as the embedded store, for a deployment shared by several processes. Only
//! single-document atomic writes are used (no multi-document transactions, no change streams), so a commit is made of
//! several writes, ordered so that a crash between any two of them is repaired by itself:
//!
//! 1. The commit document, one per commit in `commits`, is the source of truth. It carries the events, their outbox
//!    positions and everything derived from the commit (snapshot, read model, whether the stream stays active).
//!    Two writers of one stream are told apart by the unique `(stream, firstSeq)` index: a writer whose head is
//!    stale inserts a `firstSeq` that exists already and fails with a duplicate key, [`StoreError::Conflict`].
//! 2. The derived documents (read model, snapshot, active-stream marker) are then written with version-guarded
//!    upserts: each holds the stream sequence it was derived from and is replaced only by a higher one, so a late or
//!    repeated write never takes a document back to an older version.
//! 3. The commit is known applied to the process that wrote it, and marked `applied` with `published`. A commit a
//!    crash left unapplied is applied by the outbox before its events go out, at start-up, and before every
//!    `active_streams` (the resumer asks every few seconds).
//!
//! Commits waiting from many entities are written together, in one insert and one update per collection
//! (`group`), with the stream heads known to the writer rather than read before each commit.
//!
//! The outbox is the commits themselves: `published: false` until every event is acknowledged, ordered by positions
//! each process takes from its clock, past the stream's last one (`group::Positions`), so positions grow along every
//! stream and the relay, which reads every unpublished commit rather than resuming after a position, never misses
//! one.
//!
//! Values are read leniently: a server may return a small 64-bit integer as a 32-bit one (documents are read through
//! serde, whose integer types accept either), and the stand-in server the tests run on returns a boolean set by `$set`
//! as 0 or 1 ([`lenient_bools`]). Money is integer minor units; ids are strings, except the notification and email
//! numbers.

mod accounts;
mod catalog;
mod group;
mod journal;
mod notifications;
mod sales;

use std::time::Duration;

use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Cursor, Database, IndexModel};
use serde::{de::DeserializeOwned, Serialize};

use super::{Page, StoreError};
use crate::domain::Timestamp;

/// How long a call waits for a reachable server before failing with [`StoreError::Unavailable`].
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

const COMMITS: &str = "commits";
const SNAPSHOTS: &str = "snapshots";
const ACTIVE: &str = "active_streams";
const COUNTERS: &str = "counters";
const PRODUCTS: &str = "products";
const ORDERS: &str = "orders";
const PAYMENTS: &str = "payments";
const COUPONS: &str = "coupons";
const USERS: &str = "users";
const REFRESH: &str = "refresh_tokens";
const REVOKED: &str = "revocations";
const NOTIFICATIONS: &str = "notifications";
const EMAILS: &str = "emails";

/// The field of a derived document that holds the stream sequence it was derived from.
const STREAM_SEQ: &str = "streamSeq";

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    /// The group commit's queue and what the writer knows of the streams ([`group`]).
    journal: std::sync::Arc<Journal>,
}

#[derive(Default)]
struct Journal {
    queue: group::Queue,
    heads: group::Heads,
    applied: group::Applied,
    handed: group::HandedOut,
    positions: group::Positions,
}

impl MongoStore {
    /// Connects to `uri`, uses `database`, and creates every index the store relies on (unique keys among them), then
    /// finishes whatever commits a crash left half-applied. Fails with [`StoreError::Unavailable`] when no server
    /// answers within a couple of seconds. Error messages never contain the URI's credentials.
    pub async fn connect(uri: &str, database: &str) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| StoreError::Unavailable(redact(uri, &format!("invalid MongoDB URI: {e}"))))?;
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
        options.app_name.get_or_insert_with(|| "commercex".to_string());
        // Every command counted by name: the store's cost per order, as the server sees it.
        options.command_event_handler = Some(mongodb::event::EventHandler::callback(|event| {
            if let mongodb::event::command::CommandEvent::Started(started) = event {
                ::metrics::counter!(crate::telemetry::metrics::MONGODB_COMMANDS, "command" => started.command_name)
                    .increment(1);
            }
        }));
        let client = Client::with_options(options).map_err(|e| StoreError::Unavailable(redact(uri, &e.to_string())))?;
        let store = Self { db: client.database(database), journal: Default::default() };
        // This process's tag in the outbox positions it gives (`group::Positions`).
        let tag = store.take_numbers("outbox-writers", 1).await.map_err(|e| redact_err(uri, e))?;
        store.journal.positions.set_tag(tag);
        store.create_indexes().await.map_err(|e| redact_err(uri, e))?;
        store.repair().await.map_err(|e| redact_err(uri, e))?;
        Ok(store)
    }

    /// Drops the whole database (for tests that create one per run).
    pub async fn drop_database(&self) -> Result<(), StoreError> {
        self.db.drop().await.map_err(store_err)
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let sets = [
            (COMMITS, journal::indexes()),
            (ACTIVE, vec![index(doc! {"active": 1}, None)]),
            (PRODUCTS, catalog::indexes()),
            (ORDERS, sales::order_indexes()),
            (PAYMENTS, sales::payment_indexes()),
            (USERS, accounts::user_indexes()),
            (REVOKED, accounts::revocation_indexes()),
            (REFRESH, accounts::refresh_token_indexes()),
            (NOTIFICATIONS, notifications::notification_indexes()),
            (EMAILS, notifications::email_indexes()),
        ];
        for (collection, indexes) in sets {
            self.coll(collection).create_indexes(indexes).await.map_err(store_err)?;
        }
        Ok(())
    }

    /// Takes `n` numbers from the counter `name` (starting at 1) and returns the last of them.
    async fn take_numbers(&self, name: &str, n: u64) -> Result<u64, StoreError> {
        let counter = self
            .coll(COUNTERS)
            .find_one_and_update(doc! {"_id": name}, doc! {"$inc": {"next": to_i64(n)?}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_err)?
            .ok_or_else(|| StoreError::Corrupt(format!("counter {name} was not created")))?;
        #[derive(serde::Deserialize)]
        struct Counter {
            next: u64,
        }
        Ok(from_doc::<Counter>(counter)?.next)
    }
}

fn index(keys: Document, options: Option<IndexOptions>) -> IndexModel {
    IndexModel::builder().keys(keys).options(options).build()
}

fn unique(name: &str) -> Option<IndexOptions> {
    Some(IndexOptions::builder().unique(true).name(name.to_string()).build())
}

/// The server's code for a unique index refusing a write.
const DUPLICATE_KEY: i32 = 11000;

/// Whether the error is a unique index refusing a write ([`DUPLICATE_KEY`]).
fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m.write_errors.iter().flatten().any(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// Network, server-selection and server failures make the store unavailable (the driver reconnects by itself);
/// a document that cannot be read back is corrupt.
fn store_err(e: mongodb::error::Error) -> StoreError {
    match e.kind.as_ref() {
        ErrorKind::BsonDeserialization(_) | ErrorKind::BsonSerialization(_) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// `message` with the URI's user information (`user:password@`) masked.
fn redact(uri: &str, message: &str) -> String {
    let authority = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((credentials, _)) if !credentials.is_empty() => message.replace(credentials, "***"),
        _ => message.to_string(),
    }
}

fn redact_err(uri: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(redact(uri, &m)),
        StoreError::Corrupt(m) => StoreError::Corrupt(redact(uri, &m)),
        other => other,
    }
}

fn to_doc<T: Serialize>(value: &T) -> Result<Document, StoreError> {
    bson::to_document(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_doc<T: DeserializeOwned>(document: Document) -> Result<T, StoreError> {
    bson::from_document(document).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// `document` with `fields` read as booleans also where a server returns a boolean set by `$set` as 0 or 1 (the
/// stand-in server the tests run on does).
fn lenient_bools(mut document: Document, fields: &[&str]) -> Document {
    for field in fields {
        let value = match document.get(*field) {
            Some(Bson::Int32(n)) => *n != 0,
            Some(Bson::Int64(n)) => *n != 0,
            _ => continue,
        };
        document.insert(*field, value);
    }
    document
}

fn to_i64(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{n} does not fit a 64-bit signed integer")))
}

/// A string that orders like the timestamp (seconds, then nanoseconds), for sorting: the documents keep the
/// timestamp itself as RFC 3339, whose varying fraction length does not sort.
fn time_key(t: &Timestamp) -> String {
    let seconds = (t.timestamp() as u64) ^ (1 << 63);
    format!("{seconds:020}{:010}", t.timestamp_subsec_nanos())
}

async fn collect<T: DeserializeOwned>(mut cursor: Cursor<Document>) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    while cursor.advance().await.map_err(store_err)? {
        out.push(from_doc(cursor.deserialize_current().map_err(store_err)?)?);
    }
    Ok(out)
}

/// One page (from 1) of the documents matching `filter` in `sort` order, with the number of matches.
async fn find_page<T: DeserializeOwned>(
    coll: &Collection<Document>,
    filter: Document,
    sort: Document,
    page: u32,
    limit: u32,
) -> Result<Page<T>, StoreError> {
    let skip = u64::from(page.saturating_sub(1)) * u64::from(limit);
    let count = async { coll.count_documents(filter.clone()).await.map_err(store_err) };
    let items = async {
        // A limit of 0 means "no limit" to MongoDB.
        if limit == 0 {
            return Ok(Vec::new());
        }
        collect(coll.find(filter.clone()).sort(sort).skip(skip).limit(i64::from(limit)).await.map_err(store_err)?).await
    };
    let (total, items) = tokio::try_join!(count, items)?;
    Ok(Page { items, page, limit, total, total_is_exact: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_message() {
        let uri = "mongodb://app:s3cret@db.internal:27017/?authSource=admin";
        assert_eq!(redact(uri, "cannot reach app:s3cret@db.internal"), "cannot reach ***@db.internal");
        assert_eq!(redact("mongodb://db:27017", "plain"), "plain");
        assert_eq!(redact("mongodb://u:p%40ss@h/db", "x u:p%40ss y"), "x *** y");
    }

    #[tokio::test]
    async fn a_seed_list_by_dns_is_refused_with_the_reason() {
        let Err(StoreError::Unavailable(message)) =
            MongoStore::connect("mongodb+srv://app:s3cret@cluster.example.net", "x").await
        else {
            panic!("connected without a resolver")
        };
        assert!(message.contains("dns-resolver") && !message.contains("s3cret"), "{message}");
    }

    #[test]
    fn time_keys_order_like_timestamps() {
        use chrono::{DateTime, Duration, Utc};
        let at =
            |ms: i64, ns: i64| DateTime::<Utc>::UNIX_EPOCH + Duration::milliseconds(ms) + Duration::nanoseconds(ns);
        let times = [at(-100_000, 0), at(-1, 0), at(0, 0), at(0, 1), at(1, 0), at(1_700_000_000_000, 5)];
        for pair in times.windows(2) {
            assert!(time_key(&pair[0]) < time_key(&pair[1]), "{pair:?}");
        }
        assert_eq!(time_key(&times[2]).len(), 30);
    }
}
