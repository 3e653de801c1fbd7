//! End-to-end tests over real HTTP against a server on port 0 with its own data directory.

mod auth;
mod batching;
mod browser_security;
mod cart;
mod catalog;
mod chaos;
mod checkout;
mod connections;
mod currency;
mod demo;
mod emails;
mod errors;
mod helpers;
mod limits;
mod live_entities;
mod media;
mod metrics;
mod openapi;
mod resilience;
mod saga_faults;
mod sessions;
mod traces;
mod upgrades;
mod user_text;
mod websocket_guards;
