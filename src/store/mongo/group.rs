//! The group commit of the MongoDB journal: commits waiting from many entities are written together, in as few
//! requests as the writes allow, whatever the number of entities:
//!
//! 1. the stream heads are known to the writer ([`Heads`]: the head this process last read or wrote for each
//!    stream), so a head is read only for a stream this process has not seen at the sequence its writer expects;
//! 2. the outbox positions come from this process's clock ([`Positions`]), past the stream's last one: no shared
//!    counter to update;
//! 3. one unordered `insert` writes every commit document: a commit whose `(stream, firstSeq)` exists already (a
//!    stale writer, fenced) fails alone with its duplicate key and becomes [`StoreError::Conflict`];
//! 4. one `update` per collection writes the derived documents of every commit inserted (read models, snapshots,
//!    and the active-stream markers whose value changed), each a version-guarded upsert as before;
//! 5. no `applied` mark: the commits this process applied are remembered ([`Applied`]), and the outbox marks them
//!    applied when it marks them published. A commit a crash left unapplied is found as before (`applied: false`
//!    and not remembered) and finished by the outbox or the repair.
//!
//! Writes 3 and 4 are what a commit costs alone; under load a batch of N commits costs the same few requests.
//! A caller whose future is dropped (an actor killed mid-commit) does not stop the batch: the writer is a task of
//! its own, started by the first commit to find none running, and it stops when nothing is waiting.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use mongodb::bson::{doc, Bson, Document};
use tokio::sync::oneshot;

use super::journal::{CommitDoc, Derived, StoredReadModel};
use super::{
    catalog, sales, store_err, to_doc, to_i64, MongoStore, ACTIVE, COMMITS, DUPLICATE_KEY, SNAPSHOTS, STREAM_SEQ,
};
use crate::store::{Commit, StoreError};

/// How long a writer that starts waits for more commits before its first batch (later batches take what queued
/// while the one before was written).
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// Commits one batch holds at most.
const MAX_BATCH: usize = 256;
/// Commit ids remembered as applied at most; past it the memory is cleared, which costs only repeated (idempotent)
/// derived writes by the outbox.
const MAX_APPLIED: usize = 100_000;
/// Stream heads remembered at most; past it the memory is cleared and heads are read again.
const MAX_HEADS: usize = 200_000;

/// What this process knows of each stream it wrote or read: its head, and the active-stream marker last written.
#[derive(Default)]
pub(super) struct Heads(Mutex<HashMap<String, Head>>);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Head {
    pub seq: u64,
    /// The value of the stream's active-stream marker, when this process wrote or read it.
    pub active: Option<bool>,
    /// The outbox position of the stream's last event (0 if none): its next ones come after it.
    pub position: u64,
}

impl Heads {
    pub fn get(&self, stream: &str) -> Option<Head> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(stream).copied()
    }

    pub fn set(&self, stream: &str, head: Head) {
        let mut heads = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() >= MAX_HEADS && !heads.contains_key(stream) {
            heads.clear();
        }
        heads.insert(stream.to_string(), head);
    }

    pub fn forget(&self, stream: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(stream);
    }
}

/// Commit documents this process applied whose `applied` mark is not written yet.
#[derive(Default)]
pub(super) struct Applied(Mutex<HashSet<String>>);

impl Applied {
    pub fn contains(&self, id: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
    }

    fn insert(&self, ids: impl IntoIterator<Item = String>) {
        let mut applied = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if applied.len() >= MAX_APPLIED {
            applied.clear();
        }
        applied.extend(ids);
    }

    pub fn remove(&self, ids: &[String]) {
        let mut applied = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            applied.remove(id);
        }
    }
}

/// The outbox positions this process gives events: `(milliseconds since 2024 << 22) | (tag << 12) | count`, the tag
/// this process's own (taken once from a counter when it connects, modulo 1,024, so processes running at once do
/// not share one) and the count within the millisecond; always past the position this process gave last and past
/// the stream's last event's. So positions are unique across processes, each stream's events are in position order
/// whichever process wrote them (a stream's next writer learnt its last position with its head), and the outbox
/// hands different streams out roughly in the order they were written, with no shared counter to update on each
/// commit. (Numbers from the counter that positions once came from are all far below these.)
#[derive(Default)]
pub(super) struct Positions {
    tag: std::sync::atomic::AtomicU64,
    /// The millisecond of the last position given, and the next count in it.
    last: Mutex<(u64, u64)>,
}

const COUNT_BITS: u32 = 12;
const TAG_BITS: u32 = 10;
/// 2024-01-01T00:00:00Z: 2^41 milliseconds from it fit beside the tag and the count in a signed 64-bit number.
const EPOCH_MS: i64 = 1_704_067_200_000;

impl Positions {
    pub fn set_tag(&self, tag: u64) {
        self.tag.store(tag % (1 << TAG_BITS), std::sync::atomic::Ordering::Relaxed);
    }

    fn compose(&self, ms: u64, count: u64) -> u64 {
        let tag = self.tag.load(std::sync::atomic::Ordering::Relaxed);
        (ms << (TAG_BITS + COUNT_BITS)) | (tag << COUNT_BITS) | count
    }

    /// The first of `n` consecutive positions after `floor`.
    pub fn take(&self, n: u64, floor: u64) -> Result<u64, StoreError> {
        let n = n.max(1);
        if n > 1 << COUNT_BITS {
            return Err(StoreError::Corrupt(format!("a commit of {n} events (at most {})", 1 << COUNT_BITS)));
        }
        let now = u64::try_from(chrono::Utc::now().timestamp_millis() - EPOCH_MS).unwrap_or(0);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (mut ms, mut count) = if now > last.0 { (now, 0) } else { *last };
        if self.compose(ms, count) <= floor {
            (ms, count) = ((floor >> (TAG_BITS + COUNT_BITS)) + 1, 0);
        }
        if count + n > 1 << COUNT_BITS {
            (ms, count) = (ms + 1, 0);
        }
        *last = (ms, count + n);
        Ok(self.compose(ms, count))
    }
}

/// A commit the outbox handed out: its positions, and those acknowledged before.
#[derive(Clone, Debug)]
pub(super) struct Handed {
    pub id: String,
    pub position: u64,
    pub last_position: u64,
    pub acked: Vec<u64>,
}

/// The commits the outbox last handed out, so that acknowledging their positions needs no lookup.
#[derive(Default)]
pub(super) struct HandedOut(Mutex<std::collections::BTreeMap<u64, Handed>>);

impl HandedOut {
    pub fn remember(&self, handed: Vec<Handed>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = handed.into_iter().map(|h| (h.position, h)).collect();
    }

    /// The commits holding `positions`, if every one of them is held by a commit handed out last.
    pub fn covering(&self, positions: &std::collections::BTreeSet<u64>) -> Option<Vec<Handed>> {
        let handed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut commits: Vec<Handed> = Vec::new();
        for &p in positions {
            if commits.last().is_some_and(|c| (c.position..=c.last_position).contains(&p)) {
                continue;
            }
            let (_, c) = handed.range(..=p).next_back()?;
            if p > c.last_position {
                return None;
            }
            commits.push(c.clone());
        }
        Some(commits)
    }
}

/// Commits waiting for the writer, and whether a writer runs.
#[derive(Default)]
pub(super) struct Queue(Mutex<(Vec<Waiting>, bool)>);

pub(super) struct Waiting {
    commit: Commit,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// A commit on its way: checked, numbered, then written.
struct Entry {
    reply: oneshot::Sender<Result<(), StoreError>>,
    stream: String,
    expected_seq: u64,
    /// Until numbered: then its document goes to the insert, and what it derives stays in `derived`.
    commit: Option<Commit>,
    /// The outbox position of the stream's last event, and of the commit's last event once numbered.
    floor: u64,
    last_position: Option<u64>,
    /// Whether it has a commit document (a commit without events has none).
    has_document: bool,
    /// Why its insert failed, when not for a duplicate key.
    error: Option<StoreError>,
    derived: Option<Derived>,
}

impl MongoStore {
    /// Queues `commit` for the writer (starting one if none runs) and waits for its outcome.
    pub(super) async fn group_commit(&self, commit: Commit) -> Result<(), StoreError> {
        let (reply, outcome) = oneshot::channel();
        let start = {
            let mut queue = self.journal.queue.0.lock().unwrap_or_else(|p| p.into_inner());
            queue.0.push(Waiting { commit, reply });
            !std::mem::replace(&mut queue.1, true)
        };
        if start {
            let store = self.clone();
            tokio::spawn(async move {
                // Commits of other entities arriving within the window share this one's requests.
                tokio::time::sleep(GATHER).await;
                store.write_queued().await
            });
        }
        outcome.await.unwrap_or_else(|_| Err(StoreError::Unavailable("the journal writer stopped".into())))
    }

    /// Writes batches until nothing waits.
    async fn write_queued(&self) {
        loop {
            let batch = {
                let mut queue = self.journal.queue.0.lock().unwrap_or_else(|p| p.into_inner());
                if queue.0.is_empty() {
                    queue.1 = false;
                    return;
                }
                let take = queue.0.len().min(MAX_BATCH);
                queue.0.drain(..take).collect::<Vec<_>>()
            };
            // One commit per stream in a batch (an entity awaits its commit, so a second one is a stale writer's
            // racing the current one): the others go back to wait for the next batch.
            let mut streams = HashSet::new();
            let (now, later): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|w| streams.insert(w.commit.stream.clone()));
            if !later.is_empty() {
                let mut queue = self.journal.queue.0.lock().unwrap_or_else(|p| p.into_inner());
                let rest = std::mem::take(&mut queue.0);
                queue.0 = later.into_iter().chain(rest).collect();
            }
            self.write_batch(now).await;
        }
    }

    async fn write_batch(&self, batch: Vec<Waiting>) {
        ::metrics::histogram!(crate::telemetry::metrics::STORE_GROUP_COMMIT_WRITES, "store" => "mongodb")
            .record(batch.len() as f64);
        // 1. Heads: read only those this process does not know at the expected sequence.
        // (A commit without events inserts nothing the unique index could refuse, so its head is always read.)
        let known: Vec<Option<Head>> = batch.iter().map(|w| self.journal.heads.get(&w.commit.stream)).collect();
        // (A commit without events inserts nothing the unique index could refuse, so its head is always read.)
        let unknown = batch
            .iter()
            .zip(&known)
            .filter(|(w, head)| w.commit.events.is_empty() || head.is_none_or(|h| h.seq != w.commit.expected_seq));
        let reads = futures_util::future::join_all(
            unknown.map(|(w, _)| async { (w.commit.stream.clone(), self.head_and_position(&w.commit.stream).await) }),
        )
        .await;
        let mut entries = Vec::with_capacity(batch.len());
        for (Waiting { commit, reply }, known) in batch.into_iter().zip(known) {
            let read = reads.iter().find(|(s, _)| *s == commit.stream).map(|(_, r)| r.clone());
            let (actual, floor) = match read {
                None => (commit.expected_seq, known.map_or(0, |h| h.position)),
                Some(Ok(read)) => read,
                Some(Err(e)) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            if actual != commit.expected_seq {
                let conflict =
                    StoreError::Conflict { stream: commit.stream.clone(), expected: commit.expected_seq, actual };
                self.journal.heads.set(&commit.stream, Head { seq: actual, active: None, position: floor });
                let _ = reply.send(Err(conflict));
                continue;
            }
            if let Err(e) = check_sequence(&commit) {
                let _ = reply.send(Err(e));
                continue;
            }
            entries.push(Entry {
                reply,
                stream: commit.stream.clone(),
                expected_seq: commit.expected_seq,
                commit: Some(commit),
                floor,
                last_position: None,
                has_document: false,
                error: None,
                derived: None,
            });
        }
        if let Err(e) = self.number_and_insert(&mut entries).await {
            for entry in entries {
                self.journal.heads.forget(&entry.stream);
                let _ = entry.reply.send(Err(e.clone()));
            }
            return;
        }
        // 4. Derived documents of the commits inserted.
        let (inserted, refused): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.derived.is_some());
        for entry in refused {
            self.journal.heads.forget(&entry.stream);
            let outcome = match entry.error {
                Some(error) => Err(error),
                None => match self.head(&entry.stream).await {
                    Ok(actual) => {
                        Err(StoreError::Conflict { stream: entry.stream, expected: entry.expected_seq, actual })
                    }
                    Err(e) => Err(e),
                },
            };
            let _ = entry.reply.send(outcome);
        }
        let derived: Vec<&Derived> = inserted.iter().filter_map(|e| e.derived.as_ref()).collect();
        match self.apply_all(&derived).await {
            Ok(()) => {
                self.journal.applied.insert(derived.iter().filter_map(|d| d.commit_id.clone()));
                for entry in inserted {
                    let d = entry.derived.as_ref().expect("inserted");
                    let position = entry.last_position.unwrap_or(entry.floor);
                    self.journal.heads.set(&d.stream, Head { seq: d.seq, active: Some(d.active), position });
                    let _ = entry.reply.send(Ok(()));
                }
            }
            Err(e) => {
                for entry in inserted {
                    self.journal.heads.forget(&entry.stream);
                    let _ = entry.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// 2 and 3: takes the outbox positions of the batch's events and inserts their commit documents. An entry
    /// left without `derived` was refused (its stream moved on: a duplicate key).
    async fn number_and_insert(&self, entries: &mut [Entry]) -> Result<(), StoreError> {
        let mut documents = Vec::new();
        for entry in entries.iter_mut() {
            let Some(commit) = entry.commit.take() else { continue };
            let n = commit.events.len() as u64;
            let first = self.journal.positions.take(n, entry.floor)?;
            if n > 0 {
                entry.last_position = Some(first + n - 1);
            }
            let (derived, document) = commit_document(commit, first)?;
            entry.derived = Some(derived);
            if let Some(document) = document {
                entry.has_document = true;
                documents.push(document);
            }
        }
        if documents.is_empty() {
            return Ok(());
        }
        let failed: HashMap<usize, Option<StoreError>> =
            match self.coll(COMMITS).insert_many(documents).ordered(false).await {
                Ok(_) => HashMap::new(),
                Err(e) => match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
                        // A duplicate key is a stale writer (a conflict); anything else fails that commit alone.
                        let errors = m.write_errors.as_deref().unwrap_or_default();
                        errors
                            .iter()
                            .map(|w| {
                                (w.index, (w.code != DUPLICATE_KEY).then(|| StoreError::Unavailable(w.message.clone())))
                            })
                            .collect()
                    }
                    _ => return Err(store_err(e)),
                },
            };
        // The documents' indexes count only the entries that had one.
        let mut index = 0;
        for entry in entries.iter_mut() {
            if entry.has_document {
                if let Some(error) = failed.get(&index) {
                    entry.derived = None;
                    entry.error = error.clone();
                }
                index += 1;
            }
        }
        Ok(())
    }

    /// Writes the derived documents of `derived`, one `update` per collection, each statement a version-guarded
    /// upsert; an upsert that met a document created concurrently is tried again as a plain replacement.
    pub(super) async fn apply_all(&self, derived: &[&Derived]) -> Result<(), StoreError> {
        let mut by_collection: HashMap<&'static str, Vec<Document>> = HashMap::new();
        for d in derived {
            let older = if d.replace_equal { "$lte" } else { "$lt" };
            let seq = to_i64(d.seq)?;
            if let Some(model) = &d.read_model {
                let (collection, mut document) = match model {
                    StoredReadModel::Product(p) => (super::PRODUCTS, catalog::product_document(p)?),
                    StoredReadModel::Order(o) => (super::ORDERS, sales::order_document(o)?),
                    StoredReadModel::Payment(p) => (super::PAYMENTS, sales::payment_document(p)?),
                    StoredReadModel::Coupon(c) => (super::COUPONS, sales::coupon_document(c)?),
                };
                document.insert(STREAM_SEQ, seq);
                by_collection.entry(collection).or_default().push(statement(document, STREAM_SEQ, older, seq)?);
            }
            if let Some(s) = &d.snapshot {
                let mut document = to_doc(s)?;
                document.insert("_id", &d.stream);
                let seq = to_i64(s.seq)?;
                by_collection.entry(SNAPSHOTS).or_default().push(statement(document, "seq", older, seq)?);
            }
            let known = self.journal.heads.get(&d.stream).and_then(|h| h.active);
            if known != Some(d.active) || d.replace_equal {
                let document = doc! {"_id": &d.stream, STREAM_SEQ: seq, "active": d.active};
                by_collection.entry(ACTIVE).or_default().push(statement(document, STREAM_SEQ, older, seq)?);
            }
        }
        let writes = by_collection.into_iter().map(|(collection, updates)| self.update_all(collection, updates));
        futures_util::future::try_join_all(writes).await.map(drop)
    }

    /// One `update` command of `updates` (unordered); the upserts refused with a duplicate key run again without
    /// upserting.
    async fn update_all(&self, collection: &str, updates: Vec<Document>) -> Result<(), StoreError> {
        let answer = self
            .db
            .run_command(doc! {"update": collection, "updates": updates.clone(), "ordered": false})
            .await
            .map_err(store_err)?;
        if let Ok(error) = answer.get_document("writeConcernError") {
            let message = error.get_str("errmsg").unwrap_or("write concern not met");
            return Err(StoreError::Unavailable(format!("{collection}: {message}")));
        }
        let errors = answer.get_array("writeErrors").map(|a| a.to_vec()).unwrap_or_default();
        let mut again = Vec::new();
        for error in errors {
            let Bson::Document(error) = error else { continue };
            let code = error.get_i32("code").map(i64::from).or_else(|_| error.get_i64("code")).unwrap_or(0);
            let index = error.get_i32("index").map(i64::from).or_else(|_| error.get_i64("index")).unwrap_or(-1);
            if code != i64::from(DUPLICATE_KEY) {
                let message = error.get_str("errmsg").unwrap_or("write error");
                return Err(StoreError::Unavailable(format!("{collection}: {message}")));
            }
            if let Some(update) = usize::try_from(index).ok().and_then(|i| updates.get(i)) {
                let mut update = update.clone();
                update.insert("upsert", false);
                again.push(update);
            }
        }
        if again.is_empty() {
            return Ok(());
        }
        let answer = self
            .db
            .run_command(doc! {"update": collection, "updates": again, "ordered": false})
            .await
            .map_err(store_err)?;
        written(collection, &answer)
    }
}

/// An `update` command's answer as an outcome: any write error, or a write concern not met, fails it.
fn written(collection: &str, answer: &Document) -> Result<(), StoreError> {
    let error = answer.get_document("writeConcernError").ok().or_else(|| {
        match answer.get_array("writeErrors").ok().and_then(|errors| errors.first()) {
            Some(Bson::Document(error)) => Some(error),
            _ => None,
        }
    });
    match error {
        Some(error) => {
            Err(StoreError::Unavailable(format!("{collection}: {}", error.get_str("errmsg").unwrap_or("write error"))))
        }
        None => Ok(()),
    }
}

/// The statement of a version-guarded upsert: replaces the document with `document` if its `field` is `older`
/// than `seq`, or inserts it if there is none.
fn statement(document: Document, field: &str, older: &str, seq: i64) -> Result<Document, StoreError> {
    let id = document.get("_id").cloned().ok_or_else(|| StoreError::Corrupt("document without _id".into()))?;
    Ok(doc! {"q": {"_id": id, field: {older: seq}}, "u": document, "upsert": true})
}

pub(super) fn check_sequence(commit: &Commit) -> Result<(), StoreError> {
    let mut seq = commit.expected_seq;
    for event in &commit.events {
        if event.seq != seq + 1 {
            return Err(StoreError::Corrupt(format!("event {} does not follow sequence {seq}", event.id)));
        }
        seq = event.seq;
    }
    Ok(())
}

/// What `commit` derives, and its commit document (none without events) with its events at outbox positions from
/// `first_position`.
pub(super) fn commit_document(commit: Commit, first_position: u64) -> Result<(Derived, Option<Document>), StoreError> {
    let Commit { stream, expected_seq, events, snapshot, read_model, active } = commit;
    let seq = events.last().map_or(expected_seq, |e| e.seq);
    let read_model = read_model.map(StoredReadModel::from);
    if events.is_empty() {
        let derived = Derived { commit_id: None, stream, seq, snapshot, read_model, active, replace_equal: true };
        return Ok((derived, None));
    }
    let n = events.len() as u64;
    let id = format!("{stream}/{}", expected_seq + 1);
    let document = CommitDoc {
        id: id.clone(),
        stream: stream.clone(),
        first_seq: expected_seq + 1,
        last_seq: seq,
        position: first_position,
        last_position: first_position + n - 1,
        events,
        snapshot: snapshot.clone(),
        read_model: read_model.clone(),
        active,
        applied: false,
        published: false,
        acked: Vec::new(),
    };
    let derived = Derived { commit_id: Some(id), stream, seq, snapshot, read_model, active, replace_equal: false };
    Ok((derived, Some(to_doc(&document)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_grow_stay_apart_between_processes_and_pass_a_streams_last() {
        let (a, b) = (Positions::default(), Positions::default());
        a.set_tag(1);
        b.set_tag(2);
        let mut given = std::collections::BTreeSet::new();
        let mut last = 0;
        for _ in 0..10_000 {
            let first = a.take(3, 0).unwrap();
            assert!(first > last, "a process's positions grow");
            last = first + 2;
            for p in first..first + 3 {
                assert!(given.insert(p), "{p} given twice");
            }
            let other = b.take(1, 0).unwrap();
            assert!(given.insert(other), "{other} given by both processes");
        }
        // A stream last written by a process whose clock runs ahead: its next position still comes after.
        let ahead = b.compose(u64::try_from(chrono::Utc::now().timestamp_millis() - EPOCH_MS).unwrap() + 60_000, 5);
        let next = a.take(2, ahead).unwrap();
        assert!(next > ahead);
        assert!(a.take(1, 0).unwrap() > next + 1, "and later ones too");
        assert!(a.take(5000, 0).is_err(), "a commit fits in one millisecond's counts");
        assert!(i64::try_from(a.compose((1 << 41) - 1, 4095)).is_ok(), "positions are stored as 64-bit integers");
    }
}
