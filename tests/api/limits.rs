//! Per-client, per-account and per-user limits (security review, round 2: M1, M2, M4, M5): the client behind a
//! trusted proxy, IPv6 clients by their /64, refresh on a budget of its own, sign-in attempts per account, sockets
//! per user and per address, checkouts and coupon codes per user, orders in progress per user, and the node's cap
//! on live entities.

use std::sync::Arc;
use std::time::Duration;

use commercex::payments::SimulatedProvider;
use serde_json::{json, Value};

use crate::helpers::{connect, next_json, spawn_app_with, spawn_app_with_provider, Resp, TestApp, ADMIN_EMAIL};

/// The status an upgrade to a notification socket is answered with: 101 when it opens.
async fn upgrade_status(app: &TestApp, token: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/ws/notifications", app.base.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// A sign-in with a wrong password from `client`, as a proxy in front of the node would pass it on.
async fn signin_from(app: &TestApp, client: &str, email: &str, password: &str) -> Resp {
    let res = app
        .client
        .post(format!("{}/api/users/signin", app.base))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    Resp { status, body: res.json().await.unwrap_or(Value::Null), headers }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_budget_and_ipv6_counts_by_its_64() {
    let app = spawn_app_with(|c| {
        c.http.auth_rate_limit_per_minute = 3;
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for _ in 0..3 {
        assert_eq!(signin_from(&app, "198.51.100.1", "nobody@example.com", "wrong-pass-1").await.status, 401);
    }
    let refused = signin_from(&app, "198.51.100.1", "nobody@example.com", "wrong-pass-1").await;
    assert_eq!((refused.status, refused.code()), (429, "rate_limited"));
    assert!(refused.headers.contains_key("retry-after"));
    // Another client behind the same proxy is not locked out by the first.
    assert_eq!(signin_from(&app, "198.51.100.2", "nobody@example.com", "wrong-pass-1").await.status, 401);
    // A client cannot pick its address: what it wrote before the proxy's entry is not believed.
    let spoofed = signin_from(&app, "203.0.113.9, 198.51.100.1", "nobody@example.com", "wrong-pass-1").await;
    assert_eq!(spoofed.status, 429, "the proxy's entry names 198.51.100.1");
    // Addresses of one /64 share a budget.
    for i in 1..=3 {
        let r = signin_from(&app, &format!("2001:db8:1:2::{i}"), "nobody@example.com", "wrong-pass-1").await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(signin_from(&app, "2001:db8:1:2::ffff", "nobody@example.com", "wrong-pass-1").await.status, 429);
    assert_eq!(signin_from(&app, "2001:db8:1:3::1", "nobody@example.com", "wrong-pass-1").await.status, 401);
}

#[tokio::test]
async fn without_trusted_proxies_forwarded_addresses_are_ignored_and_refresh_has_its_own_budget() {
    let app = spawn_app_with(|c| c.http.auth_rate_limit_per_minute = 3).await;
    let user = app.signup("refresher@example.com").await;
    for i in 0..2 {
        let r = signin_from(&app, &format!("198.51.100.{i}"), "refresher@example.com", "wrong-pass-1").await;
        assert_eq!(r.status, 401);
    }
    // Sign-up and two sign-ins from one socket address, whatever the header says: the budget is spent.
    assert_eq!(signin_from(&app, "198.51.100.9", "refresher@example.com", "wrong-pass-1").await.status, 429);
    // Refreshing is not: spent sign-in attempts cannot end sessions.
    let refreshed = app.post("/api/users/refresh", None, json!({"refreshToken": user.refresh})).await;
    assert_eq!(refreshed.status, 200, "{:?}", refreshed.body);
}

#[tokio::test]
async fn sign_in_attempts_on_one_account_are_limited_from_every_address() {
    let app = spawn_app_with(|c| {
        c.auth.signin_attempts_per_account_per_minute = 3;
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    app.signup("target@example.com").await;
    for i in 0..3 {
        let r = signin_from(&app, &format!("198.51.100.{i}"), "target@example.com", "wrong-pass-1").await;
        assert_eq!(r.status, 401);
    }
    // A fourth address, even with the right password: the account's attempts are spent for now.
    let r = signin_from(&app, "198.51.100.77", "TARGET@example.com", "pass-word-1").await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    // Other accounts are not affected.
    let r = signin_from(&app, "198.51.100.77", ADMIN_EMAIL, crate::helpers::ADMIN_PASSWORD).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn notification_sockets_are_capped_per_user_and_per_address() {
    let app = spawn_app_with(|c| {
        c.notifications.max_sockets_per_user = 2;
        c.notifications.max_sockets_per_client = 3;
    })
    .await;
    let user = app.signup("sockets@example.com").await;
    let mut open = vec![connect(&app, Some(&user.token), "").await, connect(&app, Some(&user.token), "").await];
    for ws in &mut open {
        assert_eq!(next_json(ws, Duration::from_secs(5)).await.unwrap()["type"], "ready");
    }
    // A third by header: refused before the upgrade.
    assert_eq!(upgrade_status(&app, &user.token).await, 429);
    // A third authenticated by its first message: closed with 4429.
    let mut late = connect(&app, None, "").await;
    use futures_util::SinkExt;
    let auth = json!({"type": "auth", "token": user.token}).to_string();
    late.send(tokio_tungstenite::tungstenite::Message::Text(auth.into())).await.unwrap();
    let closed = next_json(&mut late, Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed, json!({"type": "closed", "code": 4429}));
    drop(late);

    // Another user from the same address: the third socket of the address is fine, a fourth is not.
    let other = app.signup("sockets2@example.com").await;
    let mut third = connect(&app, Some(&other.token), "").await;
    assert_eq!(next_json(&mut third, Duration::from_secs(5)).await.unwrap()["type"], "ready");
    let start = tokio::time::Instant::now();
    loop {
        // The refused late socket may take a moment to let go of its place.
        let status = upgrade_status(&app, &other.token).await;
        if status == 429 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "a fourth socket from one address: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A socket asks for replays at most once a second.
    use tokio_tungstenite::tungstenite::Message;
    let resume = json!({"type": "resume", "after": 0}).to_string();
    open[0].send(Message::Text(resume.clone().into())).await.unwrap();
    open[0].send(Message::Text(resume.into())).await.unwrap();
    let answer = next_json(&mut open[0], Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer["type"], "error", "{answer}");
    // Closing one frees a place for the user.
    drop(open.pop());
    let start = tokio::time::Instant::now();
    loop {
        if upgrade_status(&app, &user.token).await == 101 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "the closed socket kept its place");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An admin, a product with plenty of stock, and a user with it in their cart.
async fn shopper(app: &TestApp, email: &str) -> (String, String) {
    let admin = app.admin().await;
    let product = app.create_product(&admin, "Limited", 500, 1000).await["id"].as_str().unwrap().to_string();
    let user = app.signup(email).await;
    let r = app.post("/api/cart/items", Some(&user.token), json!({"productId": product, "quantity": 1})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (user.token, product)
}

#[tokio::test]
async fn checkouts_and_coupon_codes_are_limited_per_user() {
    let app = spawn_app_with(|c| {
        c.checkout.checkouts_per_user_per_minute = 3;
        c.checkout.coupon_attempts_per_user_per_minute = 2;
    })
    .await;
    let (token, _) = shopper(&app, "hasty@example.com").await;
    let declined = json!({"paymentMethod": "pm_card_chargeDeclined"});
    let first = app.checkout(&token, "k1", declined.clone()).await;
    assert_eq!(first.status, 202);
    // The same key again is the same checkout, and costs nothing.
    for _ in 0..3 {
        assert_eq!(app.checkout(&token, "k1", declined.clone()).await.body["id"], first.body["id"]);
    }
    // An unknown code and a code that exists but does not apply get the same answer.
    let admin = app.admin().await;
    let coupon = json!({"code": "BIGSPEND", "discount": {"kind": "percent", "percent": 10}, "minOrder": 1_000_000, "minOrderCurrency": "USD"});
    assert_eq!(app.post("/api/admin/coupons", Some(&admin), coupon).await.status, 201);
    let mut answers = Vec::new();
    for (key, code) in [("k2", "NOSUCHCODE"), ("k3", "BIGSPEND")] {
        let r = app.checkout(&token, key, json!({"paymentMethod": "pm_card_visa", "couponCode": code})).await;
        answers.push((r.status, r.code().to_string(), r.body["error"]["message"].clone()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!((answers[0].0, answers[0].1.as_str()), (422, "coupon_not_applicable"));
    // A third code in the minute: refused before it is looked up.
    let r = app.checkout(&token, "k4", json!({"paymentMethod": "pm_card_visa", "couponCode": "ANOTHER"})).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    // Checkouts: three new keys were taken (k1, k2, k3); the fourth is refused with a time to wait.
    let r = app.checkout(&token, "k5", declined.clone()).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another user is not affected.
    let (other, _) = shopper(&app, "patient@example.com").await;
    assert_eq!(app.checkout(&other, "k1", declined).await.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_has_a_bounded_number_of_orders_in_progress() {
    let provider = Arc::new(SimulatedProvider::new(Duration::from_millis(5)));
    provider.hold();
    let app = spawn_app_with_provider(Arc::new(tempfile::tempdir().unwrap()), provider.clone(), |c| {
        c.checkout.max_pending_orders_per_user = 2;
        c.payments.timeout_ms = 60_000;
    })
    .await;
    let (token, product) = shopper(&app, "hoarder@example.com").await;
    let mut placed = Vec::new();
    for key in ["p1", "p2"] {
        let r = app.checkout(&token, key, json!({"paymentMethod": "pm_card_visa"})).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        placed.push(r.body["id"].as_str().unwrap().to_string());
        app.post("/api/cart/items", Some(&token), json!({"productId": product, "quantity": 1})).await;
    }
    let r = app.checkout(&token, "p3", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!((r.status, r.code()), (429, "too_many_pending_orders"), "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    // Once they are paid, the user may check out again.
    provider.release();
    for id in &placed {
        app.wait_status(&token, id, "paid").await;
    }
    let r = app.checkout(&token, "p3", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_live_entities_are_all_busy_refuses_new_checkouts_instead_of_growing() {
    let provider = Arc::new(SimulatedProvider::new(Duration::from_millis(5)));
    provider.hold();
    let app = spawn_app_with_provider(Arc::new(tempfile::tempdir().unwrap()), provider.clone(), |c| {
        c.actors.max_live_entities = 3;
        c.payments.timeout_ms = 60_000;
    })
    .await;
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..6 {
        let (token, _) = shopper(&app, &format!("crowd{i}@example.com")).await;
        let r = app.checkout(&token, "k", json!({"paymentMethod": "pm_card_visa"})).await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 202, "{:?}", r.body);
        held.push((token, r.body["id"].as_str().unwrap().to_string()));
    }
    let refused = refused.expect("with every live entity busy, a checkout is refused");
    assert_eq!(refused.code(), "service_unavailable");
    assert!(!held.is_empty());
    // The held sagas still finish, and then there is room again.
    provider.release();
    for (token, id) in &held {
        app.wait_status(token, id, "paid").await;
    }
    let (token, _) = shopper(&app, "after@example.com").await;
    let start = tokio::time::Instant::now();
    loop {
        let r = app.checkout(&token, "k", json!({"paymentMethod": "pm_card_visa"})).await;
        if r.status == 202 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still refused once the sagas finished: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
