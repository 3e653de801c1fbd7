//! The limiter inside this process: one token bucket per key, `per_minute` tokens deep, refilled continuously.
//! Full buckets are dropped once the map has grown by half since the last sweep (and holds over 10,000 keys), so
//! the sweep's cost is spread over the insertions that made it necessary.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::RateLimit;

pub struct InProcessRateLimiter {
    per_minute: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    by_key: HashMap<String, (f64, Instant)>,
    /// The size at which the next sweep runs.
    sweep_at: usize,
}

const SWEEP_FLOOR: usize = 10_000;

impl InProcessRateLimiter {
    pub fn new(per_minute: u32) -> Self {
        let buckets = Buckets { by_key: HashMap::new(), sweep_at: SWEEP_FLOOR };
        Self { per_minute: f64::from(per_minute.max(1)), buckets: Mutex::new(buckets) }
    }

    /// Keys held (tests).
    pub fn keys(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).by_key.len()
    }
}

#[async_trait]
impl RateLimit for InProcessRateLimiter {
    async fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let rate = self.per_minute / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.by_key.len() >= buckets.sweep_at {
            let per_minute = self.per_minute;
            let full =
                |(tokens, at): &(f64, Instant)| *tokens + now.duration_since(*at).as_secs_f64() * rate >= per_minute;
            buckets.by_key.retain(|_, bucket| !full(bucket));
            buckets.sweep_at = (buckets.by_key.len() + buckets.by_key.len() / 2).max(SWEEP_FLOOR);
        }
        let (tokens, at) = buckets.by_key.entry(key.to_string()).or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(self.per_minute);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allows_a_burst_then_refuses_per_client() {
        let limiter = InProcessRateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.check("10.0.0.1").await.is_ok());
        }
        let wait = limiter.check("10.0.0.1").await.unwrap_err();
        assert!(wait > Duration::from_secs(10) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limiter.check("10.0.0.2").await.is_ok());
    }

    #[tokio::test]
    async fn full_buckets_are_swept_once_the_map_grows_by_half() {
        let limiter = InProcessRateLimiter::new(60);
        for i in 0..SWEEP_FLOOR {
            limiter.check(&format!("k{i}")).await.unwrap();
        }
        assert_eq!(limiter.keys(), SWEEP_FLOOR, "no bucket is full yet: each has one token out");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Every bucket has refilled: the next new key sweeps them all.
        limiter.check("new").await.unwrap();
        assert_eq!(limiter.keys(), 1);
    }
}
