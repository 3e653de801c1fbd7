//! The actor runtime: every product, cart, order, payment and coupon is an [`entity::EntityActor`], supervised per
//! kind by an [`supervisor::EntitySupervisor`] and reached only through an [`router::EntityRouter`].
//!
//! The router is the one place that turns an entity id into a mailbox. In cluster mode it also decides "here or on
//! another node" through its [`placement::Placement`] (shard = Kafka partition of the id), and forwards the call.
//!
//! An entity whose state calls for a side effect (the next saga step) runs it through its kind's [`Effects`]; the
//! effect's result comes back as a command and is persisted before the next step. After a crash, the recovered state
//! calls for the same effect again, which is why every effect must be idempotent.

pub mod entity;
pub mod live;
pub mod placement;
pub mod resumer;
pub mod router;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::domain::cart::Cart;
use crate::domain::product::{ProductEffect, ProductState};
use crate::domain::{Aggregate, Timestamp};
use crate::faults::FaultPoints;
use crate::store::{EventStore, ReadModel};

pub use entity::{EntityError, EntityMsg};
pub use router::EntityRouter;

/// An aggregate the runtime can host.
pub trait Entity: Aggregate {
    /// Side effects the entity's state can call for; `Infallible` for entities that never need any.
    type Effect: Clone + std::fmt::Debug + Send + Sync + 'static;

    /// The read-model document this state projects to, written in the same commit.
    fn read_model(&self) -> Option<ReadModel> {
        None
    }

    /// The side effect to run next, if any. Must be idempotent: it runs again after a crash.
    fn next_effect(&self) -> Option<Self::Effect> {
        None
    }

    /// A command the passing of time makes due (such as expiring reservations), checked when [`Self::next_due`]
    /// says its time has come.
    fn due(&self, _now: Timestamp) -> Option<Self::Command> {
        None
    }

    /// The earliest time at which [`Self::due`] may return a command; `None`: nothing is time-bound. The actor
    /// sets a timer for it, so an entity with nothing due costs no wake-ups.
    fn next_due(&self) -> Option<Timestamp> {
        None
    }

    /// Whether the entity holds time-bound state and must stay running (and be restarted) until it is resolved.
    fn keep_alive(&self) -> bool {
        false
    }

    /// Called once a commit is durable, on the state after it, with the types of the events it wrote: where a kind
    /// reports what happened (metrics). It must not fail or wait.
    fn committed(&self, _event_types: &[String]) {}
}

/// Runs the side effects of one kind of entity, returning the command that records each effect's outcome.
#[async_trait]
pub trait Effects<A: Entity>: Send + Sync + 'static {
    async fn run(&self, id: &str, effect: A::Effect) -> Result<A::Command, String>;
}

/// For entities that never call for effects.
pub struct NoEffects;

#[async_trait]
impl<A: Entity<Effect = std::convert::Infallible>> Effects<A> for NoEffects {
    async fn run(&self, _id: &str, effect: A::Effect) -> Result<A::Command, String> {
        match effect {}
    }
}

impl Entity for ProductState {
    type Effect = ProductEffect;

    fn read_model(&self) -> Option<ReadModel> {
        self.product.clone().map(ReadModel::Product)
    }

    fn next_effect(&self) -> Option<ProductEffect> {
        ProductState::next_effect(self)
    }

    fn due(&self, now: Timestamp) -> Option<Self::Command> {
        ProductState::due(self, now)
    }

    fn next_due(&self) -> Option<Timestamp> {
        ProductState::next_due(self)
    }

    fn keep_alive(&self) -> bool {
        !self.reservations.is_empty()
    }
}

impl Entity for Cart {
    type Effect = std::convert::Infallible;
}

/// Told about every commit, after it is durable and before it is acknowledged.
#[async_trait]
pub trait CommitObserver: Send + Sync {
    async fn committed(&self, stream: &str);
}

/// What every entity actor needs: where to persist, whom to tell after a commit, and its timing settings.
pub struct EntityContext {
    pub store: Arc<dyn EventStore>,
    /// Woken after each commit so the outbox relay publishes promptly.
    pub committed: Arc<Notify>,
    pub observers: Vec<Arc<dyn CommitObserver>>,
    pub snapshot_every: u64,
    pub idle_timeout: Duration,
    pub clock: Clock,
    pub faults: Arc<FaultPoints>,
    /// The chaos switch (off unless configured).
    pub chaos: Arc<crate::faults::Chaos>,
    /// The cap on live entity actors, shared by every kind on this node.
    pub live_limit: Arc<live::LiveLimit>,
    /// Cluster mode: which entities this node hosts and how to reach the others; `None`: all of them, here.
    pub placement: Option<Arc<dyn placement::Placement>>,
}

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Abnormal exits (crash or kill) of one entity tolerated within `window` before the supervisor stops
    /// restarting it eagerly (it still starts again on its next message, or when the resumer finds it active).
    pub max_restarts: u32,
    pub window: Duration,
}
