//! Real `commercex` processes on loopback ports, sharing the real servers that `scripts/infra.sh` started, plus
//! private servers (own ports and data) that a test may stop and start again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const ADMIN_EMAIL: &str = "admin@nodes.test";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
const JWT_SECRET: &str = "nodes-test-secret-0123456789abcdef0123456789";
/// `cluster.secret` of every deployment: the nodes sign their calls, answers and events with it.
pub const CLUSTER_SECRET: &str = "nodes-test-cluster-secret-0123456789abcdef";

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run these tests through scripts/test.sh"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Where the servers are. Defaults to the shared ones from `scripts/infra.sh env`; a test may swap in a private one.
#[derive(Clone, Debug)]
pub struct Servers {
    pub mongodb_uri: String,
    pub kafka_brokers: String,
    /// `None`: each process keeps its own cache, revocations and rate limits.
    pub redis_url: Option<String>,
}

impl Servers {
    pub fn shared() -> Self {
        Self {
            mongodb_uri: required("COMMERCEX_TEST_MONGODB_URI"),
            kafka_brokers: required("COMMERCEX_TEST_KAFKA_BROKERS"),
            redis_url: Some(required("COMMERCEX_TEST_REDIS_URL")),
        }
    }
}

/// One deployment: processes sharing one database, one set of topics and one Redis key space, named after the test.
pub struct Deployment {
    name: String,
    servers: Servers,
    dir: Option<TempDir>,
    nodes: usize,
    clustered: bool,
}

impl Drop for Deployment {
    /// A failed test keeps the nodes' data directories and logs, and says where.
    fn drop(&mut self) {
        if let (true, Some(dir)) = (std::thread::panicking(), self.dir.take()) {
            eprintln!("--- logs kept in {}", dir.keep().display());
        }
    }
}

impl Deployment {
    pub fn new(test: &str, servers: Servers) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let unique: String =
            dir.path().file_name().unwrap().to_string_lossy().chars().filter(char::is_ascii_alphanumeric).collect();
        Self { name: format!("{test}_{unique}"), servers, dir: Some(dir), nodes: 0, clustered: false }
    }

    /// Cluster mode: each entity hosted by one node, calls forwarded between them.
    pub fn clustered(mut self) -> Self {
        self.clustered = true;
        self
    }

    /// Names the deployment's database (`nodes_{name}`), topics (`nodes.{name}.*`) and Redis keys.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn env(&self, port: u16, data_dir: &Path, node: usize) -> Vec<(String, String)> {
        let mut env = vec![
            ("HTTP__ADDR", format!("127.0.0.1:{port}")),
            ("HTTP__AUTH_RATE_LIMIT_PER_MINUTE", "100000".into()),
            ("STORE__DATA_DIR", data_dir.display().to_string()),
            ("STORE__BACKEND", "mongodb".into()),
            ("STORE__MONGODB__URI", self.servers.mongodb_uri.clone()),
            ("STORE__MONGODB__DATABASE", format!("nodes_{}", self.name)),
            ("BUS__BACKEND", "kafka".into()),
            ("BUS__KAFKA__BROKERS", self.servers.kafka_brokers.clone()),
            ("BUS__KAFKA__TOPIC_PREFIX", format!("nodes.{}", self.name)),
            // A cluster spreads its shards (partitions) over the nodes.
            ("BUS__KAFKA__PARTITIONS", if self.clustered { "6" } else { "2" }.into()),
            ("BUS__KAFKA__GROUP_ID", format!("nodes-{}", self.name)),
            ("AUTH__JWT_SECRET", JWT_SECRET.into()),
            // Clustered or not, the processes share the Kafka bus: their events are signed and checked.
            ("CLUSTER__SECRET", CLUSTER_SECRET.into()),
            ("AUTH__ARGON2_MEMORY_KIB", "1024".into()),
            ("AUTH__ARGON2_ITERATIONS", "1".into()),
            ("AUTH__BOOTSTRAP_ADMIN__EMAIL", ADMIN_EMAIL.into()),
            ("AUTH__BOOTSTRAP_ADMIN__PASSWORD", ADMIN_PASSWORD.into()),
            ("PAYMENTS__SIMULATED_LATENCY_MS", "5".into()),
            ("LOG__LEVEL", "info".into()),
            // Several processes on one host: metrics with the API, where the tests scrape them.
            ("TELEMETRY__METRICS_ADDR", String::new()),
            // Shoppers under load check out in loops from one address: per-user and per-address budgets aside.
            ("CHECKOUT__CHECKOUTS_PER_USER_PER_MINUTE", "1000000".into()),
            ("CHECKOUT__MAX_PENDING_ORDERS_PER_USER", "1000000".into()),
            ("CHECKOUT__COUPON_ATTEMPTS_PER_USER_PER_MINUTE", "1000000".into()),
            ("AUTH__SIGNIN_ATTEMPTS_PER_ACCOUNT_PER_MINUTE", "1000000".into()),
            ("HTTP__REFRESH_RATE_LIMIT_PER_MINUTE", "1000000".into()),
            ("NOTIFICATIONS__MAX_SOCKETS_PER_CLIENT", "1000000".into()),
        ];
        if self.clustered {
            env.push(("CLUSTER__ENABLED", "true".into()));
            env.push(("CLUSTER__NODE_ID", format!("node{node}")));
        }
        if let Some(url) = &self.servers.redis_url {
            env.push(("REDIS__URL", url.clone()));
            env.push(("REDIS__KEY_PREFIX", format!("nodes:{}", self.name)));
        }
        env.into_iter().map(|(k, v)| (format!("COMMERCEX__{k}"), v)).collect()
    }

    /// Starts one more process and waits until it is ready.
    pub async fn start_node(&mut self) -> Node {
        self.start_node_with(&[]).await
    }

    /// Starts one more process with extra `COMMERCEX__` settings (`("CHAOS__ENABLED", "true")`).
    pub async fn start_node_with(&mut self, extra: &[(&str, &str)]) -> Node {
        self.nodes += 1;
        let data_dir = self.dir.as_ref().expect("deployment in use").path().join(format!("node{}", self.nodes));
        std::fs::create_dir_all(&data_dir).unwrap();
        let port = free_port();
        let log = data_dir.join("log");
        let child = Command::new(env!("CARGO_BIN_EXE_commercex"))
            .current_dir(&data_dir)
            .envs(self.env(port, &data_dir, self.nodes))
            .envs(extra.iter().map(|(k, v)| (format!("COMMERCEX__{k}"), v.to_string())))
            .env_remove("RUST_LOG")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts the commercex binary");
        let api = Api {
            name: format!("node{}", self.nodes),
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        };
        let node = Node { api, child: Some(child), log };
        node.wait_ready(Duration::from_secs(60)).await;
        node
    }

    /// Starts a node again on the data directory and port of one that was stopped.
    pub async fn restart_node(&self, node: &mut Node) {
        let (port, number) = node.port_and_number();
        let data_dir = self.dir.as_ref().expect("deployment in use").path().join(format!("node{number}"));
        let child = Command::new(env!("CARGO_BIN_EXE_commercex"))
            .current_dir(&data_dir)
            .envs(self.env(port, &data_dir, number))
            .env_remove("RUST_LOG")
            .stdout(std::fs::OpenOptions::new().append(true).open(&node.log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts the commercex binary");
        node.child = Some(child);
        node.wait_ready(Duration::from_secs(60)).await;
    }
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// The HTTP API of one process; cheap to clone into load tasks.
#[derive(Clone)]
pub struct Api {
    pub name: String,
    pub base: String,
    client: reqwest::Client,
}

/// A `commercex` process. Dropping it kills the process; a test that panics prints the end of each node's log.
pub struct Node {
    api: Api,
    child: Option<Child>,
    log: PathBuf,
}

impl std::ops::Deref for Node {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Api {
    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                Resp { status, body: res.json().await.unwrap_or(Value::Null) }
            }
            // No answer at all: the caller cannot know whether it happened, as with a 503.
            Err(e) => Resp { status: 0, body: json!({"error": {"code": "no_answer", "message": e.to_string()}}) },
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::POST, path, token, Some(&body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::PATCH, path, token, Some(&body)).await
    }

    pub async fn checkout(&self, token: &str, key: &str) -> Resp {
        self.checkout_with(token, key, json!({"paymentMethod": "pm_card_visa"})).await
    }

    pub async fn checkout_with(&self, token: &str, key: &str, body: Value) -> Resp {
        let res = self
            .client
            .post(format!("{}/api/cart/checkout", self.base))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await;
        match res {
            Ok(res) => {
                let status = res.status().as_u16();
                Resp { status, body: res.json().await.unwrap_or(Value::Null) }
            }
            Err(e) => Resp { status: 0, body: json!({"error": {"code": "no_answer", "message": e.to_string()}}) },
        }
    }

    /// A session: `(user id, access token)`.
    pub async fn signup(&self, email: &str) -> (String, String) {
        let body = json!({"email": email, "password": "pass-word-1", "name": "Shopper"});
        let r = self.post("/api/users/signup", None, body).await;
        assert_eq!(r.status, 201, "{} signup {email}: {:?}", self.name, r.body);
        (r.body["user"]["id"].as_str().unwrap().into(), r.body["accessToken"].as_str().unwrap().into())
    }

    pub async fn admin(&self) -> String {
        let r = self.post("/api/users/signin", None, json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})).await;
        assert_eq!(r.status, 200, "{} admin signin: {:?}", self.name, r.body);
        r.body["accessToken"].as_str().unwrap().into()
    }

    pub async fn create_product(&self, admin: &str, title: &str, price: i64, stock: i64) -> String {
        let body = json!({"title": title, "description": "A product", "price": price, "currency": "USD",
            "category": "general", "stock": stock});
        let r = self.post("/api/products", Some(admin), body).await;
        assert_eq!(r.status, 201, "{} create product: {:?}", self.name, r.body);
        r.body["id"].as_str().unwrap().into()
    }

    /// Polls `path` until `done` holds for a 200 answer.
    pub async fn wait_for(
        &self,
        path: &str,
        token: Option<&str>,
        deadline: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(path, token).await;
            if r.status == 200 && done(&r.body) {
                return r.body;
            }
            assert!(start.elapsed() < deadline, "{}: {path} never got there: {} {:?}", self.name, r.status, r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&self, deadline: Duration) -> Value {
        self.wait_for("/ready", None, deadline, |b| b["status"] == "ready").await
    }

    /// This node's view of the cluster (`GET /api/admin/cluster`).
    pub async fn cluster(&self, admin: &str) -> Value {
        let r = self.get("/api/admin/cluster", Some(admin)).await;
        assert_eq!(r.status, 200, "{}: {:?}", self.name, r.body);
        r.body
    }

    pub async fn socket(&self, token: &str) -> Socket {
        self.socket_query(token, "").await
    }

    /// A socket that first replays the user's notifications numbered above `after` (`?after=`).
    pub async fn socket_after(&self, token: &str, after: u64) -> Socket {
        self.socket_query(token, &format!("?after={after}")).await
    }

    async fn socket_query(&self, token: &str, query: &str) -> Socket {
        let url = format!("{}/ws/notifications{query}", self.base.replace("http://", "ws://"));
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut ws = tokio_tungstenite::connect_async(req).await.expect("websocket connects").0;
        assert_eq!(next_json(&mut ws, Duration::from_secs(10)).await.unwrap()["type"], "ready");
        ws
    }
}

impl Node {
    fn port_and_number(&self) -> (u16, usize) {
        let port = self.base.rsplit(':').next().unwrap().parse().unwrap();
        let number = self.name.trim_start_matches("node").parse().unwrap();
        (port, number)
    }

    /// SIGSTOP: the process freezes, holding whatever it held, as a long pause or a partition from everything.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("node running");
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {}", self.name);
    }

    /// SIGTERM, then waits for the process to end (a graceful stop), for at most a minute: a node that does not
    /// stop is killed and the test fails, pointing at its log, rather than waiting forever.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not stop within 60 s of SIGTERM; see {}", self.api.name, self.log.display());
        }
    }

    pub fn api(&self) -> Api {
        self.api.clone()
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the node's log holds `text` (ANSI colours removed).
    pub fn logged(&self, text: &str) -> bool {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain.contains(text)
    }

    fn log_tail(&self, lines: usize) -> Vec<String> {
        let Ok(file) = std::fs::File::open(&self.log) else { return Vec::new() };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].to_vec()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- last lines of {} ({}):", self.name, self.log.display());
            for line in self.log_tail(40) {
                eprintln!("{line}");
            }
        }
        self.kill();
    }
}

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message, or `None` if nothing arrives within `wait`.
pub async fn next_json(ws: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => return Some(json!({"type": "closed"})),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Some(json!({"type": "error", "error": e.to_string()})),
            Err(_) => return None,
        }
    }
}

/// The notifications pushed to `ws` until `done` holds for them, or the deadline passes (then it panics).
pub async fn pushes_until(ws: &mut Socket, deadline: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    let mut pushed = Vec::new();
    while !done(&pushed) {
        let left = deadline.checked_sub(start.elapsed()).unwrap_or_default();
        match next_json(ws, left.max(Duration::from_millis(1))).await {
            Some(msg) if msg["type"] == "notification" => pushed.push(msg["notification"].clone()),
            Some(msg) if msg["type"] == "closed" || msg["type"] == "error" => panic!("socket ended: {msg}"),
            Some(_) => {}
            None => panic!("pushes never got there; pushed so far: {pushed:#?}"),
        }
    }
    pushed
}

/// A server of the project's infra script with its own port and data, which a test may stop and start again.
pub struct PrivateServer {
    service: &'static str,
    run: TempDir,
    pub port: u16,
}

impl PrivateServer {
    /// `service` is `redis`, `mongo` or `kafka`, as `scripts/infra.sh` names them.
    pub fn start(service: &'static str) -> Self {
        let server = Self { service, run: tempfile::tempdir().unwrap(), port: free_port() };
        server.up();
        server
    }

    fn script(&self, action: &str) {
        let port_var = format!("COMMERCEX_INFRA_{}_PORT", self.service.to_ascii_uppercase());
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/infra.sh"))
            .args([action, self.service])
            .env("COMMERCEX_INFRA_RUN", self.run.path())
            .env(port_var, self.port.to_string())
            .status()
            .expect("runs scripts/infra.sh");
        assert!(status.success(), "scripts/infra.sh {action} {} failed", self.service);
    }

    pub fn up(&self) {
        self.script("up");
    }

    /// Stops the server (its data stays for the next `up`).
    pub fn down(&self) {
        self.script("down");
    }

    pub fn url(&self) -> String {
        match self.service {
            "redis" => format!("redis://127.0.0.1:{}", self.port),
            "mongo" => format!("mongodb://127.0.0.1:{}", self.port),
            _ => format!("127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// Waits until `apis` (and only they) host every shard, each shard on one node; returns how long it took.
pub async fn wait_shards_settled(apis: &[&Api], admin: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let mut owned = Vec::new();
        let mut partitions = 0;
        for api in apis {
            let r = api.get("/api/admin/cluster", Some(admin)).await;
            if r.status == 200 {
                partitions = r.body["partitions"].as_i64().unwrap_or(0);
                owned.push(r.body["owned"].as_array().cloned().unwrap_or_default());
            }
        }
        let mut all: Vec<i64> = owned.iter().flatten().filter_map(Value::as_i64).collect();
        all.sort_unstable();
        let settled = owned.len() == apis.len()
            && owned.iter().all(|o| !o.is_empty())
            && partitions > 0
            && all == (0..partitions).collect::<Vec<_>>();
        if settled {
            return start.elapsed();
        }
        assert!(start.elapsed() < deadline, "shards never settled over {} nodes: {owned:?}", apis.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
