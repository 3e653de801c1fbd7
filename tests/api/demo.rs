//! `commercex seed-demo`: what it seeds is usable at once through the API, and seeding twice adds nothing.

use serde_json::json;

use crate::helpers::spawn_app;
use commercex::demo::{self, ADMIN, COUPON, SHOPPER};

#[tokio::test]
async fn the_demo_shopper_buys_a_demo_product_with_the_demo_coupon() {
    let app = spawn_app().await;
    // Security review L8: the demo's administrator has a published password, so a store with accounts of its own
    // (here the suite's administrator) is refused unless forced.
    let refused = demo::seed(&app.state, false).await.unwrap_err().to_string();
    assert!(refused.contains("--force") && refused.contains(crate::helpers::ADMIN_EMAIL), "{refused}");
    assert_eq!(app.get("/api/products", None).await.body["total"], 0, "nothing seeded");
    let first = demo::seed(&app.state, true).await.unwrap();
    assert_eq!((first.products, first.accounts.len(), first.coupon), (12, 2, true));
    let again = demo::seed(&app.state, true).await.unwrap();
    assert_eq!((again.products, again.products_present, again.accounts.len(), again.coupon), (0, 12, 0, false));

    let listed = app.get("/api/products?category=kitchen&sort=price_desc", None).await;
    assert_eq!(listed.body["total"], 4, "{:?}", listed.body);
    let knife = &listed.body["items"][0];
    assert_eq!((knife["title"].as_str(), knife["price"].as_i64()), (Some("Chef's knife"), Some(8_900)));

    let admin = app.signin(ADMIN.0, ADMIN.1).await;
    assert_eq!(admin.body["user"]["role"], "admin", "{:?}", admin.body);
    let shopper = app.signin(SHOPPER.0, SHOPPER.1).await;
    let token = shopper.body["accessToken"].as_str().unwrap().to_string();
    let item = json!({"productId": knife["id"], "quantity": 1});
    assert_eq!(app.post("/api/cart/items", Some(&token), item).await.status, 200);
    let order = app.checkout(&token, "demo-1", json!({"paymentMethod": "pm_card_visa", "couponCode": COUPON})).await;
    assert_eq!((order.status, order.body["discount"].as_i64()), (202, Some(890)), "{:?}", order.body);
    app.wait_status(&token, order.body["id"].as_str().unwrap(), "paid").await;
}
