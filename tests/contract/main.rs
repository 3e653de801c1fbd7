//! Contract suites: backend-independent checks written once as plain async functions over a trait object, run
//! against every implementation of the trait. The in-process side runs with `cargo test`; the side on real servers
//! is `#[ignore]`d and run by `scripts/test.sh` (`cargo test --test contract -- --include-ignored`).

mod cache;
mod ratelimit;
mod redis_setup;
mod revocations;
