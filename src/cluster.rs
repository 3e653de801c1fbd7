//! Cluster mode: several identical nodes share one MongoDB, Kafka and Redis, and each entity is hosted by exactly one
//! node at a time. Nothing here decides membership: Kafka's consumer-group protocol does.
//!
//! - An entity's shard is the partition its id hashes to ([`shard::partition`], Kafka's default partitioner) on
//!   the commands topic `{prefix}.commands`. Every node joins the group `{group_id}.commands` on that topic, and
//!   the partitions the group assigns to a node are the shards it hosts ([`Shards`]).
//! - The entity router asks [`Shards`] whether it hosts an entity; if not, the call is sent as a request on the
//!   commands topic, keyed and partitioned by the entity id, so the hosting node receives it. That node runs it
//!   through its own router and answers on the caller's reply topic `{prefix}.replies.{node_id}`. A caller that
//!   gets no answer within `cluster.request_timeout_ms` answers 503 (retryable), never a silent loss.
//! - On assignment a node hosts the shard: the resumer is woken and resumes the shard's active entities (sagas in
//!   progress, reservations to expire). On revocation it stops hosting the shard at once (new calls are forwarded),
//!   drains and stops the shard's live entities, and only then lets the partition go.
//! - Fencing: a node that lost a shard without noticing yet cannot commit, because the new host's commits advance
//!   the stream and the store refuses the stale append (the journal's unique `(stream, firstSeq)` index); the
//!   stale actor stops and its caller gets a retryable error.
//! - A node commits each request's offset as it takes it, before running it: the next host of the partition starts
//!   right after the last request taken, so a request sent during a handover is served by the new host, and none
//!   runs twice. A request whose deadline passed while no node hosted its shard is dropped (its caller has answered
//!   503 by then).

pub mod node;
pub mod shard;

use std::collections::BTreeSet;
use std::sync::RwLock;

pub use node::{ClusterNode, ClusterStatus};

/// The shards this node hosts.
pub struct Shards {
    partitions: i32,
    owned: RwLock<BTreeSet<i32>>,
}

impl Shards {
    pub fn new(partitions: i32) -> Self {
        Self { partitions, owned: RwLock::new(BTreeSet::new()) }
    }

    /// The shard of an entity id.
    pub fn of(&self, id: &str) -> i32 {
        shard::partition(id.as_bytes(), self.partitions)
    }

    pub fn hosts(&self, id: &str) -> bool {
        self.owned.read().unwrap_or_else(|p| p.into_inner()).contains(&self.of(id))
    }

    pub fn owned(&self) -> Vec<i32> {
        self.owned.read().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    fn assign(&self, partitions: &[i32]) {
        self.owned.write().unwrap_or_else(|p| p.into_inner()).extend(partitions);
    }

    fn revoke(&self, partitions: &[i32]) {
        let mut owned = self.owned.write().unwrap_or_else(|p| p.into_inner());
        for p in partitions {
            owned.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_hosts_exactly_the_entities_of_its_partitions() {
        let shards = Shards::new(6);
        let ids: Vec<String> = (0..600).map(|i| format!("ord_{i}")).collect();
        assert!(ids.iter().all(|id| !shards.hosts(id)), "nothing before an assignment");
        shards.assign(&[1, 4]);
        for id in &ids {
            assert_eq!(shards.hosts(id), [1, 4].contains(&shards.of(id)), "{id}");
        }
        shards.revoke(&[4]);
        assert!(ids.iter().filter(|id| shards.hosts(id)).all(|id| shards.of(id) == 1));
        assert_eq!(shards.owned(), [1]);
    }
}
