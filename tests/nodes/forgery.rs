//! Security review H4: records written straight onto the deployment's Kafka topics by something that is not one of
//! its nodes (anything that can reach the broker). A forged request on `{prefix}.commands` is never run, whether it
//! is unsigned (the review's probe) or signed with another key, and the hosting node counts it as refused; a forged
//! `product.created` event never becomes a public notification.

use std::time::Duration;

use commercex::actors::placement::Request;
use commercex::bridge::signing::{self, Signer};
use commercex::cluster::node::envelope_record;
use commercex::cluster::shard;
use commercex::store::EventRecord;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::harness::{wait_shards_settled, Api, Deployment, Node, Servers};

const SOON: Duration = Duration::from_secs(30);
/// Partitions of a clustered deployment's topics (`tests/nodes/harness.rs`).
const CLUSTER_PARTITIONS: i32 = 6;
/// Not the deployment's `cluster.secret`, but one of the right length: a forger's guess.
const WRONG_SECRET: &str = "not-the-cluster-secret-but-long-enough-0123";

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("a Kafka producer for the forger")
}

async fn produce(producer: &FutureProducer, record: FutureRecord<'_, str, Vec<u8>>) {
    let delivered = producer.send(record, Duration::from_secs(10)).await;
    delivered.map_err(|(error, _)| error).expect("the broker takes the forged record");
}

/// The node's `commercex_cluster_refused_total{channel, reason}`.
async fn refused(api: &Api, channel: &str, reason: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", api.base)).await.unwrap().text().await.unwrap();
    let labels = [format!("channel=\"{channel}\""), format!("reason=\"{reason}\"")];
    text.lines()
        .filter(|line| line.starts_with("commercex_cluster_refused_total{"))
        .filter(|line| labels.iter().all(|label| line.contains(label.as_str())))
        .filter_map(|line| line.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// Waits until the node has refused at least one more message of `channel` for each reason, from `before`.
async fn wait_refused(api: &Api, channel: &str, before: &[(&str, f64)]) {
    let start = Instant::now();
    loop {
        let mut grown = true;
        let mut now = Vec::new();
        for (reason, was) in before {
            let count = refused(api, channel, reason).await;
            grown &= count >= was + 1.0;
            now.push((*reason, count));
        }
        if grown {
            return;
        }
        assert!(start.elapsed() < SOON, "{}: {channel} refusals never grew: before {before:?}, now {now:?}", api.name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node that hosts `partition` of the commands topic.
async fn host_of<'a>(nodes: &[&'a Node], admin: &str, partition: i32) -> &'a Node {
    for &node in nodes {
        let owned = node.cluster(admin).await["owned"].as_array().cloned().unwrap_or_default();
        if owned.iter().any(|p| p.as_i64() == Some(i64::from(partition))) {
            return node;
        }
    }
    panic!("no node hosts partition {partition}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn forged_requests_on_the_commands_topic_are_refused() {
    let servers = Servers::shared();
    let mut deployment = Deployment::new("forged_commands", servers.clone()).clustered();
    let a = deployment.start_node().await;
    let b = deployment.start_node().await;
    let admin = a.admin().await;
    wait_shards_settled(&[&a, &b], &admin, SOON).await;
    let prefix = format!("nodes.{}", deployment.name());
    let commands = format!("{prefix}.commands");
    let reply_to = format!("{prefix}.replies.node1");

    // The review's probe: a 100 % coupon, created as an admin would, on the partition of the node hosting it.
    let code = "FORGED100";
    let partition = shard::partition(code.as_bytes(), CLUSTER_PARTITIONS);
    let host = host_of(&[&a, &b], &admin, partition).await;
    let unsigned_before = refused(host, "commands", "unsigned").await;
    let before = [("unsigned", unsigned_before), ("signature", refused(host, "commands", "signature").await)];
    let create = Request::Execute { command: json!({"Create": {"discount": {"kind": "percent", "percent": 100}}}) };
    let deadline = chrono::Utc::now().timestamp_millis() + 4_000;
    let wrong = Signer::new(WRONG_SECRET).unwrap();
    let unsigned = envelope_record(None, "forged-1", "node1", "coupon", code, &create, &reply_to, deadline).unwrap();
    let forged =
        envelope_record(Some(&wrong), "forged-2", "node1", "coupon", code, &create, &reply_to, deadline).unwrap();
    let producer = producer(&servers.kafka_brokers);
    for record in [unsigned, forged] {
        produce(&producer, FutureRecord::to(&commands).key(code).partition(partition).payload(&record)).await;
    }
    wait_refused(host, "commands", &before).await;
    assert!(host.logged("refused a message on the Kafka topics"), "a refusal is logged");

    // The coupon does not exist, on either node.
    for api in [&*a, &*b] {
        let r = api.get(&format!("/api/admin/coupons/{code}"), Some(&admin)).await;
        assert_eq!((r.status, r.code()), (404, "coupon_not_found"), "{}: {:?}", api.name, r.body);
    }
    // The channel itself works: a coupon made through the API (forwarded when the other node hosts it) exists.
    let real = json!({"code": "REAL10", "discount": {"kind": "percent", "percent": 10}});
    let r = b.post("/api/admin/coupons", Some(&admin), real).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    a.wait_for("/api/admin/coupons/REAL10", Some(&admin), SOON, |c| c["discount"]["percent"] == 10).await;
    let r = a.get(&format!("/api/admin/coupons/{code}"), Some(&admin)).await;
    assert_eq!(r.status, 404, "still no forged coupon: {:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_forged_event_does_not_become_a_notification() {
    let servers = Servers::shared();
    let mut deployment = Deployment::new("forged_event", servers.clone());
    let a = deployment.start_node().await;
    let admin = a.admin().await;
    let (_, shopper) = a.signup("watcher@forgery.test").await;
    let topic = format!("nodes.{}.product", deployment.name());
    let unsigned_before = refused(&a, "events", "unsigned").await;
    let before = [("unsigned", unsigned_before), ("signature", refused(&a, "events", "signature").await)];

    // Two `product.created` records as a node would write them, with attacker-chosen text: one unsigned, one signed
    // with a wrong key.
    let wrong = Signer::new(WRONG_SECRET).unwrap();
    let producer = producer(&servers.kafka_brokers);
    for (n, signer) in [(1, None), (2, Some(&wrong))] {
        let id = format!("prd_forged{n}");
        let event = EventRecord {
            id: format!("product:{id}/1"),
            stream: format!("product:{id}"),
            seq: 1,
            event_type: "product.created".into(),
            recorded_at: chrono::Utc::now(),
            payload: json!({"product": {"id": id, "title": format!("FORGED {n}: claim your gift card"), "price": 1,
                "currency": "USD"}}),
        };
        let payload = serde_json::to_vec(&event).unwrap();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "event-id", value: Some(event.id.as_str()) })
            .insert(Header { key: "event-type", value: Some(event.event_type.as_str()) });
        let signature = signer.map(|s: &Signer| s.sign_event(&topic, id.as_bytes(), &payload));
        if let Some(signature) = &signature {
            headers = headers.insert(Header { key: signing::HEADER, value: Some(signature.as_str()) });
        }
        produce(&producer, FutureRecord::to(&topic).key(id.as_str()).payload(&payload).headers(headers)).await;
    }
    wait_refused(&a, "events", &before).await;

    // A real product's event, published after the forged ones, becomes the public notification, which a socket
    // replaying from the start shows with everything stored before it; the forged never do.
    let real = a.create_product(&admin, "Genuine teapot", 2000, 3).await;
    let mut socket = a.socket_after(&shopper, 0).await;
    let pushed = crate::harness::pushes_until(&mut socket, SOON, |pushed| {
        pushed.iter().any(|n| n["data"]["productId"] == real.as_str())
    })
    .await;
    let forged: Vec<Value> = pushed
        .into_iter()
        .filter(|n| {
            let product = n["data"]["productId"].as_str().unwrap_or_default();
            n.to_string().contains("FORGED") || product.starts_with("prd_forged")
        })
        .collect();
    assert!(forged.is_empty(), "forged events became notifications: {forged:#?}");
}
