//! The bus as the chaos switch sees it: a publish may fail on purpose, and the outbox publishes it again.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{BusError, EventBus, Sinks};
use crate::faults::Chaos;
use crate::store::EventRecord;

pub struct ChaosBus {
    inner: Arc<dyn EventBus>,
    chaos: Arc<Chaos>,
}

impl ChaosBus {
    pub fn new(inner: Arc<dyn EventBus>, chaos: Arc<Chaos>) -> Self {
        Self { inner, chaos }
    }
}

#[async_trait]
impl EventBus for ChaosBus {
    async fn publish(&self, event: &EventRecord) -> Result<(), BusError> {
        self.chaos.bus_call().map_err(BusError::Unavailable)?;
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, events: &[EventRecord]) -> Result<(), (usize, BusError)> {
        self.chaos.bus_call().map_err(|e| (0, BusError::Unavailable(e)))?;
        self.inner.publish_batch(events).await
    }

    fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.inner.subscribe()
    }

    async fn attach(&self, sinks: Sinks) -> Result<(), BusError> {
        self.inner.attach(sinks).await
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
