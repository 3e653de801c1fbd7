//! The live entity actors of this node and the cap on their number.
//!
//! Each kind keeps its running actors in a [`LiveMap`]; every entry carries its [`Usage`]: when the router last
//! sent it a message and whether the entity has work in flight (an effect running or due, a held reservation,
//! a caller waiting for it to settle). All kinds share one [`LiveLimit`]. When a supervisor is about to start an
//! actor and the node is at `actors.max_live_entities`, the least recently used idle entities of any kind are asked
//! to passivate, a batch at a time, as Akka's active-entity limit does. An entity asked to passivate checks again
//! inside its own mailbox order that it has nothing in flight, so an entity with work is never evicted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use ractor::ActorRef;

use super::entity::EntityMsg;
use super::Entity;

const IDLE: u8 = 0;
const BUSY: u8 = 1;
/// Asked to passivate; not a candidate again until it reports its state.
const PASSIVATING: u8 = 2;

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Shared between an entity actor, its supervisor and the router.
#[derive(Debug)]
pub struct Usage {
    last_used: AtomicU64,
    state: AtomicU8,
    /// The node's count of entities asked to passivate that have not stopped or declined yet.
    passivating: Arc<AtomicUsize>,
}

impl Usage {
    /// A caller is about to send the entity a message.
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    /// Set by the entity itself after every message it handles (not once it is draining).
    pub fn set_busy(&self, busy: bool) {
        if self.state.swap(if busy { BUSY } else { IDLE }, Ordering::Relaxed) == PASSIVATING {
            // Asked to passivate, it declined (work in flight) or was not reached yet.
            self.passivating.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn claim_for_passivation(&self) -> bool {
        let claimed = self.state.compare_exchange(IDLE, PASSIVATING, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if claimed {
            self.passivating.fetch_add(1, Ordering::Relaxed);
        }
        claimed
    }

    /// The actor is gone.
    fn release(&self) {
        if self.state.swap(IDLE, Ordering::Relaxed) == PASSIVATING {
            self.passivating.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

pub struct Slot<A: Entity> {
    pub actor: ActorRef<EntityMsg<A>>,
    pub usage: Arc<Usage>,
}

impl<A: Entity> Clone for Slot<A> {
    fn clone(&self) -> Self {
        Self { actor: self.actor.clone(), usage: self.usage.clone() }
    }
}

/// Live entity actors of one kind by id, shared with the router for its fast path.
pub struct LiveMap<A: Entity> {
    map: Arc<RwLock<HashMap<String, Slot<A>>>>,
    passivating: Arc<AtomicUsize>,
}

impl<A: Entity> Clone for LiveMap<A> {
    fn clone(&self) -> Self {
        Self { map: self.map.clone(), passivating: self.passivating.clone() }
    }
}

impl<A: Entity> LiveMap<A> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Slot<A>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Slot<A>> {
        self.read().get(id).cloned()
    }

    /// Usage for an actor about to start.
    pub fn new_usage(&self) -> Arc<Usage> {
        Arc::new(Usage {
            last_used: AtomicU64::new(now_ms()),
            state: AtomicU8::new(IDLE),
            passivating: self.passivating.clone(),
        })
    }

    pub fn insert(&self, id: String, slot: Slot<A>) {
        self.map.write().unwrap_or_else(|p| p.into_inner()).insert(id, slot);
    }

    /// Removes the entry if it still belongs to the actor with this id.
    pub fn remove_actor(&self, id: &str, actor: ractor::ActorId) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.get(id).is_some_and(|s| s.actor.get_id() == actor) {
            if let Some(slot) = map.remove(id) {
                slot.usage.release();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn actors(&self) -> Vec<ActorRef<EntityMsg<A>>> {
        self.read().values().map(|s| s.actor.clone()).collect()
    }

    /// The live entity at position `pick` modulo how many are live (in no particular order), if any.
    pub fn nth(&self, pick: usize) -> Option<(String, ActorRef<EntityMsg<A>>)> {
        let map = self.read();
        let n = map.len();
        (n > 0).then(|| map.iter().nth(pick % n).map(|(id, s)| (id.clone(), s.actor.clone()))).flatten()
    }

    /// The actors of the entities whose id satisfies `pick`.
    pub fn actors_where(&self, pick: impl Fn(&str) -> bool) -> Vec<ActorRef<EntityMsg<A>>> {
        self.read().iter().filter(|(id, _)| pick(id)).map(|(_, s)| s.actor.clone()).collect()
    }
}

/// One kind's live actors as the node-wide limit sees them.
trait Passivator: Send + Sync {
    fn live(&self) -> usize;
    /// Up to `n` idle entities, least recently used first, as `(last used, id)`.
    fn idle(&self, n: usize) -> Vec<(u64, String)>;
    fn passivate(&self, id: &str);
}

impl<A: Entity> Passivator for LiveMap<A> {
    fn live(&self) -> usize {
        self.len()
    }

    fn idle(&self, n: usize) -> Vec<(u64, String)> {
        let map = self.read();
        let mut idle: Vec<(u64, String)> = map
            .iter()
            .filter(|(_, s)| s.usage.state.load(Ordering::Relaxed) == IDLE)
            .map(|(id, s)| (s.usage.last_used.load(Ordering::Relaxed), id.clone()))
            .collect();
        if idle.len() > n {
            idle.select_nth_unstable(n);
            idle.truncate(n);
        }
        idle
    }

    fn passivate(&self, id: &str) {
        if let Some(slot) = self.get(id) {
            if slot.usage.claim_for_passivation() {
                let _ = slot.actor.cast(EntityMsg::Passivate);
            }
        }
    }
}

/// The node-wide cap on live entity actors, shared by every kind's supervisor.
pub struct LiveLimit {
    cap: usize,
    kinds: RwLock<Vec<Arc<dyn Passivator>>>,
    /// Entities asked to passivate that have not stopped (or declined) yet: already on their way out.
    passivating: Arc<AtomicUsize>,
    /// The last look found more entities with work in flight than the cap: even with every idle one let go, the
    /// node stays over it.
    full: std::sync::atomic::AtomicBool,
    /// When the node last looked, in milliseconds since `started`: while full, at most every 100 ms.
    looked_at: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl LiveLimit {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            kinds: RwLock::default(),
            passivating: Arc::default(),
            full: std::sync::atomic::AtomicBool::new(false),
            looked_at: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        })
    }

    /// The live map of one more kind, counted against the cap.
    pub fn register<A: Entity>(&self) -> LiveMap<A> {
        let live = LiveMap { map: Arc::default(), passivating: self.passivating.clone() };
        self.kinds.write().unwrap_or_else(|p| p.into_inner()).push(Arc::new(live.clone()));
        live
    }

    /// Live entity actors on this node, all kinds together.
    pub fn live(&self) -> usize {
        self.kinds.read().unwrap_or_else(|p| p.into_inner()).iter().map(|k| k.live()).sum()
    }

    /// Whether the entities with work in flight alone fill the cap: new work that would pin more of them (a
    /// checkout) is refused with 503 until some finish, rather than growing past the cap. Starts keep the answer
    /// current; while it is yes, asking looks again at most every 100 ms (entities finish their work without
    /// starting anything).
    pub fn is_full(&self) -> bool {
        if !self.full.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.looked_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 100
            && self.looked_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.make_room();
        }
        self.full.load(Ordering::Relaxed)
    }

    /// Called before starting an actor: at the cap, asks the least recently used idle entities to passivate, a
    /// batch at a time. Entities already asked do not count, so the scan is paid once per batch rather than once
    /// per start. When every entity has work in flight, nothing is asked, the start goes ahead (work already
    /// running must be able to finish) and the node counts as full ([`Self::is_full`]). Returns how many were asked.
    pub fn make_room(&self) -> usize {
        let kinds = self.kinds.read().unwrap_or_else(|p| p.into_inner()).clone();
        let live: usize = kinds.iter().map(|k| k.live()).sum();
        let staying = live.saturating_sub(self.passivating.load(Ordering::Relaxed));
        if staying < self.cap {
            self.full.store(false, Ordering::Relaxed);
            return 0;
        }
        let batch = staying + 1 - self.cap + self.cap / 32;
        let mut candidates: Vec<(u64, usize, String)> = kinds
            .iter()
            .enumerate()
            .flat_map(|(kind, k)| k.idle(batch).into_iter().map(move |(used, id)| (used, kind, id)))
            .collect();
        candidates.sort_unstable();
        candidates.truncate(batch);
        for (_, kind, id) in &candidates {
            kinds[*kind].passivate(id);
        }
        // Fewer idle entities than it takes to get under the cap: the rest all have work in flight.
        self.full.store(staying.saturating_sub(candidates.len()) >= self.cap, Ordering::Relaxed);
        if !candidates.is_empty() {
            tracing::debug!(live, cap = self.cap, asked = candidates.len(), "passivating least recently used entities");
        }
        candidates.len()
    }
}
