//! Publishes committed events from the store's outbox to the bus, oldest first, acknowledging them only after the
//! bus accepted them. Woken by every commit; also polls, so events left by a crash are published after restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::EventBus;
use crate::store::EventStore;

const BATCH: usize = 256;

pub struct OutboxRelay {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    committed: Arc<Notify>,
}

impl OutboxRelay {
    pub fn new(store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>, committed: Arc<Notify>) -> Self {
        Self { store, bus, committed }
    }

    /// Runs until `stop` flips to true, then publishes whatever is still pending and returns.
    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.flush().await {
                    Ok(_) => backoff = Duration::from_millis(100),
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay failed; retrying");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                tokio::select! {
                    _ = self.committed.notified() => {}
                    _ = tokio::time::sleep(backoff.max(Duration::from_secs(1))) => {}
                    _ = stop.changed() => break,
                }
            }
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "events left in the outbox at shutdown; they are published on next start");
            }
        })
    }

    /// Publishes every pending event; returns how many were published.
    pub async fn flush(&self) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let mut published = 0;
        loop {
            let batch = self.store.outbox_pending(BATCH).await?;
            if batch.is_empty() {
                return Ok(published);
            }
            let mut done = Vec::with_capacity(batch.len());
            for entry in &batch {
                if let Err(e) = self.bus.publish(&entry.event).await {
                    self.store.outbox_ack(&done).await?;
                    return Err(Box::new(e));
                }
                done.push(entry.position);
            }
            self.store.outbox_ack(&done).await?;
            published += done.len();
        }
    }
}
