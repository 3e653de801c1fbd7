//! Token revocations in Redis, shared by every process (the rest of the store lives in the embedded store or
//! MongoDB). Each revoked token id or family is one key, `revoked:{key}`, that expires when the tokens it names would
//! have expired anyway.
//!
//! Redis unreachable: every call fails with [`StoreError::Unavailable`], so authentication refuses the token (503)
//! rather than let a revoked one through.

use async_trait::async_trait;
use redis::Script;

use super::{RevocationStore, StoreError};
use crate::domain::Timestamp;
use crate::redis_client::{self, RedisClient};

/// KEYS: the revocation. ARGV: milliseconds it must last. A revocation is only ever lengthened.
const REVOKE: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
";

pub struct RedisRevocations {
    redis: RedisClient,
    revoke: Script,
}

impl RedisRevocations {
    pub fn new(redis: RedisClient) -> Self {
        Self { redis, revoke: Script::new(REVOKE) }
    }

    fn key(&self, key: &str) -> String {
        self.redis.key(&format!("revoked:{key}"))
    }
}

fn unavailable(e: redis_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl RevocationStore for RedisRevocations {
    async fn revoke(&self, key: &str, until: Timestamp) -> Result<(), StoreError> {
        let ttl_ms = (until - chrono::Utc::now()).num_milliseconds();
        if ttl_ms <= 0 {
            // The tokens have expired already.
            return Ok(());
        }
        let mut revoke = self.revoke.prepare_invoke();
        revoke.key(self.key(key)).arg(ttl_ms);
        self.redis.invoke::<u8>("revoke", &revoke).await.map(drop).map_err(unavailable)
    }

    async fn any_revoked(&self, keys: &[String]) -> Result<bool, StoreError> {
        if keys.is_empty() {
            return Ok(false);
        }
        let mut exists = redis::cmd("EXISTS");
        for key in keys {
            exists.arg(self.key(key));
        }
        let found = self.redis.query::<u64>("revocation check", &exists).await.map_err(unavailable)?;
        Ok(found > 0)
    }

    /// Nothing to do: each key is written with its expiry and Redis removes it then.
    async fn purge_expired(&self, _now: Timestamp) -> Result<u64, StoreError> {
        Ok(0)
    }
}
