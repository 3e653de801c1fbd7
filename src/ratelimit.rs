//! Per-client rate limiting on the authentication endpoints: `per_minute` requests a minute per client address,
//! with bursts up to `per_minute`. Kept in this process, or in Redis so that every process shares one budget per
//! client.

mod in_process;
mod redis;

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;

pub use self::in_process::InProcessRateLimiter;
pub use self::redis::RedisRateLimiter;

#[async_trait]
pub trait RateLimit: Send + Sync {
    /// Takes one request from `client`'s budget; on refusal, how long until the next request would be let through.
    async fn check(&self, client: IpAddr) -> Result<(), Duration>;
}
