//! The event bus: every persisted domain event is published exactly as journaled, with its unique id so consumers
//! drop duplicates (delivery is at-least-once). Two buses sit behind the same [`EventBus`] trait: the in-process
//! broadcast ([`in_process`]) and the Kafka bridge ([`kafka`]). Events reach the bus only through the
//! [`outbox::OutboxRelay`], which reads them from the store after they are committed, so an event is never published
//! for a write that did not happen, nor lost for one that did.

pub mod chaos;
pub mod in_process;
pub mod kafka;
pub mod outbox;
pub mod recent;
pub mod signing;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::store::EventRecord;

pub use in_process::InProcessBus;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    /// A mistake no retry fixes: bad settings, an event of a kind the bus has no topic for, sinks attached twice.
    #[error("event bus misconfigured: {0}")]
    Config(String),
}

#[async_trait]
pub trait EventBus: Send + Sync {
    /// Returns once the bus has taken the event (for Kafka: once the broker acknowledged it), so the caller may
    /// forget it; an error means it may or may not have been taken, and the caller publishes it again.
    async fn publish(&self, event: &EventRecord) -> Result<(), BusError>;
    /// Publishes events given in commit order, as `publish` would one after another, except that a bus may take
    /// events of different entities at once. `Err((taken, error))`: the first `taken` events were taken and
    /// `error` stopped the next. Later events may have been taken as well, and are published again with it: a
    /// duplicate, never a reordering, since an entity's event is sent only once the one before it was taken.
    async fn publish_batch(&self, events: &[EventRecord]) -> Result<(), (usize, BusError)> {
        publish_per_entity(events, |event| self.publish(event)).await
    }
    /// A live feed of every event published from now on, by any process sharing the bus.
    fn subscribe(&self) -> broadcast::Receiver<EventRecord>;
    /// Starts handing events published from now on to `sinks` (see [`Sinks`]). Call it once, at start-up, before
    /// the outbox relay starts publishing.
    async fn attach(&self, sinks: Sinks) -> Result<(), BusError> {
        let _ = sinks;
        Err(BusError::Config(format!("the {} bus cannot hand events to sinks", self.backend())))
    }
    /// Whether the bus can take events now (for readiness); an in-process bus always can.
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
    /// Graceful stop, after the outbox relay has stopped: sinks finish the event in hand, what they handled is
    /// recorded as consumed, and what was published is delivered.
    async fn close(&self) {}
    /// `in_process` or `kafka`, as configured.
    fn backend(&self) -> &'static str;
}

/// A consumer of events: at-least-once, so every sink must recognise an event it has already handled (by its id).
/// An error means "not handled": the event is handed over again.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn handle(&self, event: &EventRecord) -> Result<(), String>;
}

/// Sinks grouped by how many processes of a deployment must react to each event.
#[derive(Clone, Default)]
pub struct Sinks {
    /// Every process handles every event: reactions about what this process holds, such as its product cache or
    /// the WebSockets connected to it.
    pub every_process: Vec<Arc<dyn EventSink>>,
    /// One process of the deployment handles each event: reactions that must happen once, such as storing a
    /// notification or sending an email.
    pub once: Vec<Arc<dyn EventSink>>,
}

/// Publishes `events` (in commit order) with one chain per entity: an entity's events one after another, each only
/// once the one before it was taken, and the chains of different entities side by side. On failure, returns how many
/// events from the start were all taken and the error that stopped the next one (see [`EventBus::publish_batch`]).
async fn publish_per_entity<'a, F, Fut>(events: &'a [EventRecord], publish: F) -> Result<(), (usize, BusError)>
where
    F: Fn(&'a EventRecord) -> Fut,
    Fut: std::future::Future<Output = Result<(), BusError>>,
{
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut chain_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let chain = *chain_of.entry(event.stream.as_str()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[chain].push(index);
    }
    let publish = &publish;
    let outcomes = futures_util::future::join_all(chains.into_iter().map(|chain| async move {
        let mut outcomes = Vec::with_capacity(chain.len());
        for index in chain {
            let outcome = publish(&events[index]).await;
            let failed = outcome.is_err();
            outcomes.push((index, outcome));
            if failed {
                break;
            }
        }
        outcomes
    }))
    .await;
    let mut by_index: Vec<Option<Result<(), BusError>>> = (0..events.len()).map(|_| None).collect();
    for (index, outcome) in outcomes.into_iter().flatten() {
        by_index[index] = Some(outcome);
    }
    for (index, outcome) in by_index.into_iter().enumerate() {
        match outcome {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err((index, error)),
            // Only an earlier failure of the same entity holds an event back, and that one is found first.
            None => return Err((index, BusError::Unavailable(format!("{} held back", events[index].id)))),
        }
    }
    Ok(())
}

/// Hands `event` to each sink in turn, stopping at the first that fails.
async fn deliver(sinks: &[Arc<dyn EventSink>], event: &EventRecord) -> Result<(), String> {
    for sink in sinks {
        sink.handle(event).await?;
    }
    Ok(())
}

/// The kind of entity an event belongs to and the entity's id: `order` and `ord_1` for `order:ord_1`.
pub fn kind_and_id(stream: &str) -> (&str, &str) {
    stream.split_once(':').unwrap_or((stream, stream))
}
