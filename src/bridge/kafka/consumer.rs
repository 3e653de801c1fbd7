//! The bridge's consumers. Each runs in a task under a small supervisor that starts it again, with a fresh Kafka
//! consumer, after an error or a panic (in a sink, say), until the bus stops it.
//!
//! Handling one event: with a secret, its signature is checked first (a record without a valid one is dropped and
//! counted, see [`crate::bridge::signing`]); it is decoded, dropped if its id was handled recently, then handed to
//! each sink in turn. Only once every sink handled it is the event marked done: its offset stored for the next
//! commit (shared group), or its partition's position advanced (every-process consumer). When a sink fails, the
//! event's partition is paused and rewound to it, and fetched again after a backoff (100 ms doubling to 5 s), while
//! the other partitions go on. Events are handled one at a time, so each partition's order is kept. A stop while an
//! event is held back leaves it unmarked: the next member of the group, or the next start, gets it again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers as _, Message as _, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::bridge::recent::RecentIds;
use crate::bridge::signing::{self, Channel, Signer};
use crate::bridge::{deliver, EventSink};
use crate::store::EventRecord;
use crate::telemetry::metrics::KAFKA_CONSUMER_LAG;

/// Ids remembered for dropping redeliveries: redeliveries come soon after the original (a republished event, the
/// uncommitted tail after a rebalance), and sinks recognise older ones themselves.
const RECENT_IDS: usize = 16_384;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A rewind waits until no message fetched past the rewound offset can come out; librdkafka's threads answer at once.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
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
    recent: Mutex<RecentIds<Arc<str>>>,
    /// Checks each record's signature; `None`: records are taken unsigned.
    signer: Option<Signer>,
}

impl Consumer {
    pub(super) fn new(
        name: &'static str,
        config: ClientConfig,
        membership: Membership,
        sinks: Arc<RwLock<Vec<Arc<dyn EventSink>>>>,
        feed: Option<broadcast::Sender<EventRecord>>,
        signer: Option<Signer>,
    ) -> Self {
        Self { name, config, membership, sinks, feed, recent: Mutex::new(RecentIds::new(RECENT_IDS)), signer }
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
        let rebalances = Arc::new(AtomicU64::new(0));
        let hooks = Hooks {
            name: self.name,
            joined: match &self.membership {
                Membership::Shared { joined, .. } => Some(joined.clone()),
                Membership::EveryProcess(_) => None,
            },
            rebalances: rebalances.clone(),
        };
        let consumer: Arc<StreamConsumer<Hooks>> = Arc::new(self.config.create_with_context(hooks)?);
        match &self.membership {
            Membership::EveryProcess(positions) => consumer.assign(&positions.assignment()?)?,
            Membership::Shared { topics, .. } => {
                consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())?;
            }
        }
        let mut held = Held::default();
        let mut seen_rebalances = 0;
        let mut warned: Option<Instant> = None;
        let outcome = loop {
            if *stop.borrow_and_update() {
                break Ok(());
            }
            let next_resume = held.next_resume();
            let received = tokio::select! {
                biased;
                _ = stop.changed() => break Ok(()),
                _ = sleep_until(next_resume) => {
                    held.resume_due(&consumer, self.name);
                    continue;
                }
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
            // A rebalance hands partitions out afresh, from their committed offsets, so what was held back comes
            // again from there; librdkafka keeps a partition's pause through it, so resume them all.
            let rebalanced = rebalances.load(Ordering::SeqCst);
            if rebalanced != seen_rebalances {
                seen_rebalances = rebalanced;
                held.release_all(&consumer, self.name);
            }
            crate::telemetry::metrics::kafka_records(message.topic(), "consumed", 1);
            let partition = (message.topic().to_string(), message.partition());
            if held.is_paused(&partition) {
                // Fetched before the pause; it comes again when the partition resumes.
                continue;
            }
            match self.handle(&message).await {
                Ok(()) => held.succeeded(&partition),
                Err(error) => {
                    let backoff = held.failed(&partition);
                    tracing::warn!(consumer = self.name, topic = %partition.0, partition = partition.1,
                        offset = message.offset(), %error, retry_in = ?backoff, "a sink failed; the event comes again");
                    if held.pause(&consumer, &message, backoff).await {
                        continue;
                    }
                    // The partition could not be rewound: retry here, which holds up the other partitions too.
                    if !self.retry_in_place(&message, backoff, &mut stop).await {
                        break Ok(());
                    }
                    held.succeeded(&partition);
                }
            }
            self.mark_done(&consumer, &message);
        };
        self.finish(consumer).await;
        outcome
    }

    /// Hands the message's event to every sink, in turn, stopping at the first failure.
    async fn handle(&self, message: &OwnedMessage) -> Result<(), String> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if let Some(signer) = &self.signer {
            // Before anything reads it: a record no node of the deployment signed is dropped, and never comes again.
            if let Err(refusal) = verify(signer, message) {
                let detail = format!("{} consumer, {topic}/{partition}@{offset}", self.name);
                signing::refused(Channel::Events, refusal, &detail);
                return Ok(());
            }
        }
        let event = match message.payload().map(serde_json::from_slice::<EventRecord>) {
            Some(Ok(event)) => event,
            // Nothing will ever make it readable: waiting on it would only stop the partition.
            Some(Err(error)) => {
                tracing::error!(consumer = self.name, topic, partition, offset, %error, "not an event record; skipped");
                return Ok(());
            }
            None => {
                tracing::error!(consumer = self.name, topic, partition, offset, "message without payload; skipped");
                return Ok(());
            }
        };
        if self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(event.id.as_str()) {
            tracing::debug!(consumer = self.name, event_id = %event.id, "redelivered event dropped");
            return Ok(());
        }
        let sinks = self.sinks.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        deliver(&sinks, &event).await.map_err(|error| format!("{}: {error}", event.id))?;
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(Arc::from(event.id.as_str()));
        if let Some(feed) = &self.feed {
            let _ = feed.send(event);
        }
        Ok(())
    }

    /// Hands the message's event to the sinks until they all handled it; false when stopped first.
    async fn retry_in_place(
        &self,
        message: &OwnedMessage,
        mut backoff: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return false,
            }
            match self.handle(message).await {
                Ok(()) => return true,
                Err(error) => tracing::warn!(consumer = self.name, %error, "a sink failed again"),
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
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

/// Checks the record's [`signing::HEADER`] over its topic, key and payload.
fn verify(signer: &Signer, message: &OwnedMessage) -> Result<(), signing::Refusal> {
    let signature =
        message.headers().and_then(|headers| headers.iter().find(|h| h.key == signing::HEADER).and_then(|h| h.value));
    let (key, payload) = (message.key().unwrap_or_default(), message.payload().unwrap_or_default());
    signer.verify_event(message.topic(), key, payload, signature)
}

/// Partitions held back after a sink failed on one of their events: paused and rewound to that event, they resume
/// once its backoff has passed. The other partitions go on meanwhile, and the consumer keeps polling, so it still
/// takes part in its group's rebalances.
#[derive(Default)]
struct Held {
    paused_until: HashMap<(String, i32), Instant>,
    /// The next backoff of each partition whose last event failed.
    backoff: HashMap<(String, i32), Duration>,
}

impl Held {
    fn is_paused(&self, partition: &(String, i32)) -> bool {
        self.paused_until.contains_key(partition)
    }

    fn next_resume(&self) -> Option<Instant> {
        self.paused_until.values().min().copied()
    }

    fn succeeded(&mut self, partition: &(String, i32)) {
        self.backoff.remove(partition);
    }

    /// The wait before the partition's event comes again: doubling from [`RETRY_MIN`] to [`RETRY_MAX`].
    fn failed(&mut self, partition: &(String, i32)) -> Duration {
        let next = self.backoff.entry(partition.clone()).or_insert(RETRY_MIN);
        let wait = *next;
        *next = (wait * 2).min(RETRY_MAX);
        wait
    }

    /// Pauses the message's partition and rewinds it to the message; false if the consumer refused either.
    async fn pause(
        &mut self,
        consumer: &Arc<StreamConsumer<Hooks>>,
        message: &OwnedMessage,
        backoff: Duration,
    ) -> bool {
        let (topic, partition, offset) = (message.topic().to_string(), message.partition(), message.offset());
        let (consumer, name) = (consumer.clone(), consumer.context().name);
        let key = (topic.clone(), partition);
        // Both wait on librdkafka's own threads (a seek until no message fetched past the offset can come out).
        let paused = tokio::task::spawn_blocking(move || -> KafkaResult<()> {
            let mut list = TopicPartitionList::new();
            list.add_partition(&topic, partition);
            consumer.pause(&list)?;
            consumer.seek(&topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)
        })
        .await;
        match paused {
            Ok(Ok(())) => {
                self.paused_until.insert(key, Instant::now() + backoff);
                true
            }
            Ok(Err(error)) => {
                tracing::warn!(consumer = name, %error, "cannot rewind the partition");
                false
            }
            Err(error) => {
                tracing::warn!(consumer = name, %error, "cannot rewind the partition");
                false
            }
        }
    }

    /// Resumes the partitions whose backoff has passed.
    fn resume_due(&mut self, consumer: &StreamConsumer<Hooks>, name: &'static str) {
        let now = Instant::now();
        self.resume(|until| until <= now, consumer, name);
    }

    /// Resumes every held partition and forgets their backoffs.
    fn release_all(&mut self, consumer: &StreamConsumer<Hooks>, name: &'static str) {
        self.resume(|_| true, consumer, name);
        self.backoff.clear();
    }

    fn resume(&mut self, due: impl Fn(Instant) -> bool, consumer: &StreamConsumer<Hooks>, name: &'static str) {
        let mut resumed = TopicPartitionList::new();
        self.paused_until.retain(|(topic, partition), until| {
            let resume = due(*until);
            if resume {
                resumed.add_partition(topic, *partition);
            }
            !resume
        });
        if resumed.count() > 0 {
            if let Err(error) = consumer.resume(&resumed) {
                tracing::warn!(consumer = name, %error, "cannot resume partitions");
            }
        }
    }
}

async fn sleep_until(instant: Option<Instant>) {
    match instant {
        Some(instant) => tokio::time::sleep_until(instant.into()).await,
        None => std::future::pending().await,
    }
}

/// Rebalance and commit notifications.
struct Hooks {
    name: &'static str,
    joined: Option<watch::Sender<bool>>,
    /// Counts assignments and revocations.
    rebalances: Arc<AtomicU64>,
}

impl ClientContext for Hooks {
    /// How far behind the end of its partitions this consumer reads (librdkafka's statistics, every 5 s).
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.app_offset >= 0 && p.hi_offset >= 0)
            .map(|p| (p.hi_offset - p.app_offset).max(0))
            .sum();
        metrics::gauge!(KAFKA_CONSUMER_LAG, "consumer" => self.name).set(lag as f64);
    }
}

impl ConsumerContext for Hooks {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, Ordering::SeqCst);
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
