//! The event bus contract: plain async functions over `Arc<dyn EventBus>`, run below for the in-process bus and for
//! Kafka. A bus is done when it passes them. Every check allows what the contract allows, redelivery, and judges
//! events after dropping repeated ids, as every consumer does.
//!
//! The in-process bus is one process: the checks about two processes (`every_process_sees_every_event`,
//! `once_sinks_share_the_events`, `an_unhandled_event_outlives_its_process`) do not apply to it, since two
//! `InProcessBus`es share nothing. Its redelivery is the publisher's: a failing sink fails `publish`, and the outbox
//! relay (here `publish_like_the_relay`) publishes the event again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use commercex::bridge::{EventBus, EventSink, Sinks};
use commercex::store::EventRecord;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Room for a group rebalance or a broker retry on a loaded machine; passing runs take a fraction of it.
const DEADLINE: Duration = Duration::from_secs(60);
const KINDS: [&str; 5] = ["product", "cart", "order", "payment", "coupon"];

// ---- the contract

/// Every event published reaches a subscriber, exactly as it was published.
pub async fn a_subscriber_receives_every_event(bus: Arc<dyn EventBus>) {
    let mut feed = bus.subscribe();
    let published = interleaved(4, 5);
    publish_like_the_relay(bus.as_ref(), &published).await;
    let received = receive(&mut feed, &published, "the subscriber").await;
    assert_all_in_order(&received, &published, "the subscriber");
    bus.close().await;
}

/// Over many entities of every kind, each entity's events reach the subscriber and both kinds of sinks in the order
/// they were published.
pub async fn each_entity_keeps_its_order(bus: Arc<dyn EventBus>) {
    let (local, once) = (Recorder::new("local"), Recorder::new("once"));
    bus.attach(Sinks { every_process: vec![local.clone()], once: vec![once.clone()] }).await.expect("attach");
    let mut feed = bus.subscribe();
    let published = interleaved(50, 20);
    publish_like_the_relay(bus.as_ref(), &published).await;
    let received = receive(&mut feed, &published, "the subscriber").await;
    assert_all_in_order(&received, &published, "the subscriber");
    for sink in [&local, &once] {
        eventually(&format!("{} handled every event", sink.name), || sink.has_all(&published)).await;
        assert_all_in_order(&sink.handled(), &published, sink.name);
    }
    bus.close().await;
}

/// With two processes on one bus, each process's subscriber and every-process sinks see every event, whichever
/// process published it.
pub async fn every_process_sees_every_event(a: Arc<dyn EventBus>, b: Arc<dyn EventBus>) {
    let (sink_a, sink_b) = (Recorder::new("a's every-process sink"), Recorder::new("b's every-process sink"));
    a.attach(Sinks { every_process: vec![sink_a.clone()], once: vec![] }).await.expect("attach a");
    b.attach(Sinks { every_process: vec![sink_b.clone()], once: vec![] }).await.expect("attach b");
    let (mut feed_a, mut feed_b) = (a.subscribe(), b.subscribe());
    let published = interleaved(10, 10);
    // An entity lives in one process at a time: each entity's events are published by one of the two.
    let (from_a, from_b): (Vec<EventRecord>, Vec<EventRecord>) =
        published.iter().cloned().partition(|e| e.stream.ends_with(['0', '2', '4', '6', '8']));
    assert!(!from_a.is_empty() && !from_b.is_empty());
    tokio::join!(publish_like_the_relay(a.as_ref(), &from_a), publish_like_the_relay(b.as_ref(), &from_b));
    let received_a = receive(&mut feed_a, &published, "a's subscriber").await;
    let received_b = receive(&mut feed_b, &published, "b's subscriber").await;
    assert_all_in_order(&received_a, &published, "a's subscriber");
    assert_all_in_order(&received_b, &published, "b's subscriber");
    for sink in [&sink_a, &sink_b] {
        eventually(&format!("{} handled every event", sink.name), || sink.has_all(&published)).await;
        assert_all_in_order(&sink.handled(), &published, sink.name);
    }
    tokio::join!(a.close(), b.close());
}

/// With two processes on one bus, their once-sinks share the events: together they handle every event, both take
/// part, and not every event is handled by both (as every-process sinks would).
pub async fn once_sinks_share_the_events(a: Arc<dyn EventBus>, b: Arc<dyn EventBus>) {
    // One record for both, as a database shared by the processes would keep.
    let ledger = Recorder::new("the shared sinks");
    let (sink_a, sink_b) = (ledger.as_process("a"), ledger.as_process("b"));
    a.attach(Sinks { every_process: vec![], once: vec![sink_a] }).await.expect("attach a");
    b.attach(Sinks { every_process: vec![], once: vec![sink_b] }).await.expect("attach b");
    let published = interleaved(40, 5);
    publish_like_the_relay(a.as_ref(), &published).await;
    eventually("the shared sinks handled every event", || ledger.has_all(&published)).await;
    // Proving that a process does *not* handle an event takes waiting: until the sinks have been idle a while.
    ledger.quiet_for(Duration::from_secs(1)).await;
    assert_all_in_order(&ledger.handled(), &published, ledger.name);

    let by_process = ledger.processes_by_id();
    let took_part = |p: &str| by_process.values().filter(|ps| ps.contains(p)).count();
    let by_both = by_process.values().filter(|ps| ps.len() > 1).count();
    assert!(
        took_part("a") > 0 && took_part("b") > 0,
        "both processes take part: a {}, b {}",
        took_part("a"),
        took_part("b")
    );
    assert!(by_both < published.len(), "each event goes to one process, not to every one ({by_both} to both)");
    tokio::join!(a.close(), b.close());
}

/// A sink that fails gets the event again until it handles it, and the entity's later events reach it only after
/// that one; every other event is still handled.
pub async fn a_failing_sink_gets_the_event_again(bus: Arc<dyn EventBus>) {
    let published = interleaved(3, 5);
    let (local, once) = (Recorder::new("local"), Recorder::new("once"));
    let local_fails = Flaky::new(&published[4].id, 2, local.clone());
    let once_fails = Flaky::new(&published[7].id, 2, once.clone());
    bus.attach(Sinks { every_process: vec![local_fails.clone()], once: vec![once_fails.clone()] })
        .await
        .expect("attach");
    publish_like_the_relay(bus.as_ref(), &published).await;
    for (sink, flaky) in [(&local, &local_fails), (&once, &once_fails)] {
        eventually(&format!("{} handled every event", sink.name), || sink.has_all(&published)).await;
        assert_all_in_order(&sink.handled(), &published, sink.name);
        assert!(
            flaky.attempts() >= 3,
            "{} got {} twice refused, then handled: {} attempts",
            sink.name,
            flaky.target,
            flaky.attempts()
        );
    }
    bus.close().await;
}

/// An event that a once-sink could not handle before its process stopped is handled by the next process of the
/// group, with the entity's later events after it; what the stopped process handled is not handed out again.
pub async fn an_unhandled_event_outlives_its_process<F>(a: Arc<dyn EventBus>, connect_b: F)
where
    F: Future<Output = Arc<dyn EventBus>>,
{
    let published: Vec<EventRecord> = (1..=3).map(|seq| event("order:outlives", seq)).collect();
    let handled_by_a = Recorder::new("a's once-sink");
    let refusing = Flaky::new(&published[1].id, usize::MAX, handled_by_a.clone());
    a.attach(Sinks { every_process: vec![], once: vec![refusing.clone()] }).await.expect("attach a");
    publish_like_the_relay(a.as_ref(), &published).await;
    eventually("a's sink tried the second event twice", || refusing.attempts() >= 2).await;
    a.close().await;
    assert_eq!(ids(&handled_by_a.handled()), [published[0].id.as_str()], "a handled only the first event");

    let b = connect_b.await;
    let handled_by_b = Recorder::new("b's once-sink");
    b.attach(Sinks { every_process: vec![], once: vec![handled_by_b.clone()] }).await.expect("attach b");
    eventually("b handled the events a left", || handled_by_b.has_all(&published[1..])).await;
    assert_all_in_order(&handled_by_b.handled(), &published[1..], handled_by_b.name);
    b.close().await;
}

// ---- events, sinks and checks

fn event(stream: &str, seq: u64) -> EventRecord {
    EventRecord {
        id: format!("{stream}/{seq}"),
        stream: stream.to_string(),
        seq,
        event_type: "test.happened".into(),
        recorded_at: chrono::Utc::now(),
        payload: serde_json::json!({ "seq": seq, "note": "text ✓ \"quoted\"" }),
    }
}

/// `per_entity` events for each of `entities` entities spread over every kind, interleaved as commits of different
/// entities are.
fn interleaved(entities: usize, per_entity: u64) -> Vec<EventRecord> {
    let streams: Vec<String> = (0..entities).map(|i| format!("{}:e{i}", KINDS[i % KINDS.len()])).collect();
    (1..=per_entity).flat_map(|seq| streams.iter().map(move |stream| event(stream, seq))).collect()
}

fn ids(events: &[EventRecord]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// Publishes in commit order as the outbox relay does: in batches, and when the bus takes only the first events of
/// a batch, again from the first one it did not take.
async fn publish_like_the_relay(bus: &dyn EventBus, events: &[EventRecord]) {
    const BATCH: usize = 256;
    let mut next = 0;
    let deadline = Instant::now() + DEADLINE;
    while next < events.len() {
        let batch = &events[next..(next + BATCH).min(events.len())];
        match bus.publish_batch(batch).await {
            Ok(()) => next += batch.len(),
            Err((taken, error)) => {
                assert!(Instant::now() < deadline, "{} was never taken: {error}", batch[taken].id);
                next += taken;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// What `feed` delivers until every event of `expected` has arrived.
async fn receive(feed: &mut broadcast::Receiver<EventRecord>, expected: &[EventRecord], who: &str) -> Vec<EventRecord> {
    let mut missing: HashSet<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    let mut received = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, feed.recv()).await {
            Ok(Ok(event)) => {
                missing.remove(event.id.as_str());
                received.push(event);
            }
            Ok(Err(error)) => panic!("{who}: {error}"),
            Err(_) => panic!("{who} is missing {} events, e.g. {:?}", missing.len(), missing.iter().next()),
        }
    }
    received
}

/// `received`, once repeated ids are dropped, is `published`, with each stream in publishing order.
#[track_caller]
fn assert_all_in_order(received: &[EventRecord], published: &[EventRecord], who: &str) {
    let mut first = HashSet::new();
    let distinct: Vec<&EventRecord> = received.iter().filter(|e| first.insert(e.id.as_str())).collect();
    let expected: HashMap<&str, &EventRecord> = published.iter().map(|e| (e.id.as_str(), e)).collect();
    assert_eq!(distinct.len(), published.len(), "{who} got {} distinct events of {}", distinct.len(), published.len());
    let mut last_seq: HashMap<&str, u64> = HashMap::new();
    for event in distinct {
        let Some(original) = expected.get(event.id.as_str()) else { panic!("{who} got {}, never published", event.id) };
        assert_eq!(event, *original, "{who} got {} altered", event.id);
        let last = last_seq.insert(event.stream.as_str(), event.seq).unwrap_or(0);
        assert!(last < event.seq, "{who} got {} after seq {last} of its stream", event.id);
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records each event it handles, in order, with the process that handled it.
struct Recorder {
    name: &'static str,
    process: &'static str,
    handled: Arc<Mutex<Vec<(&'static str, EventRecord)>>>,
}

impl Recorder {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self { name, process: "", handled: Arc::default() })
    }

    /// A sink for `process` writing to the same record.
    fn as_process(&self, process: &'static str) -> Arc<Self> {
        Arc::new(Self { name: self.name, process, handled: self.handled.clone() })
    }

    fn handled(&self) -> Vec<EventRecord> {
        self.handled.lock().unwrap().iter().map(|(_, e)| e.clone()).collect()
    }

    fn has_all(&self, events: &[EventRecord]) -> bool {
        let handled = self.handled.lock().unwrap();
        let ids: HashSet<&str> = handled.iter().map(|(_, e)| e.id.as_str()).collect();
        events.iter().all(|e| ids.contains(e.id.as_str()))
    }

    /// Returns once nothing was handled for `quiet`.
    async fn quiet_for(&self, quiet: Duration) {
        let deadline = Instant::now() + DEADLINE;
        let (mut count, mut since) = (self.handled.lock().unwrap().len(), Instant::now());
        while since.elapsed() < quiet {
            assert!(Instant::now() < deadline, "{} never stopped handling events", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.handled.lock().unwrap().len();
            if now != count {
                (count, since) = (now, Instant::now());
            }
        }
    }

    fn processes_by_id(&self) -> HashMap<String, HashSet<&'static str>> {
        let mut by_id: HashMap<String, HashSet<&'static str>> = HashMap::new();
        for (process, event) in self.handled.lock().unwrap().iter() {
            by_id.entry(event.id.clone()).or_default().insert(process);
        }
        by_id
    }
}

#[async_trait]
impl EventSink for Recorder {
    async fn handle(&self, event: &EventRecord) -> Result<(), String> {
        self.handled.lock().unwrap().push((self.process, event.clone()));
        Ok(())
    }
}

/// Refuses `target` `failures` times, then hands it (and everything else) to `then`.
struct Flaky {
    target: String,
    failures: AtomicUsize,
    attempts: AtomicUsize,
    then: Arc<Recorder>,
}

impl Flaky {
    fn new(target: &str, failures: usize, then: Arc<Recorder>) -> Arc<Self> {
        Arc::new(Self {
            target: target.to_string(),
            failures: AtomicUsize::new(failures),
            attempts: AtomicUsize::new(0),
            then,
        })
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl EventSink for Flaky {
    async fn handle(&self, event: &EventRecord) -> Result<(), String> {
        if event.id == self.target {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(format!("{} refused", event.id));
            }
        }
        self.then.handle(event).await
    }
}

// ---- the buses under contract

mod in_process {
    use std::sync::Arc;

    use commercex::bridge::{EventBus, InProcessBus};

    fn bus() -> Arc<dyn EventBus> {
        Arc::new(InProcessBus::new(4096))
    }

    #[tokio::test]
    async fn a_subscriber_receives_every_event() {
        super::a_subscriber_receives_every_event(bus()).await;
    }

    #[tokio::test]
    async fn each_entity_keeps_its_order() {
        super::each_entity_keeps_its_order(bus()).await;
    }

    #[tokio::test]
    async fn a_failing_sink_gets_the_event_again() {
        super::a_failing_sink_gets_the_event_again(bus()).await;
    }
}

mod kafka {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_trait::async_trait;
    use commercex::bridge::EventSink;
    use commercex::store::EventRecord;

    use commercex::bridge::kafka::{KafkaBus, KafkaSettings, KINDS};
    use commercex::bridge::{EventBus, Sinks};
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::{assert_all_in_order, eventually, publish_like_the_relay, Flaky, Recorder};

    /// Settings of one deployment: topics and group of its own, so tests never see each other's events.
    fn deployment() -> KafkaSettings {
        let brokers = std::env::var("COMMERCEX_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
            panic!("COMMERCEX_TEST_KAFKA_BROKERS is not set: run scripts/test.sh, or scripts/infra.sh up kafka and eval \"$(scripts/infra.sh env)\"")
        });
        let name = format!("t{}", uuid::Uuid::new_v4().simple());
        let mut settings = KafkaSettings::new(brokers, name.clone(), 3, name);
        settings.session_timeout = Duration::from_secs(6);
        settings
    }

    /// Deletes the deployment's topics, so test runs do not pile them up on the broker.
    async fn forget(settings: &KafkaSettings) {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &settings.brokers).create().expect("admin client");
        let topics: Vec<String> = KINDS.iter().map(|kind| settings.topic(kind)).collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let deleted = admin.delete_topics(&names, &AdminOptions::new()).await.expect("delete topics");
        for outcome in deleted {
            outcome.unwrap_or_else(|(topic, code)| panic!("cannot delete {topic}: {code}"));
        }
    }

    /// One process of the deployment.
    async fn process(settings: &KafkaSettings) -> Arc<dyn EventBus> {
        match KafkaBus::connect(settings).await {
            Ok(bus) => Arc::new(bus),
            Err(error) => panic!("cannot connect to Kafka at {}: {error}", settings.brokers),
        }
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_subscriber_receives_every_event() {
        let settings = deployment();
        super::a_subscriber_receives_every_event(process(&settings).await).await;
        forget(&settings).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn each_entity_keeps_its_order() {
        let settings = deployment();
        super::each_entity_keeps_its_order(process(&settings).await).await;
        forget(&settings).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn every_process_sees_every_event() {
        let settings = deployment();
        super::every_process_sees_every_event(process(&settings).await, process(&settings).await).await;
        forget(&settings).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn once_sinks_share_the_events() {
        let settings = deployment();
        super::once_sinks_share_the_events(process(&settings).await, process(&settings).await).await;
        forget(&settings).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_failing_sink_gets_the_event_again() {
        let settings = deployment();
        super::a_failing_sink_gets_the_event_again(process(&settings).await).await;
        forget(&settings).await;
    }

    /// A sink failing on one event holds up that event's partition only: other entities' events, on other
    /// partitions, are handled meanwhile, and the event's own entity goes on after it.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_held_back_event_holds_up_only_its_partition() {
        let settings = deployment();
        let bus = process(&settings).await;
        let held = super::event("order:held", 1);
        let after = super::event("order:held", 2);
        let others: Vec<_> = (1..=5).map(|seq| super::event("product:other", seq)).collect();
        let (local, once) = (Recorder::new("local"), Recorder::new("once"));
        // Six refusals: 100 ms doubling, about 6 s before the event is handled.
        let (local_refuses, once_refuses) =
            (Flaky::new(&held.id, 6, local.clone()), Flaky::new(&held.id, 6, once.clone()));
        bus.attach(Sinks { every_process: vec![local_refuses], once: vec![once_refuses] }).await.expect("attach");
        let published: Vec<_> = [held.clone(), after].into_iter().chain(others.iter().cloned()).collect();
        publish_like_the_relay(bus.as_ref(), &published).await;
        // Both sinks are watched at once: the moment each has the other entity's events, the held one must
        // still be held back.
        let sinks = [&local, &once];
        let mut seen_others = [false; 2];
        let start = std::time::Instant::now();
        while !seen_others.iter().all(|s| *s) {
            for (sink, seen) in sinks.iter().zip(seen_others.iter_mut()) {
                if !*seen && sink.has_all(&others) {
                    assert!(
                        !sink.has_all(std::slice::from_ref(&held)),
                        "{}: {} was held back until the other entity's events were handled, not as long as it kept failing",
                        sink.name,
                        held.id
                    );
                    *seen = true;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the other entity's events never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for sink in sinks {
            eventually(&format!("{} handled every event", sink.name), || sink.has_all(&published)).await;
            assert_all_in_order(&sink.handled(), &published, sink.name);
        }
        bus.close().await;
        forget(&settings).await;
    }

    /// Events held back by a failing sink are still handled, in order, when a rebalance moves partitions between
    /// processes meanwhile, whether their partition stays with the process or moves.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn held_back_events_survive_a_rebalance() {
        let settings = deployment();
        let a = process(&settings).await;
        let ledger = Recorder::new("the shared sinks");
        let refusing = Arc::new(RefuseFirstEvents {
            refuse: AtomicBool::new(true),
            tried: Mutex::default(),
            then: ledger.as_process("a"),
        });
        a.attach(Sinks { every_process: vec![], once: vec![refusing.clone()] }).await.expect("attach a");
        // Twelve entities, so that every partition of the topic has an event to hold back.
        let published: Vec<_> =
            (1..=2).flat_map(|seq| (0..12).map(move |n| super::event(&format!("order:held{n}"), seq))).collect();
        publish_like_the_relay(a.as_ref(), &published).await;
        // A held-back event stops its partition, so each partition has one event tried, again and again.
        let partitions = usize::try_from(settings.partitions).unwrap();
        eventually("every partition holds an event back", || refusing.tried.lock().unwrap().len() == partitions).await;

        let b = process(&settings).await;
        b.attach(Sinks { every_process: vec![], once: vec![ledger.as_process("b")] }).await.expect("attach b");
        refusing.refuse.store(false, Ordering::SeqCst);
        eventually("the shared sinks handled every event", || ledger.has_all(&published)).await;
        assert_all_in_order(&ledger.handled(), &published, ledger.name);
        tokio::join!(a.close(), b.close());
        forget(&settings).await;
    }

    /// Refuses each entity's first event while `refuse` is set.
    struct RefuseFirstEvents {
        refuse: AtomicBool,
        tried: Mutex<HashSet<String>>,
        then: Arc<Recorder>,
    }

    #[async_trait]
    impl EventSink for RefuseFirstEvents {
        async fn handle(&self, event: &EventRecord) -> Result<(), String> {
            if event.seq == 1 && self.refuse.load(Ordering::SeqCst) {
                self.tried.lock().unwrap().insert(event.id.clone());
                return Err(format!("{} refused", event.id));
            }
            self.then.handle(event).await
        }
    }

    /// What other consumers of the topics rely on: the kind's topic, the entity id as key, the event id header, the
    /// record's JSON as payload.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_record_is_the_event_on_its_kinds_topic_keyed_by_entity() {
        let settings = deployment();
        let bus = process(&settings).await;
        let event = super::event("payment:pay-ord_7", 1);
        bus.publish(&event).await.expect("published");
        bus.close().await;

        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", format!("{}-reader", settings.group_id))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let topic = format!("{}.payment", settings.topic_prefix);
        let mut partitions = TopicPartitionList::new();
        for partition in 0..settings.partitions {
            partitions.add_partition_offset(&topic, partition, Offset::Beginning).expect("partition");
        }
        reader.assign(&partitions).expect("assign");
        let message = tokio::task::spawn_blocking(move || loop {
            if let Some(message) = reader.poll(Duration::from_secs(10)) {
                break message.expect("a record").detach();
            }
        });
        let message = tokio::time::timeout(super::DEADLINE, message).await.expect("a record in time").unwrap();
        assert_eq!(message.key(), Some(&b"pay-ord_7"[..]));
        let headers = message.headers().expect("headers");
        let header = |key: &str| headers.iter().find(|h| h.key == key).and_then(|h| h.value);
        assert_eq!(header("event-id"), Some(&b"payment:pay-ord_7/1"[..]));
        assert_eq!(header("event-type"), Some(&b"test.happened"[..]));
        let payload: serde_json::Value = serde_json::from_slice(message.payload().expect("payload")).expect("JSON");
        assert_eq!(payload, serde_json::to_value(&event).unwrap());
        assert_eq!(payload["type"], "test.happened", "the documented shape: {payload}");
        forget(&settings).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn an_unhandled_event_outlives_its_process() {
        let settings = deployment();
        super::an_unhandled_event_outlives_its_process(process(&settings).await, process(&settings)).await;
        forget(&settings).await;
    }

    /// With a secret (`cluster.secret`), the bus signs each record it publishes, and a record written to its topics
    /// by anything else, unsigned or signed with another key, reaches neither the subscriber nor any sink.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn with_a_secret_only_records_the_bus_signed_are_handed_on() {
        use commercex::bridge::signing::{self, Signer};
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};

        let mut settings = deployment();
        settings.signer = Signer::new("contract-test-cluster-secret-0123456789");
        let bus = process(&settings).await;
        let (local, once) = (Recorder::new("local"), Recorder::new("once"));
        bus.attach(Sinks { every_process: vec![local.clone()], once: vec![once.clone()] }).await.expect("attach");
        let mut feed = bus.subscribe();

        // Forged records of the entity `order:target`, ahead of its real event on the same partition (the bus's
        // partitioner).
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("partitioner", "murmur2_random")
            .create()
            .expect("producer");
        let topic = settings.topic("order");
        let wrong = Signer::new("another-secret-that-is-long-enough-0123456789").unwrap();
        for (seq, signer) in [(100, None), (101, Some(&wrong))] {
            let forged = super::event("order:target", seq);
            let payload = serde_json::to_vec(&forged).unwrap();
            let mut headers = OwnedHeaders::new().insert(Header { key: "event-id", value: Some(forged.id.as_str()) });
            let signature = signer.map(|s: &Signer| s.sign_event(&topic, b"target", &payload));
            if let Some(signature) = &signature {
                headers = headers.insert(Header { key: signing::HEADER, value: Some(signature.as_str()) });
            }
            let record = FutureRecord::to(&topic).key("target").payload(&payload).headers(headers);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("forged record taken");
        }
        let published: Vec<EventRecord> =
            std::iter::once(super::event("order:target", 1)).chain(super::interleaved(5, 2)).collect();
        publish_like_the_relay(bus.as_ref(), &published).await;
        // The forged records come before the real one in their partition: once it is handled, so were they.
        let received = super::receive(&mut feed, &published, "the subscriber").await;
        assert_all_in_order(&received, &published, "the subscriber");
        for sink in [&local, &once] {
            eventually(&format!("{} handled every event", sink.name), || sink.has_all(&published)).await;
            assert_all_in_order(&sink.handled(), &published, sink.name);
        }
        bus.close().await;
        forget(&settings).await;
    }
}

/// Against a broker that authenticates its clients and speaks only TLS: a private nisshi started through
/// `scripts/infra.sh` with SCRAM users and a certificate of its own.
mod kafka_authenticated {
    use std::process::Command;
    use std::sync::Arc;
    use std::time::Duration;

    use commercex::bridge::kafka::{KafkaBus, KafkaSecurity, KafkaSettings};
    use commercex::bridge::EventBus;

    const USER: &str = "commercex";
    const PASSWORD: &str = "scram-test-password-1";

    /// The broker, stopped (by its pid, through the same script) when dropped.
    struct Broker {
        run: tempfile::TempDir,
        port: u16,
    }

    impl Broker {
        fn infra(&self, action: &str) -> Command {
            let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/infra.sh"));
            command
                .args([action, "kafka"])
                .env("COMMERCEX_INFRA_RUN", self.run.path())
                .env("COMMERCEX_INFRA_KAFKA_PORT", self.port.to_string())
                .env("COMMERCEX_INFRA_KAFKA_USERS", format!("{USER}:{PASSWORD}"))
                .env("COMMERCEX_INFRA_KAFKA_TLS", "1");
            command
        }

        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let broker = Self { run: tempfile::tempdir().unwrap(), port };
            assert!(broker.infra("up").status().expect("runs scripts/infra.sh").success(), "the broker did not start");
            broker
        }

        fn ca(&self) -> String {
            self.run.path().join("kafka/tls/cert.pem").display().to_string()
        }

        /// A deployment of its own; a refused client gives up after `startup` (each start-up step's bound).
        fn settings(&self, security: KafkaSecurity, startup: Duration) -> KafkaSettings {
            let name = format!("t{}", uuid::Uuid::new_v4().simple());
            let mut settings = KafkaSettings::new(format!("127.0.0.1:{}", self.port), name.clone(), 3, name);
            settings.startup_timeout = startup;
            settings.security = security;
            settings
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.infra("down").status();
        }
    }

    fn scram(password: &str, ca: &str) -> KafkaSecurity {
        KafkaSecurity {
            protocol: "sasl_ssl".into(),
            sasl_mechanism: "SCRAM-SHA-512".into(),
            sasl_username: USER.into(),
            sasl_password: password.into(),
            ssl_ca_location: ca.into(),
            ..KafkaSecurity::default()
        }
    }

    /// `bus.kafka.security_protocol = "sasl_ssl"` with SCRAM: the configured user publishes and consumes over TLS;
    /// a wrong password, no SASL, or no TLS gets nothing from the broker.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn only_the_configured_user_over_tls_gets_through() {
        let broker = Broker::start();
        let admitted = broker.settings(scram(PASSWORD, &broker.ca()), Duration::from_secs(20));
        let bus: Arc<dyn EventBus> = match KafkaBus::connect(&admitted).await {
            Ok(bus) => Arc::new(bus),
            Err(error) => panic!("the configured user over TLS was refused: {error}"),
        };
        super::a_subscriber_receives_every_event(bus).await;

        let refused = [
            ("a wrong password", scram("not-the-password-1", &broker.ca())),
            (
                "TLS without SASL",
                KafkaSecurity { protocol: "ssl".into(), ssl_ca_location: broker.ca(), ..KafkaSecurity::default() },
            ),
            ("SASL without TLS", KafkaSecurity { protocol: "sasl_plaintext".into(), ..scram(PASSWORD, "") }),
            ("neither", KafkaSecurity::default()),
        ];
        for (what, security) in refused {
            let settings = broker.settings(security, Duration::from_secs(4));
            let connected = tokio::time::timeout(Duration::from_secs(30), KafkaBus::connect(&settings)).await;
            assert!(matches!(connected, Ok(Err(_))), "{what}: connected anyway (or hung)");
        }
    }
}
