//! Operations routes: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::report::Report;
use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations",
    description = "Liveness: 200 while the process runs.",
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
pub(super) async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}))
}

/// 200 `ready` or `degraded` (a dependency is down but answers still flow); 503 while starting or
/// draining, so a load balancer sends traffic elsewhere.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    description = "Readiness: `ready`, or `degraded` when a dependency, the change listener or the bus is down but answers still flow; 503 while starting or draining.",
    responses(
        (status = 200, description = "Serving", body = Object),
        (status = 503, description = "Starting or draining", body = Object),
    ))]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let r = Report::gather(&state);
    let (code, status) = r.readiness();
    json_response(
        code,
        json!({
            "status": status,
            "postgres": {
                "connected": r.postgres_up,
                "pool_size": r.pool_size,
                "pool_idle": r.pool_idle,
            },
            "redis": {
                "enabled": r.redis_enabled,
                "connected": r.redis_connected,
                "connect_error": r.redis_error,
                "breaker": r.breaker,
                "owed_invalidations": r.owed,
            },
            "l1": {
                "enabled": r.l1_enabled,
                "ttl_cap_secs": r.l1_ttl_cap_secs,
            },
            "listener": {
                "state": r.listener.as_str(),
                "applied_id": r.applied_id,
            },
            "bus": { "state": r.bus.as_str() },
            "sessions": {
                "store": state.sessions.store().as_str(),
                "owed_write_backs": state.sessions.owes(),
            },
            "instance": state.instance,
        }),
    )
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Prometheus text exposition.",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let (entries, bytes) = state.cache.local().usage().await;
    state.metrics.l1_entries.set(entries as i64);
    state.metrics.l1_bytes.set(bytes as i64);
    let mut res = state.metrics.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

fn json_response(code: StatusCode, v: serde_json::Value) -> Response {
    (code, axum::Json(v)).into_response()
}
