//! The product cache contract: a miss hands out a ticket, a fill with it is refused after any invalidation of the
//! product since the miss, invalidations reach every process sharing the cache, entries expire; and with Redis
//! down, reads bypass the cache and nothing stale survives the outage.

use std::time::Duration;

use commercex::cache::{Lookup, ProductCache, Ticket};
use commercex::domain::product::Product;

use crate::redis_setup::{eventually, within, DOWN_BOUND};

const TTL: Duration = Duration::from_secs(1);

fn product(id: &str, price: i64) -> Product {
    let now = chrono::Utc::now();
    Product {
        id: id.into(),
        title: "Blue mug".into(),
        description: "Holds tea".into(),
        price,
        currency: "USD".into(),
        category: "kitchen".into(),
        image_url: Some("https://img.example/mug.png".into()),
        stock_on_hand: 7,
        stock_reserved: 2,
        version: 3,
        deleted: false,
        created_at: now,
        updated_at: now,
    }
}

async fn miss(cache: &dyn ProductCache, id: &str) -> Ticket {
    match cache.get(id).await {
        Lookup::Miss(ticket) => ticket,
        Lookup::Hit(p) => panic!("expected a miss for {id}, got a hit with price {}", p.price),
    }
}

async fn hit(cache: &dyn ProductCache, id: &str) -> Product {
    match cache.get(id).await {
        Lookup::Hit(p) => p,
        Lookup::Miss(_) => panic!("expected a hit for {id}, got a miss"),
    }
}

pub async fn a_miss_is_filled_then_hit(cache: &dyn ProductCache) {
    let ticket = miss(cache, "p1").await;
    let p = product("p1", 1299);
    cache.put(&p, ticket).await;
    assert_eq!(hit(cache, "p1").await, p);
    miss(cache, "p2").await;
}

pub async fn an_invalidation_drops_the_entry(cache: &dyn ProductCache) {
    let ticket = miss(cache, "p1").await;
    cache.put(&product("p1", 100), ticket).await;
    hit(cache, "p1").await;
    cache.invalidate("p1").await;
    let ticket = miss(cache, "p1").await;
    cache.put(&product("p1", 200), ticket).await;
    assert_eq!(hit(cache, "p1").await.price, 200);
}

/// A reader missed, read the store, and a write committed and invalidated before the reader filled the cache:
/// what it read may predate the write, so the fill is refused.
pub async fn a_fill_is_refused_after_an_invalidation(cache: &dyn ProductCache) {
    let ticket = miss(cache, "p1").await;
    cache.invalidate("p1").await;
    cache.put(&product("p1", 100), ticket).await;
    let ticket = miss(cache, "p1").await;
    cache.put(&product("p1", 150), ticket).await;
    assert_eq!(hit(cache, "p1").await.price, 150);
}

pub async fn entries_expire(cache: &dyn ProductCache, ttl: Duration) {
    let ticket = miss(cache, "p1").await;
    let filled = std::time::Instant::now();
    cache.put(&product("p1", 100), ticket).await;
    hit(cache, "p1").await;
    eventually(ttl + Duration::from_secs(3), "the entry expires", || async {
        matches!(cache.get("p1").await, Lookup::Miss(_))
    })
    .await;
    assert!(filled.elapsed() >= ttl - Duration::from_millis(50), "expired after {:?}", filled.elapsed());
}

/// `a` and `b` are two processes' handles on one cache (the same cache twice for a cache inside one process).
pub async fn every_handle_sees_fills_and_invalidations(a: &dyn ProductCache, b: &dyn ProductCache) {
    let ticket = miss(a, "p1").await;
    a.put(&product("p1", 100), ticket).await;
    assert_eq!(hit(b, "p1").await.price, 100);
    b.invalidate("p1").await;
    let slow_reader = miss(a, "p1").await;
    let ticket = miss(b, "p1").await;
    b.invalidate("p1").await;
    a.put(&product("p1", 100), slow_reader).await;
    b.put(&product("p1", 100), ticket).await;
    miss(a, "p1").await;
    miss(b, "p1").await;
}

mod in_process {
    use commercex::cache::InProcessCache;

    use super::*;

    fn cache() -> InProcessCache {
        InProcessCache::new(TTL, 1_000)
    }

    #[tokio::test]
    async fn a_miss_is_filled_then_hit() {
        super::a_miss_is_filled_then_hit(&cache()).await;
    }

    #[tokio::test]
    async fn an_invalidation_drops_the_entry() {
        super::an_invalidation_drops_the_entry(&cache()).await;
    }

    #[tokio::test]
    async fn a_fill_is_refused_after_an_invalidation() {
        super::a_fill_is_refused_after_an_invalidation(&cache()).await;
    }

    #[tokio::test]
    async fn entries_expire() {
        super::entries_expire(&cache(), TTL).await;
    }

    #[tokio::test]
    async fn every_handle_sees_fills_and_invalidations() {
        let cache = cache();
        super::every_handle_sees_fills_and_invalidations(&cache, &cache).await;
    }
}

mod redis {
    use commercex::cache::RedisCache;

    use super::*;
    use crate::redis_setup::{redis, redis_pair, redis_with_prefix, unique_prefix, Outage};

    fn cache(test: &str) -> RedisCache {
        RedisCache::new(redis(test), TTL)
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_miss_is_filled_then_hit() {
        super::a_miss_is_filled_then_hit(&cache("cache-fill")).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn an_invalidation_drops_the_entry() {
        super::an_invalidation_drops_the_entry(&cache("cache-drop")).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_fill_is_refused_after_an_invalidation() {
        super::a_fill_is_refused_after_an_invalidation(&cache("cache-refused")).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn entries_expire() {
        super::entries_expire(&cache("cache-expiry"), TTL).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn every_handle_sees_fills_and_invalidations() {
        let (a, b) = redis_pair("cache-shared");
        super::every_handle_sees_fills_and_invalidations(&RedisCache::new(a, TTL), &RedisCache::new(b, TTL)).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn an_invalidation_of_one_product_leaves_the_fills_of_others() {
        let cache = cache("cache-per-product");
        let ticket = miss(&cache, "p1").await;
        cache.invalidate("p2").await;
        cache.put(&product("p1", 100), ticket).await;
        hit(&cache, "p1").await;
    }

    /// The product changed while this process could not reach Redis, so its invalidation was lost; another process
    /// that can reach Redis must not be served the old entry once this process reaches Redis again.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn an_invalidation_lost_in_an_outage_leaves_no_stale_entry() {
        let outage = Outage::start().await;
        let prefix = unique_prefix("cache-outage");
        let this = RedisCache::new(outage.client_with_prefix(&prefix), Duration::from_secs(60));
        let other = RedisCache::new(redis_with_prefix(&prefix), Duration::from_secs(60));
        let ticket = miss(&this, "p1").await;
        this.put(&product("p1", 100), ticket).await;
        assert_eq!(hit(&other, "p1").await.price, 100);

        outage.cut();
        within(DOWN_BOUND, "an invalidation while Redis is down", this.invalidate("p1")).await;
        let ticket = within(DOWN_BOUND, "a lookup while Redis is down", miss(&this, "p1")).await;
        this.put(&product("p1", 200), ticket).await;

        outage.restore();
        eventually(Duration::from_secs(5), "Redis answers again", || async { this.ping().await.is_ok() }).await;
        let ticket = miss(&other, "p1").await;
        other.put(&product("p1", 200), ticket).await;
        assert_eq!(hit(&this, "p1").await.price, 200);
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn reads_bypass_the_cache_during_an_outage_and_use_it_again_after() {
        let outage = Outage::start().await;
        let cache = RedisCache::new(outage.client("cache-recovery"), TTL * 30);
        let ticket = miss(&cache, "p1").await;
        cache.put(&product("p1", 100), ticket).await;
        hit(&cache, "p1").await;

        outage.cut();
        let ticket = within(DOWN_BOUND, "a lookup while Redis is down", miss(&cache, "p2")).await;
        within(DOWN_BOUND, "a fill while Redis is down", cache.put(&product("p2", 5), ticket)).await;
        assert!(cache.ping().await.is_err());

        outage.restore();
        eventually(Duration::from_secs(5), "the cached entry is served again", || async {
            matches!(cache.get("p1").await, Lookup::Hit(p) if p.price == 100)
        })
        .await;
        let ticket = miss(&cache, "p2").await;
        cache.put(&product("p2", 5), ticket).await;
        hit(&cache, "p2").await;
    }
}

/// Redis on a port where nothing listens: every call answers at once, lookups miss, fills are refused.
mod redis_down {
    use commercex::cache::RedisCache;

    use super::*;
    use crate::redis_setup::unreachable;

    #[tokio::test]
    async fn lookups_miss_and_fills_are_refused_at_once() {
        let cache = RedisCache::new(unreachable(), TTL);
        for _ in 0..3 {
            let ticket = within(DOWN_BOUND, "a lookup", miss(&cache, "p1")).await;
            within(DOWN_BOUND, "a fill", cache.put(&product("p1", 100), ticket)).await;
            within(DOWN_BOUND, "an invalidation", cache.invalidate("p1")).await;
        }
        let error = within(DOWN_BOUND, "a ping", cache.ping()).await.unwrap_err();
        assert!(error.contains("Redis unavailable"), "{error}");
        assert_eq!(cache.backend(), "redis");
    }
}
