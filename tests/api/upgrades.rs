//! State recorded by earlier versions recovers and is brought up to date.

use std::time::Duration;

use commercex::actors::entity::recover;
use commercex::domain::product::{ProductEvent, ProductState};
use commercex::domain::Aggregate;
use commercex::store::{Commit, EventRecord, Snapshot};
use serde_json::json;

use crate::helpers::{spawn_app_with, spawn_app_with_provider, TestApp};

async fn paid_order(app: &TestApp, email: &str, product: &str) -> (String, String) {
    let user = app.signup(email).await;
    app.post("/api/cart/items", Some(&user.token), json!({"productId": product, "quantity": 1})).await;
    let placed = app.checkout(&user.token, "k", json!({"paymentMethod": "pm_card_visa"})).await;
    let id = placed.body["id"].as_str().unwrap().to_string();
    app.wait_status(&user.token, &id, "paid").await;
    app.state.orders.router().settled(&id, Duration::from_secs(10)).await.unwrap();
    (id, user.token)
}

/// Appends one stock count to the product's stream with a snapshot of its state as the code before orders closed
/// their sales left it: both sales remembered, no schedule, no sold counter, no format.
async fn record_as_old_code(app: &TestApp, product: &str, sales: [&str; 2]) {
    let store = app.state.ctx.store.clone();
    let stream = format!("product:{product}");
    let (state, seq, _) = recover::<ProductState>(store.history(&stream).await.unwrap()).unwrap();
    let now = chrono::Utc::now();
    let on_hand = state.product.as_ref().unwrap().stock_on_hand + 1;
    let event = ProductEvent::StockAdjusted { delta: 1, reason: "count".into(), on_hand_after: on_hand, at: now };
    let mut state = state;
    state.apply(&event);
    let mut old = serde_json::to_value(&state).unwrap();
    old["settled"] = sales.iter().map(|id| (id.to_string(), json!({"outcome": "committed", "quantity": 1}))).collect();
    for field in ["forgetting", "forgottenUntil", "unitsSold", "format"] {
        old.as_object_mut().unwrap().remove(field);
    }
    let record = EventRecord {
        id: format!("{stream}/{}", seq + 1),
        stream: stream.clone(),
        seq: seq + 1,
        event_type: ProductState::event_type(&event).into(),
        recorded_at: now,
        payload: serde_json::to_value(&event).unwrap(),
    };
    let commit = Commit {
        stream,
        expected_seq: seq,
        events: vec![record],
        snapshot: Some(Snapshot { seq: seq + 1, state: old }),
        read_model: None,
        active: false,
    };
    store.commit(commit).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_recorded_before_orders_closed_their_sales_forgets_those_of_shipped_orders() {
    // Reservations expire at once, so a closed sale is forgotten as soon as it is closed.
    let ttl = |c: &mut commercex::config::Config| c.checkout.reservation_ttl_secs = 1;
    let app = spawn_app_with(ttl).await;
    let admin = app.admin().await;
    let p = app.create_product(&admin, "Vase", 2500, 5).await["id"].as_str().unwrap().to_string();
    let (shipped, _) = paid_order(&app, "shipped@example.com", &p).await;
    let (paid, paid_token) = paid_order(&app, "paid@example.com", &p).await;
    app.post(&format!("/api/admin/orders/{shipped}/ship"), Some(&admin), json!({})).await;
    app.state.orders.router().settled(&shipped, Duration::from_secs(10)).await.unwrap();
    let provider = app.provider.clone();
    let dir = app.stop().await;

    // The old code never closed a sale, and nothing restarts a shipped order.
    let app = spawn_app_with_provider(dir, provider, ttl).await;
    record_as_old_code(&app, &p, [&shipped, &paid]).await;
    let products = app.state.catalog.router();
    let start = tokio::time::Instant::now();
    loop {
        let state = products.get(&p).await.unwrap();
        // Sorted out: the shipped order's sale is scheduled to be forgotten, or, when its reservation would have
        // expired by the time the migration ran (a slow start), already forgotten.
        let closed = state.forgetting.iter().any(|(_, id)| id == &shipped) || !state.settled.contains_key(&shipped);
        if state.unchecked.is_empty() && closed {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the old sales were never sorted out: {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A closed sale is dropped by the first change after its reservation would have expired (a second here).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let count =
        app.post(&format!("/api/products/{p}/stock"), Some(&admin), json!({"delta": 1, "reason": "count"})).await;
    assert_eq!(count.status, 200, "{:?}", count.body);
    let state = products.get(&p).await.unwrap();
    // The shipped order's sale is forgotten; the paid order's is kept, since it may still be cancelled.
    assert_eq!(state.settled.keys().collect::<Vec<_>>(), [&paid]);
    assert_eq!(state.sold(), 2);

    // Cancelled, the paid order gets its stock back exactly once, and then the product forgets it too.
    let cancel = app.post(&format!("/api/orders/{paid}/cancel"), Some(&paid_token), json!({})).await;
    assert_eq!(cancel.status, 202, "{:?}", cancel.body);
    app.wait_status(&paid_token, &paid, "refunded").await;
    app.state.orders.router().settled(&paid, Duration::from_secs(10)).await.unwrap();
    let state = products.get(&p).await.unwrap();
    let product = state.product.as_ref().unwrap();
    assert_eq!((product.stock_on_hand, product.stock_reserved, state.sold()), (6, 0, 1));
    assert!(state.settled.is_empty() && state.forgetting.is_empty(), "{state:?}");
}
