use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, user_from, JWT_SECRET};

#[tokio::test]
async fn signup_signin_and_profile() {
    let app = spawn_app().await;
    let ada = app.signup("Ada@Example.com").await;

    let dup = app
        .post(
            "/api/users/signup",
            None,
            json!({"email": " ada@example.COM", "password": "pass-word-1", "name": "Other"}),
        )
        .await;
    assert_eq!((dup.status, dup.code()), (409, "email_taken"));
    let weak =
        app.post("/api/users/signup", None, json!({"email": "b@example.com", "password": "short", "name": "B"})).await;
    assert_eq!((weak.status, weak.code()), (422, "weak_password"));
    let bad = app
        .post("/api/users/signup", None, json!({"email": "not-an-email", "password": "pass-word-1", "name": "B"}))
        .await;
    assert_eq!((bad.status, bad.code()), (422, "invalid_email"));
    let sneaky = app
        .post(
            "/api/users/signup",
            None,
            json!({"email": "c@example.com", "password": "pass-word-1", "name": "C", "role": "admin"}),
        )
        .await;
    assert_eq!((sneaky.status, sneaky.code()), (400, "invalid_body"));

    let wrong = app.signin("ada@example.com", "wrong-pass-1").await;
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"));
    let nobody = app.signin("nobody@example.com", "pass-word-1").await;
    assert_eq!((nobody.status, nobody.code()), (401, "invalid_credentials"));
    let ok = app.signin("ADA@example.com", "pass-word-1").await;
    assert_eq!(ok.status, 200);

    let me = app.get("/api/users/me", Some(&ada.token)).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.body["email"], "ada@example.com");
    assert_eq!(me.body["role"], "user");
    assert!(me.body.get("passwordHash").is_none() && me.body.get("password_hash").is_none());

    let patch = json!({"name": "Ada L.", "phone": "+44 20 7946 0000",
        "address": {"line1": "1 Analytical St", "city": "London", "postalCode": "N1 9GU", "country": "gb"}});
    let updated = app.patch("/api/users/me", Some(&ada.token), patch).await;
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(updated.body["name"], "Ada L.");
    assert_eq!(updated.body["address"]["country"], "GB");
    let escalate = app.patch("/api/users/me", Some(&ada.token), json!({"role": "admin"})).await;
    assert_eq!((escalate.status, escalate.code()), (400, "invalid_body"));
    let bad_phone = app.patch("/api/users/me", Some(&ada.token), json!({"phone": "call me maybe"})).await;
    assert_eq!((bad_phone.status, bad_phone.code()), (422, "validation_failed"));
    let cleared = app.patch("/api/users/me", Some(&ada.token), json!({"phone": null})).await;
    assert_eq!(cleared.body["phone"], serde_json::Value::Null);
    assert_eq!(cleared.body["name"], "Ada L.");
}

#[tokio::test]
async fn cookies_carry_the_session() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(format!("{}/api/users/signup", app.base))
        .json(&json!({"email": "cookie@example.com", "password": "pass-word-1", "name": "C"}))
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> =
        res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(cookies.len(), 2);
    assert!(cookies.iter().all(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict")));
    let access =
        cookies.iter().find(|c| c.starts_with("access_token=")).unwrap().split(';').next().unwrap().to_string();
    let refresh =
        cookies.iter().find(|c| c.starts_with("refresh_token=")).unwrap().split(';').next().unwrap().to_string();

    let me = app.client.get(format!("{}/api/users/me", app.base)).header("cookie", &access).send().await.unwrap();
    assert_eq!(me.status(), 200);
    let rotated =
        app.client.post(format!("{}/api/users/refresh", app.base)).header("cookie", &refresh).send().await.unwrap();
    assert_eq!(rotated.status(), 200);
    // Security review L4: renewed by the cookie, the tokens stay in the cookies; a script on the page (an injected
    // one too) cannot mint a refresh token it can read.
    assert_eq!(rotated.headers().get_all("set-cookie").iter().count(), 2);
    let body: serde_json::Value = rotated.json().await.unwrap();
    assert!(body.get("accessToken").is_none() && body.get("refreshToken").is_none(), "{body}");
    assert_eq!(body["user"]["email"], "cookie@example.com");
}

/// Security review L4: a client that keeps its session in cookies (the web app) gets no token in the body; over
/// HTTPS the cookies are `__Host-` named (no other host of the domain can set or shadow them), plain-named ones are
/// ignored there, and every answer carries `Strict-Transport-Security`.
#[tokio::test]
async fn cookie_sessions_keep_tokens_out_of_scripts_and_use_host_cookies_over_https() {
    let app = spawn_app().await;
    let post = |path: &str, body: serde_json::Value| {
        app.client.post(format!("{}{path}", app.base)).header("x-forwarded-proto", "https").json(&body).send()
    };
    let res = post(
        "/api/users/signup?session=cookie",
        json!({"email": "host@example.com", "password": "pass-word-1", "name": "H"}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["strict-transport-security"], "max-age=31536000");
    let cookies: Vec<String> =
        res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    for name in ["__Host-access_token=", "__Host-refresh_token="] {
        let c = cookies.iter().find(|c| c.starts_with(name)).unwrap_or_else(|| panic!("{name} in {cookies:?}"));
        assert!(c.contains("; Path=/;") && c.contains("; Secure") && !c.contains("Domain"), "{c}");
    }
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body.get("accessToken").is_none() && body.get("refreshToken").is_none(), "{body}");
    let access = cookies.iter().find(|c| c.starts_with("__Host-access_token=")).unwrap().split(';').next().unwrap();
    let token = access.split_once('=').unwrap().1;
    let me = |cookie: String| {
        app.client
            .get(format!("{}/api/users/me", app.base))
            .header("x-forwarded-proto", "https")
            .header("cookie", cookie)
            .send()
    };
    assert_eq!(me(access.to_string()).await.unwrap().status(), 200);
    // The same token under the plain name, as a sibling host could set it: not a session over HTTPS.
    assert_eq!(me(format!("access_token={token}")).await.unwrap().status(), 401);
    // Plain HTTP answers carry no HSTS.
    let plain = app.client.get(format!("{}/health", app.base)).send().await.unwrap();
    assert!(plain.headers().get("strict-transport-security").is_none());
    // Without `session=cookie`, an API client gets its tokens in the body as before.
    let signin =
        post("/api/users/signin", json!({"email": "host@example.com", "password": "pass-word-1"})).await.unwrap();
    let body: serde_json::Value = signin.json().await.unwrap();
    assert!(body["accessToken"].is_string() && body["refreshToken"].is_string());
}

fn forge(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_expired_and_tampered_tokens_are_refused() {
    let app = spawn_app().await;
    let user = app.signup("eve@example.com").await;
    let now = chrono::Utc::now().timestamp();
    let claims = |iat: i64, exp: i64, role: &str| json!({"sub": user.id, "role": role, "jti": uuid::Uuid::new_v4().to_string(), "fam": "f", "iat": iat, "exp": exp});

    let cases = [
        ("missing", None, "unauthenticated"),
        ("expired", Some(forge(claims(now - 3600, now - 60, "user"), JWT_SECRET)), "token_expired"),
        (
            "wrong key",
            Some(forge(claims(now, now + 600, "admin"), "some-other-secret-that-is-long-enough")),
            "invalid_token",
        ),
        ("garbage", Some("not.a.jwt".to_string()), "invalid_token"),
    ];
    for (name, token, code) in cases {
        let r = app.get("/api/users/me", token.as_deref()).await;
        assert_eq!((r.status, r.code()), (401, code), "{name}");
    }

    // Tampered: keep the signature, change the payload to claim admin.
    let parts: Vec<&str> = user.token.split('.').collect();
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let mut payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["role"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.to_string()), parts[2]);
    let r = app.get("/api/admin/users", Some(&tampered)).await;
    assert_eq!((r.status, r.code()), (401, "invalid_token"));

    // `alg: none` with no signature.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims(now, now + 600, "admin").to_string());
    let r = app.get("/api/users/me", Some(&format!("{header}.{body}."))).await;
    assert_eq!((r.status, r.code()), (401, "invalid_token"));

    let basic = app
        .client
        .get(format!("{}/api/users/me", app.base))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let user = app.signup("rot@example.com").await;

    let first = app.post("/api/users/refresh", None, json!({"refreshToken": user.refresh})).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let second = user_from(&first);
    assert_ne!(second.refresh, user.refresh);
    assert_eq!(app.get("/api/users/me", Some(&second.token)).await.status, 200);

    // A thief replays the old refresh token: refused, and every token of the family dies with it.
    let replay = app.post("/api/users/refresh", None, json!({"refreshToken": user.refresh})).await;
    assert_eq!((replay.status, replay.code()), (401, "refresh_token_reused"));
    let legit = app.post("/api/users/refresh", None, json!({"refreshToken": second.refresh})).await;
    assert_eq!(legit.status, 401);
    let me = app.get("/api/users/me", Some(&second.token)).await;
    assert_eq!((me.status, me.code()), (401, "token_revoked"));

    let unknown = app.post("/api/users/refresh", None, json!({"refreshToken": "deadbeef"})).await;
    assert_eq!((unknown.status, unknown.code()), (401, "invalid_token"));
    let none = app.post("/api/users/refresh", None, json!({})).await;
    assert_eq!((none.status, none.code()), (401, "unauthenticated"));

    // Other sign-ins of the same user are separate families and keep working.
    let other = app.signin("rot@example.com", "pass-word-1").await;
    assert_eq!(app.get("/api/users/me", Some(other.body["accessToken"].as_str().unwrap())).await.status, 200);
}

#[tokio::test]
async fn signout_revokes_access_and_refresh() {
    let app = spawn_app().await;
    let user = app.signup("bye@example.com").await;
    let out = app.post("/api/users/signout", Some(&user.token), json!({})).await;
    assert_eq!(out.status, 204);
    let me = app.get("/api/users/me", Some(&user.token)).await;
    assert_eq!((me.status, me.code()), (401, "token_revoked"));
    let refresh = app.post("/api/users/refresh", None, json!({"refreshToken": user.refresh})).await;
    assert_eq!((refresh.status, refresh.code()), (401, "token_revoked"));
}

#[tokio::test]
async fn admin_routes_refuse_everyone_else() {
    let app = spawn_app().await;
    let user = app.signup("plain@example.com").await;
    let admin = app.admin().await;
    let product = app.create_product(&admin, "Lamp", 2500, 3).await;
    let pid = product["id"].as_str().unwrap();

    let attempts = [
        (reqwest::Method::GET, "/api/admin/users".to_string(), None),
        (reqwest::Method::POST, format!("/api/admin/users/{}/block", user.id), Some(json!({}))),
        (reqwest::Method::POST, format!("/api/admin/users/{}/unblock", user.id), Some(json!({}))),
        (
            reqwest::Method::POST,
            "/api/products".to_string(),
            Some(json!({"title": "x", "price": 1, "currency": "USD", "category": "c"})),
        ),
        (
            reqwest::Method::PUT,
            format!("/api/products/{pid}"),
            Some(
                json!({"version": 1, "title": "x", "description": "", "price": 1, "currency": "USD", "category": "c", "imageUrl": null}),
            ),
        ),
        (reqwest::Method::PATCH, format!("/api/products/{pid}"), Some(json!({"version": 1, "price": 1}))),
        (reqwest::Method::DELETE, format!("/api/products/{pid}"), None),
        (reqwest::Method::POST, format!("/api/products/{pid}/stock"), Some(json!({"delta": 100, "reason": "mine"}))),
    ];
    for (method, path, body) in attempts {
        let r = app.request(method.clone(), &path, Some(&user.token), body.clone()).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{method} {path}");
        let r = app.request(method.clone(), &path, None, body).await;
        assert_eq!(r.status, 401, "{method} {path} anonymous");
    }
    let after = app.get(&format!("/api/products/{pid}"), None).await;
    assert_eq!((after.body["price"].as_i64(), after.body["stockOnHand"].as_i64()), (Some(2500), Some(3)));
}

#[tokio::test]
async fn blocking_locks_a_user_out_at_once() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("mallory@example.com").await;
    for i in 0..3 {
        app.signup(&format!("filler{i}@example.com")).await;
    }

    let page = app.get("/api/admin/users?page=2&limit=2", Some(&admin)).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body["total"], 5);
    assert_eq!(page.body["totalPages"], 3);
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    assert!(page.body["items"][0].get("passwordHash").is_none());

    let blocked = app.post(&format!("/api/admin/users/{}/block", user.id), Some(&admin), json!({})).await;
    assert_eq!((blocked.status, blocked.body["status"].as_str()), (200, Some("blocked")));
    let me = app.get("/api/users/me", Some(&user.token)).await;
    assert_eq!((me.status, me.code()), (403, "account_blocked"));
    let signin = app.signin("mallory@example.com", "pass-word-1").await;
    assert_eq!((signin.status, signin.code()), (403, "account_blocked"));
    let refresh = app.post("/api/users/refresh", None, json!({"refreshToken": user.refresh})).await;
    assert_eq!((refresh.status, refresh.code()), (403, "account_blocked"));

    app.post(&format!("/api/admin/users/{}/unblock", user.id), Some(&admin), json!({})).await;
    assert_eq!(app.get("/api/users/me", Some(&user.token)).await.status, 200);

    let me_admin = app.get("/api/users/me", Some(&admin)).await;
    let own = app
        .post(&format!("/api/admin/users/{}/block", me_admin.body["id"].as_str().unwrap()), Some(&admin), json!({}))
        .await;
    assert_eq!((own.status, own.code()), (422, "cannot_block_self"));
    let ghost = app.post("/api/admin/users/no-such-user/block", Some(&admin), json!({})).await;
    assert_eq!((ghost.status, ghost.code()), (404, "user_not_found"));
}

#[tokio::test]
async fn auth_endpoints_are_rate_limited_per_client() {
    let app = spawn_app_with(|c| c.http.auth_rate_limit_per_minute = 3).await;
    for _ in 0..3 {
        assert_eq!(app.signin("x@example.com", "pass-word-1").await.status, 401);
    }
    let limited = app.signin("x@example.com", "pass-word-1").await;
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    assert!(limited.headers.get("retry-after").is_some());
    // Other endpoints are not limited.
    assert_eq!(app.get("/api/products", None).await.status, 200);
}
