//! The product cache in Redis, shared by every process.
//!
//! Keys, under the deployment's prefix: `cache:product:{id}` (the entry, with a time to live),
//! `cache:generation:{id}` (bumped by every invalidation of the product) and `cache:epoch` (bumped to invalidate
//! everything at once). A miss reads all three in one `MGET`, and its ticket carries the generation and epoch it saw.
//! The fill is a Lua script that sets the entry only if both are unchanged, so no process can put back a product
//! older than an invalidation made by any process since its miss.
//!
//! Redis unreachable: a lookup is a miss whose ticket never fills, so reads go to the store. An invalidation that
//! fails leaves the entry in Redis, where it could outlive the outage. This process therefore counts its lost
//! invalidations and, before it uses the cache again (a lookup, a fill, an invalidation or a readiness probe), bumps
//! the epoch: every entry written before becomes a miss.
//! What this cannot cover is bounded by the entries' time to live: a process that stops during the outage forgets
//! its lost invalidations, and only the other processes, which invalidate the same products from the bus, make up
//! for them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::{Lookup, ProductCache, Ticket};
use crate::domain::product::Product;
use crate::redis_client::RedisClient;

/// How long a product's invalidation counter outlives its last invalidation. It must outlive every ticket that
/// could have seen it absent: were it to expire, its count would start again from zero.
const GENERATION_TTL: Duration = Duration::from_secs(600);
/// Tickets older than this never fill (a read that slow is not worth caching), which keeps them younger than
/// [`GENERATION_TTL`].
const MAX_TICKET_AGE: Duration = Duration::from_secs(60);

/// KEYS: entry, generation, epoch. ARGV: the generation and epoch seen at the miss, the entry, its time to live in
/// milliseconds. An absent counter is zero.
const FILL: &str = r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] or (redis.call('GET', KEYS[3]) or '0') ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
";

#[derive(Serialize, Deserialize)]
struct Entry<P> {
    /// The epoch the entry was filled in; an entry from an earlier epoch is a miss.
    epoch: u64,
    product: P,
}

pub struct RedisCache {
    redis: RedisClient,
    ttl: Duration,
    fill: Script,
    /// Invalidations that failed since the last flush of the whole cache.
    lost: AtomicU64,
}

impl RedisCache {
    /// Entries expire after `ttl`. Nothing is sent to Redis before the first use.
    pub fn new(redis: RedisClient, ttl: Duration) -> Self {
        Self { redis, ttl, fill: Script::new(FILL), lost: AtomicU64::new(0) }
    }

    fn entry_key(&self, id: &str) -> String {
        self.redis.key(&format!("cache:product:{id}"))
    }

    fn generation_key(&self, id: &str) -> String {
        self.redis.key(&format!("cache:generation:{id}"))
    }

    fn epoch_key(&self) -> String {
        self.redis.key("cache:epoch")
    }

    /// Whether the cache can be used: yes, unless invalidations were lost and the flush that makes up for them does
    /// not get through.
    async fn usable(&self) -> bool {
        let lost = self.lost.load(Ordering::Acquire);
        if lost == 0 {
            return true;
        }
        let mut flush = redis::cmd("INCR");
        flush.arg(self.epoch_key());
        if self.redis.query::<u64>("cache flush", &flush).await.is_err() {
            return false;
        }
        // An invalidation lost meanwhile may have failed after this flush: it keeps the count for the next one.
        let _ = self.lost.compare_exchange(lost, 0, Ordering::AcqRel, Ordering::Relaxed);
        tracing::info!(lost, "product cache flushed: invalidations were lost while Redis was unreachable");
        true
    }
}

#[async_trait]
impl ProductCache for RedisCache {
    async fn get(&self, id: &str) -> Lookup {
        if !self.usable().await {
            return Lookup::Miss(Ticket::never());
        }
        let mut read = redis::cmd("MGET");
        read.arg(self.entry_key(id)).arg(self.generation_key(id)).arg(self.epoch_key());
        let (entry, generation, epoch) =
            match self.redis.query::<(Option<Vec<u8>>, Option<u64>, Option<u64>)>("cache get", &read).await {
                Ok(values) => values,
                Err(_) => return Lookup::Miss(Ticket::never()),
            };
        let epoch = epoch.unwrap_or(0);
        match entry.map(|bytes| serde_json::from_slice::<Entry<Product>>(&bytes)) {
            Some(Ok(entry)) if entry.epoch == epoch => Lookup::Hit(entry.product),
            // Absent, filled before the last flush, or in a shape this version does not read: filled anew.
            _ => Lookup::Miss(Ticket::new(generation.unwrap_or(0), epoch)),
        }
    }

    async fn put(&self, product: &Product, ticket: Ticket) {
        let Some(stamp) = ticket.0 else { return };
        if stamp.issued.elapsed() > MAX_TICKET_AGE || self.ttl.is_zero() || !self.usable().await {
            return;
        }
        let entry = match serde_json::to_vec(&Entry { epoch: stamp.epoch, product }) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(product_id = %product.id, error = %e, "cannot serialise a product for the cache");
                return;
            }
        };
        let mut fill = self.fill.prepare_invoke();
        fill.key(self.entry_key(&product.id))
            .key(self.generation_key(&product.id))
            .key(self.epoch_key())
            .arg(stamp.generation)
            .arg(stamp.epoch)
            .arg(entry)
            .arg(self.ttl.as_millis().max(1) as u64);
        // A failure is logged by the client; the next reader fills the entry.
        let _ = self.redis.invoke::<u8>("cache fill", &fill).await;
    }

    async fn invalidate(&self, id: &str) {
        // A flush that does not get through leaves this invalidation to fail too, and be counted.
        self.usable().await;
        let generation = self.generation_key(id);
        let mut invalidate = redis::pipe();
        invalidate
            .atomic()
            .incr(&generation, 1)
            .ignore()
            .pexpire(&generation, GENERATION_TTL.as_millis() as i64)
            .ignore()
            .del(self.entry_key(id))
            .ignore();
        if self.redis.pipeline::<()>("cache invalidate", &invalidate).await.is_err() {
            self.lost.fetch_add(1, Ordering::AcqRel);
        }
    }

    async fn ping(&self) -> Result<(), String> {
        // Probed often, so the flush after an outage does not wait for the next product read.
        self.usable().await;
        self.redis.ping().await.map_err(|e| e.to_string())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
