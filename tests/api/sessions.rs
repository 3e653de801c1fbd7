//! Sessions that really end: sign-out, a refresh-token replay and blocking close the user's open WebSockets at once;
//! a blocked account's refresh is refused without burning the token; sign-ins beyond the hashing capacity are refused
//! with 503 instead of piling up.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{connect, next_json, spawn_app, spawn_app_with};

/// Reads until the server closes the socket; returns the close code.
async fn close_code(ws: &mut crate::helpers::Socket) -> Option<u64> {
    loop {
        let msg = next_json(ws, Duration::from_secs(1)).await.expect("the socket is closed within a second");
        match msg["type"].as_str() {
            Some("closed") => return msg["code"].as_u64(),
            Some("notification") | Some("ready") => continue,
            _ => panic!("unexpected {msg}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_refresh_replay_and_blocking_close_open_sockets() {
    let app = spawn_app().await;
    let admin = app.admin().await;

    // Sign-out closes the socket of that session (4401) but not another session of the same user.
    let alice = app.signup("alice-ws@example.com").await;
    let other =
        app.signin("alice-ws@example.com", "pass-word-1").await.body["accessToken"].as_str().unwrap().to_string();
    let mut ws = connect(&app, Some(&alice.token), "").await;
    let mut other_ws = connect(&app, Some(&other), "").await;
    assert_eq!(next_json(&mut ws, Duration::from_secs(2)).await.unwrap()["type"], "ready");
    assert_eq!(next_json(&mut other_ws, Duration::from_secs(2)).await.unwrap()["type"], "ready");
    assert_eq!(app.post("/api/users/signout", Some(&alice.token), json!({})).await.status, 204);
    assert_eq!(close_code(&mut ws).await, Some(4401));
    assert!(next_json(&mut other_ws, Duration::from_millis(300)).await.is_none(), "the other session stays open");

    // A replayed refresh token revokes its family: the family's socket closes.
    let bob = app.signup("bob-ws@example.com").await;
    let rotated = app.post("/api/users/refresh", None, json!({"refreshToken": bob.refresh})).await;
    let bob_token = rotated.body["accessToken"].as_str().unwrap().to_string();
    let mut bob_ws = connect(&app, Some(&bob_token), "").await;
    assert_eq!(next_json(&mut bob_ws, Duration::from_secs(2)).await.unwrap()["type"], "ready");
    let replay = app.post("/api/users/refresh", None, json!({"refreshToken": bob.refresh})).await;
    assert_eq!(replay.code(), "refresh_token_reused");
    assert_eq!(close_code(&mut bob_ws).await, Some(4401));

    // Blocking closes every socket of the user with 4403, and a blocked user cannot open a new one.
    let block = app.post(&format!("/api/admin/users/{}/block", alice.id), Some(&admin), json!({})).await;
    assert_eq!(block.status, 200, "{:?}", block.body);
    assert_eq!(close_code(&mut other_ws).await, Some(4403));
    let url = format!("{}/ws/notifications", app.base.replace("http://", "ws://"));
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {other}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err(), "upgrade refused for a blocked account");
}

#[tokio::test]
async fn a_blocked_account_refresh_is_refused_without_using_the_token() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.signup("carol-refresh@example.com").await;
    app.post(&format!("/api/admin/users/{}/block", user.id), Some(&admin), json!({})).await;
    let refused = app.post("/api/users/refresh", None, json!({"refreshToken": user.refresh})).await;
    assert_eq!((refused.status, refused.code()), (403, "account_blocked"));
    app.post(&format!("/api/admin/users/{}/unblock", user.id), Some(&admin), json!({})).await;
    // The same token still works after unblocking: it was not consumed, so this is no replay.
    let after = app.post("/api/users/refresh", None, json!({"refreshToken": user.refresh})).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    let me = app.get("/api/users/me", after.body["accessToken"].as_str()).await;
    assert_eq!(me.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_beyond_the_hashing_capacity_get_503_with_retry_after() {
    // One hashing thread, one waiting slot, and a deliberately slow hash.
    let app = spawn_app_with(|c| {
        c.auth.hash_workers = 1;
        c.auth.hash_queue = 1;
        c.auth.argon2_memory_kib = 16 * 1024;
        c.auth.argon2_iterations = 3;
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (client, base) = (app.client.clone(), app.base.clone());
        tasks.spawn(async move {
            let r = client
                .post(format!("{base}/api/users/signin"))
                .json(&json!({"email": format!("nobody{i}@example.com"), "password": "wrong-pass-1"}))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let body: serde_json::Value = r.json().await.unwrap();
            (body["error"]["code"].as_str().unwrap_or_default().to_string(), retry_after)
        });
    }
    let (mut refused, mut answered) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (code, Some(_)) if code == "auth_busy" => refused += 1,
            (code, None) if code == "invalid_credentials" => answered += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(refused > 0, "a flood beyond one worker and one waiting slot must be refused");
    assert!(answered >= 1, "the ones that got a slot are answered");
    // Once the flood is over, sign-in works again.
    let ok = app
        .post("/api/users/signup", None, json!({"email": "after@example.com", "password": "pass-word-1", "name": "A"}))
        .await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
}
