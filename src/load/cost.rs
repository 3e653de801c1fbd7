//! What the servers behind the nodes did for the run: the cost counters of each node's `/metrics` (MongoDB
//! commands, Kafka records, Redis requests, forwarded cluster calls), scraped before the users start and after the
//! last order settled, summed over the nodes, and divided by the orders paid in between.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::telemetry::metrics::{CLUSTER_FORWARDED, KAFKA_RECORDS, MONGODB_COMMANDS, REDIS_COMMANDS};

/// The counters a run reports, in the order it reports them.
pub const COUNTED: [&str; 4] = [MONGODB_COMMANDS, KAFKA_RECORDS, REDIS_COMMANDS, CLUSTER_FORWARDED];

/// One scrape of every node: `(metric, labels)` to the value summed over the nodes.
pub type Sample = BTreeMap<(String, String), f64>;

/// One counter's growth over the run: in all, by label set, and per paid order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CostRow {
    pub metric: String,
    /// The label set as Prometheus writes it (`command="insert"`), empty for the metric's total.
    pub labels: String,
    pub total: f64,
    pub per_paid_order: Option<f64>,
}

/// The counted metrics' lines of a Prometheus text exposition, added into `into`.
pub fn add_exposition(text: &str, into: &mut Sample) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        if COUNTED.contains(&name) {
            *into.entry((name.to_string(), labels.to_string())).or_default() += value;
        }
    }
}

/// Scrapes every URL (a node's metrics endpoint) and sums what they report.
pub async fn scrape(http: &reqwest::Client, urls: &[String]) -> Result<Sample, super::LoadError> {
    let mut sample = Sample::new();
    for url in urls {
        let failed = |error: String| super::LoadError::Transport { what: format!("scraping {url}"), error };
        let answer = http.get(url).send().await.map_err(|e| failed(super::api::chain(&e)))?;
        if !answer.status().is_success() {
            return Err(failed(format!("answered {}", answer.status())));
        }
        add_exposition(&answer.text().await.map_err(|e| failed(super::api::chain(&e)))?, &mut sample);
    }
    Ok(sample)
}

/// Each counted metric's growth from `before` to `after`: its total first, then each label set that grew.
pub fn growth(before: &Sample, after: &Sample, paid: u64) -> Vec<CostRow> {
    let per = |total: f64| (paid > 0).then(|| total / paid as f64);
    let mut rows = Vec::new();
    for metric in COUNTED {
        let grown: Vec<(&str, f64)> = after
            .iter()
            .filter(|((name, _), _)| name == metric)
            .map(|((name, labels), value)| {
                let was = before.get(&(name.clone(), labels.clone())).copied().unwrap_or(0.0);
                (labels.as_str(), value - was)
            })
            .filter(|(_, grew)| *grew > 0.0)
            .collect();
        let total = grown.iter().fold(0.0, |sum, (_, grew)| sum + grew);
        rows.push(CostRow { metric: metric.to_string(), labels: String::new(), total, per_paid_order: per(total) });
        rows.extend(grown.into_iter().map(|(labels, grew)| CostRow {
            metric: metric.to_string(),
            labels: labels.to_string(),
            total: grew,
            per_paid_order: per(grew),
        }));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE commercex_mongodb_commands_total counter\n\
        commercex_mongodb_commands_total{command=\"insert\"} 10\n\
        commercex_mongodb_commands_total{command=\"find\"} 4\n\
        commercex_http_requests_total{method=\"GET\",route=\"/x\",status=\"200\"} 99\n";
    const AFTER: &str = "commercex_mongodb_commands_total{command=\"insert\"} 30\n\
        commercex_mongodb_commands_total{command=\"find\"} 4\n\
        commercex_mongodb_commands_total{command=\"update\"} 5\n\
        commercex_kafka_records_total{topic=\"orders\",direction=\"produced\"} 8\n";

    #[test]
    fn counts_grow_per_paid_order_summed_over_the_nodes() {
        let (mut before, mut after) = (Sample::new(), Sample::new());
        add_exposition(BEFORE, &mut before);
        // Two nodes reporting the same.
        add_exposition(AFTER, &mut after);
        add_exposition(AFTER, &mut after);
        let rows = growth(&before, &after, 10);
        let find = |metric: &str, labels: &str| rows.iter().find(|r| r.metric == metric && r.labels == labels).cloned();
        let total = find(MONGODB_COMMANDS, "").unwrap();
        // insert 60 - 10, find 8 - 4, update 10.
        assert_eq!((total.total, total.per_paid_order), (64.0, Some(6.4)));
        assert_eq!(find(MONGODB_COMMANDS, "command=\"insert\"").unwrap().total, 50.0);
        assert_eq!(find(KAFKA_RECORDS, "").unwrap().per_paid_order, Some(1.6));
        assert_eq!(find(REDIS_COMMANDS, "").unwrap().total, 0.0);
        assert!(rows.iter().all(|r| r.metric.starts_with("commercex_") && !r.metric.contains("http")));
        assert_eq!(growth(&before, &after, 0)[0].per_paid_order, None);
    }
}
