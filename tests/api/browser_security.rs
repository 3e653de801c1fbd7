//! What a hostile page can make a signed-in user's browser do: requests from another site riding the session cookie,
//! and session cookies sent over plain HTTP.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// Sends a request with the given session cookie, bearer token and extra headers; returns the status and error code.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, String) {
    let mut req = app.client.request(method, format!("{}{path}", app.base));
    if let Some(token) = cookie {
        req = req.header("cookie", format!("theme=dark; access_token={token}"));
    }
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

fn refused() -> (u16, String) {
    (403, "cross_site_request".to_string())
}

#[tokio::test]
async fn cookie_authenticated_changes_from_other_sites_are_refused() {
    let app = spawn_app_with(|c| c.http.cors_allowed_origins = vec!["https://shop.example".into()]).await;
    let admin = app.admin().await;
    let victim = app.signup("victim@example.com").await;
    let product = app.create_product(&admin, "Mug", 500, 5).await;
    let pid = product["id"].as_str().unwrap();
    app.post("/api/cart/items", Some(&victim.token), json!({"productId": pid, "quantity": 1})).await;
    let me = "/api/users/me";
    let cookie = Some(victim.token.as_str());
    let evil = [("origin", "https://evil.example")];

    // Forged by another site with the victim's cookie: sign-out, a profile change, a cart change, an admin's block.
    let forged = [
        (Method::POST, "/api/users/signout".to_string(), cookie, None),
        (Method::PATCH, me.to_string(), cookie, Some(json!({"name": "Pwned"}))),
        (Method::DELETE, format!("/api/cart/items/{pid}"), cookie, None),
        (Method::POST, format!("/api/admin/users/{}/block", victim.id), Some(admin.as_str()), None),
    ];
    for (method, path, cookie, body) in forged {
        assert_eq!(send(&app, method.clone(), &path, cookie, None, &evil, body).await, refused(), "{method} {path}");
    }
    // A Referer alone, and the opaque origin of a sandboxed frame, are judged the same way.
    let signout = "/api/users/signout";
    let from_page = [("referer", "https://evil.example/win-a-prize")];
    assert_eq!(send(&app, Method::POST, signout, cookie, None, &from_page, None).await, refused());
    assert_eq!(send(&app, Method::POST, signout, cookie, None, &[("origin", "null")], None).await, refused());
    // None of it happened.
    let profile = app.get(me, Some(&victim.token)).await;
    assert_eq!((profile.status, profile.body["name"].as_str()), (200, Some("Test User")));
    assert_eq!(profile.body["status"], "active");
    assert_eq!(app.get("/api/cart", Some(&victim.token)).await.body["itemCount"], 1);

    // The same change from the site itself, from an allowed origin, or with neither Origin nor Referer (not a
    // browser) goes through.
    let own_page = format!("{}/account", app.base);
    let trusted: [&[(&str, &str)]; 4] = [
        &[("origin", app.base.as_str())],
        &[("origin", "https://shop.example")],
        &[("referer", own_page.as_str())],
        &[],
    ];
    for headers in trusted {
        let rename = Some(json!({"name": "Ada"}));
        assert_eq!(send(&app, Method::PATCH, me, cookie, None, headers, rename).await.0, 200, "{headers:?}");
    }
    // A browser never attaches a bearer token on its own; reads change nothing; without a session cookie there is
    // nothing to ride.
    let rename = Some(json!({"name": "Grace"}));
    assert_eq!(send(&app, Method::PATCH, me, None, Some(&victim.token), &evil, rename).await.0, 200);
    assert_eq!(send(&app, Method::GET, me, cookie, None, &evil, None).await.0, 200);
    let signin = Some(json!({"email": "victim@example.com", "password": "pass-word-1"}));
    assert_eq!(send(&app, Method::POST, "/api/users/signin", None, None, &evil, signin).await.0, 200);
    assert_eq!(send(&app, Method::POST, signout, cookie, None, &[], None).await.0, 204);
}

#[tokio::test]
async fn session_cookies_are_secure_when_the_client_came_over_https() {
    let app = spawn_app().await;
    app.signup("tls@example.com").await;
    let set_cookies = |res: &reqwest::Response| -> Vec<String> {
        res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
    };
    let signin = |app: &TestApp, headers: &'static [(&'static str, &'static str)]| {
        let mut req = app
            .client
            .post(format!("{}/api/users/signin", app.base))
            .json(&json!({"email": "tls@example.com", "password": "pass-word-1"}));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send()
    };
    let all_secure = |cookies: &[String]| cookies.len() == 2 && cookies.iter().all(|c| c.ends_with("; Secure"));
    let none_secure = |cookies: &[String]| cookies.len() == 2 && cookies.iter().all(|c| !c.contains("Secure"));

    let plain = signin(&app, &[]).await.unwrap();
    assert!(none_secure(&set_cookies(&plain)), "{:?}", set_cookies(&plain));
    let via_http_proxy = signin(&app, &[("x-forwarded-proto", "http")]).await.unwrap();
    assert!(none_secure(&set_cookies(&via_http_proxy)));
    for https in [&[("x-forwarded-proto", "https")][..], &[("forwarded", "for=203.0.113.7;proto=https")][..]] {
        let res = signin(&app, https).await.unwrap();
        assert!(all_secure(&set_cookies(&res)), "{https:?}: {:?}", set_cookies(&res));
    }
    // Clearing them on sign-out over HTTPS uses the same attribute.
    let token =
        signin(&app, &[]).await.unwrap().json::<Value>().await.unwrap()["accessToken"].as_str().unwrap().to_string();
    let out = app
        .client
        .post(format!("{}/api/users/signout", app.base))
        .bearer_auth(&token)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(all_secure(&set_cookies(&out)), "{:?}", set_cookies(&out));

    // `auth.cookie_secure` makes them Secure on every request.
    let app = spawn_app_with(|c| c.auth.cookie_secure = true).await;
    app.signup("tls@example.com").await;
    assert!(all_secure(&set_cookies(&signin(&app, &[]).await.unwrap())));
}
