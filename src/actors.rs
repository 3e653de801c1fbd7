//! The actor runtime: every product and cart is an [`entity::EntityActor`], supervised per kind by an
//! [`supervisor::EntitySupervisor`] and reached only through an [`router::EntityRouter`].
//!
//! The router is the one place that turns an entity id into a mailbox. Today every entity is hosted on this node;
//! when entities are sharded over nodes (shard = Kafka partition of the id), "local or remote" is decided there.

pub mod entity;
pub mod router;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::cart::Cart;
use crate::domain::product::ProductState;
use crate::domain::Aggregate;
use crate::store::{EventStore, ReadModel};

pub use entity::{EntityError, EntityMsg};
pub use router::EntityRouter;

/// An aggregate the runtime can host: says which read model (if any) its state projects to.
pub trait Entity: Aggregate {
    fn read_model(&self) -> Option<ReadModel> {
        None
    }
}

impl Entity for ProductState {
    fn read_model(&self) -> Option<ReadModel> {
        self.0.clone().map(ReadModel::Product)
    }
}

impl Entity for Cart {}

/// What every entity actor needs: where to persist, whom to wake after a commit, and its timing settings.
pub struct EntityContext {
    pub store: Arc<dyn EventStore>,
    /// Woken after each commit so the outbox relay publishes promptly.
    pub committed: Arc<Notify>,
    pub snapshot_every: u64,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Failures of one entity tolerated within `window` before the supervisor stops restarting it eagerly (it
    /// still starts again on its next message).
    pub max_restarts: u32,
    pub window: Duration,
}
