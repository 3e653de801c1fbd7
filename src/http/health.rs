use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Json;
use super::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready))
}

/// The process is up.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = serde_json::Value)))]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Each dependency's state. 503 when requests cannot be served: the store is down, revocations cannot be checked
/// (authentication fails closed), or the entity supervisors are not running. A bus, cache or media store that is down
/// leaves the service working (the outbox holds events; reads go to the store; only image uploads and image reads
/// fail): 200 with `"status": "degraded"`. Only states are shown (why a dependency is down goes to the log, not to
/// whoever asks), and the answer is reused for a second, so asking often costs the dependencies nothing more.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses((status = 200, description = "`status` is `ready` or `degraded`, with each dependency's state", body = serde_json::Value),
        (status = 503, description = "`status: unavailable`: the store, revocations or the supervisors are down", body = serde_json::Value)))]
async fn ready(State(state): State<AppState>) -> Response {
    let (code, body) = state.ready.get_or_probe(|| probe_all(&state)).await;
    (code, Json(body)).into_response()
}

/// The last `/ready` answer, reused for [`ReadyCache::FRESH`].
#[derive(Clone, Default)]
pub struct ReadyCache(Arc<Mutex<Option<(Instant, StatusCode, Value)>>>);

impl ReadyCache {
    const FRESH: Duration = Duration::from_secs(1);

    async fn get_or_probe<F: std::future::Future<Output = (StatusCode, Value)>>(
        &self,
        probe: impl FnOnce() -> F,
    ) -> (StatusCode, Value) {
        let cached = self.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some((_, code, body)) = cached.filter(|(at, ..)| at.elapsed() < Self::FRESH) {
            return (code, body);
        }
        let (code, body) = probe().await;
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), code, body.clone()));
        (code, body)
    }
}

async fn probe_all(state: &AppState) -> (StatusCode, Value) {
    let deps = &state.dependencies;
    let within = |what: &'static str| move |_| Err(format!("{what} did not answer within {} ms", PROBE.as_millis()));
    let probe_key = ["ready-probe".to_string()];
    let (store, revocations, bus, cache, media) = tokio::join!(
        tokio::time::timeout(PROBE, deps.store.ping()),
        tokio::time::timeout(PROBE, deps.revocations.any_revoked(&probe_key)),
        tokio::time::timeout(PROBE, deps.bus.ping()),
        tokio::time::timeout(PROBE, deps.cache.ping()),
        tokio::time::timeout(PROBE, state.media.ping()),
    );
    let store = store.map_or_else(within("store"), |r| r.map_err(|e| e.to_string()));
    let revocations = revocations.map_or_else(within("revocations"), |r| r.map(drop).map_err(|e| e.to_string()));
    let bus = bus.map_or_else(within("bus"), |r| r.map_err(|e| e.to_string()));
    let cache = cache.unwrap_or_else(within("cache"));
    let media = media.map_or_else(within("media store"), |r| r.map_err(|e| e.to_string()));
    let supervisors = [
        state.catalog.router().is_running(),
        state.carts.router().is_running(),
        state.orders.router().is_running(),
        state.payments.is_running(),
        state.coupons.is_running(),
    ]
    .iter()
    .all(|running| *running);
    let serving = store.is_ok() && revocations.is_ok() && supervisors;
    let status = match (serving, bus.is_ok() && cache.is_ok() && media.is_ok()) {
        (false, _) => "unavailable",
        (true, false) => "degraded",
        (true, true) => "ready",
    };
    let body = json!({
        "status": status,
        "store": probe(Some(deps.store_backend), &store),
        "revocations": probe(None, &revocations),
        "bus": probe(Some(deps.bus.backend()), &bus),
        "cache": probe(Some(deps.cache.backend()), &cache),
        "media": probe(Some(state.media.backend()), &media),
        "supervisors": if supervisors { "up" } else { "down" },
    });
    for (what, result) in
        [("store", &store), ("revocations", &revocations), ("bus", &bus), ("cache", &cache), ("media", &media)]
    {
        if let Err(error) = result {
            tracing::warn!(dependency = what, %error, "readiness probe: down");
        }
    }
    let code = if serving { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, body)
}

/// How long `/ready` waits for each dependency.
const PROBE: Duration = Duration::from_secs(2);

fn probe(backend: Option<&str>, result: &Result<(), String>) -> Value {
    let mut state = json!({ "status": if result.is_ok() { "up" } else { "down" } });
    if let Some(backend) = backend {
        state["backend"] = backend.into();
    }
    state
}
