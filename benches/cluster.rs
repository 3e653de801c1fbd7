//! Cluster mode on this machine, with real `commercex` processes (release build) on the servers of
//! `scripts/infra.sh`: checkout-to-paid on one node and on three; a call answered by the node hosting the entity
//! against one forwarded to it; and how long a killed node's shards take to be hosted again.
//!
//! Each checkout run also prints what the paid orders cost the servers, counted at the wire (a counting proxy in
//! front of MongoDB, the Kafka topics' end offsets) and by the nodes' own counters (`/metrics`).
//!
//! Run: `scripts/infra.sh up && eval "$(scripts/infra.sh env)" && cargo bench --bench cluster`
//! (optional env: SHOPPERS, ROUNDS, READS).

#[allow(dead_code)]
#[path = "../tests/nodes/harness.rs"]
mod harness;
#[path = "support/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use harness::{pushes_until, wait_shards_settled, Api, Deployment, Node, Servers};
use serde_json::{json, Value};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn at(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// A deployment's servers as counted: MongoDB through a counting proxy, Kafka by its topics' end offsets.
struct Wire {
    mongo: wire::MongoCount,
    brokers: String,
    topics: String,
}

impl Wire {
    fn sample(&self, nodes: &[Node]) -> Sample {
        Sample {
            mongo: self.mongo.snapshot(),
            kafka: wire::kafka_records(&self.brokers, &self.topics),
            metrics: nodes.iter().map(|n| format!("{}/metrics", n.api().base)).collect(),
        }
    }
}

struct Sample {
    mongo: std::collections::BTreeMap<String, u64>,
    kafka: std::collections::BTreeMap<String, i64>,
    metrics: Vec<String>,
}

impl Sample {
    async fn nodes(&self) -> commercex::load::cost::Sample {
        commercex::load::cost::scrape(&reqwest::Client::new(), &self.metrics).await.unwrap()
    }
}

/// What the paid orders cost between two samples, at the wire and by the nodes' counters.
fn print_cost(
    before: &Sample,
    after: &Sample,
    counted: (&commercex::load::cost::Sample, &commercex::load::cost::Sample),
    paid: usize,
) {
    let per = |n: f64| n / paid as f64;
    let mongo = wire::grown(&before.mongo, &after.mongo);
    let requests: u64 = mongo.values().sum();
    let by: Vec<String> = mongo.iter().map(|(c, n)| format!("{c} {:.1}", per(*n as f64))).collect();
    println!("  at the wire, per paid order: MongoDB {:.1} requests ({})", per(requests as f64), by.join(", "));
    let kafka: Vec<(String, i64)> = after
        .kafka
        .iter()
        .map(|(t, n)| (t.clone(), n - before.kafka.get(t).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let records: i64 = kafka.iter().map(|(_, n)| n).sum();
    let by: Vec<String> = kafka.iter().map(|(t, n)| format!("{t} {:.1}", per(*n as f64))).collect();
    println!("  at the wire, per paid order: Kafka {:.1} records produced ({})", per(records as f64), by.join(", "));
    let rows = commercex::load::cost::growth(counted.0, counted.1, paid as u64);
    let totals: Vec<String> = rows
        .iter()
        .filter(|r| r.labels.is_empty())
        .map(|r| format!("{} {:.1}", r.metric.trim_start_matches("commercex_"), r.per_paid_order.unwrap_or(0.0)))
        .collect();
    println!("  the nodes' counters, per paid order: {}", totals.join(", "));
}

async fn cluster(name: &str, size: usize) -> (Deployment, Vec<Node>, String, Wire) {
    let shared = Servers::shared();
    let (mongodb_uri, mongo) = wire::mongo_proxy(&shared.mongodb_uri).await;
    let brokers = shared.kafka_brokers.clone();
    let mut deployment = Deployment::new(name, Servers { mongodb_uri, ..shared }).clustered();
    let wire = Wire { mongo, brokers, topics: format!("nodes.{}.", deployment.name()) };
    let mut nodes = Vec::new();
    for _ in 0..size {
        nodes.push(deployment.start_node().await);
    }
    let admin = nodes[0].admin().await;
    let apis: Vec<&Api> = nodes.iter().map(|n| &**n).collect();
    wait_shards_settled(&apis, &admin, Duration::from_secs(60)).await;
    (deployment, nodes, admin, wire)
}

/// Rounds in which every shopper, each on the node of its turn, checks out one item at once and waits for the
/// `paid` push on its socket. Prints the rate and the checkout-to-paid latencies.
async fn checkouts(nodes: &[Node], admin: &str, shoppers: usize, rounds: usize, wire: &Wire) {
    let product = nodes[0].create_product(admin, "Bench", 100, 1_000_000).await;
    let mut clients = Vec::new();
    for i in 0..shoppers {
        let api = nodes[i % nodes.len()].api();
        let (_, token) = api.signup(&format!("bench{i}@cluster.bench")).await;
        let socket = api.socket(&token).await;
        clients.push((api, token, socket));
    }
    let before = wire.sample(nodes);
    let counted_before = before.nodes().await;
    let started = Instant::now();
    let mut paid = Vec::new();
    for round in 0..rounds {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (api, token, mut socket)) in clients.drain(..).enumerate() {
            let product = product.clone();
            tasks.spawn(async move {
                let item = json!({"productId": product, "quantity": 1});
                assert_eq!(api.post("/api/cart/items", Some(&token), item).await.status, 200);
                let t = Instant::now();
                let placed = api.checkout(&token, &format!("bench-{i}-{round}")).await;
                assert_eq!(placed.status, 202, "{:?}", placed.body);
                let id = placed.body["id"].as_str().unwrap().to_string();
                pushes_until(&mut socket, Duration::from_secs(120), |pushed| {
                    pushed.iter().any(|n| n["data"]["orderId"] == id.as_str() && n["data"]["status"] == "paid")
                })
                .await;
                (i, t.elapsed(), (api, token, socket))
            });
        }
        let mut done = tasks.join_all().await;
        done.sort_by_key(|(i, ..)| *i);
        for (_, took, client) in done {
            paid.push(took);
            clients.push(client);
        }
    }
    let elapsed = started.elapsed();
    paid.sort();
    println!(
        "{} node(s): {rounds} rounds of {shoppers} concurrent checkouts, {} paid in {:.1} s ({:.1} orders/s); checkout to paid p50 {:.0} ms, p99 {:.0} ms",
        nodes.len(),
        paid.len(),
        elapsed.as_secs_f64(),
        paid.len() as f64 / elapsed.as_secs_f64(),
        at(&paid, 0.5),
        at(&paid, 0.99),
    );
    // What follows a payment (stock closed, notifications, emails) is part of an order's cost too: sampled until the
    // topics stop growing (for a second, at most 20 s).
    let settled = Instant::now() + Duration::from_secs(20);
    let mut after = wire.sample(nodes);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = wire.sample(nodes);
        let still = again.kafka == after.kafka;
        after = again;
        if still || Instant::now() >= settled {
            break;
        }
    }
    let counted_after = after.nodes().await;
    print_cost(&before, &after, (&counted_before, &counted_after), paid.len());
}

/// Reads carts through every node, split by whether the node answering hosts the cart.
async fn local_and_forwarded(nodes: &[Node], admin: &str, reads: usize) {
    let mut users = Vec::new();
    for i in 0..12 {
        users.push(nodes[i % nodes.len()].signup(&format!("reader{i}@cluster.bench")).await);
    }
    let mut owned = Vec::new();
    for node in nodes {
        let status: Value = node.cluster(admin).await;
        let partitions = status["partitions"].as_i64().unwrap() as i32;
        let mine: Vec<i32> = status["owned"].as_array().unwrap().iter().map(|p| p.as_i64().unwrap() as i32).collect();
        owned.push((partitions, mine));
    }
    let (mut local, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..reads {
        for (user, token) in &users {
            for (node, (partitions, mine)) in nodes.iter().zip(&owned) {
                let shard = commercex::cluster::shard::partition(user.as_bytes(), *partitions);
                let t = Instant::now();
                let r = node.get("/api/cart", Some(token)).await;
                let took = t.elapsed();
                assert_eq!(r.status, 200, "{:?}", r.body);
                if mine.contains(&shard) {
                    local.push(took);
                } else {
                    forwarded.push(took);
                }
            }
        }
    }
    local.sort();
    forwarded.sort();
    println!(
        "GET /api/cart, one at a time: on the hosting node p50 {:.2} ms, p99 {:.2} ms ({} calls); forwarded to it p50 {:.2} ms, p99 {:.2} ms ({} calls)",
        at(&local, 0.5),
        at(&local, 0.99),
        local.len(),
        at(&forwarded, 0.5),
        at(&forwarded, 0.99),
        forwarded.len()
    );
}

#[tokio::main]
async fn main() {
    let shoppers = env_or("SHOPPERS", 16);
    let rounds = env_or("ROUNDS", 3);
    let reads = env_or("READS", 20);
    {
        let (_deployment, nodes, admin, wire) = cluster("bench_one", 1).await;
        checkouts(&nodes, &admin, shoppers, rounds, &wire).await;
    }
    let (_deployment, mut nodes, admin, wire) = cluster("bench_three", 3).await;
    checkouts(&nodes, &admin, shoppers, rounds, &wire).await;
    local_and_forwarded(&nodes, &admin, reads).await;

    nodes[2].kill();
    let killed = Instant::now();
    let survivors: Vec<&Api> = nodes[..2].iter().map(|n| &**n).collect();
    wait_shards_settled(&survivors, &admin, Duration::from_secs(60)).await;
    println!(
        "failover: SIGKILL of one node of three, its shards hosted again after {:.1} s (session timeout 10 s)",
        killed.elapsed().as_secs_f64()
    );
}
