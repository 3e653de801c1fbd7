//! Publishes committed events from the store's outbox to the bus, oldest first, acknowledging them only after the
//! bus accepted them. Woken by every commit; also polls, so events left by a crash are published after restart.
//! A batch goes to the bus at once ([`EventBus::publish_batch`]: each entity's events in order, different entities
//! side by side); the relay stops at the first event not taken, so nothing after it leaves the outbox before it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::EventBus;
use crate::store::{EventRecord, EventStore, OutboxScope};
use crate::telemetry::metrics::{BUS_PUBLISH_DURATION, BUS_PUBLISH_ERRORS, OUTBOX_PENDING};

const BATCH: usize = 256;
/// How long the relay waits after a commit woke it, for the commits right behind it.
const GATHER: Duration = Duration::from_millis(2);

pub struct OutboxRelay {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    committed: Arc<Notify>,
    scope: OutboxScope,
}

impl OutboxRelay {
    pub fn new(store: Arc<dyn EventStore>, bus: Arc<dyn EventBus>, committed: Arc<Notify>) -> Self {
        Self { store, bus, committed, scope: OutboxScope::All }
    }

    /// Publishes only the events of the streams `scope` covers (a cluster node: the entities it hosts).
    pub fn scoped(mut self, scope: OutboxScope) -> Self {
        self.scope = scope;
        self
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
                    // Commits landing just after this one go out in the same round.
                    _ = self.committed.notified() => tokio::time::sleep(GATHER).await,
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
            let batch = self.store.outbox_pending(BATCH, &self.scope).await?;
            metrics::gauge!(OUTBOX_PENDING).set(batch.len() as f64);
            if batch.is_empty() {
                return Ok(published);
            }
            let events: Vec<EventRecord> = batch.iter().map(|entry| entry.event.clone()).collect();
            let started = std::time::Instant::now();
            let (taken, failure) = match self.bus.publish_batch(&events).await {
                Ok(()) => (events.len(), None),
                Err((taken, error)) => {
                    metrics::counter!(BUS_PUBLISH_ERRORS).increment(1);
                    (taken, Some(error.to_string()))
                }
            };
            metrics::histogram!(BUS_PUBLISH_DURATION).record(started.elapsed().as_secs_f64());
            // Only the events before the first failure leave the outbox, so the next flush starts again from it.
            let done: Vec<u64> = batch[..taken].iter().map(|entry| entry.position).collect();
            self.store.outbox_ack(&done).await?;
            published += done.len();
            if let Some(error) = failure {
                return Err(error.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::sync::broadcast;

    use super::*;
    use crate::bridge::BusError;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Commit, EventRecord, OutboxScope};

    /// Refuses one event once, accepting everything else, and records what it accepted.
    struct RefusingBus {
        refuse: Mutex<Option<String>>,
        accepted: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl EventBus for RefusingBus {
        async fn publish(&self, event: &EventRecord) -> Result<(), BusError> {
            if self.refuse.lock().unwrap().take_if(|id| *id == event.id).is_some() {
                return Err(BusError::Unavailable("broker down".into()));
            }
            self.accepted.lock().unwrap().push(event.id.clone());
            Ok(())
        }
        fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
            broadcast::channel(1).1
        }

        fn backend(&self) -> &'static str {
            "test"
        }
    }

    fn commit(stream: &str, expected: u64, n: u64) -> Commit {
        let events = (expected + 1..=expected + n)
            .map(|seq| EventRecord {
                id: format!("{stream}/{seq}"),
                stream: stream.into(),
                seq,
                event_type: "test".into(),
                recorded_at: chrono::Utc::now(),
                payload: serde_json::Value::Null,
            })
            .collect();
        Commit {
            stream: stream.into(),
            expected_seq: expected,
            events,
            snapshot: None,
            read_model: None,
            active: false,
        }
    }

    #[tokio::test]
    async fn events_leave_the_outbox_only_once_the_bus_accepted_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        store.commit(commit("a:1", 0, 2)).await.unwrap();
        store.commit(commit("b:1", 0, 1)).await.unwrap();
        store.commit(commit("a:1", 2, 1)).await.unwrap();
        let bus = Arc::new(RefusingBus { refuse: Mutex::new(Some("a:1/1".into())), accepted: Mutex::new(Vec::new()) });
        let relay = OutboxRelay::new(store.clone(), bus.clone(), Arc::new(Notify::new()));

        assert!(relay.flush().await.is_err());
        assert_eq!(
            store.outbox_pending(10, &OutboxScope::All).await.unwrap().len(),
            4,
            "nothing acknowledged while the bus refuses"
        );
        assert_eq!(relay.flush().await.unwrap(), 4);
        // Another entity's event may be published again (a duplicate); an entity's events are never reordered.
        assert_eq!(published(&bus, "a:1"), ["a:1/1", "a:1/2", "a:1/3"]);
        assert!(published(&bus, "b:1").iter().all(|id| id == "b:1/1"));
        assert!(store.outbox_pending(10, &OutboxScope::All).await.unwrap().is_empty());
        assert_eq!(relay.flush().await.unwrap(), 0);
    }

    /// The ids of `stream`'s events the bus accepted, in the order it accepted them.
    fn published(bus: &RefusingBus, stream: &str) -> Vec<String> {
        bus.accepted.lock().unwrap().iter().filter(|id| id.starts_with(&format!("{stream}/"))).cloned().collect()
    }

    #[tokio::test]
    async fn a_refused_event_holds_back_its_entity_and_stays_with_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        store.commit(commit("a:1", 0, 1)).await.unwrap();
        store.commit(commit("b:1", 0, 1)).await.unwrap();
        store.commit(commit("a:1", 1, 1)).await.unwrap();
        store.commit(commit("b:1", 1, 1)).await.unwrap();
        let bus = Arc::new(RefusingBus { refuse: Mutex::new(Some("b:1/1".into())), accepted: Mutex::new(Vec::new()) });
        let relay = OutboxRelay::new(store.clone(), bus.clone(), Arc::new(Notify::new()));

        assert!(relay.flush().await.is_err());
        assert!(published(&bus, "b:1").is_empty(), "nothing of the entity after its refused event was published");
        assert_eq!(
            store.outbox_pending(10, &OutboxScope::All).await.unwrap().len(),
            3,
            "the refused event and those after it stay"
        );
        assert_eq!(relay.flush().await.unwrap(), 3);
        assert_eq!(published(&bus, "b:1"), ["b:1/1", "b:1/2"]);
        // Published beside the refused one, `a:1/2` stayed in the outbox behind it and is published again.
        assert_eq!(published(&bus, "a:1"), ["a:1/1", "a:1/2", "a:1/2"]);
    }
}
