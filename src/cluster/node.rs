//! One node of the cluster: its membership in the commands group (which shards it hosts), the requests it serves
//! for other nodes, and the calls it forwards to them. Both consumers poll on threads of their own, so that the
//! group's rebalance callbacks, which run inside `poll`, may wait for this node's entities to drain.
//!
//! The commands topic is trusted with nothing. Every call ([`Envelope`]) carries its sender's node id and a
//! signature (HMAC-SHA256 with `cluster.secret`, [`crate::bridge::signing`]) over every other field, the request
//! exactly as it travels included. The host checks it, in constant time, before it reads the request, and refuses
//! (drops, counts in `commercex_cluster_refused_total`, warns at most every 10 s) a call that is unsigned or signed
//! otherwise, whose deadline has passed or lies further ahead than a node ever sets one (twice
//! `cluster.request_timeout_ms`), or whose reply topic is not `{prefix}.replies.{from}` for a valid node id. A
//! call it served is remembered until its deadline has passed, so replaying a captured call is dropped as a repeat
//! for as long as its deadline would let it in (and a replay under a new call id fails the signature). Answers are
//! signed the same way and checked by the caller. The host bounds what a call may ask: a wait for an entity to
//! settle at most `cluster.request_timeout_ms`, each call at most until its deadline, and at most
//! [`FORWARDED_TASKS`] calls at once; past that the command reader waits for a slot (the caller sees a slow answer
//! or a 503, never an unbounded pile of tasks).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::Shards;
use crate::actors::placement::{Host, Placement, RemoteError, Request};
use crate::bridge::kafka::{create_topics, unavailable, KafkaSettings};
use crate::bridge::signing::{self, Channel, Domain, Refusal, Signer};
use crate::bridge::BusError;
use crate::faults::Chaos;

/// How long a revoked shard's entities may take to drain before the partition is let go anyway (fencing covers
/// what is still running).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
/// The longest a fetch of requests or answers waits at the broker for data to arrive.
const FETCH_WAIT: Duration = Duration::from_millis(10);
/// Forwarded calls served at once on this node; past it the command reader waits for one to finish.
pub const FORWARDED_TASKS: usize = 256;
/// A call's deadline may lie at most this many times `cluster.request_timeout_ms` ahead (a node sets it one
/// timeout ahead; the rest is room for clocks that disagree).
const DEADLINE_AHEAD: u32 = 2;

/// A forwarded call, as it travels on the commands topic (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    /// Unique per call: the answer names it, and a repeat is dropped.
    call: String,
    /// The sending node's id; its reply topic is `{prefix}.replies.{from}`.
    #[serde(default)]
    from: String,
    kind: String,
    entity: String,
    /// The [`Request`], exactly as signed.
    request: Box<RawValue>,
    /// The caller's reply topic.
    reply_to: String,
    /// Milliseconds since the epoch after which the caller has given up.
    deadline_ms: i64,
    /// [`Domain::Envelope`] signature of every field above, in this order (see [`Envelope::signature`]).
    #[serde(default)]
    sig: String,
}

impl Envelope {
    fn signature(&self, signer: &Signer) -> String {
        let deadline = self.deadline_ms.to_be_bytes();
        signer.sign(Domain::Envelope, &self.signed_fields(&deadline))
    }

    fn signed_fields<'a>(&'a self, deadline: &'a [u8; 8]) -> [&'a [u8]; 7] {
        [
            self.call.as_bytes(),
            self.from.as_bytes(),
            self.kind.as_bytes(),
            self.entity.as_bytes(),
            self.request.get().as_bytes(),
            self.reply_to.as_bytes(),
            deadline.as_slice(),
        ]
    }

    /// Whether the host may run this call, checked before its request is read: its signature first (constant
    /// time), then its deadline (not past, not more than `max_ahead_ms` ahead of `now_ms`), then its reply topic
    /// (exactly `{prefix}.replies.{from}`, `from` a valid node id).
    fn check(&self, signer: &Signer, prefix: &str, now_ms: i64, max_ahead_ms: i64) -> Result<(), Refusal> {
        if self.sig.is_empty() {
            return Err(Refusal::Unsigned);
        }
        let deadline = self.deadline_ms.to_be_bytes();
        if !signer.verify(Domain::Envelope, &self.signed_fields(&deadline), &self.sig) {
            return Err(Refusal::Signature);
        }
        if self.deadline_ms < now_ms {
            return Err(Refusal::Expired);
        }
        if self.deadline_ms > now_ms.saturating_add(max_ahead_ms) {
            return Err(Refusal::Deadline);
        }
        if !is_node_id(&self.from) || self.reply_to != reply_topic(prefix, &self.from) {
            return Err(Refusal::ReplyTo);
        }
        Ok(())
    }
}

/// The answer to a forwarded call, on the caller's reply topic (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    call: String,
    /// The answering node's id.
    #[serde(default)]
    from: String,
    /// The `Result<Value, RemoteError>`, exactly as signed.
    result: Box<RawValue>,
    /// [`Domain::Answer`] signature of the call id, `from`, the reply topic it was sent to, and the result.
    #[serde(default)]
    sig: String,
}

impl Answer {
    fn signed_fields<'a>(&'a self, to: &'a str) -> [&'a [u8]; 4] {
        [self.call.as_bytes(), self.from.as_bytes(), to.as_bytes(), self.result.get().as_bytes()]
    }

    fn signature(&self, signer: &Signer, to: &str) -> String {
        signer.sign(Domain::Answer, &self.signed_fields(to))
    }

    /// Whether this answer was signed by a node for the reply topic `to` (this node's).
    fn check(&self, signer: &Signer, to: &str) -> Result<(), Refusal> {
        if self.sig.is_empty() {
            return Err(Refusal::Unsigned);
        }
        if !signer.verify(Domain::Answer, &self.signed_fields(to), &self.sig) {
            return Err(Refusal::Signature);
        }
        Ok(())
    }
}

/// A node id as `cluster.node_id` allows it: 1 to 100 of a-z A-Z 0-9 `.` `_` `-`.
fn is_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 100 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The reply topic of node `id`.
fn reply_topic(prefix: &str, id: &str) -> String {
    format!("{prefix}.replies.{id}")
}

/// A forwarded request as the host runs it: a wait for the entity to settle is bounded by the cluster's request
/// timeout, whatever the message asks (`u64::MAX` included).
fn bounded(request: Request, limit: Duration) -> Request {
    match request {
        Request::Settled { timeout_ms } => {
            let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            Request::Settled { timeout_ms: timeout_ms.min(limit_ms) }
        }
        other => other,
    }
}

/// The calls this node served, each remembered until its deadline has passed: a call arriving again while its
/// deadline still lets it in is a repeat (a redelivery or a replay), and later the deadline check refuses it.
#[derive(Default)]
struct Served {
    ids: HashSet<String>,
    by_deadline: BTreeSet<(i64, String)>,
}

impl Served {
    /// Remembers `call` until `deadline_ms`, forgetting the calls whose deadline is before `now_ms`; false if it
    /// was remembered already.
    fn insert(&mut self, call: &str, deadline_ms: i64, now_ms: i64) -> bool {
        while self.by_deadline.first().is_some_and(|(deadline, _)| *deadline < now_ms) {
            if let Some((_, id)) = self.by_deadline.pop_first() {
                self.ids.remove(&id);
            }
        }
        if !self.ids.insert(call.to_string()) {
            return false;
        }
        self.by_deadline.insert((deadline_ms, call.to_string()));
        true
    }
}

/// A field of a refused message, for the log: at most 64 characters, quoted and escaped.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    format!("{cut:?}")
}

/// The time left until `deadline_ms` (zero once it has passed).
fn until(deadline_ms: i64) -> Duration {
    let left = deadline_ms.saturating_sub(chrono::Utc::now().timestamp_millis());
    Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

/// The JSON record of a forwarded call as a node sends it, signed with `signer` (unsigned without one): for tests
/// that play a forger on the commands topic.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn envelope_record(
    signer: Option<&Signer>,
    call: &str,
    from: &str,
    kind: &str,
    entity: &str,
    request: &Request,
    reply_to: &str,
    deadline_ms: i64,
) -> serde_json::Result<Vec<u8>> {
    let mut envelope = Envelope {
        call: call.to_string(),
        from: from.to_string(),
        kind: kind.to_string(),
        entity: entity.to_string(),
        request: serde_json::value::to_raw_value(request)?,
        reply_to: reply_to.to_string(),
        deadline_ms,
        sig: String::new(),
    };
    if let Some(signer) = signer {
        envelope.sig = envelope.signature(signer);
    }
    serde_json::to_vec(&envelope)
}

/// What `GET /api/admin/cluster` shows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub node: String,
    pub partitions: i32,
    /// The shards this node hosts.
    pub owned: Vec<i32>,
    /// The members of the commands group and the partitions each was assigned, as the broker reports them.
    pub members: Vec<Member>,
    /// Requests on this node's partitions not yet read.
    pub commands_lag: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub node: String,
    pub host: String,
    pub partitions: Vec<i32>,
}

type Pending = Mutex<HashMap<String, oneshot::Sender<Result<Value, RemoteError>>>>;

pub struct ClusterNode {
    id: String,
    settings: KafkaSettings,
    shards: Arc<Shards>,
    producer: FutureProducer,
    commands: String,
    replies: String,
    group: String,
    timeout: Duration,
    pending: Pending,
    /// Signs this node's calls and answers, and checks the others'.
    signer: Signer,
    /// One permit per forwarded call being served ([`FORWARDED_TASKS`]).
    slots: Arc<Semaphore>,
    hosts: OnceLock<Vec<Arc<dyn Host>>>,
    assigned: Arc<Notify>,
    stop: AtomicBool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The next offset to read, per partition of the commands topic this node reads.
    positions: Mutex<HashMap<i32, i64>>,
    served: Mutex<Served>,
    runtime: tokio::runtime::Handle,
    /// May make this node drop out of the group for a while (`chaos.drop_out_every_secs`).
    chaos: Arc<Chaos>,
}

impl ClusterNode {
    /// Creates the commands topic and this node's reply topic when missing. The node hosts nothing until
    /// [`ClusterNode::serve`] has joined the group and been assigned partitions.
    pub async fn connect(
        settings: &KafkaSettings,
        id: &str,
        timeout: Duration,
        chaos: Arc<Chaos>,
    ) -> Result<Arc<Self>, BusError> {
        settings.check()?;
        let Some(signer) = settings.signer.clone() else {
            return Err(BusError::Config(
                "cluster.secret is not set: the nodes sign what they send each other with it".into(),
            ));
        };
        if !is_node_id(id) {
            return Err(BusError::Config(format!("`{id}` is not a node id (1 to 100 of a-z A-Z 0-9 . _ -)")));
        }
        let producer: FutureProducer =
            settings.producer_config().create().map_err(|e| unavailable("cannot create the Kafka producer", e))?;
        let commands = format!("{}.commands", settings.topic_prefix);
        let replies = reply_topic(&settings.topic_prefix, id);
        create_topics(settings, [&commands, &replies].into_iter()).await?;
        Ok(Arc::new(Self {
            id: id.to_string(),
            settings: settings.clone(),
            shards: Arc::new(Shards::new(settings.partitions, settings.session_timeout)),
            producer,
            commands,
            replies,
            group: format!("{}.commands", settings.group_id),
            timeout,
            pending: Mutex::default(),
            signer,
            slots: Arc::new(Semaphore::new(FORWARDED_TASKS)),
            hosts: OnceLock::new(),
            assigned: Arc::new(Notify::new()),
            stop: AtomicBool::new(false),
            threads: Mutex::default(),
            positions: Mutex::default(),
            served: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
            chaos,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Notified whenever partitions are assigned to this node, so their active entities are resumed at once.
    pub fn assigned(&self) -> Arc<Notify> {
        self.assigned.clone()
    }

    /// Starts reading answers, then joins the commands group, serving forwarded requests with `hosts`. Returns
    /// once answers can be received.
    pub async fn serve(self: &Arc<Self>, hosts: Vec<Arc<dyn Host>>) -> Result<(), BusError> {
        if self.hosts.set(hosts).is_err() {
            return Err(BusError::Config("the cluster node is already serving".into()));
        }
        let answers = self.answers_consumer().await?;
        let node = self.clone();
        let reader = std::thread::Builder::new()
            .name("cluster-answers".into())
            .spawn(move || node.read_answers(&answers))
            .map_err(|e| unavailable("cannot start the answer reader", e))?;
        let consumer = self.commands_consumer()?;
        let node = self.clone();
        let member = std::thread::Builder::new()
            .name("cluster-commands".into())
            .spawn(move || node.read_commands(consumer))
            .map_err(|e| unavailable("cannot start the command reader", e))?;
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).extend([reader, member]);
        tracing::info!(node = %self.id, group = %self.group, topic = %self.commands, "joining the cluster");
        Ok(())
    }

    /// Leaves the group: this node's shards are drained and handed over. Called after HTTP intake has stopped.
    pub async fn leave(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
        tracing::info!(node = %self.id, "left the cluster");
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = self.settings.base_config();
        config
            .set("client.id", &self.id)
            // A forwarded call waits on two fetches (the request, then the answer): a broker holding an empty fetch
            // for librdkafka's default 500 ms would add that to every call.
            .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string());
        config
    }

    /// A consumer of this node's reply topic, positioned at its end.
    async fn answers_consumer(&self) -> Result<BaseConsumer, BusError> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", format!("{}.replies.{}", self.settings.group_id, self.id))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| unavailable("cannot create the answer consumer", e))?;
        let (topic, bound) = (self.replies.clone(), self.settings.startup_timeout);
        // Positioned at the end as it is now: an answer produced from here on is read, even one that arrives
        // before the first fetch.
        let consumer = tokio::task::spawn_blocking(move || -> Result<BaseConsumer, BusError> {
            let (_, high) = consumer
                .fetch_watermarks(&topic, 0, bound)
                .map_err(|e| unavailable("cannot read the reply topic", e))?;
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&topic, 0, Offset::Offset(high))
                .map_err(|e| unavailable("cannot read the reply topic", e))?;
            consumer.assign(&list).map_err(|e| unavailable("cannot read the reply topic", e))?;
            Ok(consumer)
        })
        .await
        .map_err(|e| unavailable("cannot read the reply topic", e))??;
        Ok(consumer)
    }

    fn commands_consumer(self: &Arc<Self>) -> Result<BaseConsumer<Membership>, BusError> {
        let session = self.settings.session_timeout;
        let consumer: BaseConsumer<Membership> = self
            .client_config()
            .set("group.id", &self.group)
            // Each request is committed as it is taken (below). A partition nobody took a request from yet is read
            // from its start: requests sent before its first assignment are served, or dropped if past their deadline.
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session.as_millis().to_string())
            .set("heartbeat.interval.ms", (session / 10).as_millis().to_string())
            .create_with_context(Membership { node: Arc::downgrade(self) })
            .map_err(|e| unavailable("cannot create the command consumer", e))?;
        consumer.subscribe(&[&self.commands]).map_err(|e| unavailable("cannot subscribe to the commands", e))?;
        Ok(consumer)
    }

    fn read_answers(&self, consumer: &BaseConsumer) {
        while !self.stop.load(Ordering::SeqCst) {
            match consumer.poll(POLL) {
                Some(Ok(message)) => {
                    crate::telemetry::metrics::kafka_records(&self.replies, "consumed", 1);
                    let at = format!("{}@{}", self.replies, message.offset());
                    let answer = match message.payload().map(serde_json::from_slice::<Answer>) {
                        Some(Ok(answer)) => answer,
                        _ => {
                            signing::refused(Channel::Answers, Refusal::Malformed, &at);
                            continue;
                        }
                    };
                    // Only a node of the cluster answers, and only to this node: anything else is dropped before
                    // it can complete a call.
                    if let Err(refusal) = answer.check(&self.signer, &self.replies) {
                        signing::refused(Channel::Answers, refusal, &format!("{at} from {}", shown(&answer.from)));
                        continue;
                    }
                    let result = serde_json::from_str::<Result<Value, RemoteError>>(answer.result.get())
                        .unwrap_or_else(|e| {
                            Err(RemoteError::Unavailable {
                                reason: format!("unreadable answer from node {}: {e}", answer.from),
                            })
                        });
                    let waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&answer.call);
                    if let Some(waiting) = waiting {
                        let _ = waiting.send(result);
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "reply topic"),
                None => {}
            }
        }
    }

    fn read_commands(self: Arc<Self>, consumer: BaseConsumer<Membership>) {
        let mut chaos_asked = std::time::Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if chaos_asked.elapsed() >= Duration::from_secs(1) {
                chaos_asked = std::time::Instant::now();
                if let Some(away) = self.chaos.drop_out() {
                    self.drop_out(&consumer, away);
                    continue;
                }
            }
            let polled = consumer.poll(POLL);
            if !self.shards.renew_if_live() && !self.shards.owned().is_empty() {
                tracing::warn!(node = %self.id, "cluster membership lapsed (the process was paused or starved); rejoining");
                // Leaving revokes (and drains) what this node held; joining again brings a fresh assignment.
                consumer.unsubscribe();
                let _ = consumer.poll(POLL);
                if let Err(error) = consumer.subscribe(&[&self.commands]) {
                    tracing::warn!(%error, "cannot rejoin the cluster; retrying");
                }
                continue;
            }
            match polled {
                Some(Ok(message)) => {
                    crate::telemetry::metrics::kafka_records(&self.commands, "consumed", 1);
                    self.positions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(message.partition(), message.offset() + 1);
                    // Taken for good before it runs: a node that gets this partition next starts after it, so a
                    // request is never run twice, and a request no node took yet is not skipped.
                    if let Err(error) = consumer.commit_message(&message, CommitMode::Sync) {
                        tracing::warn!(%error, offset = message.offset(), "request not taken (commit failed); its caller will retry");
                        continue;
                    }
                    let traceparent = message.headers().and_then(|headers| {
                        headers.iter().find(|h| h.key == crate::telemetry::TRACEPARENT)?.value.map(<[u8]>::to_vec)
                    });
                    let traceparent = traceparent.and_then(|v| String::from_utf8(v).ok());
                    match message.payload().map(serde_json::from_slice::<Envelope>) {
                        Some(Ok(envelope)) => self.accept(envelope, traceparent.as_deref()),
                        _ => {
                            let at = format!("{}/{}@{}", self.commands, message.partition(), message.offset());
                            signing::refused(Channel::Commands, Refusal::Malformed, &at);
                        }
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "commands topic"),
                None => {}
            }
        }
        // Leaving the group runs the revocation (draining this node's entities) before the partitions move.
        consumer.unsubscribe();
        let _ = consumer.poll(POLL);
        drop(consumer);
    }

    /// Chaos: leaves the group (its shards move to the others), stays away for `away`, then joins again.
    fn drop_out(&self, consumer: &BaseConsumer<Membership>, away: Duration) {
        tracing::warn!(node = %self.id, ?away, "chaos: dropping out of the cluster on purpose");
        consumer.unsubscribe();
        let back = std::time::Instant::now() + away;
        while std::time::Instant::now() < back && !self.stop.load(Ordering::SeqCst) {
            let _ = consumer.poll(POLL);
        }
        if let Err(error) = consumer.subscribe(&[&self.commands]) {
            tracing::warn!(%error, "cannot rejoin the cluster; retrying");
        }
        self.shards.renew();
        tracing::warn!(node = %self.id, "chaos: rejoining the cluster");
    }

    /// The furthest ahead a call's deadline may lie, in milliseconds.
    fn max_ahead_ms(&self) -> i64 {
        i64::try_from(self.timeout.saturating_mul(DEADLINE_AHEAD).as_millis()).unwrap_or(i64::MAX)
    }

    /// Serves one forwarded request on the runtime, answering on the caller's reply topic; its spans join the
    /// caller's trace when the request carries one. Runs on the command reader's thread: a call that is not a
    /// node's own, or not one to run now, is refused here, before its request is read; when [`FORWARDED_TASKS`]
    /// calls are being served, it waits (at most until the call's deadline) for one to finish.
    fn accept(self: &Arc<Self>, envelope: Envelope, traceparent: Option<&str>) {
        let now = chrono::Utc::now().timestamp_millis();
        if let Err(refusal) = envelope.check(&self.signer, &self.settings.topic_prefix, now, self.max_ahead_ms()) {
            let detail = format!(
                "call {} from {} for {} {} (reply to {})",
                shown(&envelope.call),
                shown(&envelope.from),
                shown(&envelope.kind),
                shown(&envelope.entity),
                shown(&envelope.reply_to)
            );
            signing::refused(Channel::Commands, refusal, &detail);
            return;
        }
        if !self.served.lock().unwrap_or_else(|p| p.into_inner()).insert(&envelope.call, envelope.deadline_ms, now) {
            tracing::debug!(call = %envelope.call, "request delivered again; dropped");
            return;
        }
        let Some(permit) = self.slot(envelope.deadline_ms) else {
            tracing::warn!(call = %envelope.call, busy = FORWARDED_TASKS,
                "forwarded request dropped: no slot before its deadline (its caller answers 503)");
            return;
        };
        // Signed by a node: what it asks is read only now.
        let request = serde_json::from_str::<Request>(envelope.request.get()).map(|r| bounded(r, self.timeout));
        let left = until(envelope.deadline_ms);
        let node = self.clone();
        let span =
            tracing::info_span!("forwarded", kind = %envelope.kind, entity_id = %envelope.entity, node = %self.id);
        crate::telemetry::continue_trace(&span, traceparent);
        let serve = async move {
            let _permit = permit;
            let host = node.hosts.get().and_then(|hosts| hosts.iter().find(|h| h.kind() == envelope.kind).cloned());
            let result = match (host, request) {
                (Some(host), Ok(request)) => {
                    // Past the deadline the caller has answered already: the slot is freed (the entity finishes
                    // what it was given all the same).
                    match tokio::time::timeout(left, host.serve(&envelope.entity, request)).await {
                        Ok(result) => result,
                        Err(_) => Err(RemoteError::Unavailable {
                            reason: format!("{} {} did not answer before the deadline", envelope.kind, envelope.entity),
                        }),
                    }
                }
                (None, _) => Err(RemoteError::Unavailable { reason: format!("no entities of kind {}", envelope.kind) }),
                (Some(_), Err(e)) => Err(RemoteError::Unavailable { reason: format!("unreadable request: {e}") }),
            };
            let Ok(result) = serde_json::value::to_raw_value(&result) else { return };
            let mut answer = Answer { call: envelope.call, from: node.id.clone(), result, sig: String::new() };
            answer.sig = answer.signature(&node.signer, &envelope.reply_to);
            let Ok(payload) = serde_json::to_vec(&answer) else { return };
            let record = FutureRecord::<(), _>::to(&envelope.reply_to).partition(0).payload(&payload);
            match node.producer.send(record, node.timeout).await {
                Ok(_) => crate::telemetry::metrics::kafka_records(&envelope.reply_to, "produced", 1),
                Err((error, _)) => {
                    tracing::warn!(%error, to = %envelope.reply_to, "could not answer a forwarded request")
                }
            }
        };
        self.runtime.spawn(tracing::Instrument::instrument(serve, span));
    }

    /// A slot to serve one more forwarded call: at once if one is free, else waiting on this (the command reader's)
    /// thread until one is, or until `deadline_ms`, when the call is not worth serving any more. The wait is also
    /// kept under half the session timeout, so that a busy reader does not look like a frozen one (its lease).
    fn slot(&self, deadline_ms: i64) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        let (left, slots) = (until(deadline_ms).min(self.settings.session_timeout / 2), self.slots.clone());
        self.runtime.block_on(async move {
            match tokio::time::timeout(left, slots.acquire_owned()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => None,
            }
        })
    }

    /// Stops hosting `partitions` and drains their live entities.
    fn revoke(&self, partitions: &[i32]) {
        self.shards.revoke(partitions);
        let Some(hosts) = self.hosts.get() else { return };
        // Every kind drains at once, within one bound: the whole group waits for this callback to return.
        let released: usize = self.runtime.block_on(async {
            futures_util::future::join_all(hosts.iter().map(|host| host.release_moved(DRAIN_TIMEOUT)))
                .await
                .iter()
                .sum()
        });
        tracing::info!(node = %self.id, ?partitions, released, "shards revoked; their entities drained");
    }

    fn assign(&self, partitions: &[i32]) {
        self.shards.assign(partitions);
        self.shards.renew();
        let owned = self.shards.owned();
        self.positions.lock().unwrap_or_else(|p| p.into_inner()).retain(|p, _| owned.contains(p));
        tracing::info!(node = %self.id, ?partitions, ?owned, "shards assigned");
        self.assigned.notify_one();
    }

    pub async fn status(&self) -> ClusterStatus {
        let owned = self.shards.owned();
        let positions = self.positions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (producer, topic, group, bound) =
            (self.producer.clone(), self.commands.clone(), self.group.clone(), Duration::from_secs(2));
        let owned_for_lag = owned.clone();
        let (members, lag) = tokio::task::spawn_blocking(move || {
            let client = producer.client();
            let members = client
                .fetch_group_list(Some(&group), bound)
                .ok()
                .and_then(|list| {
                    list.groups().first().map(|g| {
                        g.members()
                            .iter()
                            .map(|m| Member {
                                node: m.client_id().to_string(),
                                host: m.client_host().to_string(),
                                partitions: m.assignment().map(|a| assigned_partitions(a, &topic)).unwrap_or_default(),
                            })
                            .collect()
                    })
                })
                .unwrap_or_default();
            let lag = owned_for_lag
                .iter()
                .filter_map(|p| {
                    let (_, high) = client.fetch_watermarks(&topic, *p, bound).ok()?;
                    Some((high - positions.get(p).copied().unwrap_or(high)).max(0))
                })
                .sum();
            (members, lag)
        })
        .await
        .unwrap_or_default();
        ClusterStatus { node: self.id.clone(), partitions: self.shards.partitions(), owned, members, commands_lag: lag }
    }
}

#[async_trait]
impl Placement for ClusterNode {
    fn is_local(&self, id: &str) -> bool {
        self.shards.hosts(id)
    }

    async fn forward(&self, kind: &'static str, id: &str, request: Request) -> Result<Value, RemoteError> {
        let result = self.call(kind, id, request).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(RemoteError::Rejected { .. }) => "rejected",
            Err(RemoteError::Unavailable { .. }) => "unavailable",
        };
        ::metrics::counter!(crate::telemetry::metrics::CLUSTER_FORWARDED, "kind" => kind, "outcome" => outcome)
            .increment(1);
        result
    }
}

impl ClusterNode {
    /// Sends `request` to the node hosting the entity on the commands topic and waits for its answer.
    async fn call(&self, kind: &'static str, id: &str, request: Request) -> Result<Value, RemoteError> {
        let unavailable = |reason: String| RemoteError::Unavailable { reason };
        let call = uuid::Uuid::new_v4().to_string();
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let deadline_ms = chrono::Utc::now().timestamp_millis().saturating_add(timeout_ms);
        let payload =
            envelope_record(Some(&self.signer), &call, &self.id, kind, id, &request, &self.replies, deadline_ms)
                .map_err(|e| unavailable(e.to_string()))?;
        let (sender, answer) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(call.clone(), sender);
        let forgotten = |node: &Self| node.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&call);
        let traceparent = crate::telemetry::traceparent();
        let mut headers = OwnedHeaders::new();
        if let Some(value) = &traceparent {
            headers = headers.insert(Header { key: crate::telemetry::TRACEPARENT, value: Some(value.as_str()) });
        }
        let record = FutureRecord::to(&self.commands)
            .key(id.as_bytes())
            .partition(self.shards.of(id))
            .payload(&payload)
            .headers(headers);
        if let Err((error, _)) = self.producer.send(record, self.timeout).await {
            forgotten(self);
            return Err(unavailable(format!("could not forward to the node hosting {kind} {id}: {error}")));
        }
        crate::telemetry::metrics::kafka_records(&self.commands, "produced", 1);
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            _ => {
                forgotten(self);
                Err(unavailable(format!("the node hosting {kind} {id} did not answer within {:?}", self.timeout)))
            }
        }
    }
}

/// The group's rebalance callbacks: run on the command reader's thread, inside `poll`.
struct Membership {
    node: std::sync::Weak<ClusterNode>,
}

impl ClientContext for Membership {}

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(list), Some(node)) = (rebalance, self.node.upgrade()) {
            node.revoke(&partitions_of(list, &node.commands));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match (rebalance, self.node.upgrade()) {
            (Rebalance::Assign(list), Some(node)) => node.assign(&partitions_of(list, &node.commands)),
            (Rebalance::Error(error), _) => tracing::warn!(%error, "cluster rebalance failed"),
            _ => {}
        }
    }
}

fn partitions_of(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements_for_topic(topic).iter().map(|e| e.partition()).collect()
}

/// The partitions of `topic` in a member's assignment (the consumer protocol's `Assignment`: version, then
/// topics with their partitions, then user data).
fn assigned_partitions(bytes: &[u8], topic: &str) -> Vec<i32> {
    fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = bytes.split_first_chunk::<N>()?;
        *bytes = rest;
        Some(*head)
    }
    let mut rest = bytes;
    let mut found = Vec::new();
    let parse = |rest: &mut &[u8], found: &mut Vec<i32>| -> Option<()> {
        take::<2>(rest)?;
        let topics = i32::from_be_bytes(take::<4>(rest)?);
        for _ in 0..topics {
            let len = usize::try_from(i16::from_be_bytes(take::<2>(rest)?)).ok()?;
            let (name, after) = rest.split_at_checked(len)?;
            *rest = after;
            let count = i32::from_be_bytes(take::<4>(rest)?);
            for _ in 0..count {
                let partition = i32::from_be_bytes(take::<4>(rest)?);
                if name == topic.as_bytes() {
                    found.push(partition);
                }
            }
        }
        Some(())
    };
    let _ = parse(&mut rest, &mut found);
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-cluster-secret-of-at-least-32-characters";
    const NOW: i64 = 1_700_000_000_000;
    /// Twice a request timeout of 5 s.
    const AHEAD: i64 = 10_000;

    fn signer() -> Signer {
        Signer::new(SECRET).unwrap()
    }

    fn coupon_create() -> Request {
        let command = json!({"Create": {"discount": {"kind": "percent", "percent": 100}}});
        Request::Execute { command }
    }

    /// An envelope as it arrives on the commands topic.
    fn received(signer: Option<&Signer>, from: &str, reply_to: &str, deadline_ms: i64) -> Envelope {
        let record =
            envelope_record(signer, "call-1", from, "coupon", "FREE100", &coupon_create(), reply_to, deadline_ms)
                .unwrap();
        serde_json::from_slice(&record).unwrap()
    }

    fn check(envelope: &Envelope) -> Result<(), Refusal> {
        envelope.check(&signer(), "shop", NOW, AHEAD)
    }

    #[test]
    fn a_call_signed_by_a_node_is_run_and_its_request_read_as_sent() {
        let envelope = received(Some(&signer()), "node1", "shop.replies.node1", NOW + 5_000);
        assert_eq!(check(&envelope), Ok(()));
        let request: Request = serde_json::from_str(envelope.request.get()).unwrap();
        assert!(matches!(request, Request::Execute { command } if command["Create"]["discount"]["percent"] == 100));
        assert_eq!(check(&received(Some(&signer()), "node1", "shop.replies.node1", NOW + AHEAD)), Ok(()));
        assert_eq!(check(&received(Some(&signer()), "node1", "shop.replies.node1", NOW)), Ok(()));
    }

    /// Every field is signed: changing any one of them, even the request's spacing, fails the signature.
    #[test]
    fn altering_any_field_fails_the_signature() {
        type Alteration = (&'static str, fn(&mut Envelope));
        let alterations: [Alteration; 8] = [
            ("call", |e: &mut Envelope| e.call = "call-2".into()),
            ("from", |e: &mut Envelope| e.from = "node2".into()),
            ("kind", |e: &mut Envelope| e.kind = "order".into()),
            ("entity", |e: &mut Envelope| e.entity = "FREE200".into()),
            ("request", |e: &mut Envelope| e.request = RawValue::from_string(r#"{"op":"get"}"#.into()).unwrap()),
            ("request bytes", |e: &mut Envelope| {
                e.request = RawValue::from_string(e.request.get().replacen(':', ": ", 1)).unwrap()
            }),
            ("reply_to", |e: &mut Envelope| e.reply_to = "shop.replies.node2".into()),
            ("deadline", |e: &mut Envelope| e.deadline_ms += 1),
        ];
        for (field, alter) in alterations {
            let mut envelope = received(Some(&signer()), "node1", "shop.replies.node1", NOW + 5_000);
            alter(&mut envelope);
            assert_eq!(check(&envelope), Err(Refusal::Signature), "{field}");
            // Re-encoded and read again as a host would: still refused.
            let again: Envelope = serde_json::from_slice(&serde_json::to_vec(&envelope).unwrap()).unwrap();
            assert_eq!(check(&again), Err(Refusal::Signature), "{field}");
        }
    }

    #[test]
    fn unsigned_or_otherwise_signed_calls_are_refused() {
        assert_eq!(check(&received(None, "node1", "shop.replies.node1", NOW + 5_000)), Err(Refusal::Unsigned));
        let other = Signer::new("another-secret-of-at-least-32-characters").unwrap();
        assert_eq!(check(&received(Some(&other), "node1", "shop.replies.node1", NOW + 5_000)), Err(Refusal::Signature));
        // The review's probe: a bare envelope with no sender and no signature.
        let probe = json!({"call": "forged-1", "kind": "coupon", "entity": "FREE100",
            "request": {"op": "execute", "command": {"Create": {"discount": {"kind": "percent", "percent": 100}}}},
            "replyTo": "shop.replies.node1", "deadlineMs": NOW + 5_000});
        let probe: Envelope = serde_json::from_slice(probe.to_string().as_bytes()).unwrap();
        assert_eq!(check(&probe), Err(Refusal::Unsigned));
        let mut garbage = received(Some(&signer()), "node1", "shop.replies.node1", NOW + 5_000);
        garbage.sig = "not hex".into();
        assert_eq!(check(&garbage), Err(Refusal::Signature));
    }

    #[test]
    fn deadlines_past_or_too_far_ahead_are_refused() {
        let at = |deadline_ms| check(&received(Some(&signer()), "node1", "shop.replies.node1", deadline_ms));
        assert_eq!(at(NOW - 1), Err(Refusal::Expired));
        assert_eq!(at(i64::MIN), Err(Refusal::Expired));
        assert_eq!(at(NOW + AHEAD + 1), Err(Refusal::Deadline));
        assert_eq!(at(i64::MAX), Err(Refusal::Deadline));
        let envelope = received(Some(&signer()), "node1", "shop.replies.node1", i64::MAX);
        assert_eq!(envelope.check(&signer(), "shop", i64::MAX - 1, i64::MAX), Ok(()), "no overflow");
    }

    /// Even signed with the key (a misconfigured or compromised node), a call answers only its sender's own reply
    /// topic: the nodes cannot be made to write into another topic.
    #[test]
    fn a_reply_topic_other_than_the_senders_own_is_refused() {
        for (from, reply_to) in [
            ("node1", "shop.order"),
            ("node1", "shop.replies.node2"),
            ("node1", "other.replies.node1"),
            ("node1", "shop.replies.node1.x"),
            ("node 1", "shop.replies.node 1"),
            ("", "shop.replies."),
            ("../x", "shop.replies.../x"),
        ] {
            let envelope = received(Some(&signer()), from, reply_to, NOW + 5_000);
            assert_eq!(check(&envelope), Err(Refusal::ReplyTo), "{from} -> {reply_to}");
        }
        let long = "n".repeat(101);
        let envelope = received(Some(&signer()), &long, &format!("shop.replies.{long}"), NOW + 5_000);
        assert_eq!(check(&envelope), Err(Refusal::ReplyTo));
    }

    #[test]
    fn answers_count_only_when_a_node_signed_them_for_this_node() {
        let result = serde_json::value::to_raw_value(&Ok::<Value, RemoteError>(json!({"coupon": null}))).unwrap();
        let mut answer = Answer { call: "call-1".into(), from: "node2".into(), result, sig: String::new() };
        assert_eq!(answer.check(&signer(), "shop.replies.node1"), Err(Refusal::Unsigned));
        answer.sig = answer.signature(&signer(), "shop.replies.node1");
        let answer: Answer = serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        assert_eq!(answer.check(&signer(), "shop.replies.node1"), Ok(()));
        assert_eq!(answer.check(&signer(), "shop.replies.node3"), Err(Refusal::Signature), "sent to another node");
        let other = Signer::new("another-secret-of-at-least-32-characters").unwrap();
        assert_eq!(answer.check(&other, "shop.replies.node1"), Err(Refusal::Signature));
        let forged_result = serde_json::value::to_raw_value(&json!({"Ok": {"coupon": {"code": "X"}}})).unwrap();
        let forged = Answer { result: forged_result, ..answer };
        assert_eq!(forged.check(&signer(), "shop.replies.node1"), Err(Refusal::Signature));
        // An envelope's signature is worthless as an answer's (each kind of message signs under its own tag).
        let envelope = received(Some(&signer()), "node1", "shop.replies.node1", NOW + 5_000);
        let reused = Answer {
            call: envelope.call.clone(),
            from: envelope.from.clone(),
            result: envelope.request.clone(),
            sig: envelope.sig.clone(),
        };
        assert_eq!(reused.check(&signer(), "shop.replies.node1"), Err(Refusal::Signature));
    }

    /// A served call is remembered for as long as its deadline lets it in, however many calls come meanwhile.
    #[test]
    fn a_replayed_call_is_dropped_until_its_deadline_has_passed() {
        let mut served = Served::default();
        assert!(served.insert("a", 100, 0));
        assert!(!served.insert("a", 100, 50), "a replay before its deadline");
        for n in 0..50_000 {
            assert!(served.insert(&format!("filler-{n}"), 100, 60));
        }
        assert!(!served.insert("a", 100, 100), "still remembered at its deadline");
        assert!(served.insert("b", 300, 101), "the others expire");
        assert_eq!(served.ids.len(), 1);
        assert!(served.insert("a", 200, 101), "forgotten once its deadline passed: the deadline check refuses it then");
    }

    #[test]
    fn the_host_bounds_a_wait_for_settling() {
        let limit = Duration::from_secs(5);
        assert!(matches!(
            bounded(Request::Settled { timeout_ms: u64::MAX }, limit),
            Request::Settled { timeout_ms: 5_000 }
        ));
        assert!(matches!(bounded(Request::Settled { timeout_ms: 20 }, limit), Request::Settled { timeout_ms: 20 }));
        assert!(matches!(bounded(Request::Get, limit), Request::Get));
    }

    #[test]
    fn reads_the_partitions_of_a_member_assignment() {
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        for (topic, partitions) in [("x.commands", vec![4i32, 1]), ("other", vec![0])] {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend((partitions.len() as i32).to_be_bytes());
            for p in partitions {
                bytes.extend(p.to_be_bytes());
            }
        }
        bytes.extend([0, 0, 0, 0]);
        assert_eq!(assigned_partitions(&bytes, "x.commands"), [1, 4]);
        assert!(assigned_partitions(&bytes[..9], "x.commands").is_empty(), "a cut assignment reads as none");
    }
}
