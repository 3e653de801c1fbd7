//! The in-process bus: one process, so "every process" and "once" are the same thing. `publish` hands the event to
//! every attached sink, then to the subscribers' broadcast. A failing sink fails `publish`, so the outbox relay keeps
//! the event and publishes it again later: that is this bus's redelivery, and it survives a crash, because the event
//! is still in the outbox. Subscribers, by contrast, get a live feed: one that falls behind by more than the channel's
//! capacity skips ahead (and is told how many events it missed).

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{deliver, BusError, EventBus, EventSink, Sinks};
use crate::store::EventRecord;

pub struct InProcessBus {
    sender: broadcast::Sender<EventRecord>,
    sinks: RwLock<Vec<Arc<dyn EventSink>>>,
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        Self { sender: broadcast::channel(capacity).0, sinks: RwLock::new(Vec::new()) }
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, event: &EventRecord) -> Result<(), BusError> {
        let sinks = self.sinks.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        deliver(&sinks, event)
            .await
            .map_err(|error| BusError::Unavailable(format!("a sink failed on {}: {error}", event.id)))?;
        // No subscriber is not an error: the event is still durable in the journal.
        let _ = self.sender.send(event.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.sender.subscribe()
    }

    /// Both kinds of sinks run in `publish`, every-process ones first. Calling it again adds more sinks.
    async fn attach(&self, sinks: Sinks) -> Result<(), BusError> {
        let mut attached = self.sinks.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        attached.extend(sinks.every_process);
        attached.extend(sinks.once);
        Ok(())
    }

    /// Lets go of the sinks (and what they hold, such as the store) once the relay has stopped.
    async fn close(&self) {
        self.sinks.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    fn backend(&self) -> &'static str {
        "in_process"
    }
}
