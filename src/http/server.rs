//! The HTTP/1.1 accept loop, with the connection limits `axum::serve` lacks.
//!
//! Every connection has a watchdog with two deadlines, in the manner of nginx's `client_header_timeout` and
//! `keepalive_timeout`:
//! - a request head (request line and headers) must arrive whole within `header_read_timeout`, counted from the
//!   connection's start or from the first byte of a later request on it, however slowly it trickles in;
//! - a connection with no request in flight is closed after `keep_alive_timeout`;
//! - a response whose writing makes no progress for `send_timeout` (the client does not read it) closes its
//!   connection, in the manner of nginx's `send_timeout`: hyper has no write timeout, and without this a client
//!   that never reads keeps its place under the cap, and the response it asked for, forever.
//!
//! A request being handled is otherwise left to the request deadline, and a connection upgraded to a WebSocket
//! leaves the watchdog altogether. hyper's own `header_read_timeout` cannot do
//! this: its timer also runs through the idle wait between keep-alive requests, so the head timeout would be the
//! idle timeout as well.
//!
//! At most `max_connections` connections are open at once, WebSockets included, and at most
//! `max_connections_per_client` from one client address (an IPv6 /64; trusted proxies, which carry many clients,
//! are not counted). Past either, a new connection is answered `503 service_unavailable` and closed at once: it
//! costs the server an accept and a write, and the client learns to retry instead of waiting in the kernel's
//! backlog.
//!
//! On shutdown the loop stops accepting, idle connections close, and in-flight requests finish first.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use super::open_counts::{Held, OpenCounts};
use crate::config::HttpConfig;
use crate::netaddr::{client_key, trusted, Cidr};

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Peers not held to `max_connections_per_client`.
    pub trusted_proxies: Arc<[Cidr]>,
}

impl From<&HttpConfig> for Limits {
    fn from(http: &HttpConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(http.keep_alive_timeout_ms),
            send_timeout: Duration::from_millis(http.send_timeout_ms),
            max_connections: http.max_connections,
            max_connections_per_client: http.max_connections_per_client,
            trusted_proxies: http.trusted_proxies.clone().into(),
        }
    }
}

/// What a connection over the cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 93\r\n\
\r\n\
{\"error\":{\"code\":\"service_unavailable\",\"message\":\"too many open connections; retry shortly\"}}";

/// File descriptors kept free of connections: the store, the log, outgoing connections to the backends.
const RESERVED_FDS: u64 = 256;

impl Limits {
    /// Raises the process's open-file limit as far as allowed (the usual soft limit, 1024, is far below the default
    /// `max_connections`), and lowers `max_connections` to fit what is available, so that the cap, not `EMFILE`,
    /// is what turns connections away.
    pub fn fit_open_file_limit(mut self) -> Self {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => {
                let room = limit.saturating_sub(RESERVED_FDS).max(1);
                if (self.max_connections as u64) > room {
                    tracing::warn!(
                        max_connections = self.max_connections,
                        open_file_limit = limit,
                        using = room,
                        "http.max_connections exceeds what the open-file limit allows; lowered"
                    );
                    self.max_connections = room as usize;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
        }
        self
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then waits for in-flight requests to finish.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let per_client = OpenCounts::default();
    // Each connection task holds a receiver until it ends, so `closed()` below waits for all of them.
    let (stop, stopped) = watch::channel(false);
    // Refusals are logged at most every 10 s, with their count, so a flood does not flood the log as well.
    let (mut refused, mut warned_at) = (0u64, None::<Instant>);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let place = permits.clone().try_acquire_owned().ok().and_then(|permit| {
            if trusted(&limits.trusted_proxies, peer.ip()) {
                return Some((permit, None));
            }
            let held = per_client.try_hold(&client_key(peer.ip()), limits.max_connections_per_client)?;
            Some((permit, Some(held)))
        });
        match place {
            Some((permit, client)) => {
                let place = Place { _permit: permit, _client: client };
                tokio::spawn(connection(stream, peer, place, app.clone(), limits.clone(), stopped.clone()));
            }
            None => {
                // A fresh socket's send buffer is empty, so this never waits; then the socket is dropped.
                let _ = stream.try_write(OVER_CAPACITY);
                refused += 1;
                if warned_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    let limit = limits.max_connections;
                    let per_client = limits.max_connections_per_client;
                    tracing::warn!(%peer, refused, limit, per_client, "http.max_connections or http.max_connections_per_client reached: connections refused");
                    (refused, warned_at) = (0, Some(Instant::now()));
                }
            }
        }
    }
    drop(listener);
    drop(stopped);
    let _ = stop.send(true);
    stop.closed().await;
}

async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // Typically out of file descriptors: retrying at once would spin; connections closing will free some.
    tracing::error!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A connection's place under both caps, held as long as its socket.
struct Place {
    _permit: OwnedSemaphorePermit,
    _client: Option<Held>,
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    place: Place,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    // The permit lives in the socket, so an upgraded WebSocket keeps counting until it closes.
    let io = TokioIo::new(Watched { stream, activity: activity.clone(), _place: place });
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |request: Request<Incoming>| {
            let activity = activity.clone();
            let in_flight = InFlight::start(activity.clone());
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await.unwrap_or_else(|never| match never {});
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    activity.set(Phase::Upgraded);
                }
                Ok::<_, Infallible>(response.map(|body| WatchedBody { body, _in_flight: in_flight }))
            }
        }
    });
    // No timer: hyper's header timeout is off and the watchdog below keeps both deadlines.
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline) => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, phase = activity.get().name(), "closing a connection past its deadline");
                    return;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head: since the connection opened, or since the first byte of a later request.
    ReadingHead { since: Instant },
    /// This many requests are being handled or their responses sent.
    Busy { requests: usize },
    /// Nothing in flight and no byte of a next request since `since`.
    Idle { since: Instant },
    /// Switched to another protocol (a WebSocket), which has its own rules.
    Upgraded,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::ReadingHead { .. } => "reading_head",
            Phase::Busy { .. } => "busy",
            Phase::Idle { .. } => "idle",
            Phase::Upgraded => "upgraded",
        }
    }
}

/// What one connection is doing, shared by its socket, its requests and its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    /// Since when a write has waited on the client (its receive window is full), if one is waiting. This is apart
    /// from the phase: a response whose body hyper has taken whole is still being written after its request ends.
    write_blocked: Mutex<Option<Instant>>,
    /// Wakes the watchdog when its deadline moves earlier or appears.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::ReadingHead { since: Instant::now() }),
            write_blocked: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    fn get(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase;
    }

    /// The earlier of the phase's deadline and the blocked write's; an upgraded connection has none.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let phase = match self.get() {
            Phase::ReadingHead { since } => Some(since + limits.header_read_timeout),
            Phase::Idle { since } => Some(since + limits.keep_alive_timeout),
            Phase::Busy { .. } => None,
            Phase::Upgraded => return None,
        };
        let blocked =
            self.write_blocked.lock().unwrap_or_else(PoisonError::into_inner).map(|at| at + limits.send_timeout);
        match (phase, blocked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A write could not go out: the client is not reading. Starts the send timeout unless it runs already.
    fn on_write_blocked(&self) {
        let mut blocked = self.write_blocked.lock().unwrap_or_else(PoisonError::into_inner);
        if blocked.is_none() {
            *blocked = Some(Instant::now());
            drop(blocked);
            self.changed.notify_one();
        }
    }

    /// Bytes went out: the client reads, so the send timeout starts again at the next blocked write.
    fn on_write_progress(&self) {
        *self.write_blocked.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Bytes arrived: on an idle connection they start the next request's head.
    fn on_read(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::ReadingHead { since: Instant::now() };
            drop(phase);
            self.changed.notify_one();
        }
    }
}

/// One request from its parsed head until its response body is dropped (sent, or abandoned).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        {
            let mut phase = activity.phase.lock().unwrap_or_else(PoisonError::into_inner);
            *phase = match *phase {
                Phase::Busy { requests } => Phase::Busy { requests: requests + 1 },
                Phase::Upgraded => Phase::Upgraded,
                Phase::ReadingHead { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
            };
        }
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut phase = self.0.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::Busy { requests } = *phase {
            *phase = if requests > 1 {
                Phase::Busy { requests: requests - 1 }
            } else {
                Phase::Idle { since: Instant::now() }
            };
            drop(phase);
            self.0.changed.notify_one();
        }
    }
}

/// A response body that ends its request's [`InFlight`] when hyper is done with it.
struct WatchedBody {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket, reporting reads and blocked writes to the watchdog and holding the connection's place under
/// the cap.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    _place: Place,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl Watched {
    fn report_write(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => self.activity.on_write_blocked(),
            Poll::Ready(Ok(written)) if *written > 0 => self.activity.on_write_progress(),
            Poll::Ready(_) => {}
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.report_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.report_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            max_connections: 1,
            max_connections_per_client: 1,
            trusted_proxies: Arc::new([]),
        }
    }

    #[test]
    fn over_capacity_reply_is_a_well_formed_503() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "service_unavailable");
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection_phase() {
        let limits = limits();
        let activity = Arc::new(Activity::new());
        let opened = Instant::now();
        assert_eq!(activity.deadline(&limits), Some(opened + limits.header_read_timeout));
        // Trickled bytes of the first head do not push its deadline back.
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.on_read();
        assert_eq!(activity.deadline(&limits), Some(opened + limits.header_read_timeout));

        let request = InFlight::start(activity.clone());
        assert_eq!(activity.deadline(&limits), None, "a request in flight has no connection deadline");
        tokio::time::advance(Duration::from_secs(100)).await;
        // Its response cannot go out: the client has until the send timeout to read some of it.
        activity.on_write_blocked();
        let blocked = Instant::now();
        assert_eq!(activity.deadline(&limits), Some(blocked + limits.send_timeout));
        tokio::time::advance(Duration::from_secs(10)).await;
        activity.on_write_blocked();
        assert_eq!(activity.deadline(&limits), Some(blocked + limits.send_timeout), "still the first block");
        activity.on_write_progress();
        assert_eq!(activity.deadline(&limits), None, "the client read: no deadline until the next block");
        drop(request);
        // The request is over but hyper still writes what it took of the body: the send timeout bounds that too.
        let idle = Instant::now();
        activity.on_write_blocked();
        assert_eq!(activity.deadline(&limits), Some(idle + limits.send_timeout));
        activity.on_write_progress();
        let idle = Instant::now();
        assert_eq!(activity.deadline(&limits), Some(idle + limits.keep_alive_timeout));

        tokio::time::advance(Duration::from_secs(30)).await;
        activity.on_read();
        assert_eq!(activity.deadline(&limits), Some(Instant::now() + limits.header_read_timeout));

        let upgrade = InFlight::start(activity.clone());
        activity.set(Phase::Upgraded);
        drop(upgrade);
        activity.on_read();
        assert_eq!(activity.deadline(&limits), None, "a WebSocket is never idle");
    }
}
