//! Concurrent checkouts while order, product and payment actors are killed and made to panic inside their handlers
//! at every saga step. Afterwards: every acknowledged order settles, none is lost or duplicated, each payment is
//! captured at most once and refunded when its order failed, stock is conserved exactly, coupon uses match.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commercex::domain::order::OrderStatus;
use serde_json::json;

use crate::helpers::{spawn_app_with, TestApp};

/// Fault points: panic right before or right after committing each saga step's event.
const FAULT_POINTS: &[&str] = &[
    "before_commit:order.lines_reserved",
    "after_commit:order.lines_reserved",
    "before_commit:product.stock_reserved",
    "after_commit:product.stock_reserved",
    "after_commit:coupon.redeemed",
    "before_commit:payment.requested",
    "after_commit:payment.captured",
    "before_commit:payment.captured",
    "after_commit:order.payment_captured",
    "before_commit:product.reservation_committed",
    "after_commit:product.reservation_committed",
    "after_commit:order.lines_committed",
    "after_commit:cart.checked_out",
    "after_commit:order.status_changed",
    "after_commit:product.reservation_released",
    "after_commit:product.order_closed",
    "after_commit:coupon.returned",
    "after_commit:payment.refunded",
    "before_commit:order.refund_settled",
];

const METHODS: &[&str] =
    &["pm_card_visa", "pm_card_visa", "pm_card_flaky", "pm_card_chargeDeclined", "pm_card_mastercard"];

/// Retries a request while the service answers 503 (the client-side half of "retryable").
macro_rules! retry_503 {
    ($request:expr) => {{
        let mut tries = 0;
        loop {
            let r = $request;
            if r.status != 503 {
                break r;
            }
            tries += 1;
            assert!(tries < 50, "still unavailable after 50 tries: {:?}", r.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_loses_nothing_when_actors_die_at_every_step() {
    let app = Arc::new(spawn_app_with(|c| c.actors.max_restarts = 10_000).await);
    let admin = app.admin().await;
    let mut initial = HashMap::new();
    let mut products = Vec::new();
    for (i, stock) in [5, 4, 6].into_iter().enumerate() {
        let id = app.create_product(&admin, &format!("Chaos {i}"), 1000 + 100 * i as i64, stock).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        initial.insert(id.clone(), stock);
        products.push(id);
    }
    let coupon = json!({"code": "CHAOS", "discount": {"kind": "percent", "percent": 10}, "usageLimit": 4});
    assert_eq!(app.post("/api/admin/coupons", Some(&admin), coupon).await.status, 201);

    // 12 shoppers; together they want more than the stock, so some orders must be rejected.
    let mut shoppers = Vec::new();
    for i in 0..12 {
        let u = app.signup(&format!("chaos{i}@example.com")).await;
        let first = &products[i % 3];
        app.post("/api/cart/items", Some(&u.token), json!({"productId": first, "quantity": 1 + (i % 2)})).await;
        if i % 3 == 0 {
            app.post("/api/cart/items", Some(&u.token), json!({"productId": products[(i + 1) % 3], "quantity": 1}))
                .await;
        }
        shoppers.push((i, u));
    }

    for point in FAULT_POINTS {
        app.state.ctx.faults.arm(point, 2);
    }
    let known_orders: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let chaos = {
        let (state, known, stop, kills, products) =
            (app.state.clone(), known_orders.clone(), stop.clone(), kills.clone(), products.clone());
        tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(7)).await;
                round += 1;
                let orders = known.lock().unwrap().clone();
                let hit = match round % 5 {
                    0 => state.catalog.router().kill(&products[round % products.len()]),
                    1 => state.catalog.router().panic(&products[round % products.len()]),
                    _ if orders.is_empty() => false,
                    2 => state.orders.router().kill(&orders[round % orders.len()]),
                    3 => state.orders.router().panic(&orders[round % orders.len()]),
                    _ => state.payments.kill(&format!("pay-{}", orders[round % orders.len()])),
                };
                if hit {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in shoppers {
        let (app, known) = (app.clone(), known_orders.clone());
        tasks.spawn(async move {
            let mut body = json!({"paymentMethod": METHODS[i % METHODS.len()]});
            if i % 2 == 0 {
                body["couponCode"] = json!("CHAOS");
            }
            let placed = retry_503!(app.checkout(&user.token, &format!("key-{i}"), body.clone()).await);
            if placed.status != 202 {
                // Refused up front (the cart's stock is visibly gone, or the coupon is used up): no order exists.
                let code = placed.body["error"]["code"].as_str().unwrap_or_default().to_string();
                assert!(["insufficient_stock", "coupon_not_applicable"].contains(&code.as_str()), "{:?}", placed.body);
                return None;
            }
            let id = placed.body["id"].as_str().unwrap().to_string();
            known.lock().unwrap().push(id.clone());
            // Retrying an acknowledged checkout with the same key never makes a second order.
            let again = retry_503!(app.checkout(&user.token, &format!("key-{i}"), body.clone()).await);
            assert_eq!(again.body["id"].as_str(), Some(id.as_str()));
            if i % 4 == 1 {
                tokio::time::sleep(Duration::from_millis(5 * i as u64)).await;
                let r = retry_503!(app.post(&format!("/api/orders/{id}/cancel"), Some(&user.token), json!({})).await);
                assert!([202, 409].contains(&r.status), "cancel: {:?}", r.body);
            }
            Some((user, id))
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(r) = tasks.join_next().await {
        acknowledged.extend(r.unwrap());
    }
    // Let the chaos run on into the sagas for a moment, then stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    chaos.await.unwrap();
    assert!(!acknowledged.is_empty());
    assert!(kills.load(Ordering::Relaxed) >= 10, "the chaos task hit running actors");
    let fired = app.state.ctx.faults.fired();
    assert!(fired.len() >= 8, "fault points fired: {fired:?}");

    let orders = settle_all(&app, &acknowledged).await;
    let ids: HashSet<&String> = acknowledged.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), acknowledged.len(), "no two acknowledged checkouts share an order");
    let listed = app.get("/api/admin/orders?limit=100", Some(&admin)).await.body;
    assert_eq!(listed["total"].as_u64(), Some(acknowledged.len() as u64), "no order lost, none invented");

    let mut sold: HashMap<String, i64> = HashMap::new();
    let mut coupon_uses = 0;
    for order in &orders {
        let o = order.order.as_ref().unwrap();
        let captures = app.provider.captures_for_order(&o.id);
        assert!(captures.len() <= 1, "order {} captured {} times", o.id, captures.len());
        match o.status {
            OrderStatus::Paid => {
                assert_eq!(captures.len(), 1, "paid order {} has its capture", o.id);
                assert!(!captures[0].refunded);
                assert_eq!(captures[0].amount, o.total);
                for l in &o.lines {
                    *sold.entry(l.product_id.clone()).or_default() += i64::from(l.quantity);
                }
                if o.coupon_code.is_some() {
                    coupon_uses += 1;
                }
            }
            OrderStatus::Rejected | OrderStatus::PaymentFailed | OrderStatus::Cancelled | OrderStatus::Refunded => {
                assert!(captures.iter().all(|c| c.refunded), "failed order {} keeps money: {captures:?}", o.id);
                if o.status == OrderStatus::Cancelled {
                    assert!(captures.is_empty(), "a cancelled order that was charged ends refunded");
                }
            }
            other => panic!("order {} stuck in {other:?}", o.id),
        }
    }
    for (id, start) in &initial {
        let state = app.state.catalog.router().get(id).await.unwrap();
        let p = state.product.as_ref().unwrap();
        assert_eq!(p.stock_reserved, 0, "product {id}: reservations left behind");
        assert_eq!(state.sold(), sold.get(id).copied().unwrap_or(0), "product {id}: sold units match paid orders");
        assert_eq!(p.stock_on_hand + state.sold(), *start, "product {id}: stock is conserved");
    }
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for o in &orders {
        *by_status.entry(o.order.as_ref().unwrap().status.as_str()).or_default() += 1;
    }
    eprintln!(
        "saga chaos: {} kills, {} fault points fired, orders by status {by_status:?}",
        kills.load(Ordering::Relaxed),
        fired.len()
    );
    let coupon = app.get("/api/admin/coupons/CHAOS", Some(&admin)).await.body;
    assert_eq!(coupon["uses"], coupon_uses, "coupon uses are the paid orders that used it");
}

/// Waits until every order has no saga step left, then returns the final states.
async fn settle_all(
    app: &TestApp,
    acknowledged: &[(crate::helpers::User, String)],
) -> Vec<commercex::domain::order::OrderState> {
    let mut out = Vec::new();
    for (_, id) in acknowledged {
        let mut settled = None;
        for _ in 0..20 {
            match app.state.orders.router().settled(id, Duration::from_secs(5)).await {
                Ok(state) if state.order.as_ref().is_some_and(|o| o.next_step().is_none()) => {
                    settled = Some(state);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        out.push(settled.unwrap_or_else(|| panic!("order {id} never settled")));
    }
    out
}
