//! One order, one currency: products switched to another currency cannot be charged in the cart's, and only
//! active ISO 4217 codes are accepted.

use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

async fn add(app: &TestApp, token: &str, product_id: &str, quantity: i64) -> crate::helpers::Resp {
    app.post("/api/cart/items", Some(token), json!({"productId": product_id, "quantity": quantity})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_switched_to_another_currency_is_never_charged_in_the_carts() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("yen@example.com").await;
    let t = user.token.as_str();
    let mug = app.create_product(&admin, "Mug", 1250, 5).await["id"].as_str().unwrap().to_string();
    let lamp = app.create_product(&admin, "Lamp", 200, 5).await["id"].as_str().unwrap().to_string();
    add(&app, t, &mug, 1).await;
    assert_eq!(add(&app, t, &lamp, 1).await.body["currency"], "USD");

    // The attack: with the lamp in a dollar cart, its price becomes 100 yen.
    let switched = app
        .patch(&format!("/api/products/{lamp}"), Some(&admin), json!({"version": 1, "currency": "JPY", "price": 100}))
        .await;
    assert_eq!(switched.status, 200, "{:?}", switched.body);

    // The cart shows the lamp at its new currency, outside the dollar subtotal.
    let cart = app.get("/api/cart", Some(t)).await.body;
    let lamp_line = cart["items"].as_array().unwrap().iter().find(|l| l["productId"] == lamp).unwrap().clone();
    assert_eq!((lamp_line["currency"].as_str(), lamp_line["available"].as_bool()), (Some("JPY"), Some(false)));
    assert_eq!((cart["currency"].as_str(), cart["subtotal"].as_i64()), (Some("USD"), Some(1250)));

    let refused = app.checkout(t, "mixed-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (422, Some("currency_mismatch")));
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&lamp) && message.contains("JPY") && message.contains("USD"), "{message}");
    let listed = app.get("/api/orders", Some(t)).await.body;
    assert_eq!(listed["total"], 0, "no order was placed: {listed}");
    let order_id = commercex::orders::order_id_for(&user.id, "mixed-1");
    assert!(app.provider.captures_for_order(&order_id).is_empty(), "nothing was charged");

    // More of the lamp cannot join the dollar cart either, nor can any product priced in another currency.
    let more = add(&app, t, &lamp, 1).await;
    assert_eq!((more.status, more.code()), (422, "currency_mismatch"));

    // The way out: remove the lamp; the rest checks out in dollars at the catalog's prices.
    app.delete(&format!("/api/cart/items/{lamp}"), Some(t)).await;
    let placed = app.checkout(t, "dollars-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    assert_eq!((placed.body["currency"].as_str(), placed.body["total"].as_i64()), (Some("USD"), Some(1250)));
    app.wait_status(t, placed.body["id"].as_str().unwrap(), "paid").await;
    let start = tokio::time::Instant::now();
    while app.get("/api/cart", Some(t)).await.body["itemCount"] != 0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the paid order never left the cart");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A cart holding only the lamp is a yen cart, and its order is charged 100 yen.
    let cart = add(&app, t, &lamp, 1).await.body;
    assert_eq!((cart["currency"].as_str(), cart["subtotal"].as_i64()), (Some("JPY"), Some(100)));
    let placed = app.checkout(t, "yen-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    assert_eq!((placed.body["currency"].as_str(), placed.body["total"].as_i64()), (Some("JPY"), Some(100)));
    let id = placed.body["id"].as_str().unwrap().to_string();
    app.wait_status(t, &id, "paid").await;
    let payment = app.get(&format!("/api/payments?orderId={id}"), Some(t)).await.body["items"][0].clone();
    assert_eq!((payment["amount"].as_i64(), payment["currency"].as_str()), (Some(100), Some("JPY")));
}

#[tokio::test]
async fn a_cart_holds_one_currency() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("euro@example.com").await;
    let usd = app.create_product(&admin, "Cap", 1000, 5).await;
    let eur = app
        .post(
            "/api/products",
            Some(&admin),
            json!({"title": "Scarf", "price": 900, "currency": "EUR", "category": "c", "stock": 5}),
        )
        .await;
    add(&app, &user.token, usd["id"].as_str().unwrap(), 1).await;
    let mixed = add(&app, &user.token, eur.body["id"].as_str().unwrap(), 1).await;
    assert_eq!((mixed.status, mixed.code()), (422, "currency_mismatch"));
    assert!(mixed.body["error"]["message"].as_str().unwrap().contains("EUR"));
    assert_eq!(app.get("/api/cart", Some(&user.token)).await.body["itemCount"], 1);
}

#[tokio::test]
async fn only_active_iso_4217_codes_are_accepted() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let product =
        |currency: &str| json!({"title": "Tea", "price": 500, "currency": currency, "category": "food", "stock": 1});
    for bad in ["ZZZ", "XXX", "XTS", "XAU", "usd", "US", "DEM"] {
        let r = app.post("/api/products", Some(&admin), product(bad)).await;
        assert_eq!((r.status, r.code()), (422, "validation_failed"), "{bad}");
        assert!(r.body["error"]["message"].as_str().unwrap().contains("`currency`"), "{bad}");
    }
    for good in ["USD", "JPY", "KWD", "CHF"] {
        assert_eq!(app.post("/api/products", Some(&admin), product(good)).await.status, 201, "{good}");
    }
    assert_eq!(app.get("/api/products", None).await.body["total"], 4, "nothing else was created");

    let tea = app.post("/api/products", Some(&admin), product("EUR")).await.body;
    let path = format!("/api/products/{}", tea["id"].as_str().unwrap());
    let r = app.patch(&path, Some(&admin), json!({"version": 1, "currency": "ZZZ"})).await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    let r = app
        .put(
            &path,
            Some(&admin),
            json!({"version": 1, "title": "Tea", "description": "", "price": 500, "currency": "ZZZ", "category": "food", "imageUrl": null}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    assert_eq!(app.get(&path, None).await.body["currency"], "EUR");

    let coupon = |currency: &str| json!({"code": format!("FIX{currency}"), "discount": {"kind": "fixed", "amount": 500, "currency": currency}});
    let r = app.post("/api/admin/coupons", Some(&admin), coupon("ZZZ")).await;
    assert_eq!((r.status, r.code()), (422, "validation_failed"));
    assert_eq!(app.post("/api/admin/coupons", Some(&admin), coupon("JPY")).await.status, 201);
}
