//! The number of live entity actors is bounded: requests for entities nobody ever wrote leave no actor behind, and
//! past `actors.max_live_entities` the least recently used idle entities passivate, never the ones with work in flight.

use std::sync::Arc;
use std::time::Duration;

use commercex::payments::SimulatedProvider;
use serde_json::json;

use crate::helpers::{eventually, spawn_app, spawn_app_with_provider};

fn live(app: &crate::helpers::TestApp) -> usize {
    app.state.ctx.live_limit.live()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_unknown_entities_leave_no_actor_behind() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("prober@example.com").await;
    let p = app.create_product(&admin, "Probe", 100, 5).await;
    app.post("/api/cart/items", Some(&user.token), json!({"productId": p["id"], "quantity": 1})).await;
    let baseline = live(&app);
    for i in 0..40 {
        // A fresh idempotency key and an unknown coupon: refused, and neither an order nor a coupon actor stays.
        let r = app
            .checkout(
                &user.token,
                &format!("probe-{i}"),
                json!({"paymentMethod": "pm_card_visa", "couponCode": format!("NOPE{i}")}),
            )
            .await;
        assert_eq!((r.status, r.code()), (422, "coupon_not_applicable"), "{:?}", r.body);
        let r = app.post(&format!("/api/orders/ord_{i:032}/cancel"), Some(&user.token), json!({})).await;
        assert_eq!(r.status, 404);
        let r =
            app.post(&format!("/api/products/nope-{i}/stock"), Some(&admin), json!({"delta": 1, "reason": "x"})).await;
        assert_eq!(r.status, 404);
    }
    let fresh = app.signup("empty-cart@example.com").await;
    assert_eq!(app.get("/api/cart", Some(&fresh.token)).await.status, 200);
    eventually("probes to leave no actors", Duration::from_secs(2), || live(&app) <= baseline).await;
    assert_eq!(app.state.orders.router().live_count(), 0);
    assert_eq!(app.state.coupons.live_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_idle_entities_passivate_but_work_in_flight_stays() {
    // A held provider keeps the checkout's payment, order and reservation in flight while the cap is hit, however
    // long the fillers take to create.
    let provider = Arc::new(SimulatedProvider::new(Duration::from_millis(10)));
    provider.hold();
    let app = spawn_app_with_provider(Arc::new(tempfile::tempdir().unwrap()), provider.clone(), |c| {
        c.actors.max_live_entities = 12;
        c.payments.timeout_ms = 60_000;
    })
    .await;
    let admin = app.admin().await;
    let user = app.signup("busy@example.com").await;
    let held = app.create_product(&admin, "Held", 500, 3).await;
    let held_id = held["id"].as_str().unwrap().to_string();
    app.post("/api/cart/items", Some(&user.token), json!({"productId": held_id, "quantity": 1})).await;
    let order = app.checkout(&user.token, "busy-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(order.status, 202, "{:?}", order.body);
    let order_id = order.body["id"].as_str().unwrap().to_string();
    let products = app.state.catalog.router().clone();
    app.wait_order(&user.token, &order_id, |o| o["status"] == "stock_reserved").await;

    let mut ids = Vec::new();
    for i in 0..40 {
        let p = app.create_product(&admin, &format!("Filler {i}"), 100 + i, 1).await;
        ids.push(p["id"].as_str().unwrap().to_string());
        assert!(live(&app) <= 12 + 4, "live entities {} with a cap of 12", live(&app));
    }
    // Work in flight was never evicted: the reserved product, the order and its payment are still running.
    assert!(provider.captures_for_order(&order_id).is_empty(), "the payment was held, so the saga is still running");
    assert!(products.is_local(&held_id), "a product holding a reservation must not be evicted");
    assert!(app.state.orders.router().is_local(&order_id), "an order mid-saga must not be evicted");
    // The least recently used fillers went first; the newest are still live.
    assert!(!products.is_local(&ids[0]));
    assert!(products.is_local(ids.last().unwrap()));
    provider.release();
    let paid = app.wait_status(&user.token, &order_id, "paid").await;
    assert_eq!(paid["total"], 500);
    // Passivated entities come back with their state on the next request.
    for id in &ids[..5] {
        let r = app
            .post(&format!("/api/products/{id}/stock"), Some(&admin), json!({"delta": 2, "reason": "restock"}))
            .await;
        assert_eq!((r.status, r.body["stockOnHand"].as_i64()), (200, Some(3)), "{:?}", r.body);
    }
    eventually("the node to stay under its cap", Duration::from_secs(3), || live(&app) <= 12).await;
}
