//! What a load run measures: a latency histogram per operation, errors by answer, orders settled, and the final
//! report (a table for people, JSON for scripts).
//!
//! The histogram keeps log-spaced buckets in atomics, as HdrHistogram does: microseconds exact up to 127, then 64
//! buckets per power of two (within 1.6%), so every user task records without a lock and memory stays fixed
//! however long the run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Sub-buckets per power of two, as a power of two: 2^6 = 64.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any u64.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

fn bucket_of(value: u64) -> usize {
    if value < 2 * SUB {
        return value as usize;
    }
    let shift = 63 - value.leading_zeros() - SUB_BITS;
    let mantissa = value >> shift;
    ((shift as u64 + 1) * SUB + (mantissa - SUB)) as usize
}

/// The highest value that lands in `bucket`.
fn highest_in(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < 2 * SUB {
        return bucket;
    }
    let shift = bucket / SUB - 1;
    let mantissa = SUB + bucket % SUB;
    // The last bucket's end is u64::MAX: the shift drops its top bit and the subtraction wraps to it.
    ((mantissa + 1) << shift).wrapping_sub(1)
}

/// Latencies in microseconds.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), max: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_micros(&self, micros: u64) {
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The summary of what was recorded, `None` when nothing was.
    pub fn summary(&self) -> Option<Latency> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let max = self.max.load(Ordering::Relaxed);
        let at = |p: f64| percentile(&counts, p, max).map(micros_to_ms);
        Some(Latency { p50_ms: at(0.50)?, p90_ms: at(0.90)?, p99_ms: at(0.99)?, max_ms: micros_to_ms(max) })
    }
}

/// The value at or below which a share `p` (0..=1) of the recorded values lie: the smallest recorded bucket whose
/// cumulative count reaches `ceil(p * n)`, as its highest value (never above the largest value recorded).
fn percentile(counts: &[u64], p: f64, max: u64) -> Option<u64> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = ((p * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (bucket, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(highest_in(bucket).min(max));
        }
    }
    Some(max)
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a simulated user does, one row of the report each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Browse,
    Search,
    Product,
    CartAdd,
    CartView,
    CartClear,
    Checkout,
    OrderPoll,
    WsConnect,
    Refresh,
}

impl Op {
    pub const ALL: [Op; 10] = [
        Op::Browse,
        Op::Search,
        Op::Product,
        Op::CartAdd,
        Op::CartView,
        Op::CartClear,
        Op::Checkout,
        Op::OrderPoll,
        Op::WsConnect,
        Op::Refresh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Browse => "browse",
            Op::Search => "search",
            Op::Product => "product page",
            Op::CartAdd => "add to cart",
            Op::CartView => "view cart",
            Op::CartClear => "clear cart",
            Op::Checkout => "checkout",
            Op::OrderPoll => "order poll",
            Op::WsConnect => "ws connect",
            Op::Refresh => "token refresh",
        }
    }
}

#[derive(Default)]
struct OpStats {
    latency: Histogram,
    errors: Mutex<BTreeMap<String, u64>>,
    error_count: AtomicU64,
}

#[derive(Default)]
struct OrderStats {
    placed: AtomicU64,
    paid: AtomicU64,
    failed: Mutex<BTreeMap<String, u64>>,
    failed_count: AtomicU64,
    to_paid: Histogram,
    to_paid_by: [Histogram; 2],
    pushes: AtomicU64,
    ws_closed: Mutex<BTreeMap<String, u64>>,
}

/// How a user learnt that its order settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learnt {
    Push,
    Polling,
}

/// Shared by every user task for one run.
#[derive(Default)]
pub struct Recorder {
    ops: [OpStats; Op::ALL.len()],
    orders: OrderStats,
}

/// Running totals, for the live progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub placed: u64,
    pub paid: u64,
    pub failed: u64,
}

impl Recorder {
    /// A successful answer and how long it took.
    pub fn ok(&self, op: Op, latency: Duration) {
        self.ops[op as usize].latency.record(latency);
    }

    /// A failed call, by what went wrong: `409 insufficient_stock`, `transport: timeout`.
    pub fn error(&self, op: Op, what: String) {
        let stats = &self.ops[op as usize];
        stats.error_count.fetch_add(1, Ordering::Relaxed);
        *lock(&stats.errors).entry(what).or_default() += 1;
    }

    pub fn order_placed(&self) {
        self.orders.placed.fetch_add(1, Ordering::Relaxed);
    }

    /// An order reached `paid`, `since_checkout` after its checkout request was sent, as learnt `by`.
    pub fn order_paid(&self, since_checkout: Duration, by: Learnt) {
        self.orders.paid.fetch_add(1, Ordering::Relaxed);
        self.orders.to_paid.record(since_checkout);
        self.orders.to_paid_by[by as usize].record(since_checkout);
    }

    /// An order ended in a failure state (`payment_failed`, `rejected`, ...).
    pub fn order_failed(&self, status: &str) {
        self.orders.failed_count.fetch_add(1, Ordering::Relaxed);
        *lock(&self.orders.failed).entry(status.to_string()).or_default() += 1;
    }

    pub fn push_received(&self) {
        self.orders.pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// A listener's socket ended while it was wanted, by why (`closed 4401`, `error: ...`).
    pub fn socket_closed(&self, why: String) {
        *lock(&self.orders.ws_closed).entry(why).or_default() += 1;
    }

    pub fn totals(&self) -> Totals {
        let ok: u64 = self.ops.iter().map(|s| s.latency.count()).sum();
        let errors: u64 = self.ops.iter().map(|s| s.error_count.load(Ordering::Relaxed)).sum();
        Totals {
            requests: ok + errors,
            errors,
            placed: self.orders.placed.load(Ordering::Relaxed),
            paid: self.orders.paid.load(Ordering::Relaxed),
            failed: self.orders.failed_count.load(Ordering::Relaxed),
        }
    }

    /// The operations, errors and orders of a run that lasted `window`.
    pub fn report(&self, window: Duration) -> (Vec<OpRow>, Vec<ErrorRow>, Orders) {
        let secs = window.as_secs_f64().max(1e-9);
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for op in Op::ALL {
            let stats = &self.ops[op as usize];
            let ok = stats.latency.count();
            let failed = stats.error_count.load(Ordering::Relaxed);
            if ok + failed == 0 {
                continue;
            }
            rows.push(OpRow {
                operation: op.name(),
                count: ok + failed,
                ok,
                errors: failed,
                per_sec: ok as f64 / secs,
                latency: stats.latency.summary(),
            });
            for (error, count) in lock(&stats.errors).iter() {
                errors.push(ErrorRow { operation: op.name(), error: error.clone(), count: *count });
            }
        }
        let totals = self.totals();
        let orders = Orders {
            placed: totals.placed,
            paid: totals.paid,
            failed: lock(&self.orders.failed).clone(),
            unsettled: totals.placed.saturating_sub(totals.paid + totals.failed),
            settled_per_sec: (totals.paid + totals.failed) as f64 / secs,
            paid_per_sec: totals.paid as f64 / secs,
            checkout_to_paid: self.orders.to_paid.summary(),
            paid_by_push: self.orders.to_paid_by[Learnt::Push as usize].count(),
            checkout_to_paid_by_push: self.orders.to_paid_by[Learnt::Push as usize].summary(),
            checkout_to_paid_by_polling: self.orders.to_paid_by[Learnt::Polling as usize].summary(),
            pushes: self.orders.pushes.load(Ordering::Relaxed),
            sockets_closed: lock(&self.orders.ws_closed).clone(),
        };
        (rows, errors, orders)
    }
}

/// A poisoned lock only means another task panicked mid-update of a counter map: the counts are still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpRow {
    pub operation: &'static str,
    pub count: u64,
    pub ok: u64,
    pub errors: u64,
    /// Successful answers per second.
    pub per_sec: f64,
    /// Of the successful answers.
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRow {
    pub operation: &'static str,
    pub error: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Orders {
    pub placed: u64,
    pub paid: u64,
    /// By final status.
    pub failed: BTreeMap<String, u64>,
    /// Placed but neither paid nor failed when the run ended.
    pub unsettled: u64,
    pub settled_per_sec: f64,
    pub paid_per_sec: f64,
    pub checkout_to_paid: Option<Latency>,
    /// Paid orders whose user learnt it from the WebSocket push (the others polled, or asked after no push came).
    pub paid_by_push: u64,
    pub checkout_to_paid_by_push: Option<Latency>,
    pub checkout_to_paid_by_polling: Option<Latency>,
    /// Order pushes the WebSocket listeners received.
    pub pushes: u64,
    /// Listener sockets that ended during the run, by why.
    pub sockets_closed: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Setup {
    pub users: usize,
    pub signup_secs: f64,
    /// Sign-ups retried after `503 auth_busy` or `429 rate_limited`.
    pub signup_retries: u64,
    pub signup_latency: Option<Latency>,
    pub products_created: usize,
    pub products_reused: usize,
}

/// The final report of a run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub urls: Vec<String>,
    pub users: usize,
    pub ws_users: usize,
    pub setup: Setup,
    /// From the first operation to the last settled order (the drain included).
    pub duration_secs: f64,
    /// Stopped early by ctrl-c.
    pub interrupted: bool,
    /// CPU the load generator itself used, in % of one core (Linux only): it competes with a server on the same
    /// machine.
    pub client_cpu_percent: Option<f64>,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub operations: Vec<OpRow>,
    pub errors: Vec<ErrorRow>,
    pub orders: Orders,
    /// The nodes' cost counters over the run (with `--metrics`).
    pub cost: Vec<super::cost::CostRow>,
}

fn ms(latency: Option<Latency>, pick: impl Fn(&Latency) -> f64) -> String {
    latency.map_or_else(|| "-".into(), |l| format!("{:.1}", pick(&l)))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.setup;
        writeln!(
            f,
            "{} users ({} with a WebSocket) on {}; {:.1} s{}{}",
            self.users,
            self.ws_users,
            self.urls.join(", "),
            self.duration_secs,
            if self.interrupted { " (interrupted)" } else { "" },
            self.client_cpu_percent.map_or_else(String::new, |cpu| format!("; load generator CPU {cpu:.0}%")),
        )?;
        writeln!(
            f,
            "setup: {} sign-ups in {:.1} s ({} retried), p50 {} ms, p99 {} ms; products: {} created, {} reused",
            s.users,
            s.signup_secs,
            s.signup_retries,
            ms(s.signup_latency, |l| l.p50_ms),
            ms(s.signup_latency, |l| l.p99_ms),
            s.products_created,
            s.products_reused
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:<14} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation", "ok", "errors", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        )?;
        for row in &self.operations {
            writeln!(
                f,
                "{:<14} {:>9} {:>7} {:>9.1} {:>9} {:>9} {:>9} {:>9}",
                row.operation,
                row.ok,
                row.errors,
                row.per_sec,
                ms(row.latency, |l| l.p50_ms),
                ms(row.latency, |l| l.p90_ms),
                ms(row.latency, |l| l.p99_ms),
                ms(row.latency, |l| l.max_ms),
            )?;
        }
        let errors: u64 = self.errors.iter().map(|e| e.count).sum();
        writeln!(
            f,
            "{:<14} {:>9} {:>7} {:>9.1}",
            "all requests",
            self.requests - errors,
            errors,
            self.requests_per_sec
        )?;
        writeln!(f)?;
        let o = &self.orders;
        let failed: u64 = o.failed.values().sum();
        writeln!(
            f,
            "orders: {} placed, {} paid, {} failed{}, {} unsettled; {:.1} settled/s ({:.1} paid/s)",
            o.placed,
            o.paid,
            failed,
            if o.failed.is_empty() { String::new() } else { format!(" {}", counts(&o.failed)) },
            o.unsettled,
            o.settled_per_sec,
            o.paid_per_sec
        )?;
        writeln!(
            f,
            "checkout to paid: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            ms(o.checkout_to_paid, |l| l.p50_ms),
            ms(o.checkout_to_paid, |l| l.p90_ms),
            ms(o.checkout_to_paid, |l| l.p99_ms),
            ms(o.checkout_to_paid, |l| l.max_ms),
        )?;
        writeln!(
            f,
            "  learnt by push ({}): p50 {} ms, p99 {} ms; by polling ({}): p50 {} ms, p99 {} ms",
            o.paid_by_push,
            ms(o.checkout_to_paid_by_push, |l| l.p50_ms),
            ms(o.checkout_to_paid_by_push, |l| l.p99_ms),
            o.paid - o.paid_by_push,
            ms(o.checkout_to_paid_by_polling, |l| l.p50_ms),
            ms(o.checkout_to_paid_by_polling, |l| l.p99_ms),
        )?;
        write!(f, "websocket: {} order pushes received", o.pushes)?;
        if !o.sockets_closed.is_empty() {
            write!(f, "; sockets ended {}", counts(&o.sockets_closed))?;
        }
        writeln!(f)?;
        if !self.cost.is_empty() {
            writeln!(f, "cost, summed over the nodes scraped: {:>12} {:>16}", "in all", "per paid order")?;
            for row in &self.cost {
                let name = if row.labels.is_empty() { row.metric.clone() } else { format!("  {}", row.labels) };
                let per = row.per_paid_order.map_or_else(|| "-".into(), |p| format!("{p:.2}"));
                writeln!(f, "  {name:<50} {:>12} {per:>16}", row.total)?;
            }
        }
        if errors == 0 {
            writeln!(f, "errors: none")
        } else {
            writeln!(f, "errors:")?;
            for e in &self.errors {
                writeln!(f, "  {:<14} {:<40} {:>7}", e.operation, e.error, e.count)?;
            }
            Ok(())
        }
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact_and_percentiles_take_the_rank_ceiling() {
        let h = Histogram::default();
        for v in 1..=100 {
            h.record_micros(v);
        }
        let s = h.summary().unwrap();
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms), (0.050, 0.090, 0.099, 0.100));
        let h = Histogram::default();
        for v in [10, 20, 30, 40] {
            h.record_micros(v);
        }
        // rank ceil(0.5 * 4) = 2, ceil(0.9 * 4) = 4
        assert_eq!(h.summary().unwrap().p50_ms, 0.020);
        assert_eq!(h.summary().unwrap().p90_ms, 0.040);
    }

    #[test]
    fn empty_histogram_has_no_summary() {
        assert!(Histogram::default().summary().is_none());
    }

    #[test]
    fn buckets_are_contiguous_and_within_one_sixty_fourth() {
        let mut previous = 0;
        for bucket in 1..BUCKETS - 1 {
            let high = highest_in(bucket);
            assert!(high > previous, "bucket {bucket}");
            assert_eq!(bucket_of(previous + 1), bucket, "lowest of bucket {bucket}");
            assert_eq!(bucket_of(high), bucket, "highest of bucket {bucket}");
            let low = previous + 1;
            assert!((high - low) as f64 <= low as f64 / 64.0, "bucket {bucket}: {low}..={high}");
            previous = high;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(highest_in(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn large_values_report_their_bucket_but_never_above_the_max() {
        let h = Histogram::default();
        h.record(Duration::from_millis(250));
        h.record(Duration::from_millis(1000));
        let s = h.summary().unwrap();
        assert!((250.0..=250.0 * (1.0 + 1.0 / 64.0)).contains(&s.p50_ms), "{s:?}");
        assert_eq!(s.p99_ms, 1000.0);
        assert_eq!(s.max_ms, 1000.0);
    }

    #[test]
    fn a_skewed_distribution_finds_its_tail() {
        let h = Histogram::default();
        for _ in 0..980 {
            h.record(Duration::from_millis(2));
        }
        for _ in 0..20 {
            h.record(Duration::from_millis(400));
        }
        let s = h.summary().unwrap();
        assert!((2.0..2.04).contains(&s.p50_ms), "{s:?}");
        assert!((2.0..2.04).contains(&s.p90_ms), "{s:?}");
        assert!((400.0..=406.25).contains(&s.p99_ms), "{s:?}");
        assert_eq!(s.max_ms, 400.0);
    }

    #[test]
    fn the_report_counts_errors_by_answer_and_rates_over_the_window() {
        let r = Recorder::default();
        for _ in 0..10 {
            r.ok(Op::Browse, Duration::from_millis(3));
        }
        r.error(Op::Checkout, "503 service_unavailable".into());
        r.error(Op::Checkout, "503 service_unavailable".into());
        r.error(Op::Checkout, "transport: timeout".into());
        r.order_placed();
        r.order_placed();
        r.order_placed();
        r.order_paid(Duration::from_millis(120), Learnt::Push);
        r.order_failed("payment_failed");
        let (rows, errors, orders) = r.report(Duration::from_secs(2));
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].operation, rows[0].ok, rows[0].per_sec), ("browse", 10, 5.0));
        assert_eq!((rows[1].operation, rows[1].count, rows[1].errors), ("checkout", 3, 3));
        assert!(rows[1].latency.is_none());
        let errors: Vec<(&str, u64)> = errors.iter().map(|e| (e.error.as_str(), e.count)).collect();
        assert_eq!(errors, [("503 service_unavailable", 2), ("transport: timeout", 1)]);
        assert_eq!((orders.placed, orders.paid, orders.unsettled), (3, 1, 1));
        assert_eq!(orders.settled_per_sec, 1.0);
        assert_eq!(orders.failed.get("payment_failed"), Some(&1));
        assert_eq!(orders.paid_by_push, 1);
        assert!(orders.checkout_to_paid_by_polling.is_none());
        assert_eq!(r.totals(), Totals { requests: 13, errors: 3, placed: 3, paid: 1, failed: 1 });
    }
}
