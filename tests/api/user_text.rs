//! Text that users send is stored only if it is plain text: control, bidirectional and invisible characters are
//! refused in every field, and emails compare in one normalised form.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Resp, ADMIN_PASSWORD};

const DANGEROUS: [&str; 12] = [
    "\u{0}",
    "\u{7}",
    "\u{1B}[2J",
    "\r",
    "\n",
    "\u{7F}",
    "\u{85}",
    "\u{202E}",
    "\u{2067}",
    "\u{200F}",
    "\u{200B}",
    "\u{FEFF}",
];

fn assert_invalid_text(r: &Resp, field: &str, what: &str) {
    assert_eq!((r.status, r.code()), (422, "invalid_text"), "{what}: {:?}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("`{field}`")), "{what}: the message names `{field}`: {message}");
}

#[tokio::test]
async fn profile_fields_refuse_control_and_bidi_characters() {
    let app = spawn_app().await;
    let user = app.signup("mallory@example.com").await;
    let t = Some(user.token.as_str());
    for bad in DANGEROUS {
        let r = app.patch("/api/users/me", t, json!({"name": format!("Mallory{bad}exe.txt")})).await;
        assert_invalid_text(&r, "name", &format!("name with {bad:?}"));
    }
    let address = json!({"line1": "1 Main St", "city": "London", "postalCode": "N1 9GU", "country": "GB"});
    let with = |key: &str, value: &str| {
        let mut a = address.clone();
        a[key] = Value::from(value);
        json!({"address": a})
    };
    let cases = [
        ("phone", json!({"phone": "+44 20\u{0} 7946 0000"})),
        ("address.line1", with("line1", "1 Main St\u{202E}")),
        ("address.line2", with("line2", "Flat\u{1B}[31m 2")),
        ("address.city", with("city", "Lon\u{2066}don")),
        ("address.postalCode", with("postalCode", "N1\u{7F} 9GU")),
        ("address.country", with("country", "G\u{200E}B")),
    ];
    for (field, body) in cases {
        assert_invalid_text(&app.patch("/api/users/me", t, body).await, field, field);
    }
    let me = app.get("/api/users/me", t).await.body;
    assert_eq!((me["name"].as_str(), me["phone"].as_str(), me["address"].as_str()), (Some("Test User"), None, None));

    let r = app
        .post(
            "/api/users/signup",
            None,
            json!({"email": "eve@example.com", "password": "pass-word-1", "name": "Eve\u{202E}"}),
        )
        .await;
    assert_invalid_text(&r, "name", "signup name");
    let r = app
        .post(
            "/api/users/signup",
            None,
            json!({"email": "eve\u{202E}@example.com", "password": "pass-word-1", "name": "Eve"}),
        )
        .await;
    assert_invalid_text(&r, "email", "signup email");
    assert_eq!(app.signin("eve@example.com", "pass-word-1").await.status, 401, "no account was created");
}

#[tokio::test]
async fn catalog_and_coupon_text_refuses_control_and_bidi_characters() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let a = Some(admin.as_str());
    let base = json!({"title": "Mug", "description": "Blue", "price": 1299, "currency": "USD", "category": "kitchen",
        "imageUrl": "https://img.example/mug.png", "stock": 3});
    let with = |key: &str, value: &str| {
        let mut b = base.clone();
        b[key] = Value::from(value);
        b
    };
    for (field, body) in [
        ("title", with("title", "Mug\u{202E}gpj.exe")),
        ("description", with("description", "Blue\u{0}")),
        ("category", with("category", "kitchen\u{85}")),
        ("imageUrl", with("imageUrl", "https://img.example/\u{200B}mug.png")),
        ("currency", with("currency", "US\u{0}")),
    ] {
        assert_invalid_text(&app.post("/api/products", a, body).await, field, field);
    }
    assert_eq!(app.get("/api/products", None).await.body["total"], 0, "nothing was stored");

    // A description may span lines; titles may not.
    let created = app.post("/api/products", a, with("description", "Blue.\n\tDishwasher safe.")).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["description"], "Blue.\n\tDishwasher safe.");
    let path = format!("/api/products/{}", created.body["id"].as_str().unwrap());
    let r = app.patch(&path, a, json!({"version": 1, "title": "Mug\nFREE"})).await;
    assert_invalid_text(&r, "title", "title with a newline");
    let r = app.post(&format!("{path}/stock"), a, json!({"delta": 1, "reason": "recount\u{2028}approved"})).await;
    assert_invalid_text(&r, "reason", "stock reason");
    let product = app.get(&path, None).await.body;
    assert_eq!((product["title"].as_str(), product["stockOnHand"].as_i64()), (Some("Mug"), Some(3)));

    let r = app
        .post(
            "/api/admin/coupons",
            a,
            json!({"code": "SAVE\u{202E}01", "discount": {"kind": "percent", "percent": 10}}),
        )
        .await;
    assert_invalid_text(&r, "code", "coupon code");

    let user = app.signup("shopper@example.com").await;
    app.post("/api/cart/items", Some(&user.token), json!({"productId": product["id"], "quantity": 1})).await;
    let r = app.checkout(&user.token, "k1", json!({"paymentMethod": "pm_card_visa", "couponCode": "SAVE\u{0}"})).await;
    assert_invalid_text(&r, "code", "checkout coupon code");
    let address =
        json!({"line1": "1 Main St\u{1B}]0;pwned\u{7}", "city": "London", "postalCode": "N1 9GU", "country": "GB"});
    let r = app.checkout(&user.token, "k2", json!({"paymentMethod": "pm_card_visa", "shippingAddress": address})).await;
    assert_invalid_text(&r, "address.line1", "shipping address");
    assert_eq!(app.get("/api/orders", Some(&user.token)).await.body["total"], 0);
}

#[tokio::test]
async fn emails_are_one_account_whatever_their_unicode_form() {
    let app = spawn_app().await;
    let alice = app.signup("alice@example.com").await;
    let fullwidth = "Ａｌｉｃｅ@Example.com";
    let r = app
        .post("/api/users/signup", None, json!({"email": fullwidth, "password": "pass-word-1", "name": "Imposter"}))
        .await;
    assert_eq!((r.status, r.code()), (409, "email_taken"));
    let r = app.signin(fullwidth, "pass-word-1").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["user"]["id"].as_str(), Some(alice.id.as_str()), "the same account");

    // Stored in the normalised form whichever form signs up first.
    let r = app
        .post(
            "/api/users/signup",
            None,
            json!({"email": "ＢＯＢ@ｅｘａｍｐｌｅ.com", "password": "pass-word-1", "name": "Bob"}),
        )
        .await;
    assert_eq!((r.status, r.body["user"]["email"].as_str()), (201, Some("bob@example.com")));
    assert_eq!(app.signin("bob@example.com", "pass-word-1").await.status, 200);
}

#[tokio::test]
async fn the_bootstrap_admin_email_is_normalised_too() {
    let app = spawn_app_with(|c| {
        if let Some(admin) = &mut c.auth.bootstrap_admin {
            admin.email = "Ｒｏｏｔ@Example.com".into();
        }
    })
    .await;
    let r = app.signin("root@example.com", ADMIN_PASSWORD).await;
    assert_eq!((r.status, r.body["user"]["role"].as_str()), (200, Some("admin")), "{:?}", r.body);
    let r = app
        .post(
            "/api/users/signup",
            None,
            json!({"email": "ROOT@example.com", "password": "pass-word-1", "name": "Root"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, "email_taken"));
}

/// Security review L8: a bootstrap admin whose email belongs to an account that is not an administrator stops the
/// start loudly, instead of doing nothing and leaving the shop without the administrator it was told to make.
#[tokio::test]
async fn a_bootstrap_admin_email_taken_by_a_shopper_stops_the_start() {
    let app = crate::helpers::spawn_app().await;
    app.signup("taken@example.com").await;
    let dir = app.stop().await;
    let mut config = crate::helpers::test_config(dir.path());
    if let Some(admin) = &mut config.auth.bootstrap_admin {
        admin.email = "Taken@Example.com".into();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = match commercex::app::Application::with_listener(config, listener).await {
        Ok(_) => panic!("the node started with a bootstrap admin that is a shopper"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("auth.bootstrap_admin.email") && error.contains("not an administrator"), "{error}");
}
