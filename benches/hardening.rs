//! What the second security round bounds, measured:
//! 1. Memory under requests with made-up methods: METHODS (default 50,000) requests to a release `commercex`, each
//!    with a method of its own (`M0000001 /health`, ...), 8 connections at a time; the server's RSS before, every
//!    10,000 requests and after, and how many `/metrics` lines name a method outside the standard nine.
//! 2. A one-item notification page against the table's size: an embedded store holding 1,000 and then 100,000
//!    notifications of other users (and as many public ones), plus 30 of the reader's; 2,000 reads of the reader's
//!    first page of one (the storefront asks for it on every render), p50/p99 for each size.
//!
//! Run: `cargo bench --bench hardening` (optional env: METHODS, ROWS = the larger table's size).

#[path = "server/mod.rs"]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use commercex::store::embedded::EmbeddedStore;
use commercex::store::{Notification, NotificationStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sends requests `from..to`, each on a connection of its own with method `M{i:07}` padded to 100 characters.
async fn made_up_methods(addr: String, from: usize, to: usize) {
    for i in from..to {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else { continue };
        let head = format!("M{i:07}{} /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "A".repeat(92));
        if stream.write_all(head.as_bytes()).await.is_ok() {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        }
    }
}

async fn method_flood(requests: usize) {
    const CONNECTIONS: usize = 8;
    const STEP: usize = 10_000;
    let server = server::Server::start(&[]).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let client = reqwest::Client::new();
    let _ = client.get(format!("{}/health", server.base)).send().await;
    let start_rss = server.status_mib("VmRSS:");
    println!("method flood: {requests} requests with made-up methods, {CONNECTIONS} at a time");
    println!("  RSS at start: {start_rss:.1} MiB");
    let started = Instant::now();
    let mut sent = 0;
    while sent < requests {
        let batch = STEP.min(requests - sent);
        let mut tasks = JoinSet::new();
        for c in 0..CONNECTIONS {
            let (from, to) = (sent + batch * c / CONNECTIONS, sent + batch * (c + 1) / CONNECTIONS);
            tasks.spawn(made_up_methods(addr.clone(), from, to));
        }
        tasks.join_all().await;
        sent += batch;
        println!("  after {sent:>6}: RSS {:.1} MiB", server.status_mib("VmRSS:"));
    }
    let metrics = client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    let made_up = metrics.lines().filter(|l| l.contains("method=\"M")).count();
    let other = metrics
        .lines()
        .filter(|l| l.starts_with("commercex_http_requests_total") && l.contains("method=\"other\""))
        .count();
    println!(
        "  {:.1} s; RSS at the end {:.1} MiB (peak {:.1}); /metrics: {made_up} lines with a made-up method, {other} `other` series",
        started.elapsed().as_secs_f64(),
        server.status_mib("VmRSS:"),
        server.status_mib("VmHWM:"),
    );
}

fn notification(user: Option<String>, event: String) -> Notification {
    Notification {
        id: 0,
        user_id: user,
        kind: "order.paid".into(),
        title: "Your order is paid".into(),
        body: "Order ord_0123456789abcdef0123456789abcdef is paid: 49.90 USD.".into(),
        data: serde_json::json!({"orderId": "ord_0123456789abcdef0123456789abcdef"}),
        event_id: event,
        read: false,
        created_at: chrono::Utc::now(),
    }
}

/// p50 and p99 of 2,000 reads of the reader's one-item first page, with `others` notifications of other users
/// and as many public ones in the table.
async fn notification_page(others: usize) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut tasks = JoinSet::new();
    for i in 0..others {
        if tasks.len() >= 512 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let store = store.clone();
        tasks.spawn(async move {
            store
                .insert_notification(notification(Some(format!("user-{}", i % 1000)), format!("order:o{i}/2")))
                .await
                .unwrap();
            store.insert_notification(notification(None, format!("product:p{i}/1"))).await.unwrap();
        });
    }
    tasks.join_all().await;
    for i in 0..30 {
        store.insert_notification(notification(Some("reader".into()), format!("order:mine{i}/2"))).await.unwrap();
    }
    let mut took = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let started = Instant::now();
        let (page, unread) = store.list_notifications("reader", 1, 1).await.unwrap();
        took.push(started.elapsed());
        assert_eq!((page.items.len(), page.total, unread), (1, 30, 30));
    }
    took.sort();
    (took[took.len() / 2], took[took.len() * 99 / 100])
}

#[tokio::main]
async fn main() {
    method_flood(env_or("METHODS", 50_000)).await;
    let rows = env_or("ROWS", 100_000);
    println!("notification page of one, 2,000 reads:");
    for others in [1_000, rows] {
        let (p50, p99) = notification_page(others).await;
        println!("  {others:>7} other notifications (+ as many public): p50 {p50:.2?}, p99 {p99:.2?}");
    }
}
