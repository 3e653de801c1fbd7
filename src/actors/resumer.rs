//! Keeps active entities running: at start-up and then periodically, every stream the store marks active (a saga
//! in progress, reservations to expire) is started if it is not running. This is how work resumes after a node
//! restart or after an actor was killed past its restart limit. In a cluster each node resumes the active entities
//! of the shards it hosts, at once when it is assigned new ones.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{Entity, EntityRouter};
use crate::store::EventStore;

#[async_trait]
pub trait Wake: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Starts the entity if it is not running.
    async fn wake(&self, id: &str);
}

#[async_trait]
impl<A: Entity> Wake for EntityRouter<A> {
    fn kind(&self) -> &'static str {
        A::KIND
    }

    async fn wake(&self, id: &str) {
        // In a cluster each node resumes only the entities it hosts.
        if self.hosts(id) && !self.is_local(id) {
            if let Err(error) = self.get(id).await {
                tracing::warn!(kind = A::KIND, id, %error, "could not resume entity");
            }
        }
    }
}

pub struct Resumer {
    store: Arc<dyn EventStore>,
    kinds: Vec<Arc<dyn Wake>>,
}

impl Resumer {
    pub fn new(store: Arc<dyn EventStore>, kinds: Vec<Arc<dyn Wake>>) -> Self {
        Self { store, kinds }
    }

    /// Starts every active entity that is not running; returns how many streams were active.
    pub async fn sweep(&self) -> usize {
        let streams = match self.store.active_streams().await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot list active entities");
                return 0;
            }
        };
        for stream in &streams {
            let Some((kind, id)) = stream.split_once(':') else { continue };
            if let Some(router) = self.kinds.iter().find(|k| k.kind() == kind) {
                router.wake(id).await;
            }
        }
        streams.len()
    }

    /// Sweeps every `every`, and at once whenever `wake` is notified (a cluster node was assigned shards).
    pub fn spawn(self, every: Duration, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let active = self.sweep().await;
                tracing::debug!(active, "resumer sweep");
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = wake.notified() => {}
                    _ = stop.changed() => break,
                }
            }
        })
    }
}
