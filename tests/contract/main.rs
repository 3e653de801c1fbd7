//! Contract suites: one set of checks per layer that has more than one implementation, run against each.
//! The suites on real servers are `#[ignore]`d; `scripts/test.sh` starts the servers and runs them.

mod bus;
