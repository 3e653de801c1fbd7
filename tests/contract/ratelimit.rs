//! The rate limit contract: a client gets a burst of `per_minute` requests, then a refusal that says how long to
//! wait, and the budget refills at `per_minute`; clients are counted apart; every process of a deployment shares
//! each client's budget; and with Redis down, each process limits on its own.

use std::time::Duration;

use commercex::ratelimit::RateLimit;

use crate::redis_setup::{eventually, within, DOWN_BOUND};

/// For a limiter of 3 a minute.
pub async fn a_burst_then_a_refusal_per_client(limiter: &dyn RateLimit) {
    let a = "10.0.0.1";
    for n in 1..=3 {
        assert_eq!(limiter.check(a).await, Ok(()), "request {n} of the burst");
    }
    let wait = limiter.check(a).await.unwrap_err();
    // One request every 20 s.
    assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20), "retry after {wait:?}");
    assert!(limiter.check(a).await.is_err());
    assert_eq!(limiter.check("10.0.0.2").await, Ok(()));
    assert_eq!(limiter.check("2001:db8::1").await, Ok(()));
}

/// For a limiter of 120 a minute: one request every 500 ms.
pub async fn the_budget_refills(limiter: &dyn RateLimit) {
    let a = "10.0.0.1";
    let started = std::time::Instant::now();
    let mut allowed = 0;
    let wait = loop {
        match limiter.check(a).await {
            Ok(()) => allowed += 1,
            Err(wait) => break wait,
        }
        assert!(allowed <= 1_000, "never refused");
    };
    let refilled = (started.elapsed().as_millis() / 500) as u32;
    assert!((120..=121 + refilled).contains(&allowed), "{allowed} let through in {:?}", started.elapsed());
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500), "retry after {wait:?}");
    tokio::time::sleep(wait).await;
    assert_eq!(limiter.check(a).await, Ok(()), "after waiting {wait:?}");
}

/// `a` and `b` are two processes' limiters of 3 a minute (the same limiter twice for a limiter inside one process).
pub async fn every_process_shares_a_budget(a: &dyn RateLimit, b: &dyn RateLimit) {
    let client = "10.0.0.1";
    assert_eq!(a.check(client).await, Ok(()));
    assert_eq!(b.check(client).await, Ok(()));
    assert_eq!(a.check(client).await, Ok(()));
    assert!(b.check(client).await.is_err());
    assert!(a.check(client).await.is_err());
}

mod in_process {
    use commercex::ratelimit::InProcessRateLimiter;

    #[tokio::test]
    async fn a_burst_then_a_refusal_per_client() {
        super::a_burst_then_a_refusal_per_client(&InProcessRateLimiter::new(3)).await;
    }

    #[tokio::test]
    async fn the_budget_refills() {
        super::the_budget_refills(&InProcessRateLimiter::new(120)).await;
    }

    #[tokio::test]
    async fn every_process_shares_a_budget() {
        let limiter = InProcessRateLimiter::new(3);
        super::every_process_shares_a_budget(&limiter, &limiter).await;
    }
}

mod redis {
    use commercex::ratelimit::RedisRateLimiter;

    use super::*;
    use crate::redis_setup::{redis, redis_pair, redis_with_prefix, unique_prefix, Outage};

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn a_burst_then_a_refusal_per_client() {
        let limiter = RedisRateLimiter::new(redis("ratelimit-burst"), "auth", 3);
        super::a_burst_then_a_refusal_per_client(&limiter).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn the_budget_refills() {
        super::the_budget_refills(&RedisRateLimiter::new(redis("ratelimit-refill"), "auth", 120)).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn every_process_shares_a_budget() {
        let (a, b) = redis_pair("ratelimit-shared");
        let (a, b) = (RedisRateLimiter::new(a, "auth", 3), RedisRateLimiter::new(b, "auth", 3));
        super::every_process_shares_a_budget(&a, &b).await;
    }

    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn limits_by_other_names_are_counted_apart() {
        let client = redis("ratelimit-names");
        let (signin, other) =
            (RedisRateLimiter::new(client.clone(), "auth", 1), RedisRateLimiter::new(client, "other", 1));
        assert_eq!(signin.check("10.0.0.1").await, Ok(()));
        assert_eq!(other.check("10.0.0.1").await, Ok(()));
        assert!(signin.check("10.0.0.1").await.is_err());
    }

    /// During the outage this process limits on its own; once Redis answers, the shared budget counts again.
    #[tokio::test]
    #[ignore = "needs the real servers: scripts/test.sh"]
    async fn each_process_limits_on_its_own_during_an_outage() {
        let outage = Outage::start().await;
        let prefix = unique_prefix("ratelimit-outage");
        let this = outage.client_with_prefix(&prefix);
        let limiter = RedisRateLimiter::new(this.clone(), "auth", 3);
        let other = RedisRateLimiter::new(redis_with_prefix(&prefix), "auth", 3);
        let client = "10.0.0.1";
        assert_eq!(limiter.check(client).await, Ok(()));

        outage.cut();
        within(DOWN_BOUND * 3, "a burst while Redis is down", super::a_burst_then_a_refusal_per_client(&limiter)).await;

        outage.restore();
        eventually(Duration::from_secs(5), "Redis answers again", || async { this.ping().await.is_ok() }).await;
        // The shared budget has two requests left: the one taken before the outage counts, those during it do not.
        assert_eq!(other.check(client).await, Ok(()));
        assert_eq!(limiter.check(client).await, Ok(()));
        assert!(other.check(client).await.is_err());
        assert!(limiter.check(client).await.is_err());
    }
}

/// Redis on a port where nothing listens: the limiter of this process answers, at once.
mod redis_down {
    use commercex::ratelimit::RedisRateLimiter;

    use super::*;
    use crate::redis_setup::unreachable;

    #[tokio::test]
    async fn limits_fall_back_to_this_process_at_once() {
        let limiter = RedisRateLimiter::new(unreachable(), "auth", 3);
        within(DOWN_BOUND, "a burst and refusals", a_burst_then_a_refusal_per_client(&limiter)).await;
    }
}
