use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::extract::Json;
use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready))
}

/// The process is up.
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The store answers and the entity supervisors accept work.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.events.ping().await?;
    let supervisors = [
        state.catalog.router().is_running(),
        state.carts.router().is_running(),
        state.orders.router().is_running(),
        state.payments.is_running(),
        state.coupons.is_running(),
    ];
    if supervisors.contains(&false) {
        return Err(ApiError::unavailable("entity supervisors are not running"));
    }
    Ok(Json(json!({ "status": "ready" })))
}
