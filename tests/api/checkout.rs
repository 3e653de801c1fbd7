//! Checkout, the order saga, payments, coupons, notifications and the WebSocket push, over real HTTP.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{connect, next_json, spawn_app, spawn_app_with_provider, Socket, TestApp};

/// Collects this socket's order statuses for `order_id` until `last` arrives.
async fn statuses_until(ws: &mut Socket, order_id: &str, last: &str) -> (Vec<String>, Vec<Value>) {
    let (mut statuses, mut all) = (Vec::new(), Vec::new());
    while statuses.last().map(String::as_str) != Some(last) {
        let msg = next_json(ws, Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no push after {statuses:?}"));
        let n = msg["notification"].clone();
        if n["data"]["orderId"] == order_id && n["kind"].as_str().is_some_and(|k| k.starts_with("order.")) {
            statuses.push(n["data"]["status"].as_str().unwrap().to_string());
        }
        all.push(n);
    }
    (statuses, all)
}

/// The recorded emails, once `done` holds for them: the notifier sends them after the status change is visible.
async fn emails_until(app: &TestApp, admin: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = tokio::time::Instant::now();
    loop {
        let emails = app.get("/api/admin/emails?limit=100", Some(admin)).await.body["items"].as_array().cloned();
        let emails = emails.unwrap_or_default();
        if done(&emails) {
            return emails;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "emails never got there: {emails:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stock(app: &TestApp, id: &str) -> (i64, i64) {
    let p = app.get(&format!("/api/products/{id}"), None).await.body;
    (p["stockOnHand"].as_i64().unwrap(), p["stockReserved"].as_i64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_pay_cancel_and_refund_end_to_end() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let mug = app.create_product(&admin, "Mug", 1250, 5).await["id"].as_str().unwrap().to_string();
    let pen = app.create_product(&admin, "Pen", 199, 10).await["id"].as_str().unwrap().to_string();
    let alice = app.signup("alice@example.com").await;
    let bob = app.signup("bob@example.com").await;

    let mut alice_ws = connect(&app, Some(&alice.token), "").await;
    assert_eq!(next_json(&mut alice_ws, Duration::from_secs(5)).await.unwrap()["type"], "ready");
    // Bob authenticates with his first message instead of a header.
    let mut bob_ws = connect(&app, None, "").await;
    bob_ws.send(Message::Text(json!({"type": "auth", "token": bob.token}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut bob_ws, Duration::from_secs(5)).await.unwrap()["type"], "ready");

    let t = Some(alice.token.as_str());
    app.post("/api/cart/items", t, json!({"productId": mug, "quantity": 2})).await;
    app.post("/api/cart/items", t, json!({"productId": pen, "quantity": 3})).await;
    let placed = app.checkout(&alice.token, "alice-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    assert_eq!(placed.body["status"], "pending");
    assert_eq!(placed.body["total"], 2 * 1250 + 3 * 199, "totals are computed by the server");
    let order_id = placed.body["id"].as_str().unwrap().to_string();
    assert_eq!(placed.headers["location"], format!("/api/orders/{order_id}").as_str());

    let (statuses, pushed) = statuses_until(&mut alice_ws, &order_id, "paid").await;
    assert_eq!(statuses, ["pending", "stock_reserved", "paid"]);
    let order = app.wait_status(&alice.token, &order_id, "paid").await;
    assert_eq!(order["history"].as_array().unwrap().len(), 3);
    eventually_cart_empty(&app, &alice.token).await;
    assert_eq!(stock(&app, &mug).await, (3, 0));
    let payments = app.get(&format!("/api/payments?orderId={order_id}"), t).await;
    assert_eq!(payments.body["items"][0]["status"], "captured");
    assert_eq!(payments.body["items"][0]["amount"], 2 * 1250 + 3 * 199);

    let cancelled = app.post(&format!("/api/orders/{order_id}/cancel"), t, json!({})).await;
    assert_eq!(cancelled.status, 202, "{:?}", cancelled.body);
    let (statuses, mut more) = statuses_until(&mut alice_ws, &order_id, "refunded").await;
    assert_eq!(statuses, ["cancelled", "refunded"]);
    // Payment and order notifications come from different entities, whose events a Kafka bus may deliver in either
    // order: wait a little for the payment's.
    let kind = |n: &Value| n["kind"].as_str().unwrap_or_default().to_string();
    let seen = |all: &[Value], k: &str| all.iter().any(|n| kind(n) == k);
    while !(seen(&pushed, "payment.captured") || seen(&more, "payment.captured")) || !seen(&more, "payment.refunded") {
        match next_json(&mut alice_ws, Duration::from_secs(5)).await {
            Some(msg) if msg["type"] == "notification" => more.push(msg["notification"].clone()),
            Some(_) => {}
            None => break,
        }
    }
    let kinds: Vec<String> = pushed.iter().chain(&more).map(kind).collect();
    assert!(
        kinds.iter().any(|k| k == "payment.captured") && kinds.iter().any(|k| k == "payment.refunded"),
        "{kinds:?}"
    );

    let order = app.wait_status(&alice.token, &order_id, "refunded").await;
    app.state.orders.router().settled(&order_id, Duration::from_secs(10)).await.unwrap();
    let history: Vec<&str> =
        order["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(history, ["pending", "stock_reserved", "paid", "cancelled", "refunded"]);
    assert_eq!(stock(&app, &mug).await, (5, 0), "a refunded order's stock is back on sale");
    let captures = app.provider.captures_for_order(&order_id);
    assert_eq!(captures.len(), 1);
    assert!(captures[0].refunded);
    assert_eq!(app.get(&format!("/api/payments?orderId={order_id}"), t).await.body["items"][0]["status"], "refunded");

    let sent = |emails: &[Value], template: &str| {
        emails.iter().any(|e| e["to"] == "alice@example.com" && e["template"] == template)
    };
    emails_until(&app, &admin, |e| sent(e, "order_confirmation") && sent(e, "order_refunded")).await;

    let listed = app.get("/api/notifications", t).await.body;
    let unread = listed["unreadCount"].as_u64().unwrap();
    assert!(unread >= 5);
    let first = listed["items"][0]["id"].as_u64().unwrap();
    assert_eq!(app.post(&format!("/api/notifications/{first}/read"), t, json!({})).await.status, 204);
    assert_eq!(app.get("/api/notifications", t).await.body["unreadCount"].as_u64(), Some(unread - 1));
    assert_eq!(app.post(&format!("/api/notifications/{first}/read"), Some(&bob.token), json!({})).await.status, 404);

    // Bob saw nothing of Alice's order, and cannot read it.
    while let Some(msg) =
        next_json(&mut bob_ws, Duration::from_millis(300)).await.filter(|m| m["type"] == "notification")
    {
        assert!(msg["notification"]["userId"].is_null() || msg["notification"]["userId"] == bob.id.as_str(), "{msg}");
    }
    assert_eq!(app.get(&format!("/api/orders/{order_id}"), Some(&bob.token)).await.status, 404);
    assert_eq!(app.get(&format!("/api/payments?orderId={order_id}"), Some(&bob.token)).await.status, 404);
    assert_eq!(app.get("/api/orders", Some(&bob.token)).await.body["total"], 0);
}

async fn eventually_cart_empty(app: &TestApp, token: &str) {
    for _ in 0..500 {
        if app.get("/api/cart", Some(token)).await.body["itemCount"] == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cart was not cleared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_is_idempotent_and_validates_input() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let user = app.signup("idem@example.com").await;
    let p = app.create_product(&admin, "Lamp", 3000, 10).await["id"].as_str().unwrap().to_string();
    let t = Some(user.token.as_str());

    let empty = app.checkout(&user.token, "k0", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!((empty.status, empty.body["error"]["code"].as_str()), (422, Some("cart_empty")));
    app.post("/api/cart/items", t, json!({"productId": p, "quantity": 1})).await;
    let no_key = app.post("/api/cart/checkout", t, json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!((no_key.status, no_key.code()), (400, "idempotency_key_required"));
    let bad_method = app.checkout(&user.token, "k1", json!({"paymentMethod": "visa; drop table"})).await;
    assert_eq!(bad_method.body["error"]["code"], "invalid_payment_method");
    let client_total = app.checkout(&user.token, "k1", json!({"paymentMethod": "pm_card_visa", "total": 1})).await;
    assert_eq!(client_total.status, 400, "client totals are refused outright");

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (app, token) = (app.clone(), user.token.clone());
        tasks.spawn(async move { app.checkout(&token, "same-key", json!({"paymentMethod": "pm_card_visa"})).await });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.insert(r.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "one key, one order");
    let id = ids.into_iter().next().unwrap();
    app.wait_status(&user.token, &id, "paid").await;
    app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
    let again = app.checkout(&user.token, "same-key", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!((again.status, again.body["id"].as_str()), (202, Some(id.as_str())));
    assert_eq!(app.get("/api/orders", t).await.body["total"], 1);
    assert_eq!(app.provider.captures_for_order(&id).len(), 1);
    assert_eq!(stock(&app, &p).await, (9, 0));

    // The same key with a different request is refused, not answered with the first order (Stripe's rule).
    let other_method = app.checkout(&user.token, "same-key", json!({"paymentMethod": "pm_card_mastercard"})).await;
    assert_eq!((other_method.status, other_method.code()), (422, "idempotency_key_reused"), "{:?}", other_method.body);
    app.post("/api/cart/items", t, json!({"productId": p, "quantity": 2})).await;
    let other_cart = app.checkout(&user.token, "same-key", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!((other_cart.status, other_cart.code()), (422, "idempotency_key_reused"), "{:?}", other_cart.body);
    assert_eq!(app.get("/api/orders", t).await.body["total"], 1, "nothing was placed");
    let fresh = app.checkout(&user.token, "new-key", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!((fresh.status, fresh.body["total"].as_i64()), (202, Some(6000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_outcomes_drive_the_order() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Chair", 5000, 10).await["id"].as_str().unwrap().to_string();
    let cases = [
        ("pm_card_chargeDeclined", "payment_failed", "card_declined"),
        ("pm_card_chargeDeclinedInsufficientFunds", "payment_failed", "insufficient_funds"),
        ("pm_card_timeout", "payment_failed", "timeout"),
        ("pm_card_flaky", "paid", ""),
    ];
    for (i, (method, status, reason)) in cases.into_iter().enumerate() {
        let user = app.signup(&format!("pay{i}@example.com")).await;
        app.post("/api/cart/items", Some(&user.token), json!({"productId": p, "quantity": 1})).await;
        let placed = app.checkout(&user.token, "k", json!({"paymentMethod": method})).await;
        let id = placed.body["id"].as_str().unwrap().to_string();
        let order =
            app.wait_order(&user.token, &id, |o| o["status"] == status && o["updatedAt"] != o["createdAt"]).await;
        let payment = app.get(&format!("/api/payments?orderId={id}"), Some(&user.token)).await.body["items"][0].clone();
        if status == "paid" {
            assert_eq!(payment["attempts"], 2, "two transient failures, then captured");
            // Paid comes before the stock commit: wait for the saga to finish before counting stock.
            app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
        } else {
            let last = order["history"].as_array().unwrap().last().unwrap().clone();
            assert!(last["reason"].as_str().unwrap().contains(reason), "{method}: {last}");
            assert_eq!(payment["status"], "failed");
            assert!(app.provider.captures_for_order(&id).is_empty());
            // Nothing stays reserved, and the cart keeps its items for another try.
            let settled = app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
            assert!(settled.order.unwrap().progress.released);
            assert_eq!(app.get("/api/cart", Some(&user.token)).await.body["itemCount"], 1);
        }
    }
    assert_eq!(stock(&app, &p).await, (9, 0));
    let failed = |emails: &[Value]| emails.iter().filter(|e| e["template"] == "payment_failed").count();
    let emails = emails_until(&app, &admin, |e| failed(e) >= 3).await;
    assert_eq!(failed(&emails), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_whose_answer_was_lost_is_looked_up_and_the_order_is_paid() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Lamp", 4200, 3).await["id"].as_str().unwrap().to_string();
    let user = app.signup("lost@example.com").await;
    let t = Some(user.token.as_str());
    app.post("/api/cart/items", t, json!({"productId": p, "quantity": 1})).await;
    let placed = app.checkout(&user.token, "k", json!({"paymentMethod": "pm_card_lostResponse"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    let id = placed.body["id"].as_str().unwrap().to_string();

    let done = ["paid", "payment_failed", "cancelled", "refunded"];
    let order = app.wait_order(&user.token, &id, |o| done.contains(&o["status"].as_str().unwrap())).await;
    assert_eq!(order["status"], "paid", "the provider charged the card: {order}");
    let settled = app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(settled.order.unwrap().status.as_str(), "paid");

    // The provider's books and the order agree: one capture, kept, and it is the payment's.
    let captures = app.provider.captures_for_order(&id);
    assert_eq!(captures.len(), 1);
    assert!(!captures[0].refunded);
    assert_eq!(captures[0].amount, 4200);
    let payment = app.get(&format!("/api/payments?orderId={id}"), t).await.body["items"][0].clone();
    assert_eq!(payment["status"], "captured");
    assert_eq!(payment["chargeId"], captures[0].charge_id.as_str());
    assert_eq!(payment["attempts"], 3, "every attempt timed out");
    assert_eq!(stock(&app, &p).await, (2, 0));
    eventually_cart_empty(&app, &user.token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_lands_after_the_payment_failed_is_refunded() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Kettle", 3100, 3).await["id"].as_str().unwrap().to_string();
    let user = app.signup("late@example.com").await;
    let t = Some(user.token.as_str());
    app.post("/api/cart/items", t, json!({"productId": p, "quantity": 1})).await;
    let placed = app.checkout(&user.token, "k", json!({"paymentMethod": "pm_card_lateCapture"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    let id = placed.body["id"].as_str().unwrap().to_string();

    // Every attempt times out and the lookup finds no charge: the order fails.
    let done = ["paid", "payment_failed", "cancelled", "refunded"];
    let order = app.wait_order(&user.token, &id, |o| done.contains(&o["status"].as_str().unwrap())).await;
    assert_eq!(order["status"], "payment_failed", "{order}");
    // Right after that answer the provider processed the request it still held: the card is charged after all.
    // The payment's recheck finds the capture and refunds it.
    let payment_of = |body: Value| body["items"][0].clone();
    let start = tokio::time::Instant::now();
    let payment = loop {
        let payment = payment_of(app.get(&format!("/api/payments?orderId={id}"), t).await.body);
        if payment["status"] == "refunded" {
            break payment;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the late capture was never refunded: {payment}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let captures = app.provider.captures_for_order(&id);
    assert_eq!(captures.len(), 1, "{captures:?}");
    assert!(captures[0].refunded, "the money went back: {captures:?}");
    assert_eq!(captures[0].amount, 3100);
    assert_eq!(payment["chargeId"], captures[0].charge_id.as_str());
    assert!(payment["refundId"].as_str().is_some_and(|r| r.starts_with("re_")), "{payment}");
    assert!(payment["failure"].as_str().unwrap().contains("timeout"), "{payment}");

    // The order stays failed: nothing was sold or is held, and the cart keeps its item for another try.
    let settled = app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(settled.order.unwrap().status.as_str(), "payment_failed");
    assert_eq!(app.get(&format!("/api/orders/{id}"), t).await.body["status"], "payment_failed");
    assert_eq!(stock(&app, &p).await, (3, 0));
    assert_eq!(app.get("/api/cart", t).await.body["itemCount"], 1);
    let refunded = |n: &Value| n["kind"] == "payment.refunded" && n["data"]["orderId"] == id.as_str();
    let start = tokio::time::Instant::now();
    while !app.get("/api/notifications?limit=100", t).await.body["items"].as_array().unwrap().iter().any(refunded) {
        assert!(start.elapsed() < Duration::from_secs(20), "the customer was never told of the refund");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkouts_never_oversell() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Limited", 999, 3).await["id"].as_str().unwrap().to_string();
    let mut users = Vec::new();
    for i in 0..8 {
        let u = app.signup(&format!("rush{i}@example.com")).await;
        let r = app.post("/api/cart/items", Some(&u.token), json!({"productId": p, "quantity": 1})).await;
        assert_eq!(r.status, 200);
        users.push(u.token);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for token in users.clone() {
        let (app, p) = (app.clone(), p.clone());
        tasks.spawn(async move {
            let r = app.checkout(&token, "rush", json!({"paymentMethod": "pm_card_visa"})).await;
            // A checkout may also be refused up front when the stock is visibly gone.
            if r.status != 202 {
                assert_eq!(r.body["error"]["code"], "insufficient_stock", "{:?} {p}", r.body);
                return None;
            }
            let id = r.body["id"].as_str().unwrap().to_string();
            app.wait_order(&token, &id, |o| ["paid", "rejected"].contains(&o["status"].as_str().unwrap())).await;
            // Stock is committed in the step after payment: wait for the saga to finish.
            let settled = app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
            Some(settled.order.unwrap().status.as_str().to_string())
        });
    }
    let mut paid = 0;
    while let Some(r) = tasks.join_next().await {
        if r.unwrap().as_deref() == Some("paid") {
            paid += 1;
        }
    }
    assert_eq!(paid, 3, "exactly the stock was sold");
    assert_eq!(stock(&app, &p).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coupons_are_applied_by_the_server_and_counted_once_per_paid_order() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Desk", 20000, 10).await["id"].as_str().unwrap().to_string();
    let c = app
        .post("/api/admin/coupons", Some(&admin), json!({"code": "save10", "discount": {"kind": "percent", "percent": 10}, "usageLimit": 1, "minOrder": 10000, "minOrderCurrency": "USD"}))
        .await;
    assert_eq!((c.status, c.body["code"].as_str()), (201, Some("SAVE10")));
    let dup = app
        .post(
            "/api/admin/coupons",
            Some(&admin),
            json!({"code": "SAVE10", "discount": {"kind": "percent", "percent": 5}}),
        )
        .await;
    assert_eq!(dup.code(), "coupon_exists");
    let bad = app
        .post("/api/admin/coupons", Some(&admin), json!({"code": "X1", "discount": {"kind": "percent", "percent": 5}}))
        .await;
    assert_eq!(bad.status, 422);

    let mut tokens = Vec::new();
    for i in 0..2 {
        let u = app.signup(&format!("coupon{i}@example.com")).await;
        app.post("/api/cart/items", Some(&u.token), json!({"productId": p, "quantity": 1})).await;
        tokens.push(u.token);
    }
    let unknown = app.checkout(&tokens[0], "x", json!({"paymentMethod": "pm_card_visa", "couponCode": "NOPE"})).await;
    assert_eq!((unknown.status, unknown.code()), (422, "coupon_not_applicable"));

    // Both checkouts see the coupon as available; only one can redeem its single use.
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens.clone() {
        let app = app.clone();
        tasks.spawn(async move {
            let r = app.checkout(&token, "c", json!({"paymentMethod": "pm_card_visa", "couponCode": "save10"})).await;
            assert_eq!(r.body["discount"], 2000);
            let id = r.body["id"].as_str().unwrap().to_string();
            let o =
                app.wait_order(&token, &id, |o| ["paid", "rejected"].contains(&o["status"].as_str().unwrap())).await;
            (token, o)
        });
    }
    let mut paid = None;
    while let Some(r) = tasks.join_next().await {
        let (token, o) = r.unwrap();
        if o["status"] == "paid" {
            assert_eq!(o["total"], 18000);
            paid = Some((token, o["id"].as_str().unwrap().to_string()));
        } else {
            assert!(o["history"].as_array().unwrap().last().unwrap()["reason"]
                .as_str()
                .unwrap()
                .contains("usage limit"));
        }
    }
    let (token, id) = paid.expect("one order got the coupon");
    assert_eq!(app.get("/api/admin/coupons/SAVE10", Some(&admin)).await.body["uses"], 1);
    app.post(&format!("/api/orders/{id}/cancel"), Some(&token), json!({})).await;
    app.wait_status(&token, &id, "refunded").await;
    app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        app.get("/api/admin/coupons/SAVE10", Some(&admin)).await.body["uses"],
        0,
        "a refunded order gives its use back"
    );
    assert_eq!(stock(&app, &p).await, (10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_ship_and_deliver_paid_orders() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("ship@example.com").await;
    let p = app.create_product(&admin, "Rug", 9000, 2).await["id"].as_str().unwrap().to_string();
    app.post("/api/cart/items", Some(&user.token), json!({"productId": p, "quantity": 1})).await;
    let id = app.checkout(&user.token, "k", json!({"paymentMethod": "pm_card_visa"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_status(&user.token, &id, "paid").await;

    assert_eq!(app.post(&format!("/api/admin/orders/{id}/ship"), Some(&user.token), json!({})).await.status, 403);
    let early = app.post(&format!("/api/admin/orders/{id}/deliver"), Some(&admin), json!({})).await;
    assert_eq!((early.status, early.code()), (409, "invalid_transition"));
    // Shipping waits for the stock to be committed, which follows payment.
    app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        app.post(&format!("/api/admin/orders/{id}/ship"), Some(&admin), json!({})).await.body["status"],
        "shipped"
    );
    let late_cancel = app.post(&format!("/api/orders/{id}/cancel"), Some(&user.token), json!({})).await;
    assert_eq!((late_cancel.status, late_cancel.code()), (409, "invalid_transition"));
    // Shipped: the order tells the product it is done, and the product forgets it once its reservation expiry passes.
    let order = app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap().order.unwrap();
    assert!(order.progress.stock_closed);
    let product = app.state.catalog.router().get(&p).await.unwrap();
    assert_eq!(product.settled.get(&id), Some(&commercex::domain::product::Settlement::Closed));
    assert!(product.forgetting.contains(&(order.reservation_expires_at, id.clone())));
    assert_eq!(product.sold(), 1);
    assert_eq!(
        app.post(&format!("/api/admin/orders/{id}/deliver"), Some(&admin), json!({})).await.body["status"],
        "delivered"
    );

    let listed = app.get("/api/admin/orders?status=delivered", Some(&admin)).await.body;
    assert_eq!(listed["total"], 1);
    assert_eq!(app.get(&format!("/api/admin/orders?userId={}", user.id), Some(&admin)).await.body["total"], 1);
    assert_eq!(app.get("/api/admin/orders?status=lost", Some(&admin)).await.status, 400);
    let payments = app.get("/api/admin/payments?status=captured", Some(&admin)).await.body;
    assert_eq!(payments["total"], 1);
    emails_until(&app, &admin, |e| e.iter().any(|e| e["template"] == "order_shipped" && e["to"] == "ship@example.com"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_requires_auth_and_replays_what_was_missed() {
    let app = spawn_app().await;
    let admin = app.admin().await;

    // No credentials and no auth message: closed with 4401.
    let mut silent = connect(&app, None, "").await;
    let closed = next_json(&mut silent, Duration::from_secs(5)).await.expect("no answer within 5 s");
    assert_eq!((closed["type"].as_str(), closed["code"].as_u64()), (Some("closed"), Some(4401)));
    // A wrong token in the auth message: closed too.
    let mut wrong = connect(&app, None, "").await;
    wrong.send(Message::Text(json!({"type": "auth", "token": "forged"}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut wrong, Duration::from_secs(5)).await.unwrap()["code"], 4401);
    // A bad header token is refused before the upgrade.
    let url = format!("{}/ws/notifications", app.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", "Bearer forged".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());

    let user = app.signup("resume@example.com").await;
    // The session cookie works as well as the header.
    let url = format!("{}/ws/notifications", app.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("cookie", format!("access_token={}", user.token).parse().unwrap());
    let (mut by_cookie, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut by_cookie, Duration::from_secs(5)).await.unwrap()["userId"], user.id.as_str());
    drop(by_cookie);

    let mut ws = connect(&app, Some(&user.token), "").await;
    next_json(&mut ws, Duration::from_secs(5)).await;
    app.create_product(&admin, "First", 100, 1).await;
    let first = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first["notification"]["kind"], "product.created", "public broadcasts reach everyone");
    let seen = first["notification"]["id"].as_u64().unwrap();
    ws.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"], "pong");
    drop(ws);

    // While disconnected, two more notifications happen; reconnecting after `seen` gets exactly those.
    app.create_product(&admin, "Second", 100, 1).await;
    app.create_product(&admin, "Third", 100, 1).await;
    let mut ws = connect(&app, Some(&user.token), &format!("?after={seen}")).await;
    assert_eq!(next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"], "ready");
    let mut titles = Vec::new();
    while let Some(msg) = next_json(&mut ws, Duration::from_secs(2)).await.filter(|m| m["type"] == "notification") {
        titles.push(msg["notification"]["data"]["title"].as_str().unwrap().to_string());
    }
    // Two products are two entities: a Kafka bus may notify them in either order.
    titles.sort();
    assert_eq!(titles, ["Second", "Third"]);
}

#[tokio::test]
async fn abandoned_reservations_expire_on_their_own() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Held", 500, 5).await["id"].as_str().unwrap().to_string();
    let products = app.state.catalog.router().clone();
    let expires_at = app.state.ctx.clock.now() + chrono::Duration::minutes(15);
    let reserve =
        commercex::domain::product::ProductCommand::Reserve { order_id: "abandoned".into(), quantity: 4, expires_at };
    products.execute(&p, reserve).await.unwrap();
    assert_eq!(app.get(&format!("/api/products/{p}"), None).await.body["stockAvailable"], 1);
    assert!(app.state.dependencies.store.active_streams().await.unwrap().contains(&format!("product:{p}")));

    // Fifteen minutes pass in an instant.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(15 * 60 + 2)).await;
    tokio::time::resume();

    for _ in 0..250 {
        if products.get(&p).await.unwrap().reservations.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = products.get(&p).await.unwrap();
    assert!(state.reservations.is_empty(), "the reservation expired");
    let product = state.product.unwrap();
    assert_eq!((product.stock_on_hand, product.stock_reserved), (5, 0));
    assert!(!app.state.dependencies.store.active_streams().await.unwrap().contains(&format!("product:{p}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_interrupted_by_a_restart_finishes_on_its_own() {
    let provider = std::sync::Arc::new(commercex::payments::SimulatedProvider::new(Duration::from_millis(400)));
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let app = spawn_app_with_provider(dir, provider.clone(), |c| c.payments.timeout_ms = 2000).await;
    let admin = app.admin().await;
    let user = app.signup("restart@example.com").await;
    let p = app.create_product(&admin, "Slowpay", 700, 4).await["id"].as_str().unwrap().to_string();
    app.post("/api/cart/items", Some(&user.token), json!({"productId": p, "quantity": 2})).await;
    let id = app.checkout(&user.token, "k", json!({"paymentMethod": "pm_card_visa"})).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Stop while the payment is with the provider.
    app.wait_status(&user.token, &id, "stock_reserved").await;
    let dir = app.stop().await;

    let app = spawn_app_with_provider(dir, provider.clone(), |c| c.payments.timeout_ms = 2000).await;
    let order = app.wait_status(&user.token, &id, "paid").await;
    assert_eq!(order["history"].as_array().unwrap().len(), 3);
    app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(provider.captures_for_order(&id).len(), 1, "charged exactly once across the restart");
    assert_eq!(stock(&app, &p).await, (2, 0));
}
