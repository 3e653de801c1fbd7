//! The event journal, snapshots, the outbox and the active-stream markers in MongoDB (see the module above for the
//! order of the writes and how a crash between them is repaired).

use std::collections::BTreeSet;

use async_trait::async_trait;
use mongodb::bson::{doc, Document};
use mongodb::IndexModel;
use serde::{Deserialize, Serialize};

use super::{
    collect, from_doc, index, is_duplicate, store_err, to_i64, unique, MongoStore, ACTIVE, COMMITS, SNAPSHOTS,
};
use crate::domain::coupon::Coupon;
use crate::domain::order::Order;
use crate::domain::payment::Payment;
use crate::domain::product::Product;
use crate::store::{
    Commit, EventRecord, EventStore, History, OutboxEntry, OutboxScope, ReadModel, Snapshot, StoreError,
};

/// Commits a history reads first, newest first; a stream with more since its snapshot is read again in full.
const RECENT_COMMITS: i64 = 256;
/// Commits re-applied per batch by [`MongoStore::repair`], and batches per call.
const REPAIR_BATCH: i64 = 128;
const REPAIR_BATCHES: usize = 8;

pub(super) fn indexes() -> Vec<IndexModel> {
    vec![
        index(doc! {"stream": 1, "firstSeq": 1}, unique("stream_first_seq_unique")),
        index(doc! {"stream": 1, "lastSeq": 1}, None),
        index(doc! {"published": 1, "position": 1}, None),
        index(doc! {"applied": 1, "position": 1}, None),
    ]
}

/// A read model as kept in its commit document until applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub(super) enum StoredReadModel {
    Product(Product),
    Order(Box<Order>),
    Payment(Payment),
    Coupon(Coupon),
}

impl From<ReadModel> for StoredReadModel {
    fn from(r: ReadModel) -> Self {
        match r {
            ReadModel::Product(p) => Self::Product(p),
            ReadModel::Order(o) => Self::Order(o),
            ReadModel::Payment(p) => Self::Payment(p),
            ReadModel::Coupon(c) => Self::Coupon(c),
        }
    }
}

/// One commit: the journal's unit, the outbox's unit, and until applied the record of what it derives.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CommitDoc {
    /// `{stream}/{firstSeq}`, the id of its first event.
    #[serde(rename = "_id")]
    pub id: String,
    pub stream: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Outbox positions of the first and last events; the others follow one by one.
    pub position: u64,
    pub last_position: u64,
    pub events: Vec<EventRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_model: Option<StoredReadModel>,
    pub active: bool,
    /// Whether the derived documents are known to be written (set with `published`; see [`super::group`]).
    pub applied: bool,
    /// Whether every event was acknowledged by the relay.
    pub published: bool,
    /// Positions acknowledged so far, while only some are. Written empty: some servers `$addToSet` only to an
    /// existing array.
    #[serde(default)]
    pub acked: Vec<u64>,
}

/// What a commit derives, written after its commit document (and again by a repair).
pub(super) struct Derived {
    /// The commit document, to mark applied afterwards (none for a commit without events).
    pub commit_id: Option<String>,
    pub stream: String,
    /// The stream sequence the commit leaves the stream at.
    pub seq: u64,
    pub snapshot: Option<Snapshot>,
    pub read_model: Option<StoredReadModel>,
    pub active: bool,
    /// A commit without events has no commit document, so nothing newer than its own sequence can exist yet;
    /// it replaces what was derived at that sequence, as the embedded store does.
    pub replace_equal: bool,
}

impl MongoStore {
    /// The sequence the stream is at: the last event of its last commit.
    pub(super) async fn head(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self.head_and_position(stream).await?.0)
    }

    /// The sequence the stream is at, and the outbox position of its last event (0 for a new stream).
    pub(super) async fn head_and_position(&self, stream: &str) -> Result<(u64, u64), StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            last_seq: u64,
            #[serde(default)]
            last_position: u64,
        }
        let last = self
            .coll(COMMITS)
            .find_one(doc! {"stream": stream})
            .sort(doc! {"firstSeq": -1})
            .projection(doc! {"lastSeq": 1, "lastPosition": 1})
            .await
            .map_err(store_err)?;
        Ok(last.map(from_doc::<Head>).transpose()?.map_or((0, 0), |h| (h.last_seq, h.last_position)))
    }

    /// Writes what a commit derives, then marks its commit document applied and drops the copies it held.
    async fn finish(&self, derived: Derived) -> Result<(), StoreError> {
        self.apply_all(&[&derived]).await?;
        let commit_id = derived.commit_id;
        let Some(id) = commit_id else { return Ok(()) };
        self.coll(COMMITS)
            .update_one(doc! {"_id": id}, doc! {"$set": {"applied": true}, "$unset": {"snapshot": "", "readModel": ""}})
            .await
            .map(drop)
            .map_err(store_err)
    }

    /// Applies again the commits a crash left unapplied (their derived writes are idempotent and version-guarded,
    /// so racing a commit still in progress is harmless). Returns how many it applied.
    pub(super) async fn repair(&self) -> Result<usize, StoreError> {
        let mut repaired = 0;
        // Paged by position: the commits this process applied itself are passed over, not finished again.
        let mut after = -1_i64;
        for _ in 0..REPAIR_BATCHES {
            let cursor = self
                .coll(COMMITS)
                .find(doc! {"applied": false, "position": {"$gt": after}})
                .sort(doc! {"position": 1})
                .limit(REPAIR_BATCH)
                .projection(doc! {"events": 0})
                .await
                .map_err(store_err)?;
            let batch: Vec<Document> = collect(cursor).await?;
            let full = batch.len() as i64 == REPAIR_BATCH;
            for document in batch {
                let c: PendingApply = from_doc(document)?;
                after = after.max(to_i64(c.position)?);
                if self.journal.applied.contains(&c.id) {
                    continue;
                }
                self.finish(Derived {
                    commit_id: Some(c.id),
                    stream: c.stream,
                    seq: c.last_seq,
                    snapshot: c.snapshot,
                    read_model: c.read_model,
                    active: c.active,
                    replace_equal: false,
                })
                .await?;
                repaired += 1;
            }
            if !full {
                break;
            }
        }
        if repaired > 0 {
            tracing::info!(commits = repaired, "applied commits left unapplied by an interrupted write");
        }
        Ok(repaired)
    }

    /// The commit document alone, as a crash right after writing it would leave the store.
    pub async fn commit_journal_only(&self, commit: Commit) -> Result<(), StoreError> {
        self.insert_commit(commit).await.map(drop)
    }

    /// Checks the stream's head and writes the commit document; returns what it derives.
    async fn insert_commit(&self, commit: Commit) -> Result<Derived, StoreError> {
        let (stream, expected_seq) = (commit.stream.clone(), commit.expected_seq);
        super::group::check_sequence(&commit)?;
        let (actual, last_position) = self.head_and_position(&stream).await?;
        if actual != expected_seq {
            return Err(StoreError::Conflict { stream, expected: expected_seq, actual });
        }
        let first = self.journal.positions.take(commit.events.len() as u64, last_position)?;
        let (derived, document) = super::group::commit_document(commit, first)?;
        let Some(document) = document else { return Ok(derived) };
        match self.coll(COMMITS).insert_one(document).await {
            Ok(_) => Ok(derived),
            Err(e) if is_duplicate(&e) => {
                let actual = self.head(&stream).await?;
                Err(StoreError::Conflict { stream, expected: expected_seq, actual })
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// The unpublished commits holding outbox positions from `min` to `max`, with what was acknowledged of them.
    async fn commits_holding(&self, min: u64, max: u64) -> Result<Vec<super::group::Handed>, StoreError> {
        let cursor = self
            .coll(COMMITS)
            .find(doc! {"published": false, "position": {"$lte": to_i64(max)?}, "lastPosition": {"$gte": to_i64(min)?}})
            .projection(doc! {"position": 1, "lastPosition": 1, "acked": 1})
            .await
            .map_err(store_err)?;
        Ok(collect::<Unpublished>(cursor)
            .await?
            .into_iter()
            .map(|c| super::group::Handed {
                id: c.id,
                position: c.position,
                last_position: c.last_position,
                acked: c.acked,
            })
            .collect())
    }

    /// Marks published the commits whose events are all acknowledged.
    async fn mark_published(&self, ids: Vec<String>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.coll(COMMITS)
            .update_many(
                doc! {"_id": {"$in": &ids}},
                // A commit is published only once applied (by its writer, or by the outbox before it went out).
                doc! {"$set": {"published": true, "applied": true}, "$unset": {"acked": "", "snapshot": "", "readModel": ""}},
            )
            .await
            .map_err(store_err)?;
        self.journal.applied.remove(&ids);
        Ok(())
    }
}

/// The part of a commit document a repair needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingApply {
    #[serde(rename = "_id")]
    id: String,
    position: u64,
    stream: String,
    last_seq: u64,
    #[serde(default)]
    snapshot: Option<Snapshot>,
    #[serde(default)]
    read_model: Option<StoredReadModel>,
    active: bool,
}

/// The part of a commit document the outbox needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Unpublished {
    #[serde(rename = "_id")]
    id: String,
    position: u64,
    last_position: u64,
    #[serde(default)]
    events: Vec<EventRecord>,
    #[serde(default)]
    acked: Vec<u64>,
    /// Absent from the acknowledgement's projection; read only where the outbox publishes.
    #[serde(default = "applied_unless_read")]
    applied: bool,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    last_seq: u64,
    #[serde(default)]
    snapshot: Option<Snapshot>,
    #[serde(default)]
    read_model: Option<StoredReadModel>,
    #[serde(default)]
    active: bool,
}

fn applied_unless_read() -> bool {
    true
}

#[async_trait]
impl EventStore for MongoStore {
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.group_commit(commit).await
    }

    async fn history(&self, stream: &str) -> Result<History, StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Committed {
            first_seq: u64,
            #[serde(default)]
            last_position: u64,
            #[serde(default)]
            events: Vec<EventRecord>,
            #[serde(default)]
            snapshot: Option<Snapshot>,
        }
        let projection = doc! {"firstSeq": 1, "lastPosition": 1, "events": 1, "snapshot": 1};
        // The latest commits first: a stream without any is new, and then there is no snapshot to read either.
        let cursor = self
            .coll(COMMITS)
            .find(doc! {"stream": stream})
            .sort(doc! {"firstSeq": -1})
            .limit(RECENT_COMMITS)
            .projection(projection.clone())
            .await
            .map_err(store_err)?;
        let mut commits: Vec<Committed> = collect(cursor).await?;
        if commits.is_empty() {
            self.journal.heads.set(stream, super::group::Head { seq: 0, active: None, position: 0 });
            return Ok(History::default());
        }
        let position = commits[0].last_position;
        commits.reverse();
        let stored = self.coll(SNAPSHOTS).find_one(doc! {"_id": stream}).await.map_err(store_err)?;
        let mut snapshot: Option<Snapshot> = stored.map(from_doc).transpose()?;
        let from = snapshot.as_ref().map_or(0, |s| s.seq);
        if commits.len() as i64 == RECENT_COMMITS && commits[0].first_seq > from + 1 {
            // More commits since the snapshot than the first read brought: all of them, from the snapshot on.
            let cursor = self
                .coll(COMMITS)
                .find(doc! {"stream": stream, "lastSeq": {"$gt": to_i64(from)?}})
                .sort(doc! {"firstSeq": 1})
                .projection(projection)
                .await
                .map_err(store_err)?;
            commits = collect(cursor).await?;
        }
        let mut events = Vec::new();
        for commit in commits {
            events.extend(commit.events);
            // A snapshot whose own write a crash lost is still in its (unapplied) commit document.
            if let Some(s) = commit.snapshot {
                if snapshot.as_ref().is_none_or(|current| s.seq > current.seq) {
                    snapshot = Some(s);
                }
            }
        }
        let newest = events.last().map_or(0, |e| e.seq);
        let from = snapshot.as_ref().map_or(0, |s| s.seq);
        events.retain(|e| e.seq > from);
        // The head the stream's next commit will expect, known without reading it again; unless a snapshot newer
        // than the commits read was written in between (another writer), when the head is read at the next commit.
        let seq = events.last().map_or(from, |e| e.seq);
        if from <= newest {
            self.journal.heads.set(stream, super::group::Head { seq, active: None, position });
        } else {
            self.journal.heads.forget(stream);
        }
        Ok(History { snapshot, events })
    }

    async fn outbox_pending(&self, limit: usize, scope: &OutboxScope) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut cursor = self
            .coll(COMMITS)
            .find(doc! {"published": false})
            .sort(doc! {"position": 1})
            .projection(doc! {
                "position": 1, "lastPosition": 1, "events": 1, "acked": 1,
                "applied": 1, "stream": 1, "lastSeq": 1, "snapshot": 1, "readModel": 1, "active": 1,
            })
            .batch_size(limit.min(256) as u32)
            .await
            .map_err(store_err)?;
        let mut finished = Vec::new();
        let mut unapplied = Vec::new();
        let mut handed = Vec::new();
        while out.len() < limit && cursor.advance().await.map_err(store_err)? {
            let document = cursor.deserialize_current().map_err(store_err)?;
            let mut c: Unpublished = from_doc(super::lenient_bools(document, &["applied", "active"]))?;
            if !scope.covers(&c.stream) {
                continue;
            }
            if !c.applied && !self.journal.applied.contains(&c.id) {
                // A commit whose writer was cut off (an actor killed between the commit document and its read
                // model) is finished before its events go out, as the embedded store's single transaction
                // guarantees: a subscriber reacting to an event (a cache invalidation) must find the read model
                // that event produced. Racing a writer still finishing it is harmless (idempotent, version-guarded).
                unapplied.push(Derived {
                    commit_id: Some(c.id.clone()),
                    stream: std::mem::take(&mut c.stream),
                    seq: c.last_seq,
                    snapshot: c.snapshot.take(),
                    read_model: c.read_model.take(),
                    active: c.active,
                    replace_equal: false,
                });
            }
            let acked: BTreeSet<u64> = c.acked.iter().copied().collect();
            handed.push(super::group::Handed {
                id: c.id.clone(),
                position: c.position,
                last_position: c.last_position,
                acked: std::mem::take(&mut c.acked),
            });
            if (c.position..=c.last_position).all(|p| acked.contains(&p)) {
                // Acknowledged in parts by two relays at once: nothing left to publish.
                finished.push(c.id);
                continue;
            }
            let entries = (c.position..).zip(c.events).filter(|(p, _)| !acked.contains(p));
            for (position, event) in entries.take(limit - out.len()) {
                out.push(OutboxEntry { position, event });
            }
        }
        drop(cursor);
        self.journal.handed.remember(handed);
        for derived in unapplied {
            self.finish(derived).await?;
        }
        self.mark_published(finished).await?;
        Ok(out)
    }

    async fn outbox_ack(&self, positions: &[u64]) -> Result<(), StoreError> {
        let positions: BTreeSet<u64> = positions.iter().copied().collect();
        let (Some(&min), Some(&max)) = (positions.first(), positions.last()) else { return Ok(()) };
        // The commits the outbox just handed out hold these positions: no need to look them up.
        let commits = match self.journal.handed.covering(&positions) {
            Some(commits) => commits,
            None => self.commits_holding(min, max).await?,
        };
        let mut complete = Vec::new();
        for c in commits {
            let acked: Vec<u64> = positions.range(c.position..=c.last_position).copied().collect();
            if acked.is_empty() {
                continue;
            }
            let covered = (c.position..=c.last_position).all(|p| positions.contains(&p) || c.acked.contains(&p));
            if covered {
                complete.push(c.id);
                continue;
            }
            let acked: Vec<i64> = acked.into_iter().map(to_i64).collect::<Result<_, _>>()?;
            let after = self
                .coll(COMMITS)
                .find_one_and_update(doc! {"_id": &c.id}, doc! {"$addToSet": {"acked": {"$each": acked}}})
                .return_document(mongodb::options::ReturnDocument::After)
                .projection(doc! {"position": 1, "lastPosition": 1, "acked": 1})
                .await
                .map_err(store_err)?;
            if let Some(after) = after {
                let after: Unpublished = from_doc(after)?;
                if (after.position..=after.last_position).all(|p| after.acked.contains(&p)) {
                    complete.push(after.id);
                }
            }
        }
        self.mark_published(complete).await
    }

    async fn active_streams(&self) -> Result<Vec<String>, StoreError> {
        // The resumer asks every few seconds: the moment to finish commits a crash interrupted, whose markers
        // may be missing.
        self.repair().await?;
        #[derive(Deserialize)]
        struct Marker {
            #[serde(rename = "_id")]
            stream: String,
        }
        let cursor = self
            .coll(ACTIVE)
            .find(doc! {"active": true})
            .sort(doc! {"_id": 1})
            .projection(doc! {"_id": 1})
            .await
            .map_err(store_err)?;
        Ok(collect::<Marker>(cursor).await?.into_iter().map(|m| m.stream).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! {"ping": 1}).await.map(drop).map_err(store_err)
    }
}
