//! The Kafka bridge. Each kind of entity has a topic, `{prefix}.{kind}` (`commercex.order`), created at start-up
//! when missing. An event is produced to its kind's topic as its JSON record, keyed by the entity id so that one
//! entity's events share a partition and keep their order, with the event id in an `event-id` header (and the type in
//! `event-type`). The producer is idempotent with `acks=all`, and `publish` returns only once the broker acknowledged
//! the event, so the outbox relay forgets an event only after Kafka holds it. When the broker is down, `publish`
//! fails within [`KafkaSettings::publish_timeout`] and the relay keeps the event for its next attempt. An entity's
//! event is sent only once the one before it was acknowledged ([`EventBus::publish_batch`] runs one such chain per
//! entity), and the relay stops at the first event not taken, so a retry can repeat an event but never reorder an
//! entity's events.
//!
//! Two consumers hand events on (see [`consumer`]):
//! - the *every-process* consumer reads every partition of every topic from where the topics ended when the bus
//!   connected, in a group of its own (`{group_id}-{uuid}`) that never commits, and feeds
//!   [`EventBus::subscribe`] and the [`Sinks::every_process`] sinks;
//! - the *shared* consumer, started by [`EventBus::attach`] with [`Sinks::once`] sinks, is a member of the group
//!   `{group_id}` that every process joins, so each partition, and each event, is handled by one process. A new
//!   group starts at the earliest offset. The offset of an event is committed only after every sink handled it.
//!
//! Both drop a redelivered event whose id they handled recently.
//!
//! With a secret ([`KafkaSettings::signer`], from `cluster.secret`) every event is published with a
//! [`signing::HEADER`] signing its topic, key and payload, and both consumers drop (and count) a record whose
//! signature is missing or wrong before any sink sees it: a record produced by anything but a node of the deployment
//! cannot become a notification, an email or a cache invalidation. Without one, events are neither signed nor checked.
//!
//! Every Kafka client this process creates (producers, consumers, the admin client, the cluster's) is configured by
//! [`KafkaSettings::base_config`], which also carries how it reaches the brokers ([`KafkaSecurity`]: TLS, SASL).

mod consumer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use self::consumer::{Consumer, Membership, Positions};
use super::signing::{self, Signer};
use super::{kind_and_id, BusError, EventBus, EventSink, Sinks};
use crate::domain::cart::Cart;
use crate::domain::coupon::CouponState;
use crate::domain::order::OrderState;
use crate::domain::payment::PaymentState;
use crate::domain::product::ProductState;
use crate::domain::Aggregate;
use crate::store::EventRecord;

/// Every kind of entity stream, so every topic.
pub const KINDS: [&str; 5] = [ProductState::KIND, Cart::KIND, OrderState::KIND, PaymentState::KIND, CouponState::KIND];

/// How long a readiness probe waits for the broker (under `/ready`'s own 2 s).
const PING_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long `close` waits for produced events to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Subscribers of the feed that fall further behind than this skip ahead.
const FEED_CAPACITY: usize = 4096;

/// Where the broker is and how the bridge uses it.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics are `{topic_prefix}.{kind}`.
    pub topic_prefix: String,
    /// Partitions of a topic created at start-up; topics that exist keep theirs.
    pub partitions: i32,
    /// The group shared by every process for [`Sinks::once`]; per-process groups are `{group_id}-{uuid}`.
    pub group_id: String,
    /// `publish` gives up after this (librdkafka's `message.timeout.ms`).
    pub publish_timeout: Duration,
    /// How long a process of the shared group may go silent before its partitions move to the others
    /// (`session.timeout.ms`; heartbeats every third of it).
    pub session_timeout: Duration,
    /// Bound on each start-up step: creating topics, reading their ends, joining the shared group.
    pub startup_timeout: Duration,
    /// How every client authenticates to the brokers and encrypts what it sends.
    pub security: KafkaSecurity,
    /// Signs every event published and refuses events without a valid signature; the cluster signs its calls and
    /// answers with it too. `None`: events are neither signed nor checked.
    pub signer: Option<Signer>,
}

/// How the clients reach the brokers: librdkafka's `security.protocol`, `sasl.*` and `ssl.*` (`bus.kafka.*` in the
/// configuration, which checks their combinations). An empty value is not passed on (librdkafka's default).
#[derive(Clone, Default)]
pub struct KafkaSecurity {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: String,
    pub sasl_username: String,
    pub sasl_password: String,
    /// PEM file of the CA that signed the brokers' certificates.
    pub ssl_ca_location: String,
    /// PEM files of this client's certificate and key, for brokers that authenticate clients by certificate.
    pub ssl_certificate_location: String,
    pub ssl_key_location: String,
}

impl KafkaSecurity {
    fn apply(&self, config: &mut ClientConfig) {
        let settings = [
            ("security.protocol", &self.protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (key, value) in settings {
            if !value.is_empty() {
                config.set(key, value.as_str());
            }
        }
    }
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = if self.sasl_password.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &password)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .finish()
    }
}

impl KafkaSettings {
    pub fn new(
        brokers: impl Into<String>,
        topic_prefix: impl Into<String>,
        partitions: i32,
        group_id: impl Into<String>,
    ) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            partitions,
            group_id: group_id.into(),
            publish_timeout: Duration::from_secs(5),
            session_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            security: KafkaSecurity::default(),
            signer: None,
        }
    }

    /// The topic of one kind of entity.
    pub fn topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.topic_prefix)
    }

    pub(crate) fn check(&self) -> Result<(), BusError> {
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.brokers.trim().is_empty() {
            return Err(BusError::Config("no Kafka brokers given".into()));
        }
        if self.topic_prefix.is_empty() || !self.topic_prefix.chars().all(legal) || self.topic_prefix.len() > 200 {
            return Err(BusError::Config(format!(
                "topic prefix `{}` must be 1 to 200 of a-z, A-Z, 0-9, `.`, `_`, `-`",
                self.topic_prefix
            )));
        }
        if self.partitions < 1 {
            return Err(BusError::Config(format!("partitions must be at least 1, not {}", self.partitions)));
        }
        if self.group_id.trim().is_empty() {
            return Err(BusError::Config("the consumer group id is empty".into()));
        }
        // librdkafka checks each setting as it takes it: a protocol or mechanism this build cannot do (TLS and SCRAM
        // need librdkafka built with OpenSSL) is refused here, by name, before anything connects.
        if let Err(error) = self.base_config().create_native_config() {
            let error = match error {
                // Its message would hold the value.
                KafkaError::ClientConfig(_, reason, key, _) if key.contains("password") => format!("{key}: {reason}"),
                error => error.to_string(),
            };
            return Err(BusError::Config(format!(
                "the Kafka client settings (bus.kafka.security_protocol, sasl_*, ssl_*): {error}"
            )));
        }
        Ok(())
    }

    /// The settings of every Kafka client this process creates (producers, consumers, the admin client, the
    /// cluster's): where the brokers are and how to reach them ([`KafkaSecurity`]).
    pub(crate) fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "commercex")
            // Reconnect quickly once a broker is back (librdkafka backs off up to 10 s by default).
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "1000");
        self.security.apply(&mut config);
        config
    }

    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut config = self.base_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // The relay waits for each acknowledgement before the next event: lingering would only add latency.
            .set("linger.ms", "0")
            .set("message.timeout.ms", millis(self.publish_timeout))
            // The Java client's key hashing, so other clients put an entity on the same partition.
            .set("partitioner", "murmur2_random");
        config
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// How often a consumer reports its statistics (its lag, for `GET /metrics`).
const STATISTICS_EVERY_MS: &str = "5000";

pub(crate) fn unavailable(what: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {error}"))
}

/// The Kafka [`EventBus`]. Build it with [`KafkaBus::connect`]; stop it with [`EventBus::close`].
pub struct KafkaBus {
    settings: KafkaSettings,
    /// Topic of each kind.
    topics: HashMap<&'static str, String>,
    /// Replaced by a fresh producer after a fatal error (an idempotent producer cannot go on after one).
    producer: RwLock<FutureProducer>,
    feed: broadcast::Sender<EventRecord>,
    every_process_sinks: Arc<RwLock<Vec<Arc<dyn EventSink>>>>,
    shared_attached: Mutex<bool>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl KafkaBus {
    /// Creates the missing topics, reads where each partition ends and starts the every-process consumer there:
    /// every event published once this returns reaches [`EventBus::subscribe`]. Each step is bounded by
    /// [`KafkaSettings::startup_timeout`].
    pub async fn connect(settings: &KafkaSettings) -> Result<Self, BusError> {
        settings.check()?;
        let topics: HashMap<&'static str, String> = KINDS.iter().map(|kind| (*kind, settings.topic(kind))).collect();
        let producer: FutureProducer =
            settings.producer_config().create().map_err(|e| unavailable("cannot create the Kafka producer", e))?;
        create_topics(settings, topics.values()).await?;
        let ends = topic_ends(settings, &producer, topics.values().cloned().collect()).await?;

        let (stop, stop_rx) = watch::channel(false);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let every_process_sinks = Arc::new(RwLock::new(Vec::new()));
        let mut config = settings.base_config();
        config
            .set("group.id", format!("{}-{}", settings.group_id, uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Only when a position no longer exists (retention, a recreated topic): read what there is.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", STATISTICS_EVERY_MS);
        let every_process = Consumer::new(
            "every-process",
            config,
            Membership::EveryProcess(Positions::new(ends)),
            every_process_sinks.clone(),
            Some(feed.clone()),
            settings.signer.clone(),
        );
        let task = every_process.spawn(stop_rx);
        tracing::info!(brokers = %settings.brokers, prefix = %settings.topic_prefix, "kafka bus connected");
        Ok(Self {
            settings: settings.clone(),
            topics,
            producer: RwLock::new(producer),
            feed,
            every_process_sinks,
            shared_attached: Mutex::new(false),
            stop,
            tasks: Mutex::new(vec![task]),
        })
    }

    fn producer(&self) -> FutureProducer {
        self.producer.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// After a fatal error the producer refuses everything; start over with a new one (a new producer id), unless
    /// another publish already did.
    fn replace_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else { return };
        let mut current = self.producer.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.client().native_ptr() != failed.client().native_ptr() {
            return;
        }
        tracing::error!(?code, %reason, "kafka producer hit a fatal error; replacing it");
        match self.settings.producer_config().create() {
            Ok(fresh) => *current = fresh,
            Err(error) => tracing::error!(%error, "cannot create a new kafka producer"),
        }
    }

    async fn start_shared(&self, sinks: Vec<Arc<dyn EventSink>>) -> Result<(), BusError> {
        {
            let mut attached = self.shared_attached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *attached {
                return Err(BusError::Config("sinks for the shared group are already attached".into()));
            }
            *attached = true;
        }
        let session = self.settings.session_timeout;
        let mut config = self.settings.base_config();
        config
            .set("group.id", &self.settings.group_id)
            // Offsets are stored only once every sink handled the event, and committed from the store.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", millis(session))
            .set("heartbeat.interval.ms", millis(session / 10))
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", STATISTICS_EVERY_MS);
        let (joined, mut joined_rx) = watch::channel(false);
        let shared = Consumer::new(
            "shared",
            config,
            Membership::Shared { topics: self.topics.values().cloned().collect(), joined },
            Arc::new(RwLock::new(sinks)),
            None,
            self.settings.signer.clone(),
        );
        let task = shared.spawn(self.stop.subscribe());
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(task);
        // Joining can wait for other members to rejoin; consuming starts whenever it is done, so only say so.
        let wait = joined_rx.wait_for(|joined| *joined);
        if tokio::time::timeout(self.settings.startup_timeout, wait).await.is_err() {
            tracing::warn!(group = %self.settings.group_id, "not yet a member of the shared consumer group; joining goes on");
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, event: &EventRecord) -> Result<(), BusError> {
        let (kind, key) = kind_and_id(&event.stream);
        let Some(topic) = self.topics.get(kind) else {
            return Err(BusError::Config(format!("no topic for events of kind `{kind}` ({})", event.id)));
        };
        let payload = serde_json::to_vec(event).map_err(|e| unavailable("cannot encode the event", e))?;
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "event-id", value: Some(event.id.as_str()) })
            .insert(Header { key: "event-type", value: Some(event.event_type.as_str()) });
        if let Some(signer) = &self.settings.signer {
            let signature = signer.sign_event(topic, key.as_bytes(), &payload);
            headers = headers.insert(Header { key: signing::HEADER, value: Some(signature.as_str()) });
        }
        let record = FutureRecord::to(topic).key(key).payload(&payload).headers(headers);
        let producer = self.producer();
        // librdkafka fails the message after `message.timeout.ms`; the outer bound only guards against it not doing so.
        let bound = self.settings.publish_timeout + Duration::from_secs(2);
        match tokio::time::timeout(bound, producer.send(record, Timeout::After(Duration::ZERO))).await {
            Ok(Ok(_)) => {
                crate::telemetry::metrics::kafka_records(topic, "produced", 1);
                Ok(())
            }
            Ok(Err((error, _))) => {
                self.replace_if_fatal(&producer);
                Err(unavailable(&format!("kafka did not take {}", event.id), error))
            }
            Err(_) => Err(BusError::Unavailable(format!("kafka did not acknowledge {} within {bound:?}", event.id))),
        }
    }

    /// One chain per entity, its events one after another, each sent once the one before it was acknowledged; the
    /// chains run at once. A chain stops at its first failure.
    fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.feed.subscribe()
    }

    /// Every-process sinks join the consumer that feeds `subscribe`; once-sinks start this process's member of the
    /// shared group, waiting (up to the start-up bound) until it has joined. Once-sinks can be attached once.
    async fn attach(&self, sinks: Sinks) -> Result<(), BusError> {
        self.every_process_sinks.write().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(sinks.every_process);
        if sinks.once.is_empty() {
            return Ok(());
        }
        self.start_shared(sinks.once).await
    }

    /// Fetches the metadata of one of the bus's topics.
    async fn ping(&self) -> Result<(), BusError> {
        let producer = self.producer();
        let topic = self.settings.topic(KINDS[0]);
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), PING_TIMEOUT)
                .map(|m| m.topics().iter().all(|t| t.error().is_none()))
        })
        .await
        .map_err(|e| unavailable("kafka probe", e))?;
        match metadata {
            Ok(true) => Ok(()),
            Ok(false) => Err(BusError::Unavailable("kafka does not serve the bus's topics".into())),
            Err(error) => Err(unavailable("kafka did not answer", error)),
        }
    }

    /// Stops both consumers (each finishes the event in hand and commits what it handled), then waits for the
    /// producer to deliver what it holds.
    async fn close(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        let producer = self.producer();
        match tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "kafka producer not flushed"),
            Err(error) => tracing::warn!(%error, "kafka producer flush interrupted"),
        }
        tracing::info!("kafka bus closed");
    }

    fn backend(&self) -> &'static str {
        "kafka"
    }
}

/// Creates the topics that do not exist yet; one that exists (whatever its partitions) is fine.
pub(crate) async fn create_topics(
    settings: &KafkaSettings,
    topics: impl Iterator<Item = &String>,
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> =
        settings.base_config().create().map_err(|e| unavailable("cannot create the Kafka admin client", e))?;
    let new: Vec<NewTopic<'_>> =
        topics.map(|name| NewTopic::new(name, settings.partitions, TopicReplication::Fixed(1))).collect();
    let bound = settings.startup_timeout;
    let options = AdminOptions::new().request_timeout(Some(bound)).operation_timeout(Some(bound));
    let results = tokio::time::timeout(bound + Duration::from_secs(1), admin.create_topics(&new, &options))
        .await
        .map_err(|_| BusError::Unavailable(format!("kafka did not create the topics within {bound:?}")))?
        .map_err(|e| unavailable("kafka did not create the topics", e))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions = settings.partitions, "kafka topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::Unavailable(format!("cannot create kafka topic {topic}: {code}")))
            }
        }
    }
    Ok(())
}

/// Where each partition of `topics` ends now (its high watermark), waiting for new topics to show up in the
/// metadata.
async fn topic_ends(
    settings: &KafkaSettings,
    producer: &FutureProducer,
    topics: Vec<String>,
) -> Result<HashMap<(String, i32), i64>, BusError> {
    let producer = producer.clone();
    let bound = settings.startup_timeout;
    let configured = settings.partitions;
    tokio::task::spawn_blocking(move || -> Result<HashMap<(String, i32), i64>, KafkaError> {
        let deadline = std::time::Instant::now() + bound;
        let left = || deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(100));
        let mut ends = HashMap::new();
        for topic in topics {
            let partitions = loop {
                let metadata = producer.client().fetch_metadata(Some(&topic), left())?;
                let count =
                    metadata.topics().first().filter(|t| t.error().is_none()).map_or(0, |t| t.partitions().len());
                if count > 0 {
                    break i32::try_from(count).unwrap_or(i32::MAX);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition));
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if partitions != configured {
                tracing::info!(%topic, partitions, configured, "kafka topic exists with another partition count; kept");
            }
            for partition in 0..partitions {
                let (_, high) = producer.client().fetch_watermarks(&topic, partition, left())?;
                ends.insert((topic.clone(), partition), high);
            }
        }
        Ok(ends)
    })
    .await
    .map_err(|e| unavailable("reading the kafka topics", e))?
    .map_err(|e| unavailable("cannot read the kafka topics", e))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A port nothing listens on.
    const NOWHERE: &str = "127.0.0.1:1";

    fn settings(brokers: &str) -> KafkaSettings {
        let mut settings = KafkaSettings::new(brokers, "unit", 3, "unit");
        settings.publish_timeout = Duration::from_secs(1);
        settings.startup_timeout = Duration::from_secs(2);
        settings
    }

    /// A bus whose broker went away after it connected.
    fn disconnected() -> KafkaBus {
        let settings = settings(NOWHERE);
        KafkaBus {
            topics: KINDS.iter().map(|kind| (*kind, settings.topic(kind))).collect(),
            producer: RwLock::new(settings.producer_config().create().unwrap()),
            feed: broadcast::channel(1).0,
            every_process_sinks: Arc::default(),
            shared_attached: Mutex::new(false),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            settings,
        }
    }

    fn record() -> EventRecord {
        EventRecord {
            id: "order:o1/1".into(),
            stream: "order:o1".into(),
            seq: 1,
            event_type: "order.placed".into(),
            recorded_at: chrono::Utc::now(),
            payload: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn publish_gives_up_within_its_timeout_when_the_broker_is_unreachable() {
        let bus = disconnected();
        let started = Instant::now();
        let outcome = bus.publish(&record()).await;
        let took = started.elapsed();
        assert!(matches!(outcome, Err(BusError::Unavailable(_))), "{outcome:?}");
        assert!(took < bus.settings.publish_timeout + Duration::from_secs(2), "took {took:?}");
    }

    #[tokio::test]
    async fn a_batch_of_many_entities_gives_up_within_about_one_timeout_not_one_per_event() {
        let bus = disconnected();
        let events: Vec<EventRecord> = (0..8)
            .map(|n| EventRecord { id: format!("cart:u{n}/1"), stream: format!("cart:u{n}"), ..record() })
            .collect();
        let started = Instant::now();
        let outcome = bus.publish_batch(&events).await;
        let took = started.elapsed();
        assert!(matches!(outcome, Err((0, BusError::Unavailable(_)))), "{outcome:?}");
        // librdkafka checks message timeouts once a second, so one timeout of 1 s takes up to 2 s.
        assert!(took < bus.settings.publish_timeout * 4, "took {took:?} for {} events", events.len());
    }

    #[tokio::test]
    async fn ping_reports_an_unreachable_broker_within_the_readiness_probe() {
        let bus = disconnected();
        let started = Instant::now();
        assert!(matches!(bus.ping().await, Err(BusError::Unavailable(_))));
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn connect_fails_within_the_startup_bound_when_the_broker_is_unreachable() {
        let started = Instant::now();
        let outcome = KafkaBus::connect(&settings(NOWHERE)).await.map(drop);
        assert!(matches!(outcome, Err(BusError::Unavailable(_))), "{outcome:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn an_event_of_a_kind_without_a_topic_is_refused_as_misconfiguration() {
        let bus = disconnected();
        let event = EventRecord { id: "user:u1/1".into(), stream: "user:u1".into(), ..record() };
        assert!(matches!(bus.publish(&event).await, Err(BusError::Config(message)) if message.contains("`user`")));
    }

    #[test]
    fn settings_are_checked_before_anything_connects() {
        let bad = |change: fn(&mut KafkaSettings)| {
            let mut settings = settings("localhost:9092");
            change(&mut settings);
            settings.check().unwrap_err().to_string()
        };
        assert!(bad(|s| s.brokers = " ".into()).contains("brokers"));
        assert!(bad(|s| s.topic_prefix = "shop/1".into()).contains("shop/1"));
        assert!(bad(|s| s.partitions = 0).contains("partitions"));
        assert!(bad(|s| s.group_id = String::new()).contains("group"));
        assert!(settings("localhost:9092").check().is_ok());
        assert_eq!(settings("localhost:9092").topic("order"), "unit.order");
        let protocol = bad(|s| s.security.protocol = "carrier-pigeon".into());
        assert!(protocol.contains("security_protocol") && protocol.contains("carrier-pigeon"), "{protocol}");
    }

    /// One function configures every client, so the producer, the consumers and the admin client all reach the
    /// brokers the same way; nothing is set that was not asked for, and the password is never shown.
    #[test]
    fn every_client_gets_the_security_settings() {
        let plain = settings("localhost:9092");
        for key in ["security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location"] {
            assert_eq!(plain.base_config().get(key), None, "{key}");
        }
        let mut secured = settings("localhost:9092");
        secured.security = KafkaSecurity {
            protocol: "sasl_plaintext".into(),
            sasl_mechanism: "PLAIN".into(),
            sasl_username: "shop".into(),
            sasl_password: "kafka-pass-word".into(),
            ..KafkaSecurity::default()
        };
        assert!(secured.check().is_ok(), "SASL/PLAIN needs nothing but librdkafka");
        for config in [secured.base_config(), secured.producer_config()] {
            assert_eq!(config.get("security.protocol"), Some("sasl_plaintext"));
            assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
            assert_eq!(config.get("sasl.username"), Some("shop"));
            assert_eq!(config.get("sasl.password"), Some("kafka-pass-word"));
            assert_eq!(config.get("ssl.ca.location"), None);
        }
        let shown = format!("{secured:?}");
        assert!(!shown.contains("kafka-pass-word") && shown.contains("<redacted>"), "{shown}");
    }
}
