//! One connection to Redis (`redis.url`), shared by the product cache, the token revocations and the auth rate
//! limiter, with the keys of one deployment under `redis.key_prefix`.
//!
//! Redis being down must cost each request milliseconds, never seconds, and must never need a restart:
//! - the connection is made on first use, so the process starts while Redis is down;
//! - connecting and each answer have short timeouts, and the connection manager reconnects on its own;
//! - after a connection failure, calls fail at once for [`RETRY_AFTER`] instead of each waiting on a dead server;
//! - the outage is logged when it starts, at most every [`LOG_EVERY`] while it lasts, and when it ends.
//!
//! What a failure means is each user's choice: the cache is bypassed, revocation checks fail closed (503), rate
//! limits fall back to this process.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, ScriptInvocation};
use tokio::sync::OnceCell;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// After a connection failure, calls fail without trying for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// While Redis stays unreachable, the failure is logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The URL is refused before any connection is tried (the message never contains the URL).
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
}

/// A cheap-to-clone handle on the one connection.
#[derive(Clone)]
pub struct RedisClient(Arc<Inner>);

struct Inner {
    client: redis::Client,
    /// Made by the first call that finds Redis up; from then on it reconnects by itself.
    manager: OnceCell<ConnectionManager>,
    prefix: String,
    /// Host and port only, for logs.
    address: String,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// When calls started failing, and how many have failed since.
    outage: Option<(Instant, u64)>,
    /// Until then calls fail without trying, with `last_error`.
    retry_at: Option<Instant>,
    last_error: String,
    last_logged: Option<Instant>,
}

impl RedisClient {
    /// Parses `url` (`redis://[user:password@]host:port[/db]`); connects on first use.
    pub fn open(url: &str, key_prefix: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        let address = client.get_connection_info().addr.to_string();
        Ok(Self(Arc::new(Inner {
            client,
            manager: OnceCell::new(),
            prefix: key_prefix.to_string(),
            address,
            health: Mutex::new(Health::default()),
        })))
    }

    /// `{key_prefix}:{name}`.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.0.prefix)
    }

    /// Whether Redis answers (for readiness).
    pub async fn ping(&self) -> Result<(), Error> {
        self.query("ping", &redis::cmd("PING")).await
    }

    pub(crate) async fn query<T: FromRedisValue>(&self, what: &'static str, cmd: &Cmd) -> Result<T, Error> {
        self.run(what, |mut con| async move { cmd.query_async(&mut con).await }).await
    }

    /// Runs the commands as one `MULTI`/`EXEC` transaction when the pipeline is atomic.
    pub(crate) async fn pipeline<T: FromRedisValue>(&self, what: &'static str, pipe: &Pipeline) -> Result<T, Error> {
        self.run(what, |mut con| async move { pipe.query_async(&mut con).await }).await
    }

    /// Runs a Lua script (`EVALSHA`, loading it first when this Redis does not know it yet).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        what: &'static str,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        self.run(what, |mut con| async move { script.invoke_async(&mut con).await }).await
    }

    async fn run<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, Error>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if let Some(error) = self.cooling_down() {
            return Err(Error::Unavailable(error));
        }
        let sent = || ::metrics::counter!(crate::telemetry::metrics::REDIS_COMMANDS, "op" => what).increment(1);
        let result = async {
            let manager = self.manager().await?;
            sent();
            match op(manager.clone()).await {
                // The manager is already reconnecting (Redis restarted, the connection dropped): one more try
                // waits for the new connection instead of failing this call too.
                Err(e) if e.is_unrecoverable_error() => {
                    sent();
                    op(manager).await
                }
                other => other,
            }
        }
        .await;
        match result {
            Ok(value) => {
                self.succeeded();
                Ok(value)
            }
            Err(e) => {
                self.failed(what, &e);
                Err(Error::Unavailable(e.to_string()))
            }
        }
    }

    async fn manager(&self) -> RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            // One attempt per reconnection: a caller waiting on it fails fast, and the next call tries again.
            .set_number_of_retries(0);
        let manager = self
            .0
            .manager
            .get_or_try_init(|| ConnectionManager::new_with_config(self.0.client.clone(), config))
            .await?;
        Ok(manager.clone())
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.0.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cooling_down(&self) -> Option<String> {
        let health = self.health();
        let retry_at = health.retry_at?;
        (Instant::now() < retry_at).then(|| health.last_error.clone())
    }

    fn succeeded(&self) {
        let mut health = self.health();
        if let Some((since, failed_calls)) = health.outage.take() {
            *health = Health::default();
            tracing::info!(
                redis = %self.0.address,
                failed_calls,
                down_secs = since.elapsed().as_secs(),
                "Redis answers again"
            );
        }
    }

    fn failed(&self, what: &'static str, error: &redis::RedisError) {
        let now = Instant::now();
        let mut health = self.health();
        let unreachable = error.is_io_error() || error.is_timeout() || error.is_unrecoverable_error();
        let mut failed_calls = 1;
        if unreachable {
            let (_, count) = health.outage.get_or_insert((now, 0));
            *count += 1;
            failed_calls = *count;
            health.retry_at = Some(now + RETRY_AFTER);
            health.last_error = error.to_string();
        }
        if health.last_logged.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            return;
        }
        health.last_logged = Some(now);
        if unreachable {
            tracing::warn!(
                redis = %self.0.address,
                failed_calls,
                operation = what,
                %error,
                "Redis unreachable: product cache bypassed, token checks refused (503), auth rate limits kept per \
                 process until it answers"
            );
        } else {
            tracing::error!(redis = %self.0.address, operation = what, %error, "Redis command failed");
        }
    }
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient").field("address", &self.0.address).field("prefix", &self.0.prefix).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let client = RedisClient::open("redis://user:hunter2@cache.internal:6379/2", "shop").unwrap();
        let shown = format!("{client:?}");
        assert!(shown.contains("cache.internal:6379") && !shown.contains("hunter2"), "{shown}");
        for bad in ["redis://user:hunter2@cache.internal:port", "redis://:hunter2@[::1"] {
            let error = RedisClient::open(bad, "shop").unwrap_err().to_string();
            assert!(error.starts_with("invalid Redis URL") && !error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn keys_are_under_the_prefix() {
        let client = RedisClient::open("redis://127.0.0.1:6379", "shop").unwrap();
        assert_eq!(client.key("cache:epoch"), "shop:cache:epoch");
    }
}
