//! The chaos switch under load: random entity actors killed, journal calls delayed and failed, publishes failed,
//! while shoppers check out (retrying 503s with their idempotency keys, as careful clients do). With chaos turned
//! off again, every acknowledged order settles, each paid one is captured once and notified, and stock adds up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use commercex::config::ChaosConfig;
use serde_json::json;

use crate::helpers::spawn_app_with;

const TERMINAL: [&str; 5] = ["paid", "payment_failed", "rejected", "cancelled", "refunded"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_service_under_chaos_loses_nothing() {
    const STOCK: i64 = 1_000;
    let app = Arc::new(
        spawn_app_with(|c| {
            c.actors.max_restarts = 10_000;
            c.chaos = ChaosConfig {
                enabled: false,
                kill_actors_per_minute: 1_200,
                store_delay_share: 0.2,
                store_delay_ms: 5,
                store_fail_share: 0.05,
                bus_fail_share: 0.5,
                ..ChaosConfig::default()
            };
        })
        .await,
    );
    let admin = app.admin().await;
    let product = app.create_product(&admin, "Chaos mug", 900, STOCK).await["id"].as_str().unwrap().to_string();
    let mut shoppers = Vec::new();
    for i in 0..6 {
        shoppers.push(app.signup(&format!("chaos{i}@example.com")).await.token);
    }
    app.state.ctx.chaos.set_enabled(true);

    let mut tasks = tokio::task::JoinSet::new();
    for (n, token) in shoppers.iter().cloned().enumerate() {
        let (app, product) = (app.clone(), product.clone());
        tasks.spawn(async move {
            let (mut orders, mut unavailable) = (Vec::new(), 0);
            for round in 0..4 {
                loop {
                    let r =
                        app.post("/api/cart/items", Some(&token), json!({"productId": product, "quantity": 1})).await;
                    match r.status {
                        200 => break,
                        503 => unavailable += 1,
                        other => panic!("add to cart: {other} {:?}", r.body),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let key = format!("chaos-{n}-{round}");
                let id = loop {
                    let r = app.checkout(&token, &key, json!({"paymentMethod": "pm_card_visa"})).await;
                    match r.status {
                        200 | 202 => break r.body["id"].as_str().unwrap().to_string(),
                        503 => unavailable += 1,
                        other => panic!("checkout {key}: {other} {:?}", r.body),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                // Wait until the order is over before the next round (the cart is cleared when it is paid).
                loop {
                    let r = app.get(&format!("/api/orders/{id}"), Some(&token)).await;
                    if r.status == 200 && TERMINAL.contains(&r.body["status"].as_str().unwrap_or_default()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                orders.push(id);
            }
            (token, orders, unavailable)
        });
    }
    let results = tasks.join_all().await;
    app.state.ctx.chaos.set_enabled(false);
    let injected = app.state.ctx.chaos.injected();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let unavailable: usize = results.iter().map(|(_, _, u)| u).sum();
    eprintln!("chaos: {injected:?}; {unavailable} requests answered 503 and retried");
    assert!(load(&injected.kills) > 0, "chaos killed actors: {injected:?}");
    assert!(load(&injected.store_failures) > 0 && load(&injected.bus_failures) > 0, "{injected:?}");

    let mut sold = 0;
    let mut paid_ids = HashSet::new();
    for (token, orders, _) in &results {
        let listed = app.get("/api/orders?limit=100", Some(token)).await.body;
        let listed: HashSet<&str> =
            listed["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
        assert_eq!(listed, orders.iter().map(String::as_str).collect(), "no order lost, none made twice");
        for id in orders {
            let order = app.wait_order(token, id, |o| TERMINAL.contains(&o["status"].as_str().unwrap())).await;
            app.state.orders.router().settled(id, Duration::from_secs(10)).await.unwrap();
            let captures = app.provider.captures_for_order(id);
            let kept = captures.iter().filter(|c| !c.refunded).count();
            if order["status"] == "paid" {
                assert_eq!(kept, 1, "order {id}: {captures:?}");
                sold += order["lines"][0]["quantity"].as_i64().unwrap();
                paid_ids.insert(id.clone());
            } else {
                assert_eq!(kept, 0, "order {id} is {} yet charged: {captures:?}", order["status"]);
            }
        }
    }
    assert!(!paid_ids.is_empty());
    let p = app.get(&format!("/api/products/{product}"), None).await.body;
    assert_eq!((p["stockOnHand"].as_i64(), p["stockReserved"].as_i64()), (Some(STOCK - sold), Some(0)));
    // Every paid order's event went through the failing bus in the end: its confirmation email was sent.
    let start = tokio::time::Instant::now();
    loop {
        let emails = app.get("/api/admin/emails?limit=100", Some(&admin)).await.body;
        let confirmed: HashSet<String> = emails["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["template"] == "order_confirmation")
            .filter_map(|e| e["subject"].as_str().and_then(|s| s.split_whitespace().find(|w| w.starts_with("ord_"))))
            .map(str::to_string)
            .collect();
        if paid_ids.iter().all(|id| confirmed.contains(id)) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "confirmations missing: {paid_ids:?} vs {confirmed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
