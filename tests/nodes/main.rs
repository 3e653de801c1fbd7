//! Real `commercex` processes (the binary) on one MongoDB, Kafka and Redis, started by `scripts/infra.sh`: several
//! processes of one deployment working together, and each server stopped and started again under load. These tests
//! are `#[ignore]`d for plain `cargo test`; `scripts/test.sh` runs them with the servers up.

mod cluster;
mod forgery;
mod harness;
mod outages;
mod shared;
mod traces;
