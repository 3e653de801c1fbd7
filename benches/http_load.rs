//! Over real HTTP against an in-process server with the simulated payment provider (20 ms per call), on each
//! backend in turn: add-to-cart throughput and latency, then shoppers who each fill their cart, check out and wait
//! for the order's `paid` push, several times in a row, all at once: first all buying one product (a flash sale),
//! then each a product of its own. The time from `POST /api/cart/checkout` to the push is measured. Then, on each store, the cost of
//! one commit and of the round trips a MongoDB commit is made of.
//!
//! Run: `cargo bench --bench http_load` (embedded only), or side by side on the real servers:
//! `scripts/infra.sh up && eval "$(scripts/infra.sh env)" && BACKENDS=embedded,mongodb,real cargo bench --bench http_load`
//! (`mongodb`: MongoDB store, in-process bus; `real`: MongoDB + Kafka + Redis). Optional env: REQUESTS,
//! CONCURRENCY (add-to-cart clients, 32), SHOPPERS (128), ROUNDS (orders in a row per shopper, 5), and MONGODB_PID (the server's pid, e.g. `$(cat $CARGO_TARGET_DIR/infra/mongo/nx.pid)`) to
//! report the server's CPU use.

#[path = "server/mod.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use commercex::app::Application;
use commercex::config::{BootstrapAdmin, BusBackend, Config, StoreBackend};
use commercex::store::embedded::EmbeddedStore;
use commercex::store::mongo::MongoStore;
use commercex::store::{Commit, EventRecord, Store};
use futures_util::StreamExt;
use mongodb::bson::doc;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: eval \"$(scripts/infra.sh env)\" first"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `p` in 0..=1 of sorted durations.
fn at(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A name unique to this run, for databases, topics and keys.
fn run_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("bench{}", nanos % 1_000_000_000)
}

fn config_for(backend: &str, dir: &std::path::Path, name: &str) -> Config {
    let mut config = Config::default();
    config.store.data_dir = dir.to_path_buf();
    config.http.auth_rate_limit_per_minute = 1_000_000;
    // Every shopper checks out in a loop and keeps a socket open, all from one address.
    config.checkout.checkouts_per_user_per_minute = 1_000_000;
    config.checkout.max_pending_orders_per_user = 1_000_000;
    config.notifications.max_sockets_per_client = 1_000_000;
    config.http.max_connections_per_client = 1_000_000;
    config.auth.jwt_secret = "benchmark-secret-0123456789abcdef0123456789".into();
    config.auth.bootstrap_admin =
        Some(BootstrapAdmin { email: "admin@bench.test".into(), password: "admin-pass-1".into() });
    if backend != "embedded" {
        config.store.backend = StoreBackend::Mongodb;
        config.store.mongodb.uri = required("COMMERCEX_TEST_MONGODB_URI");
        config.store.mongodb.database = name.to_string();
    }
    if backend == "real" {
        config.bus.backend = BusBackend::Kafka;
        config.bus.kafka.brokers = required("COMMERCEX_TEST_KAFKA_BROKERS");
        config.bus.kafka.topic_prefix = name.to_string();
        config.bus.kafka.group_id = name.to_string();
        config.redis.url = required("COMMERCEX_TEST_REDIS_URL");
        config.redis.key_prefix = name.to_string();
    }
    config
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Checks out and waits for the order's `paid` push on the user's WebSocket (as a storefront does; polling
    /// would load the store): (accepted after, paid after).
    async fn checkout_to_paid(&self, token: &str, key: &str, socket: &mut Socket) -> (Duration, Duration) {
        let t = Instant::now();
        let res = self
            .http
            .post(format!("{}/api/cart/checkout", self.base))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({"paymentMethod": "pm_card_visa"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        let accepted = t.elapsed();
        let id = res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(120), socket.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = message else {
                let order = self.http.get(format!("{}/api/orders/{id}", self.base)).bearer_auth(token).send().await;
                let order = match order {
                    Ok(res) => res.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                let stored =
                    self.http.get(format!("{}/api/notifications?limit=5", self.base)).bearer_auth(token).send().await;
                let stored = match stored {
                    Ok(res) => res.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                panic!("no push for order {id}: {message:?}; the order: {order}; stored: {stored}")
            };
            let push: Value = serde_json::from_str(text.as_str()).unwrap();
            let n = &push["notification"];
            if n["data"]["orderId"] == id.as_str() && n["kind"] == "order.status_changed" {
                match n["data"]["status"].as_str() {
                    Some("paid") => return (accepted, t.elapsed()),
                    Some("stock_reserved") => {}
                    other => panic!("order {id} ended {other:?}"),
                }
            }
        }
    }

    async fn socket(&self, token: &str) -> Socket {
        let url = format!("{}/ws/notifications", self.base.replace("http://", "ws://"));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut socket = tokio_tungstenite::connect_async(req).await.unwrap().0;
        let ready = socket.next().await.unwrap().unwrap();
        assert!(ready.to_text().unwrap().contains("ready"));
        socket
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// CPU used by this process and, with `MONGODB_PID` set, by the MongoDB server, since `before`.
struct Cpu {
    own: f64,
    server: Option<(String, f64)>,
}

impl Cpu {
    fn now() -> Self {
        let server = std::env::var("MONGODB_PID").ok().map(|pid| {
            let used = server::cpu_secs(&pid);
            (pid, used)
        });
        Self { own: server::cpu_secs("self"), server }
    }

    fn since(&self, wall: Duration) -> String {
        let own = server::cpu_secs("self") - self.own;
        let mut out = format!("CPU: commercex + clients {:.0}%", 100.0 * own / wall.as_secs_f64());
        if let Some((pid, before)) = &self.server {
            out.push_str(&format!(
                ", MongoDB server {:.0}%",
                100.0 * (server::cpu_secs(pid) - before) / wall.as_secs_f64()
            ));
        }
        out
    }
}

/// This machine's rate of durable 4 KiB writes, one after another (write, then fdatasync), in the directory the
/// embedded store uses: what a store that pays one fsync per commit could reach at best.
fn fsync_rate(dir: &std::path::Path) -> f64 {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = [7u8; 4096];
    let n = 2_000;
    let started = Instant::now();
    for _ in 0..n {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn http_load(backend: &str, requests: usize, concurrency: usize, shoppers: usize, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let fsyncs = (backend == "embedded").then(|| fsync_rate(dir.path()));
    let name = run_name();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::with_listener(config_for(backend, dir.path(), &name), listener).await.unwrap();
    let client = Client {
        http: reqwest::Client::builder().pool_max_idle_per_host(concurrency.max(shoppers)).build().unwrap(),
        base: format!("http://{}", app.local_addr().unwrap()),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let signin = json!({"email": "admin@bench.test", "password": "admin-pass-1"});
    let admin = client.post("/api/users/signin", None, signin).await.1["accessToken"].as_str().unwrap().to_string();
    let product =
        json!({"title": "Bench", "price": 100, "currency": "USD", "category": "bench", "stock": 1_000_000_000});
    let pid = client.post("/api/products", Some(&admin), product).await.1["id"].as_str().unwrap().to_string();
    // One user (and so one cart actor) per client: the load spreads over `concurrency` entities.
    let mut tokens = Vec::new();
    for i in 0..concurrency.max(shoppers) {
        let body = json!({"email": format!("u{i}@bench.test"), "password": "pass-word-1", "name": "Bench"});
        tokens.push(client.post("/api/users/signup", None, body).await.1["accessToken"].as_str().unwrap().to_string());
    }

    let cpu = Cpu::now();
    let started = Instant::now();
    let per_client = requests / concurrency;
    let mut tasks = tokio::task::JoinSet::new();
    for token in &tokens[..concurrency] {
        let (client, pid, token) = (client.clone(), pid.clone(), token.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                let (status, _) =
                    client.post("/api/cart/items", Some(&token), json!({"productId": pid, "quantity": 1})).await;
                assert_eq!(status, 200);
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut l: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    l.sort();
    println!(
        "{backend:>9} add-to-cart: {} requests, {concurrency} clients: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, RSS {:.0} MiB; {}",
        l.len(),
        l.len() as f64 / elapsed.as_secs_f64(),
        ms(at(&l, 0.50)),
        ms(at(&l, 0.99)),
        server::status_mib("self", "VmRSS:"),
        cpu.since(elapsed),
    );
    if let Some(fsyncs) = fsyncs {
        let rate = l.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{backend:>9} durable 4 KiB writes one after another on this disk: {fsyncs:.0}/s; add-to-cart ran at {:.1}x that",
            rate / fsyncs
        );
    }

    // Checkout: every shopper puts an item in its cart, checks out and waits for the `paid` push, `rounds` times in
    // a row. First all of them buy the same product (a flash sale), then each one a product of its own.
    let mut sockets = Vec::new();
    for token in &tokens[..shoppers] {
        sockets.push(client.socket(token).await);
    }
    let own: Vec<String> = futures_util::future::join_all((0..shoppers).map(|i| {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let product = json!({"title": format!("Bench {i}"), "price": 100, "currency": "USD", "category": "bench",
                "stock": 1_000_000_000});
            client.post("/api/products", Some(&admin), product).await.1["id"].as_str().unwrap().to_string()
        }
    }))
    .await;
    for (scenario, products) in [("flash sale, one product", vec![pid.clone()]), ("one product each", own)] {
        let cpu = Cpu::now();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (token, mut socket)) in tokens[..shoppers].iter().cloned().zip(sockets.drain(..)).enumerate() {
            let (client, product) = (client.clone(), products[i % products.len()].clone());
            let scenario = scenario.len();
            tasks.spawn(async move {
                let mut times = Vec::with_capacity(rounds);
                for round in 0..rounds {
                    let item = json!({"productId": product, "quantity": 1});
                    assert_eq!(client.post("/api/cart/items", Some(&token), item).await.0, 200);
                    let key = format!("bench-{scenario}-{i}-{round}");
                    times.push(client.checkout_to_paid(&token, &key, &mut socket).await);
                }
                (i, times, socket)
            });
        }
        let (mut accepted, mut paid) = (Vec::new(), Vec::new());
        let mut done = tasks.join_all().await;
        // Each socket goes back to its own shopper.
        done.sort_by_key(|(i, ..)| *i);
        for (_, times, socket) in done {
            accepted.extend(times.iter().map(|t| t.0));
            paid.extend(times.iter().map(|t| t.1));
            sockets.push(socket);
        }
        let elapsed = started.elapsed();
        accepted.sort();
        paid.sort();
        println!(
            "{backend:>9} checkout ({scenario}): {shoppers} shoppers x {rounds} orders in a row, {} paid in {:.0} ms ({:.0} orders/s); accepted p50 {:.1} ms, p99 {:.1} ms; paid p50 {:.1} ms, p99 {:.1} ms; {}",
            paid.len(),
            ms(elapsed),
            paid.len() as f64 / elapsed.as_secs_f64(),
            ms(at(&accepted, 0.5)),
            ms(at(&accepted, 0.99)),
            ms(at(&paid, 0.5)),
            ms(at(&paid, 0.99)),
            cpu.since(elapsed),
        );
    }
    drop(sockets);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// p50 and p99 of `n` sequential runs of `op`.
async fn time<F, Fut>(n: usize, mut op: F) -> (f64, f64)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        op(i).await;
        samples.push(t.elapsed());
    }
    samples.sort();
    (ms(at(&samples, 0.5)), ms(at(&samples, 0.99)))
}

fn one_event_commit(stream: &str, seq: u64) -> Commit {
    let event = EventRecord {
        id: format!("{stream}/{seq}"),
        stream: stream.to_string(),
        seq,
        event_type: "cart.item_added".into(),
        recorded_at: chrono::Utc::now(),
        payload: json!({"productId": "p1", "quantity": 1}),
    };
    Commit {
        stream: stream.into(),
        expected_seq: seq - 1,
        events: vec![event],
        snapshot: None,
        read_model: None,
        active: false,
    }
}

/// One commit at a time on `store`, and for MongoDB each kind of round trip a commit is made of.
async fn store_costs(backend: &str, store: Arc<dyn Store>, mongo: Option<(mongodb::Database, &str)>) {
    let n = 500;
    let (p50, p99) = time(n, |i| {
        let store = store.clone();
        async move { store.commit(one_event_commit(&format!("cart:c{}", i % 50), (i / 50) as u64 + 1)).await.unwrap() }
    })
    .await;
    println!("{backend:>9} store: one-event commit, one at a time: p50 {p50:.2} ms, p99 {p99:.2} ms ({n} commits)");
    let Some((db, name)) = mongo else { return };
    let commits = db.collection::<mongodb::bson::Document>("commits");
    let counters = db.collection::<mongodb::bson::Document>("counters");
    let active = db.collection::<mongodb::bson::Document>("active_streams");
    let trips: [(&str, (f64, f64)); 5] = [
        (
            "ping",
            time(n, |_| async {
                db.run_command(doc! {"ping": 1}).await.unwrap();
            })
            .await,
        ),
        (
            "stream head (find_one, sorted)",
            time(n, |i| {
                let commits = commits.clone();
                async move {
                    let stream = format!("cart:c{}", i % 50);
                    commits.find_one(doc! {"stream": stream}).sort(doc! {"firstSeq": -1}).await.unwrap();
                }
            })
            .await,
        ),
        (
            "outbox counter (find_one_and_update)",
            time(n, |_| {
                let counters = counters.clone();
                async move {
                    counters
                        .find_one_and_update(doc! {"_id": "bench"}, doc! {"$inc": {"next": 1}})
                        .upsert(true)
                        .await
                        .unwrap();
                }
            })
            .await,
        ),
        (
            "commit document (insert_one)",
            time(n, |i| {
                let commits = commits.clone();
                async move {
                    let id = format!("bench:{name}/{i}");
                    commits.insert_one(doc! {"_id": id, "stream": format!("bench:{i}"), "firstSeq": 1}).await.unwrap();
                }
            })
            .await,
        ),
        (
            "derived write (update_one, upsert)",
            time(n, |i| {
                let active = active.clone();
                async move {
                    let id = format!("bench:{}", i % 50);
                    active
                        .update_one(doc! {"_id": id}, doc! {"$set": {"streamSeq": i as i64}})
                        .upsert(true)
                        .await
                        .unwrap();
                }
            })
            .await,
        ),
    ];
    for (what, (p50, p99)) in trips {
        println!("{backend:>9} round trip: {what}: p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let requests = env_or("REQUESTS", 4000);
    let concurrency = env_or("CONCURRENCY", 32);
    let shoppers = env_or("SHOPPERS", 128);
    let rounds = env_or("ROUNDS", 5);
    let backends = std::env::var("BACKENDS").unwrap_or_else(|_| "embedded".into());
    let backends: Vec<&str> = backends.split(',').map(str::trim).collect();
    for backend in &backends {
        assert!(
            ["embedded", "mongodb", "real"].contains(backend),
            "unknown backend {backend}: embedded, mongodb, real"
        );
        http_load(backend, requests, concurrency, shoppers, rounds).await;
    }
    if backends.contains(&"embedded") {
        let dir = tempfile::tempdir().unwrap();
        store_costs("embedded", Arc::new(EmbeddedStore::open(dir.path()).unwrap()), None).await;
    }
    if backends.iter().any(|b| *b != "embedded") {
        let uri = required("COMMERCEX_TEST_MONGODB_URI");
        let name = run_name();
        let store = MongoStore::connect(&uri, &name).await.unwrap();
        let db = mongodb::Client::with_uri_str(&uri).await.unwrap().database(&name);
        store_costs("mongodb", Arc::new(store), Some((db, &name))).await;
    }
}
