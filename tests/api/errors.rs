use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::helpers::{raw_connect, read_response, spawn_app, spawn_app_with};

#[tokio::test]
async fn bad_requests_get_clear_errors_never_500() {
    let app = spawn_app_with(|c| c.http.body_limit_bytes = 1024).await;
    let user = app.signup("err@example.com").await;
    let url = format!("{}/api/cart/items", app.base);
    let send = |body: String, content_type: &'static str| {
        app.client.post(&url).bearer_auth(&user.token).header("content-type", content_type).body(body).send()
    };

    let cases = [
        (send("{not json".into(), "application/json").await.unwrap(), 400, "malformed_json"),
        (send(r#"{"productId": 5, "quantity": 1}"#.into(), "application/json").await.unwrap(), 400, "invalid_body"),
        (
            send(r#"{"productId": "x", "quantity": 1, "price": 0}"#.into(), "application/json").await.unwrap(),
            400,
            "invalid_body",
        ),
        (send(r#"{"productId": "x"}"#.into(), "application/json").await.unwrap(), 400, "invalid_body"),
        (
            send(r#"{"productId": "x", "quantity": 1}"#.into(), "text/plain").await.unwrap(),
            415,
            "unsupported_media_type",
        ),
        (
            send(format!(r#"{{"productId": "{}", "quantity": 1}}"#, "x".repeat(4096)), "application/json")
                .await
                .unwrap(),
            413,
            "payload_too_large",
        ),
    ];
    for (res, status, code) in cases {
        assert_eq!(res.status().as_u16(), status);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    let r = app.get("/api/nothing-here", None).await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = app.request(reqwest::Method::PUT, "/api/cart", Some(&user.token), Some(json!({}))).await;
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    // The failed requests changed nothing.
    assert_eq!(app.get("/api/cart", Some(&user.token)).await.body["itemCount"], 0);
}

/// Words that would reveal the server's Rust types rather than say what the client got wrong.
const INTERNAL: [&str; 12] =
    ["struct", "Body", "enum", "Option", "i64", "u32", "u64", "Patch", "Params", "serde", "Failed to", "Vec"];

#[tokio::test]
async fn malformed_bodies_are_explained_in_the_clients_terms() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("typo@example.com").await;
    let raw = |method: reqwest::Method, path: &str, token: Option<&str>, body: &str| {
        let mut req =
            app.client.request(method, format!("{}{path}", app.base)).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.body(body.to_string()).send()
    };
    let product = r#""title": "Mug", "price": 1299, "currency": "USD", "category": "kitchen""#;
    let post = reqwest::Method::POST;
    let patch = reqwest::Method::PATCH;
    let (a, u) = (Some(admin.as_str()), Some(user.token.as_str()));
    let cases = [
        (post.clone(), "/api/products", a, "[]".to_string(), "body must be a JSON object"),
        // Before, an array of the fields in declaration order was accepted as a product.
        (post.clone(), "/api/products", a, r#"["Mug", "", 1299, "USD", "kitchen", null, 3]"#.into(), "body must be a JSON object"),
        (post.clone(), "/api/products", a, r#""Mug""#.into(), "body must be a JSON object"),
        (post.clone(), "/api/products", a, r#"{"title": "Mug", "price": "12.99", "currency": "USD", "category": "c"}"#.into(),
            "field `price`: expected an integer (minor units), got a string"),
        (post.clone(), "/api/products", a, format!(r#"{{{product}, "stock": -1.5}}"#), "field `stock`: expected an integer, got -1.5"),
        (post.clone(), "/api/products", a, format!(r#"{{{product}, "foo": 1}}"#),
            "unknown field `foo`, expected one of `title`, `description`, `price`, `currency`, `category`, `imageUrl`, `stock`"),
        (post.clone(), "/api/products", a, r#"{"title": "Mug", "currency": "USD", "category": "c"}"#.into(), "missing field `price`"),
        (post.clone(), "/api/cart/items", u, r#"{"productId": "p", "quantity": "2"}"#.into(),
            "field `quantity`: expected an integer, got a string"),
        (patch.clone(), "/api/users/me", u, r#"{"address": {"line1": 5, "city": "x", "postalCode": "y", "country": "GB"}}"#.into(),
            "field `address.line1`: expected a string, got 5"),
        (patch.clone(), "/api/users/me", u, r#"{"address": {"line1": "1 Main St"}}"#.into(), "missing field `address.city`"),
        (post.clone(), "/api/admin/coupons", a, r#"{"code": "SAVE", "discount": {"kind": "bogo"}}"#.into(),
            "field `discount.kind`: unknown value `bogo`, expected `percent` or `fixed`"),
        (post.clone(), "/api/admin/coupons", a, r#"{"code": "SAVE", "discount": {"kind": "percent", "percent": 10}, "usageLimit": -1}"#.into(),
            "field `usageLimit`: expected an integer from 0 to 4294967295, got -1"),
        (post.clone(), "/api/admin/coupons", a, r#"{"code": "SAVE", "discount": {"kind": "percent", "percent": 10}, "expiresAt": "soon"}"#.into(),
            "field `expiresAt`: input contains invalid characters"),
        (post.clone(), "/api/users/signup", None, r#"{"email": "a@b.co", "password": true, "name": "A"}"#.into(),
            "field `password`: expected a string, got true"),
        (post.clone(), "/api/users/refresh", None, "[1]".into(), "body must be a JSON object"),
        (post.clone(), "/api/users/refresh", None, r#"{"refreshToken": 1}"#.into(), "field `refreshToken`: expected a string, got 1"),
    ];
    for (method, path, token, body, expected) in cases {
        let res = raw(method, path, token, &body).await.unwrap();
        let status = res.status().as_u16();
        let json: serde_json::Value = res.json().await.unwrap();
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert_eq!((status, json["error"]["code"].as_str()), (400, Some("invalid_body")), "{path} {body}: {json}");
        assert_eq!(message, expected, "{path} {body}");
        for word in INTERNAL {
            assert!(!message.contains(word), "{path} {body}: `{word}` in {message}");
        }
    }
    let broken = raw(post, "/api/products", a, r#"{"title": "Mug""#).await.unwrap();
    let json: serde_json::Value = broken.json().await.unwrap();
    assert_eq!(json["error"]["code"], "malformed_json");
    assert!(
        json["error"]["message"].as_str().unwrap().starts_with("body is not valid JSON: EOF while parsing"),
        "{json}"
    );
    assert_eq!(app.get("/api/products", None).await.body["total"], 0, "none of them created anything");

    // Query strings and path parameters speak the same language.
    let cases = [
        (app.get("/api/products?limit=ten", None).await, "invalid_query", "query parameter `limit`: expected an integer"),
        (
            app.get("/api/products?colour=red", None).await,
            "invalid_query",
            "unknown query parameter `colour`, expected one of `page`, `limit`, `q`, `category`, `minPrice`, `maxPrice`, `sort`",
        ),
        (
            app.post("/api/notifications/abc/read", u, json!({})).await,
            "invalid_path",
            "path parameter: expected a non-negative integer",
        ),
    ];
    for (r, code, expected) in cases {
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!((r.status, r.code(), message), (400, code, expected));
        for word in INTERNAL {
            assert!(!message.contains(word), "`{word}` in {message}");
        }
    }
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let app = spawn_app_with(|c| c.http.body_limit_bytes = 1024).await;
    let user = app.signup("big@example.com").await;
    let bearer = format!("Authorization: Bearer {}\r\n", user.token);
    let routes = [
        ("POST", "/api/cart/items", bearer.as_str()),
        ("POST", "/api/users/signin", ""),
        ("POST", "/api/users/signout", bearer.as_str()),
        ("PATCH", "/api/users/me", ""),
        ("GET", "/api/products", ""),
        ("PUT", "/api/nothing-here", ""),
    ];
    for (method, path, auth) in routes {
        let mut conn = raw_connect(&app).await;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{auth}\
             Content-Length: 10000000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // Not one byte of the body is sent: the answer comes anyway.
        let (status, body) = read_response(&mut conn, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{method} {path}: no answer without the body"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{method} {path}");
    }
    // The user is still signed in: the refused sign-out did nothing.
    assert_eq!(app.get("/api/users/me", Some(&user.token)).await.status, 200);
    // A declared length within the limit is read and judged as usual.
    let r = app.post("/api/cart/items", Some(&user.token), json!({"productId": "nope", "quantity": 1})).await;
    assert_eq!((r.status, r.code()), (404, "product_not_found"));
}

#[tokio::test]
async fn responses_carry_request_ids_and_security_headers() {
    let app = spawn_app().await;
    let res =
        app.client.get(format!("{}/health", app.base)).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-42");
    let res = app.client.get(format!("{}/api/products", app.base)).send().await.unwrap();
    assert!(res.headers().get("x-request-id").is_some_and(|v| !v.is_empty()));
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert!(res.headers().get("content-security-policy").is_some());
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health", None).await.body["status"], "ok");
    let ready = app.get("/ready", None).await;
    assert_eq!((ready.status, ready.body["status"].as_str()), (200, Some("ready")), "{:?}", ready.body);
    // Each dependency is named with its backend and state, so an operator sees which one is down.
    let real = crate::helpers::real_backends();
    let (store, bus, cache) = match real {
        Some(bus) => ("mongodb", bus, "redis"),
        None => ("embedded", "in_process", "in_process"),
    };
    assert_eq!(ready.body["store"], json!({"backend": store, "status": "up"}));
    assert_eq!(ready.body["bus"], json!({"backend": bus, "status": "up"}));
    assert_eq!(ready.body["cache"], json!({"backend": cache, "status": "up"}));
    assert_eq!(ready.body["revocations"], json!({"status": "up"}));
}

#[tokio::test]
async fn cors_is_configurable() {
    let app = spawn_app_with(|c| c.http.cors_allowed_origins = vec!["https://shop.example".into()]).await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/api/products", app.base))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "https://shop.example");
    let other = app
        .client
        .get(format!("{}/api/products", app.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
