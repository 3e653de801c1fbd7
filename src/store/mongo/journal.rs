//! The event journal, snapshots, the outbox and the active-stream markers in MongoDB (see the module above for the
//! order of the writes and how a crash between them is repaired).

use std::collections::BTreeSet;

use async_trait::async_trait;
use mongodb::bson::{doc, Document};
use mongodb::IndexModel;
use serde::{Deserialize, Serialize};

use super::{
    catalog, collect, from_doc, index, is_duplicate, put_if_newer, sales, store_err, to_doc, to_i64, unique,
    MongoStore, ACTIVE, COMMITS, SNAPSHOTS, STREAM_SEQ,
};
use crate::domain::coupon::Coupon;
use crate::domain::order::Order;
use crate::domain::payment::Payment;
use crate::domain::product::Product;
use crate::store::{Commit, EventRecord, EventStore, History, OutboxEntry, ReadModel, Snapshot, StoreError};

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
enum StoredReadModel {
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
struct CommitDoc {
    /// `{stream}/{firstSeq}`, the id of its first event.
    #[serde(rename = "_id")]
    id: String,
    stream: String,
    first_seq: u64,
    last_seq: u64,
    /// Outbox positions of the first and last events; the others follow one by one.
    position: u64,
    last_position: u64,
    events: Vec<EventRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read_model: Option<StoredReadModel>,
    active: bool,
    /// Whether the derived documents are written.
    applied: bool,
    /// Whether every event was acknowledged by the relay.
    published: bool,
    /// Positions acknowledged so far, while only some are. Written empty: some servers `$addToSet` only to an
    /// existing array.
    #[serde(default)]
    acked: Vec<u64>,
}

/// What a commit derives, written after its commit document (and again by a repair).
struct Derived {
    /// The commit document, to mark applied afterwards (none for a commit without events).
    commit_id: Option<String>,
    stream: String,
    /// The stream sequence the commit leaves the stream at.
    seq: u64,
    snapshot: Option<Snapshot>,
    read_model: Option<StoredReadModel>,
    active: bool,
    /// A commit without events has no commit document, so nothing newer than its own sequence can exist yet;
    /// it replaces what was derived at that sequence, as the embedded store does.
    replace_equal: bool,
}

impl MongoStore {
    /// The sequence the stream is at: the last event of its last commit.
    async fn head(&self, stream: &str) -> Result<u64, StoreError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Head {
            last_seq: u64,
        }
        let last = self
            .coll(COMMITS)
            .find_one(doc! {"stream": stream})
            .sort(doc! {"firstSeq": -1})
            .projection(doc! {"lastSeq": 1})
            .await
            .map_err(store_err)?;
        Ok(last.map(from_doc::<Head>).transpose()?.map_or(0, |h| h.last_seq))
    }

    async fn apply(&self, d: Derived) -> Result<(), StoreError> {
        let read_model = async {
            let Some(model) = &d.read_model else { return Ok(()) };
            let (collection, mut document) = match model {
                StoredReadModel::Product(p) => (super::PRODUCTS, catalog::product_document(p)?),
                StoredReadModel::Order(o) => (super::ORDERS, sales::order_document(o)?),
                StoredReadModel::Payment(p) => (super::PAYMENTS, sales::payment_document(p)?),
                StoredReadModel::Coupon(c) => (super::COUPONS, sales::coupon_document(c)?),
            };
            document.insert(STREAM_SEQ, to_i64(d.seq)?);
            put_if_newer(&self.coll(collection), document, STREAM_SEQ, d.seq, d.replace_equal).await
        };
        let snapshot = async {
            let Some(s) = &d.snapshot else { return Ok(()) };
            let mut document = to_doc(s)?;
            document.insert("_id", &d.stream);
            put_if_newer(&self.coll(SNAPSHOTS), document, "seq", s.seq, d.replace_equal).await
        };
        let active = async {
            let document = doc! {"_id": &d.stream, STREAM_SEQ: to_i64(d.seq)?, "active": d.active};
            put_if_newer(&self.coll(ACTIVE), document, STREAM_SEQ, d.seq, d.replace_equal).await
        };
        tokio::try_join!(read_model, snapshot, active).map(drop)
    }

    /// Writes what a commit derives, then marks its commit document applied and drops the copies it held.
    async fn finish(&self, derived: Derived) -> Result<(), StoreError> {
        let commit_id = derived.commit_id.clone();
        self.apply(derived).await?;
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
        for _ in 0..REPAIR_BATCHES {
            let cursor = self
                .coll(COMMITS)
                .find(doc! {"applied": false})
                .sort(doc! {"position": 1})
                .limit(REPAIR_BATCH)
                .projection(doc! {"events": 0})
                .await
                .map_err(store_err)?;
            let batch: Vec<Document> = collect(cursor).await?;
            let full = batch.len() as i64 == REPAIR_BATCH;
            for document in batch {
                let c: PendingApply = from_doc(document)?;
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
        let Commit { stream, expected_seq, events, snapshot, read_model, active } = commit;
        let mut seq = expected_seq;
        for event in &events {
            if event.seq != seq + 1 {
                return Err(StoreError::Corrupt(format!("event {} does not follow sequence {seq}", event.id)));
            }
            seq = event.seq;
        }
        let n = events.len() as u64;
        // The head check and the outbox positions do not depend on each other, so they are asked for together: one
        // round trip of latency instead of two. Positions taken for a commit that is then refused leave a gap,
        // which the outbox's order does not mind.
        let (actual, last_position) = if n == 0 {
            (self.head(&stream).await?, 0)
        } else {
            tokio::try_join!(self.head(&stream), self.take_numbers("outbox", n))?
        };
        if actual != expected_seq {
            return Err(StoreError::Conflict { stream, expected: expected_seq, actual });
        }
        let read_model = read_model.map(StoredReadModel::from);
        if events.is_empty() {
            return Ok(Derived { commit_id: None, stream, seq, snapshot, read_model, active, replace_equal: true });
        }
        let id = format!("{stream}/{}", expected_seq + 1);
        let document = CommitDoc {
            id: id.clone(),
            stream: stream.clone(),
            first_seq: expected_seq + 1,
            last_seq: seq,
            position: last_position + 1 - n,
            last_position,
            events,
            snapshot: snapshot.clone(),
            read_model: read_model.clone(),
            active,
            applied: false,
            published: false,
            acked: Vec::new(),
        };
        match self.coll(COMMITS).insert_one(to_doc(&document)?).await {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => {
                let actual = self.head(&stream).await?;
                return Err(StoreError::Conflict { stream, expected: expected_seq, actual });
            }
            Err(e) => return Err(store_err(e)),
        }
        Ok(Derived { commit_id: Some(id), stream, seq, snapshot, read_model, active, replace_equal: false })
    }

    /// Marks published the commits whose events are all acknowledged.
    async fn mark_published(&self, ids: Vec<String>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.coll(COMMITS)
            .update_many(doc! {"_id": {"$in": ids}}, doc! {"$set": {"published": true}, "$unset": {"acked": ""}})
            .await
            .map(drop)
            .map_err(store_err)
    }
}

/// The part of a commit document a repair needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PendingApply {
    #[serde(rename = "_id")]
    id: String,
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
        let derived = self.insert_commit(commit).await?;
        self.finish(derived).await
    }

    async fn history(&self, stream: &str) -> Result<History, StoreError> {
        #[derive(Deserialize)]
        struct Committed {
            #[serde(default)]
            events: Vec<EventRecord>,
            #[serde(default)]
            snapshot: Option<Snapshot>,
        }
        let stored = self.coll(SNAPSHOTS).find_one(doc! {"_id": stream}).await.map_err(store_err)?;
        let mut snapshot: Option<Snapshot> = stored.map(from_doc).transpose()?;
        let from = snapshot.as_ref().map_or(0, |s| s.seq);
        let cursor = self
            .coll(COMMITS)
            .find(doc! {"stream": stream, "lastSeq": {"$gt": to_i64(from)?}})
            .sort(doc! {"firstSeq": 1})
            .projection(doc! {"events": 1, "snapshot": 1})
            .await
            .map_err(store_err)?;
        let mut events = Vec::new();
        for commit in collect::<Committed>(cursor).await? {
            events.extend(commit.events);
            // A snapshot whose own write a crash lost is still in its (unapplied) commit document.
            if let Some(s) = commit.snapshot {
                if snapshot.as_ref().is_none_or(|current| s.seq > current.seq) {
                    snapshot = Some(s);
                }
            }
        }
        let from = snapshot.as_ref().map_or(0, |s| s.seq);
        events.retain(|e| e.seq > from);
        Ok(History { snapshot, events })
    }

    async fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
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
        while out.len() < limit && cursor.advance().await.map_err(store_err)? {
            let document = cursor.deserialize_current().map_err(store_err)?;
            let mut c: Unpublished = from_doc(super::lenient_bools(document, &["applied", "active"]))?;
            if !c.applied {
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
            let acked: BTreeSet<u64> = c.acked.into_iter().collect();
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
        for derived in unapplied {
            self.finish(derived).await?;
        }
        self.mark_published(finished).await?;
        Ok(out)
    }

    async fn outbox_ack(&self, positions: &[u64]) -> Result<(), StoreError> {
        let positions: BTreeSet<u64> = positions.iter().copied().collect();
        let (Some(&min), Some(&max)) = (positions.first(), positions.last()) else { return Ok(()) };
        let cursor = self
            .coll(COMMITS)
            .find(doc! {"published": false, "position": {"$lte": to_i64(max)?}, "lastPosition": {"$gte": to_i64(min)?}})
            .projection(doc! {"position": 1, "lastPosition": 1, "acked": 1})
            .await
            .map_err(store_err)?;
        let mut complete = Vec::new();
        for c in collect::<Unpublished>(cursor).await? {
            let acked: Vec<u64> = positions.range(c.position..=c.last_position).copied().collect();
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
