//! Cluster mode: three nodes share the entities (shard = Kafka partition of the id), any node answers any request,
//! and a node killed mid-checkout loses nothing.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::harness::{wait_shards_settled, Api, Deployment, Servers};
use crate::outages::{settle_all, CheckoutLoad, TERMINAL};

const SETTLE: Duration = Duration::from_secs(60);

const STOCK: i64 = 10_000;

/// A product with plenty of stock and `count` shoppers, signed up round the given nodes.
async fn product_and_shoppers(nodes: &[&Api], admin: &str, title: &str, count: usize) -> (String, Vec<String>) {
    let product = nodes[0].create_product(admin, title, 450, STOCK).await;
    let mut shoppers = Vec::new();
    for n in 0..count {
        shoppers.push(nodes[n % nodes.len()].signup(&format!("{title}{n}@cluster.test").to_lowercase()).await.1);
    }
    (product, shoppers)
}

/// Stops the load, then checks what every cluster test promises: only successes and retryable 503s were seen, and
/// every acknowledged order settled with stock and payments adding up.
async fn finish_and_settle(what: &str, load: CheckoutLoad, api: &Api, shoppers: &[String], product: &str) {
    let (orders, seen) = load.finish().await;
    seen.only_success_or_503();
    println!("{what} load: {seen:?}, {} orders", orders.iter().map(Vec::len).sum::<usize>());
    settle_all(api, shoppers, &orders, product, STOCK).await;
}

async fn three_nodes(test: &str) -> (Deployment, Vec<crate::harness::Node>, String) {
    let mut deployment = Deployment::new(test, Servers::shared()).clustered();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(deployment.start_node().await);
    }
    let admin = nodes[0].admin().await;
    let apis: Vec<&Api> = nodes.iter().map(|n| &**n).collect();
    wait_shards_settled(&apis, &admin, SETTLE).await;
    (deployment, nodes, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn three_nodes_answer_as_one() {
    let (_deployment, nodes, admin) = three_nodes("cluster_one").await;
    let node = |i: usize| &nodes[i % nodes.len()];
    let status = nodes[1].cluster(&admin).await;
    assert_eq!(status["node"], "node2");
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");

    // Products made on every node, read from every other.
    let mut products = Vec::new();
    for i in 0..6 {
        products.push(node(i).create_product(&admin, &format!("Item {i}"), 1000 + i as i64, 5).await);
    }
    for (i, id) in products.iter().enumerate() {
        let p = node(i + 1).get(&format!("/api/products/{id}"), None).await;
        assert_eq!((p.status, p.body["price"].as_i64()), (200, Some(1000 + i as i64)), "{:?}", p.body);
    }

    // Carts edited through one node after another.
    let mut shoppers = Vec::new();
    for i in 0..6 {
        shoppers.push(node(i).signup(&format!("shopper{i}@cluster.test")).await.1);
    }
    for (i, token) in shoppers.iter().enumerate() {
        let t = Some(token.as_str());
        let r = node(i).post("/api/cart/items", t, json!({"productId": products[i], "quantity": 1})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let path = format!("/api/cart/items/{}", products[i]);
        let r = node(i + 1).patch(&path, t, json!({"quantity": 3})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = node(i + 2).post("/api/cart/items", t, json!({"productId": products[0], "quantity": 1})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let cart = node(i + 3).get("/api/cart", t).await.body;
        let lines: HashSet<(String, u64)> = cart["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["productId"].as_str().unwrap().to_string(), l["quantity"].as_u64().unwrap()))
            .collect();
        let mut expected = HashSet::from([(products[i].clone(), 3)]);
        if i == 0 {
            expected = HashSet::from([(products[0].clone(), 4)]);
        } else {
            expected.insert((products[0].clone(), 1));
        }
        assert_eq!(lines, expected, "shopper {i}: {cart}");
        let r = node(i + 4).request(reqwest::Method::DELETE, "/api/cart", t, None).await;
        assert!(r.status == 200 || r.status == 204, "{:?}", r.body);
    }

    // A coupon with one use, and more buyers than stock, all at once through every node.
    let coupon = json!({"code": "ONCE", "discount": {"kind": "percent", "percent": 10}, "usageLimit": 1});
    assert_eq!(node(1).post("/api/admin/coupons", Some(&admin), coupon).await.status, 201);
    let scarce = &products[5];
    for (i, token) in shoppers.iter().enumerate() {
        let r = node(i + 2).post("/api/cart/items", Some(token), json!({"productId": scarce, "quantity": 1})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in shoppers.iter().enumerate() {
        let (api, token) = (node(i + 1).api(), token.clone());
        let body = if i < 2 {
            json!({"paymentMethod": "pm_card_visa", "couponCode": "ONCE"})
        } else {
            json!({"paymentMethod": "pm_card_visa"})
        };
        tasks.spawn(async move {
            let placed = api.checkout_with(&token, &format!("scarce-{i}"), body).await;
            // The coupon's one use may be gone already when the second coupon buyer checks out.
            if placed.status == 422 && placed.code() == "coupon_not_applicable" && i < 2 {
                return (i, json!({"status": "rejected", "refusedAtCheckout": true}));
            }
            assert_eq!(placed.status, 202, "{:?}", placed.body);
            let id = placed.body["id"].as_str().unwrap().to_string();
            let order = api
                .wait_for(&format!("/api/orders/{id}"), Some(&token), SETTLE, |o| {
                    TERMINAL.contains(&o["status"].as_str().unwrap_or_default()) || o["status"] == "rejected"
                })
                .await;
            (i, order)
        });
    }
    let outcomes: Vec<(usize, Value)> = tasks.join_all().await;
    let paid: Vec<&(usize, Value)> = outcomes.iter().filter(|(_, o)| o["status"] == "paid").collect();
    // Six buyers, stock 5: never oversold; a buyer refused for the coupon may have held stock another was refused.
    assert!((4..=5).contains(&paid.len()), "stock 5, six buyers: {outcomes:#?}");
    assert!(
        outcomes.iter().all(|(_, o)| ["paid", "rejected"].contains(&o["status"].as_str().unwrap())),
        "{outcomes:#?}"
    );
    let with_coupon = paid.iter().filter(|(_, o)| o["discount"].as_i64().unwrap_or(0) > 0).count();
    assert!(with_coupon <= 1, "the coupon has one use: {outcomes:#?}");
    let product = node(0).wait_for(&format!("/api/products/{scarce}"), None, SETTLE, |p| p["stockReserved"] == 0).await;
    assert_eq!(product["stockOnHand"].as_u64(), Some(5 - paid.len() as u64), "{product}");
    let uses = node(2).get("/api/admin/coupons/ONCE", Some(&admin)).await.body["uses"].clone();
    assert_eq!(uses.as_u64(), Some(with_coupon as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_node_killed_mid_checkout_loses_nothing() {
    let (deployment, mut nodes, admin) = three_nodes("cluster_failover").await;
    let (product, shoppers) =
        product_and_shoppers(&nodes.iter().map(|n| &**n).collect::<Vec<_>>(), &admin, "Tea", 6).await;
    let apis: Vec<Api> = nodes.iter().map(|n| n.api()).collect();
    let load = CheckoutLoad::start(&apis, &shoppers, &product);
    tokio::time::sleep(Duration::from_secs(3)).await;

    nodes[2].kill();
    let killed = Instant::now();
    let survivors: Vec<&Api> = nodes[..2].iter().map(|n| &**n).collect();
    wait_shards_settled(&survivors, &admin, SETTLE).await;
    let failover = killed.elapsed();
    println!("failover: the killed node's shards were hosted again after {:.1} s", failover.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The node comes back: shards spread over three again.
    deployment.restart_node(&mut nodes[2]).await;
    let back = Instant::now();
    let all: Vec<&Api> = nodes.iter().map(|n| &**n).collect();
    wait_shards_settled(&all, &admin, SETTLE).await;
    println!("rejoin: shards spread over three nodes again after {:.1} s", back.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;

    finish_and_settle("failover", load, &apis[0], &shoppers, &product).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_rolling_restart_under_load_loses_nothing() {
    let (deployment, mut nodes, admin) = three_nodes("cluster_rolling").await;
    let (product, shoppers) =
        product_and_shoppers(&nodes.iter().map(|n| &**n).collect::<Vec<_>>(), &admin, "Jam", 6).await;
    let apis: Vec<Api> = nodes.iter().map(|n| n.api()).collect();
    let load = CheckoutLoad::start(&apis, &shoppers, &product);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..nodes.len() {
        // A graceful stop hands the node's shards over at once (no session timeout to wait for).
        let stopping = Instant::now();
        nodes[i].terminate();
        let others: Vec<&Api> = nodes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, n)| &**n).collect();
        wait_shards_settled(&others, &admin, SETTLE).await;
        println!(
            "rolling: node{} stopped, its shards hosted elsewhere after {:.1} s",
            i + 1,
            stopping.elapsed().as_secs_f64()
        );
        deployment.restart_node(&mut nodes[i]).await;
        let all: Vec<&Api> = nodes.iter().map(|n| &**n).collect();
        wait_shards_settled(&all, &admin, SETTLE).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    finish_and_settle("rolling", load, &apis[0], &shoppers, &product).await;
}

/// A node frozen past the group's session timeout while it hosts entities mid-checkout: the others take its
/// shards over; when it wakes it must not act on what it no longer hosts (its stale appends are refused by the
/// store, and it hosts nothing until the group gives it shards again), then it rejoins. Nothing is lost or done
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_frozen_node_wakes_up_without_writing_twice_and_rejoins() {
    let (_deployment, nodes, admin) = three_nodes("cluster_frozen").await;
    let (product, shoppers) =
        product_and_shoppers(&nodes.iter().map(|n| &**n).collect::<Vec<_>>(), &admin, "Oats", 6).await;
    // The shoppers talk to the two nodes that stay awake; the frozen one holds a third of the entities.
    let awake: Vec<Api> = nodes[..2].iter().map(|n| n.api()).collect();
    let load = CheckoutLoad::start(&awake, &shoppers, &product);
    tokio::time::sleep(Duration::from_secs(2)).await;

    nodes[2].pause();
    let paused = Instant::now();
    let survivors: Vec<&Api> = nodes[..2].iter().map(|n| &**n).collect();
    wait_shards_settled(&survivors, &admin, SETTLE).await;
    println!("frozen node: its shards hosted by the others after {:.1} s", paused.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;

    nodes[2].resume();
    let woke = Instant::now();
    let all: Vec<&Api> = nodes.iter().map(|n| &**n).collect();
    wait_shards_settled(&all, &admin, SETTLE).await;
    println!("frozen node: back in the cluster {:.1} s after waking", woke.elapsed().as_secs_f64());
    // On waking it gave its shards up (the group told it, or its own lease ran out first) before hosting again.
    assert!(
        nodes[2].logged("shards revoked") || nodes[2].logged("cluster membership lapsed"),
        "the frozen node noticed it had lost its shards"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    finish_and_settle("frozen-node", load, &awake[0], &shoppers, &product).await;
}

async fn eventually_logged(node: &crate::harness::Node, text: &str) {
    let start = Instant::now();
    while !node.logged(text) {
        assert!(start.elapsed() < Duration::from_secs(10), "{} never logged `{text}`", node.name);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chaos switch on one node of three: it drops out of the group now and then (its shards move to the others)
/// and comes back, while shoppers check out through the other two. Nothing is lost or done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the real servers: scripts/test.sh"]
async fn a_node_that_chaos_drops_out_of_the_group_loses_nothing() {
    let mut deployment = Deployment::new("cluster_chaos", Servers::shared()).clustered();
    let mut nodes = vec![deployment.start_node().await, deployment.start_node().await];
    let admin = nodes[0].admin().await;
    wait_shards_settled(&[&nodes[0], &nodes[1]], &admin, SETTLE).await;
    let (product, shoppers) = product_and_shoppers(&[&nodes[0], &nodes[1]], &admin, "Rice", 4).await;
    let chaos = [("CHAOS__ENABLED", "true"), ("CHAOS__DROP_OUT_EVERY_SECS", "3"), ("CHAOS__DROP_OUT_SECS", "2")];
    nodes.push(deployment.start_node_with(&chaos).await);
    let steady: Vec<Api> = nodes[..2].iter().map(|n| n.api()).collect();
    let load = CheckoutLoad::start(&steady, &shoppers, &product);
    // The chaotic node is seen both hosting shards and hosting none.
    let (mut hosted, mut away) = (false, false);
    let start = Instant::now();
    while !(hosted && away) {
        assert!(start.elapsed() < SETTLE, "the chaotic node never both hosted shards and dropped out");
        let r = nodes[2].get("/api/admin/cluster", Some(&admin)).await;
        if r.status == 200 {
            // Hosting first (a node that has just joined hosts nothing yet), then nothing: it dropped out.
            let owned = r.body["owned"].as_array().map_or(0, Vec::len);
            away |= hosted && owned == 0;
            hosted |= owned > 0;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(nodes[2].logged("CHAOS IS ON"), "chaos announces itself");
    eventually_logged(&nodes[2], "dropping out of the cluster on purpose").await;
    // Enough chaos: the node stops for good (handing its shards over), and the last orders settle on the others.
    nodes[2].terminate();
    wait_shards_settled(&[&nodes[0], &nodes[1]], &admin, SETTLE).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    finish_and_settle("chaos drop-out", load, &steady[0], &shoppers, &product).await;
}
