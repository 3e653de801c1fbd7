//! Two `commercex` processes on one MongoDB, Kafka and Redis (in cluster mode, so each entity has one writer):
//! what one process writes, the other serves, caches correctly and pushes to the WebSockets it holds.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{pushes_until, wait_shards_settled, Deployment, Servers};

const SOON: Duration = Duration::from_secs(15);

async fn a_write_on_one_process_reaches_the_others_cache(servers: Servers) {
    let mut deployment = Deployment::new("cache", servers).clustered();
    let a = deployment.start_node().await;
    let b = deployment.start_node().await;
    let admin = a.admin().await;
    wait_shards_settled(&[&a, &b], &admin, SOON).await;
    let id = a.create_product(&admin, "Kettle", 2500, 10).await;
    let path = format!("/api/products/{id}");

    // B reads it (and caches it), then A changes it, again and again: B never serves the old price for long.
    for price in [2600, 2700, 2800] {
        let before = b.wait_for(&path, None, SOON, |p| p["title"] == "Kettle").await;
        assert_ne!(before["price"], price);
        let version = before["version"].clone();
        let r = a.patch(&path, Some(&admin), json!({"price": price, "version": version})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        b.wait_for(&path, None, SOON, |p| p["price"] == price).await;
    }
    // And the other way round: stock adjusted on B, seen on A.
    let r = b.post(&format!("{path}/stock"), Some(&admin), json!({"delta": -4, "reason": "damaged"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    a.wait_for(&path, None, SOON, |p| p["stockOnHand"] == 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_write_on_one_process_reaches_the_others_redis_cache() {
    a_write_on_one_process_reaches_the_others_cache(Servers::shared()).await;
}

/// Without Redis each process caches products itself, and only the events from Kafka invalidate its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_write_on_one_process_reaches_the_others_own_cache_through_kafka() {
    a_write_on_one_process_reaches_the_others_cache(Servers { redis_url: None, ..Servers::shared() }).await;
}

fn order_statuses(pushed: &[Value], order: &str) -> Vec<String> {
    pushed
        .iter()
        .filter(|n| n["data"]["orderId"] == order && n["kind"].as_str().is_some_and(|k| k.starts_with("order.")))
        .map(|n| n["data"]["status"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_checkout_on_one_process_is_pushed_to_sockets_on_both_and_emailed_once() {
    let mut deployment = Deployment::new("push", Servers::shared()).clustered();
    let a = deployment.start_node().await;
    let b = deployment.start_node().await;
    let admin = a.admin().await;
    wait_shards_settled(&[&a, &b], &admin, SOON).await;
    let mug = a.create_product(&admin, "Mug", 1250, 5).await;
    let (_, alice) = a.signup("alice@nodes.test").await;
    let (_, bob) = b.signup("bob@nodes.test").await;

    // Alice has a socket on each process; Bob one on B.
    let mut alice_on_a = a.socket(&alice).await;
    let mut alice_on_b = b.socket(&alice).await;
    let mut bob_on_b = b.socket(&bob).await;

    let r = a.post("/api/cart/items", Some(&alice), json!({"productId": mug, "quantity": 2})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let placed = a.checkout(&alice, "alice-1").await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    let order = placed.body["id"].as_str().unwrap().to_string();

    let paid = |pushed: &[Value]| order_statuses(pushed, &order).last().map(String::as_str) == Some("paid");
    let on_a = pushes_until(&mut alice_on_a, SOON, paid).await;
    let on_b = pushes_until(&mut alice_on_b, SOON, paid).await;
    assert_eq!(order_statuses(&on_a, &order), ["pending", "stock_reserved", "paid"]);
    assert_eq!(order_statuses(&on_b, &order), ["pending", "stock_reserved", "paid"]);
    // Both processes pushed the one stored notification of each event: same ids, same text.
    let ids = |pushed: &[Value]| {
        pushed
            .iter()
            .filter(|n| n["data"]["orderId"] == order)
            .map(|n| (n["id"].clone(), n["body"].clone()))
            .collect::<Vec<_>>()
    };
    let order_only = |pushed: &[Value]| {
        ids(&pushed
            .iter()
            .filter(|n| n["kind"].as_str().is_some_and(|k| k.starts_with("order.")))
            .cloned()
            .collect::<Vec<_>>())
    };
    assert_eq!(order_only(&on_a), order_only(&on_b));
    // Stored once each: the list is the same on both processes and holds each status once.
    let listed = |body: &Value| -> Vec<String> {
        let items = body["items"].as_array().cloned().unwrap_or_default();
        order_statuses(&items, &order)
    };
    let on_a_list = a.wait_for("/api/notifications?limit=50", Some(&alice), SOON, |b| listed(b).len() >= 3).await;
    let on_b_list = b.get("/api/notifications?limit=50", Some(&alice)).await.body;
    assert_eq!(listed(&on_a_list), ["paid", "stock_reserved", "pending"], "newest first");
    assert_eq!(on_a_list["items"], on_b_list["items"]);

    // Notification numbers are one sequence for the deployment: a client that saw the order's first push on A and
    // reconnects to B with `?after=` gets exactly the rest, in order. (The order's first push, not the first push
    // naming the order: a payment's notifications come from another topic, which a process may read ahead of the
    // order topic, so one of them can be numbered and pushed before the order's `pending`.)
    let first = order_only(&on_a).first().and_then(|(id, _)| id.as_u64()).unwrap();
    let mut resumed = b.socket_after(&alice, first).await;
    let replayed = pushes_until(&mut resumed, SOON, paid).await;
    let mut later: Vec<u64> =
        order_only(&on_a).iter().filter_map(|(id, _)| id.as_u64()).filter(|id| *id > first).collect();
    later.sort_unstable();
    let replayed_ids: Vec<u64> = order_only(&replayed).iter().filter_map(|(id, _)| id.as_u64()).collect();
    assert_eq!(replayed_ids, later, "{replayed:#?}");
    assert_eq!(order_statuses(&replayed, &order), ["stock_reserved", "paid"]);

    // One confirmation email in the whole deployment.
    let confirmations = |body: &Value| {
        body["items"].as_array().unwrap().iter().filter(|e| e["template"] == "order_confirmation").count()
    };
    b.wait_for("/api/admin/emails?limit=100", Some(&admin), SOON, |e| confirmations(e) >= 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(confirmations(&a.get("/api/admin/emails?limit=100", Some(&admin)).await.body), 1);

    // Bob's socket on B got none of Alice's order.
    let mut bob_pushed = Vec::new();
    while let Some(msg) = crate::harness::next_json(&mut bob_on_b, Duration::from_millis(500)).await {
        bob_pushed.push(msg);
    }
    assert!(bob_pushed.iter().all(|m| m["notification"]["data"]["orderId"] != order.as_str()), "{bob_pushed:?}");
}
