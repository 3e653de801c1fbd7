//! Redis for the contract suites: the real server named by `COMMERCEX_TEST_REDIS_URL` (set by
//! `eval "$(scripts/infra.sh env)"`), with a key prefix of its own for every test; a port where nothing listens;
//! and a proxy that takes Redis away and brings it back.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use commercex::redis_client::RedisClient;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a call may take while Redis is down.
pub const DOWN_BOUND: Duration = Duration::from_secs(1);

pub fn redis_url() -> String {
    std::env::var("COMMERCEX_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "COMMERCEX_TEST_REDIS_URL is not set: run scripts/test.sh, or scripts/infra.sh up redis and \
             eval \"$(scripts/infra.sh env)\""
        )
    })
}

/// Keys no other test (nor an earlier run) shares.
pub fn unique_prefix(test: &str) -> String {
    format!("contract:{test}:{}", uuid::Uuid::new_v4().simple())
}

/// A client on the real Redis, with its own prefix.
pub fn redis(test: &str) -> RedisClient {
    open(&redis_url(), &unique_prefix(test))
}

/// Two clients with separate connections and the same prefix: two processes of one deployment.
pub fn redis_pair(test: &str) -> (RedisClient, RedisClient) {
    let prefix = unique_prefix(test);
    (redis_with_prefix(&prefix), redis_with_prefix(&prefix))
}

pub fn redis_with_prefix(prefix: &str) -> RedisClient {
    open(&redis_url(), prefix)
}

/// A client on a local port where nothing listens.
pub fn unreachable() -> RedisClient {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    open(&format!("redis://127.0.0.1:{port}"), "contract:unreachable")
}

/// A client on a server that takes connections and never answers.
pub async fn silent() -> RedisClient {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the silent server");
    let addr = listener.local_addr().expect("silent server address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    open(&format!("redis://{addr}"), "contract:silent")
}

fn open(url: &str, prefix: &str) -> RedisClient {
    RedisClient::open(url, prefix).unwrap_or_else(|e| panic!("COMMERCEX_TEST_REDIS_URL: {e}"))
}

/// Awaits `call`, which must answer within `bound`.
pub async fn within<T>(bound: Duration, what: &str, call: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(bound, call).await;
    result.unwrap_or_else(|_| panic!("{what} took more than {bound:?} (gave up after {:?})", started.elapsed()))
}

/// Polls `check` until it holds, for at most `deadline`.
pub async fn eventually<F: Future<Output = bool>>(deadline: Duration, what: &str, mut check: impl FnMut() -> F) {
    let until = tokio::time::Instant::now() + deadline;
    while !check().await {
        assert!(tokio::time::Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of the real Redis. Cut, it closes its open connections and every new one as it arrives, as
/// a Redis that went away would; restored, it forwards again on the same port.
pub struct Outage {
    url: String,
    up: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Outage {
    pub async fn start() -> Self {
        let real = redis_url();
        let (scheme, rest) = real.split_once("://").expect("COMMERCEX_TEST_REDIS_URL has a scheme");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, upstream) = match authority.rsplit_once('@') {
            Some((credentials, host)) => (format!("{credentials}@"), host.to_string()),
            None => (String::new(), authority.to_string()),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr: SocketAddr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let connections = up.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = connections.subscribe();
                if !*state.borrow_and_update() {
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { url: format!("{scheme}://{credentials}{addr}/{path}"), up, accept }
    }

    /// A client that reaches Redis through this proxy, with its own prefix.
    pub fn client(&self, test: &str) -> RedisClient {
        open(&self.url, &unique_prefix(test))
    }

    /// A client through this proxy that shares `prefix`.
    pub fn client_with_prefix(&self, prefix: &str) -> RedisClient {
        open(&self.url, prefix)
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
