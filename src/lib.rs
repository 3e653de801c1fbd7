//! CommerceX: an event-driven e-commerce backend built as a supervised actor system.
//!
//! | module      | job |
//! |-------------|-----|
//! | [`domain`]  | pure rules: products, carts, orders (the saga as a state machine), payments, coupons, users, currencies (ISO 4217), the one rule for user text; no I/O |
//! | [`actors`]  | one `ractor` actor per product, cart, order, payment and coupon: supervised, recovered from the store, reached via the router, running the effects its state calls for; the resumer |
//! | [`store`]   | storage interfaces (journal + snapshots + outbox + active streams, read models, users, revocations, notifications), the product listing rules every store gives, the embedded `redb` store, the MongoDB store and revocations in Redis |
//! | [`bridge`]  | the event bus interface and its sinks, the in-process bus, the Kafka bridge, and the outbox relay that publishes committed events |
//! | [`auth`]    | accounts, argon2id hashing, JWT access tokens, rotating refresh tokens, revocation |
//! | [`catalog`] | product service: writes through product actors, reads through the cache and read model; product effects (old sales checked against the orders' read model) |
//! | [`carts`]   | cart service: cart actors plus catalog lookups for availability and pricing |
//! | [`orders`]  | checkout and the order saga's steps (reserve, coupon, charge, commit, clear cart, compensate) |
//! | [`notify`]  | notifications (stored, pushed over WebSocket) and templated transactional emails, fed by the outbox |
//! | [`payments`] | the payment provider interface, the simulated provider, payment effects |
//! | [`cache`]   | read-aside product cache, in process or in Redis |
//! | [`ratelimit`] | rate limits per client address, user or account (auth, refresh, checkout, coupon codes), in process or in Redis |
//! | [`netaddr`] | CIDR networks, the client behind trusted proxies, the key a client is counted under |
//! | [`redis_client`] | the one Redis connection the cache, revocations and rate limits share; fast failure while Redis is down |
//! | [`cluster`] | cluster mode: shards = Kafka partitions of the commands topic, ownership = the consumer group's assignment, calls forwarded to the hosting node |
//! | [`http`]    | the axum REST facade, the accept loop with its connection limits, cross-site checks, the notification WebSocket and the error shape |
//! | [`app`]     | wiring, start-up and graceful shutdown |
//! | [`clock`], [`faults`] | the process clock (pausable in tests); faults on purpose: named fault points for tests and the chaos switch for operators |
//! | [`config`], [`telemetry`] | configuration loading; logging and Prometheus metrics |
//! | [`cli`], [`demo`] | the `commercex` command line (`serve`, `check-config`, `seed-demo`) and the demo data it seeds |
//! | [`load`]    | the load generator behind `commercex-load`: shoppers over the HTTP API and WebSocket, and the report |

pub mod actors;
pub mod app;
pub mod auth;
pub mod bridge;
pub mod cache;
pub mod carts;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod domain;
pub mod faults;
pub mod http;
pub mod load;
pub mod media;
pub mod netaddr;
pub mod notify;
pub mod orders;
pub mod payments;
pub mod ratelimit;
pub mod redis_client;
pub mod store;
pub mod telemetry;
