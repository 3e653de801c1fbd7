//! Each real server stopped and started again under load (a private instance, so other tests never notice): requests
//! that need it get 503 meanwhile, everything recovers by itself once it is back, nothing acknowledged is lost, no
//! event is lost or reordered, and a revoked token is never let in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::harness::{pushes_until, wait_shards_settled, Api, Deployment, PrivateServer, Servers};

/// How long recovery may take: under cluster churn a saga step waiting on a moved entity retries with a growing
/// backoff, and a checkout has been seen to take over a minute to settle.
const RECOVERY: Duration = Duration::from_secs(120);
pub const TERMINAL: [&str; 5] = ["paid", "payment_failed", "cancelled", "refunded", "delivered"];

/// What a load task saw: how many answers of each status, and per status the error codes.
#[derive(Default, Debug)]
pub struct Seen {
    statuses: BTreeMap<u16, u32>,
    codes: BTreeMap<String, u32>,
}

impl Seen {
    fn record(&mut self, status: u16, code: &str) {
        *self.statuses.entry(status).or_default() += 1;
        if !code.is_empty() {
            *self.codes.entry(code.to_string()).or_default() += 1;
        }
    }

    /// Every answer was a success or a retryable 503: no other 5xx, no hang-up, no unexpected 4xx.
    pub fn only_success_or_503(&self) {
        let bad: Vec<_> = self.statuses.keys().filter(|s| !(200..300).contains(*s) && **s != 503).collect();
        assert!(bad.is_empty(), "unexpected answers {bad:?} in {self:?}");
        assert!(self.codes.keys().all(|c| c == "service_unavailable" || c == "auth_busy"), "{self:?}");
    }
}

/// Sets one cart line's quantity to 1, 2, 3 ... as fast as answers come. `acked`: the last quantity answered 200.
struct CartLoad {
    task: JoinHandle<Seen>,
    acked: Arc<Mutex<u32>>,
    stop: watch::Sender<bool>,
}

impl CartLoad {
    async fn start(api: Api, token: String, product: String) -> Self {
        let r = api.post("/api/cart/items", Some(&token), json!({"productId": product, "quantity": 1})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let acked = Arc::new(Mutex::new(1));
        let (stop, mut stopped) = watch::channel(false);
        let last = acked.clone();
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut quantity = 1;
            while !*stopped.borrow_and_update() && quantity < 999 {
                quantity += 1;
                let path = format!("/api/cart/items/{product}");
                let r = api.patch(&path, Some(&token), json!({"quantity": quantity})).await;
                seen.record(r.status, r.code());
                if r.status == 200 {
                    *last.lock().unwrap() = quantity;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        Self { task, acked, stop }
    }

    /// Stops the load; the cart must hold the last acknowledged quantity or a later attempt's.
    async fn finish(self, api: &Api, token: &str, product: &str) -> Seen {
        self.stop.send(true).unwrap();
        let seen = self.task.await.unwrap();
        let acked = *self.acked.lock().unwrap();
        let cart = api.wait_for("/api/cart", Some(token), RECOVERY, |_| true).await;
        let line = cart["items"].as_array().unwrap().iter().find(|l| l["productId"] == product).cloned();
        let held = line.map_or(0, |l| l["quantity"].as_u64().unwrap());
        assert!(held >= u64::from(acked), "acknowledged quantity {acked} lost: the cart holds {held}");
        seen
    }
}

/// Polls until `check` holds, at most `deadline`.
async fn until(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn redis_stopped_and_started_under_load() {
    let redis = PrivateServer::start("redis");
    let mut deployment = Deployment::new("redis_outage", Servers { redis_url: Some(redis.url()), ..Servers::shared() });
    let node = deployment.start_node().await;
    let admin = node.admin().await;
    let product = node.create_product(&admin, "Lamp", 3000, 1000).await;
    let (_, shopper) = node.signup("shopper@outage.test").await;
    let (_, leaver) = node.signup("leaver@outage.test").await;
    let r = node.post("/api/users/signout", Some(&leaver), json!({})).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(node.get("/api/users/me", Some(&leaver)).await.status, 401);
    let load = CartLoad::start(node.api(), shopper.clone(), product.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.down();
    until("/ready to report the revocation check down", Duration::from_secs(10), async || {
        let r = node.get("/ready", None).await;
        r.status == 503 && r.body["revocations"]["status"] == "down" && r.body["cache"]["status"] == "down"
    })
    .await;
    for _ in 0..10 {
        // Fail closed: a token that cannot be checked is refused, the revoked one above all.
        let me = node.get("/api/users/me", Some(&shopper)).await;
        assert_eq!((me.status, me.code()), (503, "service_unavailable"), "{:?}", me.body);
        let revoked = node.get("/api/users/me", Some(&leaver)).await;
        assert_eq!(revoked.status, 503, "a revoked token is never let in: {:?}", revoked.body);
        // Public reads bypass the cache and go to the store.
        let read = node.get(&format!("/api/products/{product}"), None).await;
        assert_eq!((read.status, read.body["title"].as_str()), (200, Some("Lamp")), "{:?}", read.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    redis.up();
    node.wait_ready(RECOVERY).await;
    until("the shopper's token to work again", RECOVERY, async || {
        node.get("/api/users/me", Some(&shopper)).await.status == 200
    })
    .await;
    let revoked = node.get("/api/users/me", Some(&leaver)).await;
    assert_eq!(revoked.status, 401, "the revocation outlived the restart: {:?}", revoked.body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.finish(&node, &shopper, &product).await;
    seen.only_success_or_503();
    assert!(seen.statuses.get(&503).is_some_and(|n| *n > 0), "the outage was seen: {seen:?}");
    let cached = node.get(&format!("/api/products/{product}"), None).await;
    assert_eq!(cached.status, 200);
}

/// Waits, as a shopper would, until the order is over and, if paid, has emptied the cart; 503s meanwhile are fine,
/// and a node that does not answer is replaced by the next one.
async fn settle(apis: &[Api], mut at: usize, token: &str, id: &str, seen: &mut Seen) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < RECOVERY, "order {id} never settled");
        let api = &apis[at % apis.len()];
        let r = api.get(&format!("/api/orders/{id}"), Some(token)).await;
        if r.status == 0 {
            at += 1;
            continue;
        }
        if r.status != 404 {
            seen.record(r.status, r.code());
        }
        let status = r.body["status"].as_str().unwrap_or_default();
        if r.status == 200 && TERMINAL.contains(&status) {
            if status != "paid" {
                return;
            }
            let cart = api.get("/api/cart", Some(token)).await;
            if cart.status == 0 {
                at += 1;
                continue;
            }
            seen.record(cart.status, cart.code());
            if cart.status == 200 && cart.body["items"].as_array().is_some_and(Vec::is_empty) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Orders placed by `shoppers` in a loop, each shopper's requests going round the nodes `apis`; each checkout is
/// retried with its idempotency key until it gets a definite answer, as a careful client does (on the next node
/// when one does not answer at all). Returns the acknowledged order ids per shopper.
pub struct CheckoutLoad {
    tasks: Vec<JoinHandle<(Vec<String>, Seen)>>,
    stop: watch::Sender<bool>,
}

impl CheckoutLoad {
    pub fn start(apis: &[Api], shoppers: &[String], product: &str) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = shoppers
            .iter()
            .enumerate()
            .map(|(n, token)| {
                let (apis, token, product, mut stopped) =
                    (apis.to_vec(), token.clone(), product.to_string(), stopped.clone());
                tokio::spawn(async move {
                    let (mut orders, mut seen) = (Vec::new(), Seen::default());
                    let (mut attempt, mut at) = (0, n);
                    while !*stopped.borrow_and_update() {
                        at += 1;
                        let api = &apis[at % apis.len()];
                        let item = json!({"productId": product, "quantity": 1});
                        let r = api.post("/api/cart/items", Some(&token), item).await;
                        if r.status == 0 {
                            continue;
                        }
                        seen.record(r.status, r.code());
                        if r.status != 200 {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        attempt += 1;
                        let key = format!("shopper{n}-{attempt}");
                        loop {
                            let api = &apis[at % apis.len()];
                            let placed = api.checkout(&token, &key).await;
                            match placed.status {
                                202 | 200 => {
                                    seen.record(placed.status, placed.code());
                                    let id = placed.body["id"].as_str().unwrap().to_string();
                                    settle(&apis, at, &token, &id, &mut seen).await;
                                    orders.push(id);
                                    break;
                                }
                                0 => at += 1,
                                503 => {
                                    seen.record(placed.status, placed.code());
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                                _ => panic!("checkout {key}: {} {:?}", placed.status, placed.body),
                            }
                        }
                    }
                    (orders, seen)
                })
            })
            .collect();
        Self { tasks, stop }
    }

    pub async fn finish(self) -> (Vec<Vec<String>>, Seen) {
        self.stop.send(true).unwrap();
        let mut all = (Vec::new(), Seen::default());
        for task in self.tasks {
            let (orders, seen) = task.await.unwrap();
            all.0.push(orders);
            for (status, n) in seen.statuses {
                *all.1.statuses.entry(status).or_default() += n;
            }
            all.1.codes.extend(seen.codes);
        }
        all
    }
}

/// Every order the shopper's listing holds, page after page.
async fn listed_orders(api: &Api, token: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for page in 1.. {
        let listed = api.get(&format!("/api/orders?limit=100&page={page}"), Some(token)).await.body;
        let items = listed["items"].as_array().cloned().unwrap_or_default();
        ids.extend(items.iter().filter_map(|o| o["id"].as_str().map(str::to_string)));
        if items.len() < 100 {
            break;
        }
    }
    ids
}

/// After a load: every acknowledged order is listed for its shopper (and no other order), reaches a terminal state
/// with one capture if paid and none otherwise, and stock on hand is the initial stock minus what was paid, with
/// nothing left reserved.
pub async fn settle_all(api: &Api, shoppers: &[String], orders: &[Vec<String>], product: &str, stock: i64) {
    let mut sold = 0;
    for (token, placed) in shoppers.iter().zip(orders) {
        assert!(!placed.is_empty(), "each shopper got orders through");
        // Orders lost, or unacknowledged ones made, would never match.
        let placed_set: HashSet<String> = placed.iter().cloned().collect();
        let start = Instant::now();
        while listed_orders(api, token).await != placed_set {
            assert!(start.elapsed() < RECOVERY, "the orders listed never matched the {} acknowledged", placed.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for id in placed {
            let order = api
                .wait_for(&format!("/api/orders/{id}"), Some(token), RECOVERY, |o| {
                    TERMINAL.contains(&o["status"].as_str().unwrap_or_default())
                })
                .await;
            let payments = api.get(&format!("/api/payments?orderId={id}"), Some(token)).await.body;
            let captured = payments["items"].as_array().unwrap().iter().filter(|p| p["status"] == "captured").count();
            if order["status"] == "paid" {
                assert_eq!(captured, 1, "order {id}: {payments:?}");
                sold += order["lines"][0]["quantity"].as_i64().unwrap();
            } else {
                assert_eq!(captured, 0, "order {id} is {} yet captured: {payments:?}", order["status"]);
            }
        }
    }
    let path = format!("/api/products/{product}");
    api.wait_for(&path, None, RECOVERY, |p| p["stockReserved"] == 0 && p["stockOnHand"] == stock - sold).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn mongodb_stopped_and_started_under_load() {
    const STOCK: i64 = 10_000;
    let mongo = PrivateServer::start("mongo");
    let mut deployment = Deployment::new("mongo_outage", Servers { mongodb_uri: mongo.url(), ..Servers::shared() });
    let node = deployment.start_node().await;
    let admin = node.admin().await;
    let product = node.create_product(&admin, "Tea", 450, STOCK).await;
    let mut shoppers = Vec::new();
    for n in 0..3 {
        shoppers.push(node.signup(&format!("buyer{n}@outage.test")).await.1);
    }
    let (_, carter) = node.signup("carter@outage.test").await;
    let carts = CartLoad::start(node.api(), carter.clone(), product.clone()).await;
    let checkouts = CheckoutLoad::start(&[node.api()], &shoppers, &product);
    tokio::time::sleep(Duration::from_secs(2)).await;

    mongo.down();
    until("/ready to report the store down", Duration::from_secs(10), async || {
        let r = node.get("/ready", None).await;
        r.status == 503 && r.body["store"]["status"] == "down"
    })
    .await;
    let signin =
        node.post("/api/users/signin", None, json!({"email": "carter@outage.test", "password": "pass-word-1"})).await;
    assert_eq!((signin.status, signin.code()), (503, "service_unavailable"), "{:?}", signin.body);
    tokio::time::sleep(Duration::from_secs(3)).await;
    mongo.up();
    node.wait_ready(RECOVERY).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (orders, seen) = checkouts.finish().await;
    seen.only_success_or_503();
    assert!(seen.statuses.get(&503).is_some_and(|n| *n > 0), "the outage was seen: {seen:?}");
    let carts_seen = carts.finish(&node, &carter, &product).await;
    carts_seen.only_success_or_503();
    settle_all(&node, &shoppers, &orders, &product, STOCK).await;
}

/// Every event in `topic`, from the start, grouped by stream in the order the topic holds them.
fn read_topic(brokers: &str, topic: &str, partitions: i32, settle: Duration) -> HashMap<String, Vec<(u64, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("outage-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut streams: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut quiet_since = std::time::Instant::now();
    while quiet_since.elapsed() < settle {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let event: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let stream = event["stream"].as_str().unwrap().to_string();
                let seq = event["seq"].as_u64().unwrap();
                streams.entry(stream).or_default().push((seq, event["type"].as_str().unwrap().to_string()));
                quiet_since = std::time::Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn kafka_stopped_and_started_under_load() {
    let kafka = PrivateServer::start("kafka");
    let servers = Servers { kafka_brokers: kafka.url(), ..Servers::shared() };
    let mut deployment = Deployment::new("kafka_outage", servers).clustered();
    let a = deployment.start_node().await;
    let b = deployment.start_node().await;
    let admin = a.admin().await;
    wait_shards_settled(&[&a, &b], &admin, RECOVERY).await;
    let product = a.create_product(&admin, "Cup", 800, 10_000).await;
    let mut shoppers = Vec::new();
    for n in 0..2 {
        shoppers.push(a.signup(&format!("cup{n}@outage.test")).await.1);
    }
    // The first shopper watches from a socket on the other process.
    let mut watcher = b.socket(&shoppers[0]).await;
    let checkouts = CheckoutLoad::start(&[a.api()], &shoppers, &product);
    tokio::time::sleep(Duration::from_secs(1)).await;

    kafka.down();
    until("/ready to report the bus down", Duration::from_secs(15), async || {
        let r = a.get("/ready", None).await;
        r.status == 200 && r.body["status"] == "degraded" && r.body["bus"]["status"] == "down"
    })
    .await;
    // Writes go on: the outbox holds their events.
    let during = a.get("/api/users/me", Some(&shoppers[0])).await;
    assert_eq!(during.status, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    kafka.up();
    a.wait_ready(RECOVERY).await;
    b.wait_ready(RECOVERY).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (orders, seen) = checkouts.finish().await;
    seen.only_success_or_503();
    assert!(orders.iter().all(|o| !o.is_empty()));
    let expected: usize = orders.iter().map(Vec::len).sum();
    settle_all(&a, &shoppers, &orders, &product, 10_000).await;

    // Every order of the watching shopper reaches its socket on the other process, each status once, in order.
    let mine: HashSet<String> = orders[0].iter().cloned().collect();
    let pushed = pushes_until(&mut watcher, RECOVERY, |pushed| {
        mine.iter().all(|id| {
            pushed.iter().any(|n| {
                n["data"]["orderId"] == id.as_str()
                    && n["kind"] == "order.status_changed"
                    && TERMINAL.contains(&n["data"]["status"].as_str().unwrap_or_default())
            })
        })
    })
    .await;
    for id in &mine {
        let statuses: Vec<&str> = pushed
            .iter()
            .filter(|n| {
                n["data"]["orderId"] == id.as_str() && n["kind"].as_str().is_some_and(|k| k.starts_with("order."))
            })
            .map(|n| n["data"]["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["pending", "stock_reserved", "paid"], "order {id}");
    }
    let ids: Vec<&Value> = pushed.iter().map(|n| &n["id"]).collect();
    assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len(), "nothing pushed twice");

    // The topic holds every order's events, each stream's in order, with nothing missing. Events may repeat (a
    // publish that timed out is sent again, with what followed it), so what counts is what a consumer dropping
    // repeats sees: every new event is the next one of its stream.
    let topic = format!("nodes.{}.order", deployment.name());
    let brokers = kafka.url();
    let streams =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, 6, Duration::from_secs(3))).await.unwrap();
    let all_orders: HashSet<String> = orders.iter().flatten().map(|id| format!("order:{id}")).collect();
    assert_eq!(all_orders.len(), expected);
    for stream in &all_orders {
        let events = streams.get(stream).unwrap_or_else(|| panic!("no events of {stream} in the topic"));
        let mut seen = 0;
        for (seq, _) in events {
            assert!(*seq <= seen + 1, "{stream} skips ahead: {events:?}");
            seen = seen.max(*seq);
        }
        assert!(events.iter().any(|(_, t)| t == "order.status_changed"), "{stream}: {events:?}");
    }
}
