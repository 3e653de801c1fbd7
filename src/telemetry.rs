//! Structured logging with `tracing` (human-readable text by default, JSON lines when `log.format = "json"`) and
//! Prometheus metrics ([`metrics`]).

pub mod metrics;

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber; `RUST_LOG` overrides `log.level`. A second call is a no-op.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if log.format == "json" { builder.json().try_init() } else { builder.try_init() };
}
