//! Cluster mode: several identical nodes share one MongoDB, Kafka and Redis, and each entity is hosted by exactly one
//! node at a time. Nothing here decides membership: Kafka's consumer-group protocol does.
//!
//! - An entity's shard is the partition its routing key hashes to ([`shard::partition`], Kafka's default
//!   partitioner) on the commands topic `{prefix}.commands`: its id, or for a payment its order's id
//!   ([`shard::routing_key`]). Every node joins the group `{group_id}.commands` on that topic, and
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
//!   stale actor stops and its caller gets a retryable error. A node whose command reader has not run for the
//!   group's session timeout (a paused or starved process) hosts nothing from then on, so it does not even answer
//!   from stale state: it leaves the group and joins again, and hosts what the new assignment gives it. It takes a
//!   request only by committing its offset, which the group refuses to a member it has dropped.
//! - A node commits each request's offset as it takes it, before running it: the next host of the partition starts
//!   right after the last request taken, so a request sent during a handover is served by the new host, and none
//!   runs twice. A request whose deadline passed while no node hosted its shard is dropped (its caller has answered
//!   503 by then).
//! - Trust: the nodes sign each request and answer with `cluster.secret` (HMAC-SHA256 over every field, see
//!   [`node`]); a host runs only requests a node signed, with a deadline no further ahead than a node sets one and
//!   a reply topic that is the sender's own, and a caller takes only answers a node signed for it. Anything else is
//!   dropped and counted (`commercex_cluster_refused_total`). The same secret signs the domain events on the Kafka
//!   bus ([`crate::bridge::signing`]).

pub mod node;
pub mod shard;

use std::collections::BTreeSet;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

pub use node::{ClusterNode, ClusterStatus};

/// The shards this node hosts, for as long as its membership is known to be alive.
pub struct Shards {
    partitions: i32,
    owned: RwLock<BTreeSet<i32>>,
    /// When the group membership was last seen alive (the command reader's last turn), and for how long that
    /// counts: a node frozen past it (paused, starved) hosts nothing until its reader runs again and learns
    /// whether it still owns its partitions, even before the group tells it that it lost them.
    lease: Mutex<(Instant, Duration)>,
}

impl Shards {
    pub fn new(partitions: i32, lease: Duration) -> Self {
        Self { partitions, owned: RwLock::new(BTreeSet::new()), lease: Mutex::new((Instant::now(), lease)) }
    }

    /// The shard of an entity id (placed by its [`shard::routing_key`]).
    pub fn of(&self, id: &str) -> i32 {
        shard::partition(shard::routing_key(id).as_bytes(), self.partitions)
    }

    pub fn hosts(&self, id: &str) -> bool {
        let (renewed, lease) = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        renewed.elapsed() < lease && self.owned.read().unwrap_or_else(|p| p.into_inner()).contains(&self.of(id))
    }

    /// The membership is alive now (an assignment arrived).
    fn renew(&self) {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).0 = Instant::now();
    }

    /// Extends the lease if it has not lapsed; false if it has, and then only a new assignment renews it.
    fn renew_if_live(&self) -> bool {
        let mut lease = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if lease.0.elapsed() >= lease.1 {
            return false;
        }
        lease.0 = Instant::now();
        true
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
        let shards = Shards::new(6, Duration::from_secs(60));
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

    #[test]
    fn a_node_whose_membership_lapsed_hosts_nothing() {
        let shards = Shards::new(2, Duration::from_millis(50));
        shards.assign(&[0, 1]);
        assert!(shards.hosts("cart-1"));
        assert!(shards.renew_if_live());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!shards.hosts("cart-1"), "a frozen node must not act on shards it may have lost");
        assert!(!shards.renew_if_live(), "only a new assignment renews a lapsed lease");
        shards.renew();
        assert!(shards.hosts("cart-1"));
    }
}
