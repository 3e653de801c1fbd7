//! The bridge's consumers. Each runs in a task under a small supervisor that starts it again, with a fresh Kafka
//! consumer, after an error or a panic (in a sink, say), until the bus stops it.
//!
//! Handling one event: it is decoded, dropped if its id was handled recently, then handed to each sink in turn. A
//! sink that fails gets the same event again, with backoff, until it succeeds; only then is the event marked done
//! (its offset stored for the next commit, or its position advanced). Events are handled one at a time, so a
//! partition's order is kept. A stop while a sink keeps failing leaves the event unmarked: the next member of the
//! group, or the next start, gets it again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message as _, OwnedMessage};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::bridge::EventSink;
use crate::store::EventRecord;

/// Ids remembered for dropping redeliveries: redeliveries come soon after the original (a republished event, the
/// uncommitted tail after a rebalance), and sinks recognise older ones themselves.
const RECENT_IDS: usize = 16_384;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// While the broker is unreachable librdkafka reports it again and again; say so at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// How a consumer takes part.
pub(super) enum Membership {
    /// Reads every partition itself, from the given positions: this process sees every event.
    EveryProcess(Positions),
    /// A member of the shared group, which splits the partitions between the processes. `joined` flips to true
    /// at the first assignment.
    Shared { topics: Vec<String>, joined: watch::Sender<bool> },
}

/// The next offset to read in each partition, kept up to date so that a restarted consumer resumes where the last
/// one stopped.
pub(super) struct Positions(Mutex<HashMap<(String, i32), i64>>);

impl Positions {
    pub(super) fn new(start: HashMap<(String, i32), i64>) -> Self {
        Self(Mutex::new(start))
    }

    fn assignment(&self) -> KafkaResult<TopicPartitionList> {
        let positions = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut list = TopicPartitionList::with_capacity(positions.len());
        for ((topic, partition), offset) in positions.iter() {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        Ok(list)
    }

    fn advance(&self, topic: &str, partition: i32, next: i64) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert((topic.to_string(), partition), next);
    }
}

pub(super) struct Consumer {
    name: &'static str,
    config: ClientConfig,
    membership: Membership,
    sinks: Arc<RwLock<Vec<Arc<dyn EventSink>>>>,
    /// Where handled events are broadcast to [`crate::bridge::EventBus::subscribe`]rs.
    feed: Option<broadcast::Sender<EventRecord>>,
    recent: Mutex<RecentIds>,
}

impl Consumer {
    pub(super) fn new(
        name: &'static str,
        config: ClientConfig,
        membership: Membership,
        sinks: Arc<RwLock<Vec<Arc<dyn EventSink>>>>,
        feed: Option<broadcast::Sender<EventRecord>>,
    ) -> Self {
        Self { name, config, membership, sinks, feed, recent: Mutex::new(RecentIds::new(RECENT_IDS)) }
    }

    /// Runs the consumer until `stop` flips to true (or its sender is dropped), restarting it after a failure.
    pub(super) fn spawn(self, stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let consumer = Arc::new(self);
        tokio::spawn(async move {
            let mut backoff = RETRY_MIN;
            loop {
                let started = Instant::now();
                let name = consumer.name;
                match tokio::spawn(consumer.clone().run(stop.clone())).await {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => tracing::error!(consumer = name, %error, "kafka consumer failed; restarting it"),
                    Err(error) => tracing::error!(consumer = name, %error, "kafka consumer crashed; restarting it"),
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = RETRY_MIN;
                }
                let mut stop = stop.clone();
                if *stop.borrow_and_update() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        })
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> KafkaResult<()> {
        let hooks = Hooks {
            name: self.name,
            joined: match &self.membership {
                Membership::Shared { joined, .. } => Some(joined.clone()),
                Membership::EveryProcess(_) => None,
            },
        };
        let consumer: Arc<StreamConsumer<Hooks>> = Arc::new(self.config.create_with_context(hooks)?);
        match &self.membership {
            Membership::EveryProcess(positions) => consumer.assign(&positions.assignment()?)?,
            Membership::Shared { topics, .. } => {
                consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
            }
        }
        let mut warned: Option<Instant> = None;
        let outcome = loop {
            if *stop.borrow_and_update() {
                break Ok(());
            }
            let received = tokio::select! {
                biased;
                _ = stop.changed() => break Ok(()),
                received = consumer.recv() => received.map(|message| message.detach()),
            };
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        tracing::error!(consumer = self.name, %reason, "kafka consumer hit a fatal error");
                        break Err(KafkaError::Global(code));
                    }
                    if warned.is_none_or(|at| at.elapsed() > WARN_EVERY) {
                        tracing::warn!(consumer = self.name, %error, "kafka consumer error; it keeps trying");
                        warned = Some(Instant::now());
                    }
                    continue;
                }
            };
            if !self.handle(&message, &mut stop).await {
                break Ok(());
            }
            self.mark_done(&consumer, &message);
        };
        self.finish(consumer).await;
        outcome
    }

    /// Hands the message's event to every sink; false when stopped before they all handled it.
    async fn handle(&self, message: &OwnedMessage, stop: &mut watch::Receiver<bool>) -> bool {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let event = match message.payload().map(serde_json::from_slice::<EventRecord>) {
            Some(Ok(event)) => event,
            // Nothing will ever make it readable: waiting on it would only stop the partition.
            Some(Err(error)) => {
                tracing::error!(consumer = self.name, topic, partition, offset, %error, "not an event record; skipped");
                return true;
            }
            None => {
                tracing::error!(consumer = self.name, topic, partition, offset, "message without payload; skipped");
                return true;
            }
        };
        if self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&event.id) {
            tracing::debug!(consumer = self.name, event_id = %event.id, "redelivered event dropped");
            return true;
        }
        let sinks = self.sinks.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut next = 0;
        let mut backoff = RETRY_MIN;
        while let Some(sink) = sinks.get(next) {
            match sink.handle(&event).await {
                Ok(()) => next += 1,
                Err(error) => {
                    tracing::warn!(consumer = self.name, event_id = %event.id, %error, "a sink failed; handing it the event again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return false,
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(&event.id);
        if let Some(feed) = &self.feed {
            let _ = feed.send(event);
        }
        true
    }

    fn mark_done(&self, consumer: &StreamConsumer<Hooks>, message: &OwnedMessage) {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match &self.membership {
            Membership::EveryProcess(positions) => positions.advance(topic, partition, offset + 1),
            // librdkafka commits the stored offset + 1, the next event to read.
            Membership::Shared { .. } => {
                if let Err(error) = consumer.store_offset(topic, partition, offset) {
                    tracing::debug!(consumer = self.name, topic, partition, offset, %error,
                        "offset not stored (the partition moved to another process, which may handle the event again)");
                }
            }
        }
    }

    /// Commits what was handled and leaves the group; both wait on the broker, so off the async threads.
    async fn finish(&self, consumer: Arc<StreamConsumer<Hooks>>) {
        let shared = matches!(self.membership, Membership::Shared { .. });
        let name = self.name;
        let closed = tokio::task::spawn_blocking(move || {
            if shared {
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(error) => tracing::warn!(consumer = name, %error,
                        "kafka offsets not committed at stop; the events since the last commit will be handled again"),
                }
            }
            drop(consumer);
        });
        if let Err(error) = closed.await {
            tracing::warn!(consumer = name, %error, "kafka consumer did not close cleanly");
        }
    }
}

/// Rebalance and commit notifications.
struct Hooks {
    name: &'static str,
    joined: Option<watch::Sender<bool>>,
}

impl ClientContext for Hooks {}

impl ConsumerContext for Hooks {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(consumer = self.name, partitions = partitions.count(), "kafka partitions assigned");
                if let Some(joined) = &self.joined {
                    joined.send_replace(true);
                }
            }
            Rebalance::Revoke(partitions) => {
                tracing::info!(consumer = self.name, partitions = partitions.count(), "kafka partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(consumer = self.name, %error, "kafka rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(consumer = self.name, %error, "kafka offset commit failed; retried at the next")
            }
        }
    }
}

/// The last `capacity` ids inserted.
struct RecentIds {
    order: VecDeque<Arc<str>>,
    ids: HashSet<Arc<str>>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self { order: VecDeque::with_capacity(capacity), ids: HashSet::with_capacity(capacity), capacity }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.ids.contains(id) {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.order.push_back(id.clone());
        self.ids.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::RecentIds;

    #[test]
    fn recent_ids_forget_the_oldest_beyond_capacity() {
        let mut recent = RecentIds::new(2);
        recent.insert("a");
        recent.insert("b");
        recent.insert("a");
        assert!(recent.contains("a") && recent.contains("b"));
        recent.insert("c");
        assert!(!recent.contains("a"), "the oldest is forgotten");
        assert!(recent.contains("b") && recent.contains("c"));
        assert_eq!(recent.order.len(), 2);
    }
}
