//! The cache inside this process: bounded, with per-entry expiry. One invalidation counter serves every product, so
//! an invalidation refuses the fill of every miss issued before it, of any product; such a refusal costs one more
//! store read later.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Lookup, ProductCache, Ticket};
use crate::domain::product::Product;

/// Bounded in-process cache with per-entry expiry.
pub struct InProcessCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Instant, Product)>,
    /// Bumped by every invalidation.
    generation: u64,
}

impl InProcessCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, capacity, inner: Mutex::new(Inner::default()) }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ProductCache for InProcessCache {
    async fn get(&self, id: &str) -> Lookup {
        let mut inner = self.inner();
        match inner.entries.get(id) {
            Some((at, p)) if at.elapsed() < self.ttl => return Lookup::Hit(p.clone()),
            Some(_) => {
                inner.entries.remove(id);
            }
            None => {}
        }
        Lookup::Miss(Ticket::new(inner.generation, 0))
    }

    async fn put(&self, product: &Product, ticket: Ticket) {
        let mut inner = self.inner();
        if ticket.0.is_none_or(|stamp| stamp.generation != inner.generation) {
            return;
        }
        if inner.entries.len() >= self.capacity {
            let ttl = self.ttl;
            inner.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if inner.entries.len() >= self.capacity {
                inner.entries.clear();
            }
        }
        inner.entries.insert(product.id.clone(), (Instant::now(), product.clone()));
    }

    async fn invalidate(&self, id: &str) {
        let mut inner = self.inner();
        inner.generation += 1;
        inner.entries.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(price: i64) -> Product {
        let now = chrono::Utc::now();
        Product {
            id: "p".into(),
            title: "t".into(),
            description: String::new(),
            price,
            currency: "USD".into(),
            category: "c".into(),
            image_url: None,
            stock_on_hand: 1,
            stock_reserved: 0,
            version: 1,
            deleted: false,
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn a_reader_that_raced_a_write_cannot_cache_stale_data() {
        let cache = InProcessCache::new(Duration::from_secs(60), 10);
        let Lookup::Miss(ticket) = cache.get("p").await else { panic!("empty cache hit") };
        // Meanwhile a writer commits and invalidates; the slow reader then tries to cache what it read before.
        cache.invalidate("p").await;
        cache.put(&product(100), ticket).await;
        assert!(matches!(cache.get("p").await, Lookup::Miss(_)));
        let Lookup::Miss(ticket) = cache.get("p").await else { panic!() };
        cache.put(&product(200), ticket).await;
        assert!(matches!(cache.get("p").await, Lookup::Hit(p) if p.price == 200));
    }

    #[tokio::test]
    async fn entries_expire() {
        let cache = InProcessCache::new(Duration::ZERO, 10);
        let Lookup::Miss(ticket) = cache.get("p").await else { panic!() };
        cache.put(&product(1), ticket).await;
        assert!(matches!(cache.get("p").await, Lookup::Miss(_)));
    }
}
