//! Transactional emails: templates are filled once, and nothing a user wrote is ever expanded as a template.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

/// The emails recorded for `to` with `template`, once there is one (deadline 20 s).
async fn email_to(app: &TestApp, admin: &str, to: &str, template: &str) -> Value {
    let start = tokio::time::Instant::now();
    loop {
        let emails = app.get("/api/admin/emails?limit=100", Some(admin)).await.body;
        let found =
            emails["items"].as_array().into_iter().flatten().find(|e| e["to"] == to && e["template"] == template);
        if let Some(e) = found {
            return e.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no {template} email to {to}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_text_is_never_expanded_in_emails() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let product = app.create_product(&admin, "{{name}} {{reason}}", 1250, 5).await;
    let r = app
        .post(
            "/api/users/signup",
            None,
            json!({"email": "curly@example.com", "password": "pass-word-1", "name": "{{total}} {{orderId}} {{order}}"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["accessToken"].as_str().unwrap().to_string();
    app.post("/api/cart/items", Some(&token), json!({"productId": product["id"], "quantity": 2})).await;
    let placed = app.checkout(&token, "curly-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    let order_id = placed.body["id"].as_str().unwrap().to_string();
    app.wait_status(&token, &order_id, "paid").await;

    let email = email_to(&app, &admin, "curly@example.com", "order_confirmation").await;
    let body = email["body"].as_str().unwrap();
    assert!(body.starts_with("Hi {{total}} {{orderId}} {{order}},\n"), "the name is shown as written: {body}");
    assert!(body.contains("2 x {{name}} {{reason}}  25.00 USD"), "the title is shown as written: {body}");
    assert!(body.contains(&format!("your order {order_id}. We received your payment of 25.00 USD")), "{body}");
    assert_eq!(body.matches("25.00 USD").count(), 2, "the total appears only where the template puts it: {body}");
    assert_eq!(body.matches(&order_id).count(), 1, "{body}");
    assert_eq!(email["subject"], format!("Your order {order_id} is confirmed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_use_the_currencys_own_minor_units() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let teapot = app
        .post(
            "/api/products",
            Some(&admin),
            json!({"title": "Teapot", "price": 1200, "currency": "JPY", "category": "kitchen", "stock": 3}),
        )
        .await
        .body;
    let user = app.signup("tokyo@example.com").await;
    app.post("/api/cart/items", Some(&user.token), json!({"productId": teapot["id"], "quantity": 1})).await;
    let placed = app.checkout(&user.token, "yen-1", json!({"paymentMethod": "pm_card_visa"})).await;
    assert_eq!(placed.status, 202, "{:?}", placed.body);
    app.wait_status(&user.token, placed.body["id"].as_str().unwrap(), "paid").await;
    let email = email_to(&app, &admin, "tokyo@example.com", "order_confirmation").await;
    let body = email["body"].as_str().unwrap();
    assert!(body.contains("We received your payment of 1200 JPY."), "yen have no minor unit: {body}");
}
