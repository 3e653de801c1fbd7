//! `GET /metrics`: after a user signs in, browses and checks out, the counters a dashboard reads have moved.
//!
//! The recorder is global to the test process and other tests run beside this one, so each check is on how much a
//! series grew between two scrapes, never on its value.

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// Every sample of a scrape: `name{labels}` -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples of `name` whose labels include all of `labels`.
fn total(samples: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
            series_name == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value)
        .sum()
}

async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let res = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    samples(&res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_moves_the_counters_a_dashboard_reads() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let mug = app.create_product(&admin, "Metered mug", 1250, 5).await["id"].as_str().unwrap().to_string();
    let before = scrape(&app).await;

    let shopper = app.signup("metered@example.com").await;
    assert_eq!(app.signin("metered@example.com", "wrong-password-1").await.status, 401);
    assert_eq!(app.signin("metered@example.com", "pass-word-1").await.status, 200);
    for _ in 0..2 {
        assert_eq!(app.get(&format!("/api/products/{mug}"), None).await.status, 200);
    }
    app.post("/api/cart/items", Some(&shopper.token), json!({"productId": mug, "quantity": 1})).await;
    let placed = app.checkout(&shopper.token, "metered-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    app.wait_status(&shopper.token, placed.body["id"].as_str().unwrap(), "paid").await;
    assert_eq!(app.get("/api/products/no-such-product", None).await.status, 404);

    let after = scrape(&app).await;
    let grew = |name: &str, labels: &[(&str, &str)]| total(&after, name, labels) - total(&before, name, labels);
    let checkout = [("method", "POST"), ("route", "/api/cart/checkout"), ("status", "202")];
    assert!(grew("commercex_http_requests_total", &checkout) >= 1.0);
    let by_template = [("route", "/api/products/{id}"), ("status", "404")];
    assert!(grew("commercex_http_requests_total", &by_template) >= 1.0, "ids are not labels");
    let latency = [("route", "/api/cart/checkout")];
    assert!(grew("commercex_http_request_duration_seconds_count", &latency) >= 1.0);
    assert!(grew("commercex_orders_total", &[("outcome", "paid")]) >= 1.0);
    assert!(grew("commercex_checkout_to_outcome_seconds_count", &[("outcome", "paid")]) >= 1.0);
    for kind in ["order", "payment", "cart"] {
        assert!(grew("commercex_entity_starts_total", &[("kind", kind)]) >= 1.0, "{kind}");
        assert!(grew("commercex_entity_commits_total", &[("kind", kind), ("result", "ok")]) >= 1.0, "{kind}");
        assert!(grew("commercex_entity_mailbox_wait_seconds_count", &[("kind", kind)]) >= 1.0, "{kind}");
    }
    assert!(total(&after, "commercex_entities_live", &[("kind", "order")]) >= 1.0);
    if app.state.dependencies.store_backend == "embedded" {
        // Only the embedded store groups writes into shared transactions.
        assert!(grew("commercex_store_group_commit_writes_count", &[]) >= 1.0);
    }
    assert!(grew("commercex_bus_publish_seconds_count", &[]) >= 1.0);
    assert!(grew("commercex_signins_total", &[("outcome", "ok")]) >= 1.0);
    assert!(grew("commercex_signins_total", &[("outcome", "invalid_credentials")]) >= 1.0);
    assert!(grew("commercex_product_cache_lookups_total", &[("result", "hit")]) >= 1.0);
    assert!(grew("commercex_product_cache_lookups_total", &[("result", "miss")]) >= 1.0);

    if app.state.dependencies.bus.backend() == "kafka" {
        // Each consumer reports its lag with librdkafka's statistics, every 5 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let now = scrape(&app).await;
            let reported =
                |consumer| now.keys().any(|k| k.starts_with("commercex_kafka_consumer_lag") && k.contains(consumer));
            if reported("consumer=\"shared\"") && reported("consumer=\"every-process\"") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no consumer lag reported");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = spawn_app_with(|c| c.telemetry.metrics = false).await;
    assert_eq!(app.get("/metrics", None).await.status, 404);
}

/// Security review H2: hyper takes any token as a method, so a label holding the raw method would let anonymous
/// requests grow the recorder without end. Requests with made-up methods all land in one `other` series.
#[tokio::test]
async fn made_up_methods_do_not_create_series() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    for i in 0..50 {
        let mut stream = crate::helpers::raw_connect(&app).await;
        let head = format!("M{i:07}XYZ /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let reply = crate::helpers::read_until_closed(&mut stream, std::time::Duration::from_secs(5)).await;
        assert!(reply.text.starts_with("HTTP/1.1 405"), "{}", reply.text);
    }
    let after = scrape(&app).await;
    let made_up = after.keys().filter(|series| series.contains("method=\"M0")).count();
    assert_eq!(made_up, 0, "a series per made-up method");
    let other = [("method", "other"), ("route", "/health"), ("status", "405")];
    assert!(total(&after, "commercex_http_requests_total", &other) >= 50.0);
}

/// Security review L1: by default the series are served on a listener of their own (loopback), not with the API.
#[tokio::test]
async fn by_default_metrics_have_a_listener_of_their_own() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = crate::helpers::test_config(dir.path());
    config.telemetry.metrics_addr = "127.0.0.1:0".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let app = commercex::app::Application::with_listener(config, listener).await.expect("app builds");
    let metrics = app.metrics_addr().expect("a metrics listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let on_api = client.get(format!("http://{api}/metrics")).send().await.unwrap();
    assert_eq!(on_api.status(), 404);
    let own = client.get(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("commercex_"));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
