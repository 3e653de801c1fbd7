//! Spawns a real server on port 0 with its own data directory and talks to it over HTTP.

use std::sync::Arc;
use std::time::Duration;

use commercex::app::Application;
use commercex::config::Config;
use commercex::http::AppState;
use commercex::payments::SimulatedProvider;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const ADMIN_EMAIL: &str = "admin@commercex.test";
pub const ADMIN_PASSWORD: &str = "admin-pass-1";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub dir: Arc<TempDir>,
    pub bus: Arc<dyn commercex::bridge::EventBus>,
    /// The payment provider's books: what was really charged and refunded.
    pub provider: Arc<SimulatedProvider>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The stable error code of an error response.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
}

pub struct User {
    pub id: String,
    pub token: String,
    pub refresh: String,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    // Per-user and per-client budgets out of the way of suites that sign in, check out and open sockets in loops
    // from one address; the tests of each limit set it low.
    config.http.auth_rate_limit_per_minute = 100_000;
    config.http.refresh_rate_limit_per_minute = 100_000;
    config.auth.signin_attempts_per_account_per_minute = 100_000;
    config.checkout.checkouts_per_user_per_minute = 100_000;
    config.checkout.max_pending_orders_per_user = 100_000;
    config.checkout.coupon_attempts_per_user_per_minute = 100_000;
    config.notifications.max_sockets_per_client = 100_000;
    config.store.data_dir = dir.to_path_buf();
    config.auth.jwt_secret = JWT_SECRET.into();
    // Cheap hashing keeps the suite fast; the production parameters are tested by the unit tests' format checks.
    config.auth.argon2_memory_kib = 1024;
    config.auth.argon2_iterations = 1;
    config.auth.bootstrap_admin =
        Some(commercex::config::BootstrapAdmin { email: ADMIN_EMAIL.into(), password: ADMIN_PASSWORD.into() });
    // A fast simulated provider and short timeouts keep payment-failure paths quick.
    config.payments.simulated_latency_ms = 5;
    config.payments.timeout_ms = 300;
    config.payments.max_attempts = 3;
    config.payments.recheck_after_ms = 200;
    config.notifications.ws_auth_timeout_ms = 500;
    // Metrics with the API, so that suites scrape the node they talk to.
    config.telemetry.metrics_addr = String::new();
    if real_backends().is_some() {
        use_real_backends(&mut config, dir);
    }
    config
}

/// With `COMMERCEX_TEST_BACKENDS=real`, the bus backend the suite runs on (`kafka` with `COMMERCEX_TEST_BUS=kafka`).
pub fn real_backends() -> Option<&'static str> {
    let real = std::env::var("COMMERCEX_TEST_BACKENDS").as_deref() == Ok("real");
    let kafka = std::env::var("COMMERCEX_TEST_BUS").as_deref() == Ok("kafka");
    real.then_some(if kafka { "kafka" } else { "in_process" })
}

/// `COMMERCEX_TEST_BACKENDS=real` (set by `scripts/test.sh`): the same suite on MongoDB, Redis and an S3 media store
/// (and Kafka with `COMMERCEX_TEST_BUS=kafka`). Each test's
/// data directory names its own database, topics and keys, so a restarted app finds its data again and parallel
/// tests never meet.
fn use_real_backends(config: &mut Config, dir: &std::path::Path) {
    use commercex::config::{BusBackend, StoreBackend};
    let required = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run the real-backend suite with scripts/test.sh"))
    };
    let name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().chars().filter(char::is_ascii_alphanumeric).collect())
        .unwrap_or_default();
    config.store.backend = StoreBackend::Mongodb;
    config.store.mongodb.uri = required("COMMERCEX_TEST_MONGODB_URI");
    config.store.mongodb.database = format!("e2e_{name}");
    if real_backends() == Some("kafka") {
        config.bus.backend = BusBackend::Kafka;
        config.bus.kafka.brokers = required("COMMERCEX_TEST_KAFKA_BROKERS");
        config.bus.kafka.topic_prefix = format!("e2e.{name}");
        config.bus.kafka.partitions = 2;
        config.bus.kafka.group_id = format!("e2e-{name}");
    }
    config.redis.url = required("COMMERCEX_TEST_REDIS_URL");
    config.redis.key_prefix = format!("e2e:{name}");
    config.media.backend = commercex::config::MediaBackend::S3;
    config.media.s3.endpoint = required("COMMERCEX_TEST_S3_ENDPOINT");
    config.media.s3.bucket = required("COMMERCEX_TEST_S3_BUCKET");
    config.media.s3.access_key_id = "commercex-test".into();
    config.media.s3.secret_access_key = "commercex-test-secret".into();
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_in(Arc::new(tempfile::tempdir().unwrap()), tweak).await
}

pub async fn spawn_app_in(dir: Arc<TempDir>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_provider(dir, Arc::new(SimulatedProvider::new(Duration::from_millis(5))), tweak).await
}

/// Starts the app with a given provider, so a restarted app talks to the same (external) payment provider.
pub async fn spawn_app_with_provider(
    dir: Arc<TempDir>,
    provider: Arc<SimulatedProvider>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::with_provider(config, listener, provider.clone()).await.expect("app builds");
    let addr = app.local_addr().unwrap();
    let state = app.state().clone();
    let bus = app.bus();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        state,
        dir,
        bus,
        provider,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// Graceful shutdown; returns the data directory for a restart.
    pub async fn stop(self) -> Arc<TempDir> {
        let TestApp { state, dir, shutdown, server, .. } = self;
        // Let go of the store first: shutdown waits until nobody holds it.
        drop(state);
        if let Some(tx) = shutdown {
            let _ = tx.send(());
        }
        if let Some(server) = server {
            server.await.expect("server task").expect("server stopped cleanly");
        }
        dir
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, body, headers }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(reqwest::Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(reqwest::Method::PATCH, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(reqwest::Method::PUT, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::DELETE, path, token, None).await
    }

    pub async fn signup(&self, email: &str) -> User {
        let r = self
            .post("/api/users/signup", None, json!({"email": email, "password": "pass-word-1", "name": "Test User"}))
            .await;
        assert_eq!(r.status, 201, "signup {email}: {:?}", r.body);
        user_from(&r)
    }

    pub async fn signin(&self, email: &str, password: &str) -> Resp {
        self.post("/api/users/signin", None, json!({"email": email, "password": password})).await
    }

    pub async fn admin(&self) -> String {
        let r = self.signin(ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(r.status, 200, "admin signin: {:?}", r.body);
        r.body["accessToken"].as_str().unwrap().to_string()
    }

    pub async fn create_product(&self, admin: &str, title: &str, price: i64, stock: i64) -> Value {
        let body = json!({
            "title": title, "description": format!("{title} description"), "price": price,
            "currency": "USD", "category": "general", "stock": stock,
        });
        let r = self.post("/api/products", Some(admin), body).await;
        assert_eq!(r.status, 201, "create product: {:?}", r.body);
        r.body
    }
}

impl TestApp {
    pub async fn checkout(&self, token: &str, key: &str, body: Value) -> Resp {
        let res = self
            .client
            .post(format!("{}/api/cart/checkout", self.base))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .expect("checkout sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.json().await.unwrap_or(Value::Null);
        Resp { status, body, headers }
    }

    /// Polls the order until `done` holds for it (deadline 20 s).
    pub async fn wait_order(&self, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = tokio::time::Instant::now();
        loop {
            let r = self.get(&format!("/api/orders/{id}"), Some(token)).await;
            if r.status == 200 && done(&r.body) {
                return r.body;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "order {id} never got there: {:?}", r.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_status(&self, token: &str, id: &str, status: &str) -> Value {
        self.wait_order(token, id, |o| o["status"] == status).await
    }
}

pub fn user_from(r: &Resp) -> User {
    User {
        id: r.body["user"]["id"].as_str().unwrap().to_string(),
        token: r.body["accessToken"].as_str().unwrap().to_string(),
        refresh: r.body["refreshToken"].as_str().unwrap().to_string(),
    }
}

/// Polls `check` until it holds or the deadline passes.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(app: &TestApp, token: Option<&str>, query: &str) -> Socket {
    let url = format!("{}/ws/notifications{query}", app.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.expect("websocket connects").0
}

/// The next JSON message, or `None` if nothing arrives within `wait`.
pub async fn next_json(ws: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Some(json!({"type": "closed", "code": frame.map(|f| u16::from(f.code))}))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Some(json!({"type": "error", "error": e.to_string()})),
            Ok(None) => return Some(json!({"type": "ended"})),
            Err(_) => return None,
        }
    }
}

/// A plain TCP connection to the app, for what an HTTP client library would never send.
pub async fn raw_connect(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.base.trim_start_matches("http://")).await.expect("tcp connect")
}

/// What the server sent on a raw connection until it closed it or `wait` passed.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The bytes as text, lossily.
    pub text: String,
    /// The server closed (or reset) the connection.
    pub closed: bool,
    pub waited: Duration,
}

/// Reads until the server closes the connection or `wait` passes.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, wait: Duration) -> RawReply {
    use tokio::io::AsyncReadExt;
    let start = tokio::time::Instant::now();
    let (mut received, mut buf) = (Vec::new(), [0u8; 4096]);
    let closed = loop {
        match tokio::time::timeout_at(start + wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&received).into_owned();
    RawReply { bytes: received, text, closed, waited: start.elapsed() }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body: its status and body, or `None` if it did not arrive
/// whole within `wait`.
pub async fn read_response(stream: &mut tokio::net::TcpStream, wait: Duration) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let (mut received, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())?;
            if body.len() >= length {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                return Some((status, body[..length].to_string()));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}
