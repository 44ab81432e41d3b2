//! Operations routes: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::cache::ChannelState;
use crate::lifecycle::Phase;

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
    let pg_up = state.health.postgres_up();
    let pool = state.store.pool();
    let remote = state.cache.remote();
    let redis_connected = remote.is_some_and(|r| r.is_up());
    let owed = remote.is_some_and(|r| r.is_up() && !r.usable());
    let breaker = remote.map_or("disabled", |r| r.breaker_state().as_str());
    let coherence = state.cache.coherence();
    let (listener, bus) = (coherence.listener(), coherence.bus());
    let degraded = !pg_up
        || (state.redis_enabled && !redis_connected)
        || listener == ChannelState::Down
        || bus == ChannelState::Down;
    let phase = state.health.phase();
    let (code, status) = match phase {
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        Phase::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        Phase::Ready if degraded => (StatusCode::OK, "degraded"),
        Phase::Ready => (StatusCode::OK, "ready"),
    };
    json_response(
        code,
        json!({
            "status": status,
            "postgres": {
                "connected": pg_up,
                "pool_size": pool.size(),
                "pool_idle": pool.num_idle(),
            },
            "redis": {
                "enabled": state.redis_enabled,
                "connected": redis_connected,
                "breaker": breaker,
                "owed_invalidations": owed,
            },
            "l1": {
                "enabled": state.cache.local().enabled(),
                "ttl_cap_secs": coherence.l1_ttl_cap().map(|d| d.as_secs()),
            },
            "listener": {
                "state": listener.as_str(),
                "applied_id": state.listener.as_ref().and_then(|l| l.applied_id()),
            },
            "bus": { "state": bus.as_str() },
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
