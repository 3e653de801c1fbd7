//! Rate limits: `per_minute` requests a minute per key, with bursts up to `per_minute`. Kept in this process, or in
//! Redis so that every process shares one budget per key.
//!
//! A key names who is counted: a client address (as [`crate::netaddr::client_key`] counts it), a user, or an
//! account's email. [`RateLimits`] holds every budget the API enforces.

mod in_process;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use self::in_process::InProcessRateLimiter;
pub use self::redis::RedisRateLimiter;
use crate::redis_client::RedisClient;

#[async_trait]
pub trait RateLimit: Send + Sync {
    /// Takes one request from `key`'s budget; on refusal, how long until the next request would be let through.
    async fn check(&self, key: &str) -> Result<(), Duration>;
}

/// Requests a minute allowed by each budget.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Sign-ups and sign-ins per client address.
    pub auth_per_client: u32,
    /// Token refreshes per client address.
    pub refresh_per_client: u32,
    /// Sign-in attempts per account (by email), from any address.
    pub signin_per_account: u32,
    /// Checkouts per user.
    pub checkout_per_user: u32,
    /// Coupon codes tried at checkout per user.
    pub coupon_per_user: u32,
}

/// Every rate limit the API enforces, each under its own name (so their budgets never mix).
#[derive(Clone)]
pub struct RateLimits {
    pub auth: Arc<dyn RateLimit>,
    pub refresh: Arc<dyn RateLimit>,
    pub signin_per_account: Arc<dyn RateLimit>,
    pub checkout: Arc<dyn RateLimit>,
    pub coupon: Arc<dyn RateLimit>,
}

impl RateLimits {
    /// In Redis when there is one, else in this process.
    pub fn new(redis: Option<&RedisClient>, budgets: Budgets) -> Self {
        let limit = |name: &'static str, per_minute: u32| -> Arc<dyn RateLimit> {
            match redis {
                Some(redis) => Arc::new(RedisRateLimiter::new(redis.clone(), name, per_minute)),
                None => Arc::new(InProcessRateLimiter::new(per_minute)),
            }
        };
        Self {
            auth: limit("auth", budgets.auth_per_client),
            refresh: limit("refresh", budgets.refresh_per_client),
            signin_per_account: limit("signin-account", budgets.signin_per_account),
            checkout: limit("checkout", budgets.checkout_per_user),
            coupon: limit("coupon", budgets.coupon_per_user),
        }
    }
}
