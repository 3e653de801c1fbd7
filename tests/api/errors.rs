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
    assert_eq!(app.get("/ready", None).await.body["status"], "ready");
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
