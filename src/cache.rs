//! Read-aside cache in front of product reads: in this process, or in Redis and shared by every process. The
//! product's own actor invalidates the cache after every commit (and a bus subscriber does so for changes committed
//! on other nodes); entries also expire.
//!
//! A lookup that misses hands out a ticket; filling the cache with what was then read from the store is refused if
//! any invalidation of that product happened in between, so a slow reader can never put back data older than a write
//! it raced with.

mod in_process;
mod redis;

use std::time::Instant;

use async_trait::async_trait;

use crate::domain::product::Product;

pub use self::in_process::InProcessCache;
pub use self::redis::RedisCache;

/// Proof of when a cache miss happened; see [`ProductCache::put`]. Only the cache that issued it reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(Option<Stamp>);

/// The issuing cache's invalidation counters at the miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    generation: u64,
    epoch: u64,
    issued: Instant,
}

impl Ticket {
    fn new(generation: u64, epoch: u64) -> Self {
        Self(Some(Stamp { generation, epoch, issued: Instant::now() }))
    }

    /// For a miss that could not consult the cache: filling with it is always refused.
    fn never() -> Self {
        Self(None)
    }
}

pub enum Lookup {
    Hit(Product),
    Miss(Ticket),
}

#[async_trait]
pub trait ProductCache: Send + Sync {
    async fn get(&self, id: &str) -> Lookup;
    /// Caches `product` unless an invalidation happened since the miss that issued `ticket`.
    async fn put(&self, product: &Product, ticket: Ticket);
    async fn invalidate(&self, id: &str);
    /// Whether the cache answers (for readiness); an in-process cache always does.
    async fn ping(&self) -> Result<(), String> {
        Ok(())
    }
    /// `in_process` or `redis`, as configured.
    fn backend(&self) -> &'static str {
        "in_process"
    }
}
