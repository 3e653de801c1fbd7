//! Read-aside cache in front of product reads. Writers invalidate after every committed change (and a bus
//! subscriber invalidates for changes made elsewhere); entries also expire, bounding staleness from races.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::product::Product;

#[async_trait]
pub trait ProductCache: Send + Sync {
    async fn get(&self, id: &str) -> Option<Product>;
    async fn put(&self, product: &Product);
    async fn invalidate(&self, id: &str);
}

/// Bounded in-process cache with per-entry expiry.
pub struct InProcessCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (Instant, Product)>>,
}

impl InProcessCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, capacity, entries: Mutex::new(HashMap::new()) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Product)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ProductCache for InProcessCache {
    async fn get(&self, id: &str) -> Option<Product> {
        let mut entries = self.entries();
        match entries.get(id) {
            Some((at, p)) if at.elapsed() < self.ttl => Some(p.clone()),
            Some(_) => {
                entries.remove(id);
                None
            }
            None => None,
        }
    }

    async fn put(&self, product: &Product) {
        let mut entries = self.entries();
        if entries.len() >= self.capacity {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(product.id.clone(), (Instant::now(), product.clone()));
    }

    async fn invalidate(&self, id: &str) {
        self.entries().remove(id);
    }
}
