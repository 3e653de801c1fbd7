//! The event bus: every persisted domain event is published exactly as journaled, with its unique id so consumers
//! drop duplicates (delivery is at-least-once). The default bus is in-process; a Kafka bridge plugs in behind the
//! same [`EventBus`] trait. Events reach the bus only through the [`outbox::OutboxRelay`], which reads them from the
//! store after they are committed, so an event is never published for a write that did not happen, nor lost for
//! one that did.

pub mod outbox;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::store::EventRecord;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, event: &EventRecord) -> Result<(), BusError>;
    /// A live feed of events published from now on.
    fn subscribe(&self) -> broadcast::Receiver<EventRecord>;
    /// Whether the bus can take events now (for readiness); an in-process bus always can.
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
    /// `in_process` or `kafka`, as configured.
    fn backend(&self) -> &'static str;
}

/// A local consumer fed by the outbox relay before an event is acknowledged: at-least-once, so every sink must
/// recognise an event it has already handled (by its id).
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn handle(&self, event: &EventRecord) -> Result<(), String>;
}

/// In-process bus: a broadcast channel. Slow subscribers skip ahead (and are told how many events they missed).
pub struct InProcessBus {
    sender: broadcast::Sender<EventRecord>,
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        Self { sender: broadcast::channel(capacity).0 }
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &EventRecord) -> Result<(), BusError> {
        // No subscriber is not an error: the event is still durable in the journal.
        let _ = self.sender.send(event.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.sender.subscribe()
    }

    fn backend(&self) -> &'static str {
        "in_process"
    }
}
