//! Prometheus metrics: the names this node reports, what each means, the recorder `GET /metrics` renders, and the
//! listener of `telemetry.metrics_addr` that serves it apart from the API.
//!
//! Instruments call the `metrics` macros with these names where the thing happens (the HTTP layer, the entity
//! actors and their supervisors, the outbox relay, the saga, sign-in, the product cache). The recorder is global to
//! the process and installed once; nodes differ by the `instance` label Prometheus adds when it scrapes them.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "commercex_http_requests_total";
pub const HTTP_DURATION: &str = "commercex_http_request_duration_seconds";
pub const ENTITIES_LIVE: &str = "commercex_entities_live";
pub const ENTITY_STARTS: &str = "commercex_entity_starts_total";
pub const ENTITY_PASSIVATIONS: &str = "commercex_entity_passivations_total";
pub const ENTITY_CRASHES: &str = "commercex_entity_crashes_total";
pub const ENTITY_RESTARTS: &str = "commercex_entity_restarts_total";
pub const ENTITY_MAILBOX_WAIT: &str = "commercex_entity_mailbox_wait_seconds";
pub const ENTITY_HANDLER: &str = "commercex_entity_handler_seconds";
pub const ENTITY_COMMITS: &str = "commercex_entity_commits_total";
pub const ENTITY_COMMIT_DURATION: &str = "commercex_entity_commit_seconds";
pub const ENTITY_COMMIT_COMMANDS: &str = "commercex_entity_commit_commands";
pub const STORE_GROUP_COMMIT_WRITES: &str = "commercex_store_group_commit_writes";
pub const STORE_GROUP_COMMIT_DURATION: &str = "commercex_store_group_commit_seconds";
pub const OUTBOX_PENDING: &str = "commercex_outbox_pending";
pub const BUS_PUBLISH_DURATION: &str = "commercex_bus_publish_seconds";
pub const BUS_PUBLISH_ERRORS: &str = "commercex_bus_publish_errors_total";
pub const KAFKA_CONSUMER_LAG: &str = "commercex_kafka_consumer_lag";
pub const ORDERS: &str = "commercex_orders_total";
pub const CHECKOUT_DURATION: &str = "commercex_checkout_to_outcome_seconds";
pub const SIGNINS: &str = "commercex_signins_total";
pub const RATE_LIMITED: &str = "commercex_rate_limited_total";
pub const PRODUCT_CACHE: &str = "commercex_product_cache_lookups_total";
pub const CLUSTER_REFUSED: &str = "commercex_cluster_refused_total";
pub const MONGODB_COMMANDS: &str = "commercex_mongodb_commands_total";
pub const KAFKA_RECORDS: &str = "commercex_kafka_records_total";
pub const REDIS_COMMANDS: &str = "commercex_redis_commands_total";
pub const CLUSTER_FORWARDED: &str = "commercex_cluster_forwarded_total";

/// Buckets of every `*_seconds` histogram: 100 µs to 10 s.
const SECONDS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Buckets of the batch sizes.
const SIZES: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The process's recorder, installed on first use; `None` when another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ENTITY_COMMIT_COMMANDS.into()), &SIZES))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STORE_GROUP_COMMIT_WRITES.into()), &SIZES))
                .map_err(|e| e.to_string())
                .and_then(|b| b.install_recorder().map_err(|e| e.to_string()));
            match recorder {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed; GET /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// `GET /metrics`'s answer: the text format with its content type.
pub fn text_response() -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render()).into_response()
}

/// What the listener of `telemetry.metrics_addr` serves: `GET /metrics`, and 404 for anything else.
pub fn listener_app() -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(|| async { text_response() }))
}

/// Folds recorded histogram samples into their buckets; run every few seconds so samples never pile up between
/// scrapes.
pub async fn upkeep(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(handle) = handle() else { return };
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => handle.run_upkeep(),
            _ = stop.changed() => return,
        }
    }
}

fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by method, route template and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "time to answer an HTTP request, by method and route template");
    describe_gauge!(ENTITIES_LIVE, "entity actors live on this node, by kind");
    describe_counter!(ENTITY_STARTS, "entity actors started (recovered from the store), by kind");
    describe_counter!(ENTITY_PASSIVATIONS, "entity actors stopped because idle or to stay under the cap, by kind");
    describe_counter!(ENTITY_CRASHES, "entity actors that exited abnormally (a failed write, a panic), by kind");
    describe_counter!(ENTITY_RESTARTS, "entity actors restarted by their supervisor after a crash, by kind");
    describe_histogram!(ENTITY_MAILBOX_WAIT, Unit::Seconds, "time a request waited in an entity's mailbox, by kind");
    describe_histogram!(ENTITY_HANDLER, Unit::Seconds, "time an entity actor spent on one message, by kind");
    describe_counter!(ENTITY_COMMITS, "entity commits, by kind and result (ok, conflict, error)");
    describe_histogram!(ENTITY_COMMIT_DURATION, Unit::Seconds, "time of an entity's commit to the store, by kind");
    describe_histogram!(ENTITY_COMMIT_COMMANDS, Unit::Count, "commands written by one entity commit, by kind");
    describe_histogram!(STORE_GROUP_COMMIT_WRITES, Unit::Count, "writes sharing one transaction (embedded store)");
    describe_histogram!(STORE_GROUP_COMMIT_DURATION, Unit::Seconds, "time of one group transaction (embedded store)");
    describe_gauge!(OUTBOX_PENDING, "events the outbox relay found waiting at its last poll (at most one batch)");
    describe_histogram!(BUS_PUBLISH_DURATION, Unit::Seconds, "time to publish one relay batch to the bus");
    describe_counter!(BUS_PUBLISH_ERRORS, "relay batches the bus failed to take (retried)");
    describe_gauge!(KAFKA_CONSUMER_LAG, "messages behind the end of its partitions, by consumer (Kafka bus)");
    describe_counter!(
        ORDERS,
        "orders that reached the end of checkout, by outcome (paid, rejected, payment_failed, cancelled)"
    );
    describe_histogram!(
        CHECKOUT_DURATION,
        Unit::Seconds,
        "time from placing an order to its checkout outcome, by outcome"
    );
    describe_counter!(SIGNINS, "sign-ins, by outcome (ok, invalid_credentials, blocked, busy, error)");
    describe_counter!(RATE_LIMITED, "requests refused by a rate limit, by scope");
    describe_counter!(PRODUCT_CACHE, "product cache lookups, by result (hit, miss)");
    describe_counter!(
        CLUSTER_REFUSED,
        "messages refused on the Kafka topics (forwarded calls, their answers, events), by channel (commands, answers, \
         events) and reason (unsigned, signature, expired, deadline, reply_to, malformed)"
    );
    describe_counter!(MONGODB_COMMANDS, "commands sent to MongoDB (the driver's command monitoring), by command name");
    describe_counter!(
        KAFKA_RECORDS,
        "Kafka records produced and consumed, by topic (without the deployment's prefix; every node's reply topic is \
         `replies`) and direction (produced, consumed)"
    );
    describe_counter!(REDIS_COMMANDS, "requests sent to Redis (a pipeline or script counts once), by operation");
    describe_counter!(
        CLUSTER_FORWARDED,
        "calls this node forwarded to the node hosting the entity, by entity kind and outcome (ok, rejected, \
         unavailable)"
    );
}

/// A Kafka topic as [`KAFKA_RECORDS`] labels it: its name without the deployment's prefix, and `replies` for every
/// node's reply topic, so that the label's values do not grow with the nodes.
pub fn topic_label(topic: &str) -> &str {
    if topic.contains(".replies.") {
        return "replies";
    }
    topic.rsplit('.').next().unwrap_or(topic)
}

/// Counts `n` Kafka records `direction` (`produced`, `consumed`) on `topic`.
pub fn kafka_records(topic: &str, direction: &'static str, n: u64) {
    ::metrics::counter!(KAFKA_RECORDS, "topic" => topic_label(topic).to_string(), "direction" => direction)
        .increment(n);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const ALL: [&str; 28] = [
        HTTP_REQUESTS,
        HTTP_DURATION,
        ENTITIES_LIVE,
        ENTITY_STARTS,
        ENTITY_PASSIVATIONS,
        ENTITY_CRASHES,
        ENTITY_RESTARTS,
        ENTITY_MAILBOX_WAIT,
        ENTITY_HANDLER,
        ENTITY_COMMITS,
        ENTITY_COMMIT_DURATION,
        ENTITY_COMMIT_COMMANDS,
        STORE_GROUP_COMMIT_WRITES,
        STORE_GROUP_COMMIT_DURATION,
        OUTBOX_PENDING,
        BUS_PUBLISH_DURATION,
        BUS_PUBLISH_ERRORS,
        KAFKA_CONSUMER_LAG,
        ORDERS,
        CHECKOUT_DURATION,
        SIGNINS,
        RATE_LIMITED,
        PRODUCT_CACHE,
        CLUSTER_REFUSED,
        MONGODB_COMMANDS,
        KAFKA_RECORDS,
        REDIS_COMMANDS,
        CLUSTER_FORWARDED,
    ];

    /// The dashboard in the repository reads every metric this node reports, and only those.
    #[test]
    fn the_grafana_dashboard_reads_the_metrics_the_node_reports() {
        let dashboard = include_str!("../../deploy/grafana/dashboards/commercex.json");
        let json: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let mut read = BTreeSet::new();
        for panel in json["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (at, _) in expr.match_indices("commercex_") {
                    let name: String =
                        expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    let base = ["_bucket", "_count", "_sum"].iter().fold(name.clone(), |n, s| {
                        n.strip_suffix(s).filter(|b| ALL.contains(b)).map_or(n.clone(), str::to_string)
                    });
                    read.insert(base);
                }
            }
        }
        let reported: BTreeSet<String> = ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(read, reported);
    }

    #[test]
    fn prometheus_scrapes_every_node_of_the_compose_file() {
        let compose = include_str!("../../docker-compose.yml");
        let scrape = include_str!("../../deploy/prometheus.yml");
        for node in ["commercex-1", "commercex-2", "commercex-3"] {
            assert!(compose.contains(&format!("hostname: {node}")), "{node}");
            assert!(scrape.contains(&format!("\"{node}:9464\"")), "{node}");
        }
        assert!(compose.contains("COMMERCEX__TELEMETRY__METRICS_ADDR: \"0.0.0.0:9464\""));
        for published in ["9464:9464", "\"9464\""] {
            assert!(!compose.contains(published), "the metrics port is not published");
        }
    }
}
