//! The limiter in Redis, one budget per key shared by every process: the generic cell rate algorithm in a Lua
//! script, on Redis's clock, with the same rate and burst as the in-process token bucket. Each key has one Redis
//! key, `ratelimit:{name}:{key}`, holding the time its budget is next full; the Redis key expires then.
//!
//! Redis unreachable: requests are counted by this process's own limiter until Redis answers again, so limits hold
//! per process during an outage and the endpoints stay open.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::{InProcessRateLimiter, RateLimit};
use crate::redis_client::RedisClient;

/// KEYS: the client's key. ARGV: microseconds between requests at the sustained rate, the burst. The key holds the
/// theoretical arrival time: when the client's next request would be on time. A request is let through if that
/// is less than `burst` intervals ahead of now (it then moves one interval on); otherwise the answer is how many
/// microseconds to wait.
const GCRA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or 0), now)
local wait = tat + interval - tonumber(ARGV[2]) * interval - now
if wait > 0 then
  return wait
end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', string.format('%.0f', math.max(1, math.ceil((tat - now) / 1000))))
return 0
";

pub struct RedisRateLimiter {
    redis: RedisClient,
    name: &'static str,
    interval_micros: u64,
    burst: u32,
    gcra: Script,
    fallback: InProcessRateLimiter,
}

impl RedisRateLimiter {
    /// `per_minute` requests a minute per client, in bursts of up to `per_minute`; `name` keeps the budgets of
    /// different limits apart.
    pub fn new(redis: RedisClient, name: &'static str, per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        Self {
            redis,
            name,
            interval_micros: (60_000_000 / u64::from(per_minute)).max(1),
            burst: per_minute,
            gcra: Script::new(GCRA),
            fallback: InProcessRateLimiter::new(per_minute),
        }
    }
}

#[async_trait]
impl RateLimit for RedisRateLimiter {
    async fn check(&self, key: &str) -> Result<(), Duration> {
        let mut gcra = self.gcra.prepare_invoke();
        gcra.key(self.redis.key(&format!("ratelimit:{}:{key}", self.name))).arg(self.interval_micros).arg(self.burst);
        match self.redis.invoke::<u64>("rate limit", &gcra).await {
            Ok(0) => Ok(()),
            Ok(wait) => Err(Duration::from_micros(wait)),
            Err(_) => self.fallback.check(key).await,
        }
    }
}
