//! The layers every request passes: its id (for log lines), counting and timing by matched route
//! with load shedding, and the bearer token of the admin routes.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::request_id::request_id;
use super::{ApiError, AppState};
use crate::metrics::Metrics;

/// Compares in time that depends only on the lengths, not on where the inputs first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lets a request through with the right bearer token; anything else is a counted, logged 401.
pub(super) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let expected = state.admin_token.expose().as_bytes();
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), expected) => next.run(req).await,
        other => {
            state.metrics.admin_auth_failures.inc();
            tracing::warn!(
                path = %req.uri().path(),
                request_id = %request_id(),
                token = if other.is_some() { "wrong" } else { "missing" },
                "admin request refused"
            );
            let mut res = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "This route needs `Authorization: Bearer <admin token>`.",
            )
            .into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sidecache admin\""),
            );
            res
        }
    }
}

/// Counts and times every request the router answers by matched route, method and status, and
/// sheds load: an API request that finds `server.max_concurrency` others in flight is answered
/// 503 with `Retry-After` at once instead of queueing without bound (health and metrics always
/// answer). One middleware for both, since every layer costs; the front door does the same for
/// the lookups it answers itself.
pub(super) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let res = if route.starts_with("/v1/") {
        match state.limiter.try_acquire() {
            Ok(_permit) => {
                state.metrics.in_flight.inc();
                let _counted = InFlight(&state.metrics);
                next.run(req).await
            }
            Err(_) => overloaded(&state),
        }
    } else {
        next.run(req).await
    };
    state.metrics.http_request(
        route,
        method.as_str(),
        res.status().as_str(),
        started.elapsed().as_secs_f64(),
    );
    res
}

/// The answer to a request refused for load (counted).
pub(super) fn overloaded(state: &AppState) -> Response {
    state.metrics.overload_rejections.inc();
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Too many requests are in flight; retry shortly.",
    )
    .into_response()
}

/// The answer when a handler panicked: the process goes on, the client gets the JSON shape.
pub(super) fn panicked() -> Response {
    tracing::error!("a handler panicked");
    ApiError::internal().into_response()
}

/// Keeps the in-flight gauge right even if the handler is dropped mid-request.
pub(super) struct InFlight<'a>(pub(super) &'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abcdefgh12345678", b"abcdefgh12345678"));
        assert!(!constant_time_eq(b"abcdefgh12345678", b"abcdefgh12345679"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
