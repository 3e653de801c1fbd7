//! Connection limits at the HTTP edge: slow or silent request heads, idle keep-alive connections, the connection cap.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{raw_connect, read_response, read_until_closed, spawn_app_with};

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n";

/// Waits until a new connection is refused with the canned 503 (the server has taken in the connections that fill
/// it), failing with `what` after `within`. A connection let in meanwhile is closed again before the next try.
async fn refused_within(app: &crate::helpers::TestApp, within: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let mut conn = raw_connect(app).await;
        let reply = read_until_closed(&mut conn, Duration::from_millis(300)).await;
        if reply.text.starts_with("HTTP/1.1 503") {
            return;
        }
        assert!(start.elapsed() < within, "{what}: {reply:?}");
    }
}

/// Waits until a new connection is served `GET /health`, failing with `what` after `within`.
async fn served_within(app: &crate::helpers::TestApp, within: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let mut conn = raw_connect(app).await;
        conn.write_all(GET_HEALTH).await.unwrap();
        if read_response(&mut conn, Duration::from_secs(1)).await.map(|r| r.0) == Some(200) {
            return;
        }
        assert!(start.elapsed() < within, "{what}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slow_or_silent_request_heads_are_cut_off() {
    let app = spawn_app_with(|c| c.http.header_read_timeout_ms = 1000).await;

    // A head that arrives in pieces, but whole within the limit, is served.
    let mut prompt = raw_connect(&app).await;
    for piece in ["GET /health HTTP/1.1\r\n", "Host: test\r\n", "Connection: close\r\n\r\n"] {
        prompt.write_all(piece.as_bytes()).await.unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    let reply = read_until_closed(&mut prompt, Duration::from_secs(5)).await;
    assert!(reply.text.starts_with("HTTP/1.1 200"), "{reply:?}");

    // Connected and silent; or half a head and then silence: closed after the timeout, with nothing served.
    let mut silent = raw_connect(&app).await;
    let mut partial = raw_connect(&app).await;
    partial.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n").await.unwrap();
    let (silent, partial) = tokio::join!(
        read_until_closed(&mut silent, Duration::from_secs(5)),
        read_until_closed(&mut partial, Duration::from_secs(5)),
    );
    for (what, reply) in [("silent", silent), ("half-sent", partial)] {
        assert!(reply.closed, "the {what} connection was still open after 5 s");
        assert_eq!(reply.text, "", "the {what} connection got an answer");
        assert!(reply.waited >= Duration::from_millis(900), "{what}: closed before the timeout ({reply:?})");
    }

    // One header line every 200 ms: each line comes well within the second, but the head never completes in time.
    let mut trickle = raw_connect(&app).await;
    trickle.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let start = Instant::now();
    let mut closed = false;
    for line in 0..25 {
        let reply = read_until_closed(&mut trickle, Duration::from_millis(200)).await;
        assert_eq!(reply.text, "", "the trickled head was served");
        if reply.closed || trickle.write_all(format!("X-Slow-{line}: y\r\n").as_bytes()).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a head trickled over 5 s kept its connection open");
    assert!(start.elapsed() < Duration::from_secs(3), "closed only after {:?}", start.elapsed());
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_but_busy_ones_and_websockets_are_not() {
    let app = spawn_app_with(|c| c.http.keep_alive_timeout_ms = 1000).await;

    // Requests 300 ms apart keep one connection alive for well over the idle timeout.
    let mut conn = raw_connect(&app).await;
    for _ in 0..6 {
        conn.write_all(GET_HEALTH).await.unwrap();
        let (status, _) =
            read_response(&mut conn, Duration::from_secs(5)).await.expect("kept-alive connection answers");
        assert_eq!(status, 200);
        sleep(Duration::from_millis(300)).await;
    }
    conn.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut conn, Duration::from_secs(5)).await.map(|r| r.0), Some(200));
    // Then silence: closed once idle for the timeout.
    let reply = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(reply.closed, "an idle keep-alive connection was still open after 5 s");
    assert!(reply.waited >= Duration::from_millis(900), "closed before the idle timeout: {reply:?}");

    // An open WebSocket is not an idle HTTP connection.
    let user = app.signup("idle-ws@example.com").await;
    let mut req = format!("{}/ws/notifications", app.base.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", user.token).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket connects");
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.contains("ready")));
    sleep(Duration::from_millis(2500)).await;
    ws.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("an answer to the ping");
    assert!(matches!(reply, Some(Ok(Message::Text(t))) if t.contains("pong")));
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_while_open_ones_keep_working() {
    let app = spawn_app_with(|c| c.http.max_connections = 3).await;
    // Signed up without HTTP, so no pooled client connection takes a place.
    let session = app.state.auth.signup("capped@example.com", "pass-word-1", "Capped").await.unwrap();
    let mut req = format!("{}/ws/notifications", app.base.replace("http://", "ws://")).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", session.access_token).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket connects");
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.contains("ready")));
    let mut open = vec![raw_connect(&app).await, raw_connect(&app).await];

    // The WebSocket and two plain connections fill the cap: the next one is told to retry and closed at once.
    let mut extra = raw_connect(&app).await;
    let reply = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(reply.closed, "a connection over the cap was kept open: {reply:?}");
    assert!(reply.text.starts_with("HTTP/1.1 503"), "{reply:?}");
    assert!(reply.text.contains(r#""code":"service_unavailable""#), "{reply:?}");

    // The open ones are served as usual.
    for conn in &mut open {
        conn.write_all(GET_HEALTH).await.unwrap();
        assert_eq!(read_response(conn, Duration::from_secs(5)).await.map(|r| r.0), Some(200));
    }
    ws.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.contains("pong")));

    // Closing the WebSocket makes room for a new connection.
    drop(ws);
    served_within(&app, Duration::from_secs(5), "no room for a new connection after one closed").await;
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_silent_or_half_sent_connections() {
    let app = spawn_app_with(|c| c.http.header_read_timeout_ms = 500).await;
    let _silent = raw_connect(&app).await;
    let mut partial = raw_connect(&app).await;
    partial.write_all(b"GET /health HTTP/1.1\r\nHost: te").await.unwrap();
    sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(5), app.stop()).await.expect("shutdown finished within 5 s");
}

/// A connection with a tiny receive window that asks for responses larger than the kernel's buffers, pipelined,
/// and never reads them.
async fn slow_reader(app: &crate::helpers::TestApp, path: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let addr = app.base.trim_start_matches("http://").parse().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.repeat(8).as_bytes()).await.unwrap();
    stream
}

/// Security review H1: a response that is never read held its connection, and its place under the cap. A body
/// hyper takes whole (a static file) was held until the keep-alive timeout; one streamed (a product image, read
/// from the media store as the client takes it) forever. With every place taken by such readers, every new visitor
/// got 503. A write that makes no progress for `http.send_timeout_ms` now closes the connection, whatever the body.
#[tokio::test]
async fn readers_that_never_read_lose_their_connection_after_the_send_timeout() {
    // A 3 MB image, uploaded before a restart with a cap of two connections (so no pooled client connection of
    // the setup takes one of them).
    let app = crate::helpers::spawn_app().await;
    let admin = app.admin().await;
    let id = app.create_product(&admin, "Large print", 900, 1).await["id"].as_str().unwrap().to_string();
    let mut image = b"\x89PNG\r\n\x1a\n".to_vec();
    image.extend((0..3_000_000u32).map(|i| (i % 251) as u8));
    let uploaded = app
        .client
        .post(format!("{}/api/products/{id}/image", app.base))
        .bearer_auth(&admin)
        .header("content-type", "image/png")
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 200);
    let url = uploaded.json::<serde_json::Value>().await.unwrap()["imageUrl"].as_str().unwrap().to_string();
    let app = crate::helpers::spawn_app_in(app.stop().await, |c| {
        c.http.max_connections = 2;
        c.http.send_timeout_ms = 1000;
    })
    .await;

    // About 14 MB (the documentation bundle) and 24 MB (the image) of responses, far more than a socket buffers.
    let _held = [slow_reader(&app, "/docs/swagger-ui-bundle.js").await, slow_reader(&app, &url).await];
    refused_within(&app, Duration::from_secs(5), "the readers hold both places").await;

    // Well past the send timeout, long before the keep-alive one (60 s), a new visitor is served again.
    served_within(&app, Duration::from_secs(10), "readers that never read still hold every connection").await;
}

/// Security review H1 (and M2): one client address may hold at most `http.max_connections_per_client`
/// connections, so it cannot take every place of the server; a trusted proxy, which carries many clients, is not
/// held to it.
#[tokio::test]
async fn one_client_address_holds_a_bounded_number_of_connections() {
    let app = spawn_app_with(|c| c.http.max_connections_per_client = 2).await;
    let _open = [raw_connect(&app).await, raw_connect(&app).await];
    refused_within(&app, Duration::from_secs(5), "a third connection from one address").await;
    drop(_open);
    served_within(&app, Duration::from_secs(5), "closing connections gave no room back").await;

    let behind_proxy = spawn_app_with(|c| {
        c.http.max_connections_per_client = 2;
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut conn = raw_connect(&behind_proxy).await;
        conn.write_all(GET_HEALTH).await.unwrap();
        assert_eq!(read_response(&mut conn, Duration::from_secs(5)).await.map(|r| r.0), Some(200));
        open.push(conn);
    }
}
