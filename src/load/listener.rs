//! A user's notification WebSocket (`GET /ws/notifications`), read by a task of its own so the server never waits
//! on it; the order pushes it receives are handed to the user.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::api::Api;
use super::stats::Recorder;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An order's new status, as pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderUpdate {
    pub order_id: String,
    pub status: String,
}

pub struct Listener {
    updates: mpsc::UnboundedReceiver<OrderUpdate>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Opens the socket with the access token and waits for `ready`. The error names the failure the way the
    /// report groups it (`401`, `ws: ...`).
    pub async fn connect(api: &Api, token: &str, recorder: Arc<Recorder>) -> Result<Self, String> {
        let url = format!("{}/ws/notifications", api.base().replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().map_err(|e| format!("ws: {e}"))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| format!("ws: {e}"))?;
        request.headers_mut().insert("authorization", bearer);
        let mut socket = match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(WsError::Http(response))) => return Err(response.status().as_u16().to_string()),
            Ok(Err(e)) => return Err(format!("ws: {e}")),
            Err(_) => return Err("ws: connect timeout".into()),
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.as_str().contains("\"ready\"") => {}
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(format!("ws: closed {}", frame.map_or(0, |f| u16::from(f.code))));
            }
            Ok(other) => return Err(format!("ws: expected `ready`, got {other:?}")),
            Err(_) => return Err("ws: no `ready` in time".into()),
        }
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(read(socket, updates_tx, stopped, recorder));
        Ok(Self { updates, stop: Some(stop), task })
    }

    /// The next status pushed for `order_id` (pushes for other orders are skipped); `None` once the socket ended.
    pub async fn next_status(&mut self, order_id: &str) -> Option<String> {
        loop {
            let update = self.updates.recv().await?;
            if update.order_id == order_id {
                return Some(update.status);
            }
        }
    }

    pub fn is_open(&self) -> bool {
        !self.task.is_finished()
    }

    /// Closes the socket with a close frame.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
    }
}

async fn read(
    mut socket: Socket,
    updates: mpsc::UnboundedSender<OrderUpdate>,
    mut stop: oneshot::Receiver<()>,
    recorder: Arc<Recorder>,
) {
    loop {
        tokio::select! {
            // Asked to stop, or the listener was dropped.
            _ = &mut stop => {
                let _ = socket.close(None).await;
                return;
            }
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(update) = order_update(text.as_str()) {
                        recorder.push_received();
                        let _ = updates.send(update);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    recorder.socket_closed(format!("closed {}", frame.map_or(0, |f| u16::from(f.code))));
                    return;
                }
                // Pings are answered by the stream itself.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    recorder.socket_closed(format!("error: {e}"));
                    return;
                }
                None => {
                    recorder.socket_closed("ended".into());
                    return;
                }
            },
        }
    }
}

/// `{"type":"notification","notification":{"kind":"order.status_changed","data":{"orderId":..,"status":..}}}`.
fn order_update(text: &str) -> Option<OrderUpdate> {
    let message: Value = serde_json::from_str(text).ok()?;
    if message["type"] != "notification" {
        return None;
    }
    let notification = &message["notification"];
    if !notification["kind"].as_str()?.starts_with("order.") {
        return None;
    }
    let data = &notification["data"];
    Some(OrderUpdate { order_id: data["orderId"].as_str()?.to_string(), status: data["status"].as_str()?.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_pushes_are_recognised() {
        let push = r#"{"type":"notification","notification":{"id":42,"kind":"order.status_changed","title":"Order paid",
            "data":{"orderId":"ord_1","status":"paid","reason":null}}}"#;
        assert_eq!(order_update(push), Some(OrderUpdate { order_id: "ord_1".into(), status: "paid".into() }));
        let payment =
            r#"{"type":"notification","notification":{"kind":"payment.captured","data":{"orderId":"ord_1"}}}"#;
        assert_eq!(order_update(payment), None);
        assert_eq!(order_update(r#"{"type":"pong"}"#), None);
        assert_eq!(order_update("not json"), None);
    }
}
