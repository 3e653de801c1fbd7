//! A hot entity writes the commands waiting in its mailbox together: each is decided against the state the ones
//! before it leave, and none is answered before the write that holds it (or its refusal) is durable.

use std::sync::atomic::Ordering;
use std::time::Duration;

use commercex::actors::EntityError;
use commercex::config::ChaosConfig;
use commercex::domain::product::{ProductCommand, ProductError, ProductState};

use crate::helpers::{spawn_app_with, TestApp};

/// Every journal call waits this long while chaos is on, so commands pile up behind a write.
const SLOW_WRITE: Duration = Duration::from_millis(150);

async fn slow_store_app() -> TestApp {
    spawn_app_with(|c| {
        c.chaos = ChaosConfig {
            enabled: false,
            store_delay_share: 1.0,
            store_delay_ms: SLOW_WRITE.as_millis() as u64,
            ..ChaosConfig::default()
        };
    })
    .await
}

fn reserve(order: usize) -> ProductCommand {
    ProductCommand::Reserve {
        order_id: format!("ord_batch{order}"),
        quantity: 1,
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(15),
    }
}

/// Sends `count` reservations at once while the product is busy writing a stock count, so they all wait in its
/// mailbox, and returns their answers.
async fn reservations_behind_a_write(
    app: &TestApp,
    product: &str,
    count: usize,
) -> Vec<Result<ProductState, EntityError<ProductError>>> {
    let products = app.state.catalog.router();
    let count_in_flight = {
        let (products, product) = (products.clone(), product.to_string());
        tokio::spawn(async move {
            products.execute(&product, ProductCommand::AdjustStock { delta: 1, reason: "count".into() }).await
        })
    };
    tokio::time::sleep(SLOW_WRITE / 3).await;
    let reservations: Vec<_> = (0..count)
        .map(|i| {
            let (products, product) = (products.clone(), product.to_string());
            tokio::spawn(async move { products.execute(&product, reserve(i)).await })
        })
        .collect();
    count_in_flight.await.unwrap().expect("the stock count is written");
    let mut answers = Vec::new();
    for r in reservations {
        answers.push(r.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_reservations_share_a_write_and_never_oversell() {
    let app = slow_store_app().await;
    let admin = app.admin().await;
    let product = app.create_product(&admin, "Flash sale", 1000, 29).await["id"].as_str().unwrap().to_string();
    app.state.ctx.chaos.set_enabled(true);
    let before = app.state.ctx.chaos.injected().store_delays.load(Ordering::Relaxed);

    let answers = reservations_behind_a_write(&app, &product, 60).await;

    let journal_calls = app.state.ctx.chaos.injected().store_delays.load(Ordering::Relaxed) - before;
    app.state.ctx.chaos.set_enabled(false);
    let reserved = answers.iter().filter(|a| a.is_ok()).count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err(EntityError::Rejected(ProductError::InsufficientStock { .. }))))
        .count();
    assert_eq!((reserved, refused), (30, 30), "{answers:?}");
    let state = app.state.catalog.router().get(&product).await.unwrap();
    assert_eq!(state.product.unwrap().stock_reserved, 30);
    assert_eq!(state.reservations.len(), 30);
    // One write per command would be 61 slow journal calls, well over a second and a half each way.
    assert!(journal_calls < 20, "{journal_calls} journal calls for a stock count and 60 reservations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_answers_its_whole_batch_unavailable_refusals_included() {
    let app = slow_store_app().await;
    let admin = app.admin().await;
    let product = app.create_product(&admin, "Flash sale", 1000, 4).await["id"].as_str().unwrap().to_string();
    app.state.ctx.faults.arm("before_commit:product.stock_reserved", 1);
    app.state.ctx.chaos.set_enabled(true);

    // Five of the ten would be refused for stock, but only against reservations that were never written.
    let answers = reservations_behind_a_write(&app, &product, 10).await;
    assert!(answers.iter().all(|a| matches!(a, Err(EntityError::Unavailable(_)))), "{answers:?}");
    app.state.ctx.chaos.set_enabled(false);
    let state = app.state.catalog.router().get(&product).await.unwrap();
    let p = state.product.unwrap();
    assert_eq!((p.stock_on_hand, p.stock_reserved), (5, 0), "the stock count is kept, no reservation is");

    // Sent again, the same reservations are decided for real.
    let products = app.state.catalog.router();
    let mut reserved = 0;
    for i in 0..10 {
        reserved += products.execute(&product, reserve(i)).await.is_ok() as usize;
    }
    assert_eq!(reserved, 5);
}
