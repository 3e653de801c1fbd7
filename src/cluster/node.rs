//! One node of the cluster: its membership in the commands group (which shards it hosts), the requests it serves
//! for other nodes, and the calls it forwards to them. Both consumers poll on threads of their own, so that the
//! group's rebalance callbacks, which run inside `poll`, may wait for this node's entities to drain.

use std::collections::HashMap;
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
use serde_json::Value;
use tokio::sync::{oneshot, Notify};

use super::Shards;
use crate::actors::placement::{Host, Placement, RemoteError, Request};
use crate::bridge::kafka::{create_topics, unavailable, KafkaSettings};
use crate::bridge::recent::RecentIds;
use crate::bridge::BusError;
use crate::faults::Chaos;

/// How long a revoked shard's entities may take to drain before the partition is let go anyway (fencing covers
/// what is still running).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
/// The longest a fetch of requests or answers waits at the broker for data to arrive.
const FETCH_WAIT: Duration = Duration::from_millis(10);
/// Request ids remembered to drop a request delivered twice.
const SERVED_IDS: usize = 16_384;

/// A forwarded call, as it travels on the commands topic.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    /// Unique per call: the answer names it, and a repeat is dropped.
    call: String,
    kind: String,
    entity: String,
    request: Request,
    /// The caller's reply topic.
    reply_to: String,
    /// Milliseconds since the epoch after which the caller has given up.
    deadline_ms: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    call: String,
    result: Result<Value, RemoteError>,
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
    hosts: OnceLock<Vec<Arc<dyn Host>>>,
    assigned: Arc<Notify>,
    stop: AtomicBool,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// The next offset to read, per partition of the commands topic this node reads.
    positions: Mutex<HashMap<i32, i64>>,
    served: Mutex<RecentIds<String>>,
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
        let producer: FutureProducer =
            settings.producer_config().create().map_err(|e| unavailable("cannot create the Kafka producer", e))?;
        let commands = format!("{}.commands", settings.topic_prefix);
        let replies = format!("{}.replies.{id}", settings.topic_prefix);
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
            hosts: OnceLock::new(),
            assigned: Arc::new(Notify::new()),
            stop: AtomicBool::new(false),
            threads: Mutex::default(),
            positions: Mutex::default(),
            served: Mutex::new(RecentIds::new(SERVED_IDS)),
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
            .set("heartbeat.interval.ms", (session / 3).as_millis().to_string())
            .create_with_context(Membership { node: Arc::downgrade(self) })
            .map_err(|e| unavailable("cannot create the command consumer", e))?;
        consumer.subscribe(&[&self.commands]).map_err(|e| unavailable("cannot subscribe to the commands", e))?;
        Ok(consumer)
    }

    fn read_answers(&self, consumer: &BaseConsumer) {
        while !self.stop.load(Ordering::SeqCst) {
            match consumer.poll(POLL) {
                Some(Ok(message)) => {
                    let Some(Ok(answer)) = message.payload().map(serde_json::from_slice::<Answer>) else { continue };
                    let waiting = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&answer.call);
                    if let Some(waiting) = waiting {
                        let _ = waiting.send(answer.result);
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
                        _ => tracing::warn!(offset = message.offset(), "unreadable request on the commands topic"),
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

    /// Serves one forwarded request on the runtime, answering on the caller's reply topic; its spans join the
    /// caller's trace when the request carries one.
    fn accept(self: &Arc<Self>, envelope: Envelope, traceparent: Option<&str>) {
        if envelope.deadline_ms < chrono::Utc::now().timestamp_millis() {
            tracing::debug!(call = %envelope.call, "request past its deadline dropped");
            return;
        }
        if !self.served.lock().unwrap_or_else(|p| p.into_inner()).insert(envelope.call.clone()) {
            return;
        }
        let node = self.clone();
        let span =
            tracing::info_span!("forwarded", kind = %envelope.kind, entity_id = %envelope.entity, node = %self.id);
        crate::telemetry::continue_trace(&span, traceparent);
        let serve = async move {
            let host = node.hosts.get().and_then(|hosts| hosts.iter().find(|h| h.kind() == envelope.kind).cloned());
            let result = match host {
                Some(host) => host.serve(&envelope.entity, envelope.request).await,
                None => Err(RemoteError::Unavailable { reason: format!("no entities of kind {}", envelope.kind) }),
            };
            let answer = Answer { call: envelope.call, result };
            let Ok(payload) = serde_json::to_vec(&answer) else { return };
            let record = FutureRecord::<(), _>::to(&envelope.reply_to).partition(0).payload(&payload);
            if let Err((error, _)) = node.producer.send(record, node.timeout).await {
                tracing::warn!(%error, to = %envelope.reply_to, "could not answer a forwarded request");
            }
        };
        self.runtime.spawn(tracing::Instrument::instrument(serve, span));
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
        let unavailable = |reason: String| RemoteError::Unavailable { reason };
        let call = uuid::Uuid::new_v4().to_string();
        let deadline = chrono::Utc::now() + self.timeout;
        let envelope = Envelope {
            call: call.clone(),
            kind: kind.to_string(),
            entity: id.to_string(),
            request,
            reply_to: self.replies.clone(),
            deadline_ms: deadline.timestamp_millis(),
        };
        let payload = serde_json::to_vec(&envelope).map_err(|e| unavailable(e.to_string()))?;
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
    use super::assigned_partitions;

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
