use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn cart_lines_are_priced_by_the_server() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("shopper@example.com").await;
    let mug = app.create_product(&admin, "Mug", 1250, 5).await;
    let pen = app.create_product(&admin, "Pen", 199, 100).await;
    let (mug_id, pen_id) = (mug["id"].as_str().unwrap(), pen["id"].as_str().unwrap());
    let t = Some(user.token.as_str());

    let empty = app.get("/api/cart", t).await;
    assert_eq!((empty.status, empty.body["subtotal"].as_i64()), (200, Some(0)));

    app.post("/api/cart/items", t, json!({"productId": mug_id, "quantity": 2})).await;
    let cart = app.post("/api/cart/items", t, json!({"productId": mug_id, "quantity": 1})).await;
    assert_eq!(cart.body["items"][0]["quantity"], 3);
    let cart = app.post("/api/cart/items", t, json!({"productId": pen_id, "quantity": 4})).await;
    assert_eq!((cart.body["subtotal"].as_i64(), cart.body["itemCount"].as_u64()), (Some(3 * 1250 + 4 * 199), Some(7)));

    let too_many = app.post("/api/cart/items", t, json!({"productId": mug_id, "quantity": 3})).await;
    assert_eq!((too_many.status, too_many.code()), (409, "insufficient_stock"));
    for q in [0, -2, 1000] {
        let r = app.post("/api/cart/items", t, json!({"productId": mug_id, "quantity": q})).await;
        assert_eq!((r.status, r.code()), (422, "invalid_quantity"), "quantity {q}");
    }
    let fractional = app.post("/api/cart/items", t, json!({"productId": mug_id, "quantity": 1.5})).await;
    assert_eq!((fractional.status, fractional.code()), (400, "invalid_body"));
    let ghost = app.post("/api/cart/items", t, json!({"productId": "no-such-product", "quantity": 1})).await;
    assert_eq!((ghost.status, ghost.code()), (404, "product_not_found"));

    let set = app.patch(&format!("/api/cart/items/{pen_id}"), t, json!({"quantity": 10})).await;
    assert_eq!(set.body["subtotal"], 3 * 1250 + 10 * 199);
    let not_in_cart = app.patch("/api/cart/items/other", t, json!({"quantity": 1})).await;
    assert_eq!(not_in_cart.status, 404);

    // A price change shows up in the cart; a deleted product stays visible but stops counting.
    app.patch(&format!("/api/products/{mug_id}"), Some(&admin), json!({"version": 1, "price": 1000})).await;
    assert_eq!(app.get("/api/cart", t).await.body["subtotal"], 3 * 1000 + 10 * 199);
    assert_eq!(app.delete(&format!("/api/products/{pen_id}"), Some(&admin)).await.status, 204);
    let cart = app.get("/api/cart", t).await;
    assert_eq!(cart.body["subtotal"], 3000);
    let pen_line = cart.body["items"].as_array().unwrap().iter().find(|l| l["productId"] == pen_id).unwrap().clone();
    assert_eq!(pen_line["available"], false);
    let deleted_add = app.post("/api/cart/items", t, json!({"productId": pen_id, "quantity": 1})).await;
    assert_eq!(deleted_add.status, 404);

    let removed = app.delete(&format!("/api/cart/items/{pen_id}"), t).await;
    assert_eq!(removed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.delete(&format!("/api/cart/items/{pen_id}"), t).await.code(), "cart_item_not_found");
    let cleared = app.delete("/api/cart", t).await;
    assert_eq!((cleared.status, cleared.body["itemCount"].as_u64()), (200, Some(0)));
}

#[tokio::test]
async fn carts_are_private_and_need_a_session() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let a = app.signup("a@example.com").await;
    let b = app.signup("b@example.com").await;
    let p = app.create_product(&admin, "Book", 1500, 10).await;
    app.post("/api/cart/items", Some(&a.token), json!({"productId": p["id"], "quantity": 2})).await;

    assert_eq!(app.get("/api/cart", Some(&b.token)).await.body["itemCount"], 0);
    assert_eq!(app.delete("/api/cart", Some(&b.token)).await.status, 200);
    assert_eq!(app.get("/api/cart", Some(&a.token)).await.body["itemCount"], 2);
    assert_eq!(app.get("/api/cart", None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_to_one_cart_are_all_counted() {
    let app = std::sync::Arc::new(spawn_app().await);
    let admin = app.admin().await;
    let user = app.signup("busy@example.com").await;
    let p = app.create_product(&admin, "Sticker", 50, 500).await;
    let pid = p["id"].as_str().unwrap().to_string();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (app, token, pid) = (app.clone(), user.token.clone(), pid.clone());
        tasks.spawn(async move {
            app.post("/api/cart/items", Some(&token), json!({"productId": pid, "quantity": 1})).await.status
        });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.unwrap(), 200);
    }
    assert_eq!(app.get("/api/cart", Some(&user.token)).await.body["items"][0]["quantity"], 40);
}
