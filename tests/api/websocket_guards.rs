//! The notification WebSocket's guards: the origin of cookie-authenticated upgrades, and message size limits.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{raw_connect, read_until_closed, spawn_app, TestApp};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

fn upgrade_request(app: &TestApp, headers: &[(&'static str, String)]) -> Request<()> {
    let mut req = format!("{}/ws/notifications", app.base.replace("http://", "ws://")).into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    req
}

/// The next text message as JSON, or the close code as `{"closed": code}`.
async fn next(ws: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a message within 5 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(frame))) => return json!({"closed": frame.map(|f| u16::from(f.code))}),
            Some(Ok(_)) => continue,
            other => panic!("socket failed: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_cookie_authenticated_upgrade_must_come_from_an_allowed_origin() {
    let app = spawn_app().await;
    let user = app.signup("socket-origin@example.com").await;
    let cookie = ("cookie", format!("access_token={}", user.token));

    // Another site opening a socket in the user's name with their cookie: refused before the upgrade.
    let hijack = upgrade_request(&app, &[cookie.clone(), ("origin", "https://evil.example".into())]);
    match tokio_tungstenite::connect_async(hijack).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403),
        other => panic!("a cross-site upgrade was not refused: {:?}", other.map(|(_, res)| res.status())),
    }

    // From the site itself it works, and a bearer token (which no page can make a browser attach) is not checked.
    let own = upgrade_request(&app, &[cookie, ("origin", app.base.clone())]);
    let bearer = upgrade_request(
        &app,
        &[("authorization", format!("Bearer {}", user.token)), ("origin", "https://evil.example".into())],
    );
    for req in [own, bearer] {
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("upgrade accepted");
        assert_eq!(next(&mut ws).await["userId"], user.id.as_str());
    }
}

/// Upgrades a raw connection (optionally with a bearer token) and returns it right after the 101 response.
async fn raw_upgrade(app: &TestApp, token: Option<&str>) -> TcpStream {
    let mut conn = raw_connect(app).await;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "GET /ws/notifications HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    while !received.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        conn.read_exact(&mut byte).await.expect("upgrade response");
        received.push(byte[0]);
    }
    assert!(received.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&received));
    conn
}

/// Sends the header of a masked text frame declaring `length` bytes, then only the first 64 of them.
async fn send_frame_start(conn: &mut TcpStream, length: u64) {
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend((0..64).map(|i| b'a' ^ [1, 2, 3, 4][i % 4]));
    conn.write_all(&frame).await.unwrap();
}

/// The server's frames (unmasked) as (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let (opcode, short) = (bytes[0] & 0x0f, usize::from(bytes[1] & 0x7f));
        let (length, start) = match short {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => (usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().unwrap())).unwrap(), 10),
            n => (n, 2),
        };
        out.push((opcode, bytes[start..start + length].to_vec()));
        bytes = &bytes[start + length..];
    }
    out
}

fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames.iter().find(|(opcode, _)| *opcode == 0x8).map(|(_, payload)| u16::from_be_bytes([payload[0], payload[1]]))
}

#[tokio::test]
async fn oversized_messages_close_the_socket_without_being_read() {
    let app = spawn_app().await;
    let user = app.signup("socket-size@example.com").await;

    // Before authenticating, a frame declaring 1 MB: closed with 1009 on its header alone, though the rest of the
    // megabyte never comes (a server waiting for it would instead close for lack of authentication, 4401).
    let mut conn = raw_upgrade(&app, None).await;
    send_frame_start(&mut conn, 1 << 20).await;
    let reply = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(reply.closed, "still open: {reply:?}");
    assert_eq!(close_code(&frames(&reply.bytes)), Some(1009));

    // Authenticated, a frame declaring 100 KiB: the same.
    let mut conn = raw_upgrade(&app, Some(&user.token)).await;
    send_frame_start(&mut conn, 100 * 1024).await;
    let reply = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    let received = frames(&reply.bytes);
    assert!(String::from_utf8_lossy(&received[0].1).contains("ready"), "{received:?}");
    assert_eq!(close_code(&received), Some(1009));
    assert!(reply.closed);

    // Before authenticating, anything over 4 KiB is too big.
    let (mut ws, _) = tokio_tungstenite::connect_async(upgrade_request(&app, &[])).await.unwrap();
    ws.send(Message::Text("x".repeat(8 * 1024).into())).await.unwrap();
    assert_eq!(next(&mut ws).await, json!({"closed": 1009}));

    // Authenticated by message, a 32 KiB message is within the limit: answered, and the socket stays usable.
    let (mut ws, _) = tokio_tungstenite::connect_async(upgrade_request(&app, &[])).await.unwrap();
    ws.send(Message::Text(json!({"type": "auth", "token": user.token}).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "ready");
    ws.send(Message::Text(json!({"type": "note", "text": "x".repeat(32 * 1024)}).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "error");
    ws.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "pong");
}
