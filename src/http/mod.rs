//! The HTTP surface: `router(state)` with lookups, writes and operations routes, the metrics
//! middleware and JSON fallbacks for unknown routes and methods.

mod admin;
mod error;
mod extract;
mod lookups;
/// The OpenAPI document (`/openapi.json`).
pub mod openapi;
mod ops;
mod writes;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use error::ApiError;
/// The answer for one cached lookup (exposed for the micro-benchmarks).
#[doc(hidden)]
pub use lookups::respond;

use crate::answers::Answers;
use crate::cache::Tiered;
use crate::config::Secret;
use crate::domain::PhoneParser;
use crate::invalidation::{Bus, Invalidator, Listener};
use crate::lifecycle::Health;
use crate::metrics::Metrics;
use crate::store::Store;

tokio::task_local! {
    /// The `x-request-id` of the request being served.
    static REQUEST_ID: HeaderValue;
}

/// The id of the request being served, for log lines (empty outside a request).
pub(crate) fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.to_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// Runs `fut` (a task spawned for the current request) with the request's id.
pub(crate) fn with_request_id<F: std::future::Future>(
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    let id = REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    REQUEST_ID.scope(id, fut)
}

/// Everything a handler needs.
pub struct AppInner {
    pub cache: Arc<Tiered>,
    /// The lookups (read path) over `cache` and `store`.
    pub answers: Answers,
    pub store: Store,
    pub invalidator: Invalidator,
    pub metrics: Arc<Metrics>,
    /// Phone numbers parsed with `cache.default_region`, recent spellings remembered.
    pub phones: PhoneParser,
    pub health: Arc<Health>,
    pub redis_enabled: bool,
    /// This process's id (leases, bus messages, `application_name`).
    pub instance: String,
    pub listener: Option<Arc<Listener>>,
    pub bus: Option<Arc<Bus>>,
    /// Permits for API requests in flight (`server.max_concurrency`).
    pub limiter: Arc<tokio::sync::Semaphore>,
    /// The `/admin` bearer token; unset = no admin routes.
    pub admin_token: Secret,
    /// Connection URLs with their passwords redacted, for `/admin/stats`.
    pub postgres_url: String,
    pub redis_url: String,
    pub l1_max_bytes: u64,
}

/// Cheaply cloneable handle to the shared state.
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Builds the router. `body_limit` bounds every request body.
pub fn router(state: AppState, body_limit: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/organizations", post(writes::create_org))
        .route(
            "/v1/organizations/by-phone/{phone}",
            get(lookups::org_by_phone),
        )
        .route(
            "/v1/organizations/{id}",
            get(lookups::org_by_id).patch(writes::update_org),
        )
        .route("/v1/leads", post(writes::create_lead))
        .route("/v1/leads/by-phone/{phone}", get(lookups::lead_by_phone))
        .route(
            "/v1/leads/{id}",
            get(lookups::lead_by_id)
                .patch(writes::update_lead)
                .delete(writes::delete_lead),
        )
        .route("/v1/leads/{id}/context", get(lookups::context))
        .route("/v1/leads/{id}/summary", get(lookups::summary))
        .route("/v1/leads/{id}/greeting", get(lookups::greeting))
        .route("/v1/leads/{id}/history", get(lookups::history))
        .route(
            "/v1/leads/{id}/conversations",
            post(writes::create_conversation),
        )
        .route("/v1/conversations/{id}", patch(writes::update_conversation))
        .route("/v1/calls/initiation", get(lookups::initiation));
    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::serve));
    let mut app = v1.merge(ops);
    if state.admin_token.is_set() {
        let protected = Router::new()
            .route("/admin/invalidate", post(admin::invalidate))
            .route("/admin/flush", post(admin::flush))
            .route("/admin/stats", get(admin::stats))
            .route("/admin/stream", get(admin::stream))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                admin::require_token,
            ));
        app = app
            .merge(protected)
            .route("/admin/", get(admin::page))
            .route(
                "/admin",
                get(|| async { axum::response::Redirect::permanent("/admin/") }),
            );
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // A bug must not take the process down or answer without the JSON shape.
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a handler panicked");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "An internal error occurred.",
                )
                .into_response()
            },
        ))
        // Every answer carries an `x-request-id` (the caller's, or a new UUID).
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "route_not_found",
        "No such route; see API.md for the routes sidecache serves.",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not accept that method.",
    )
}

/// Counts and times every request by matched route, method and status, and sheds load: an API
/// request that finds `server.max_concurrency` others in flight is answered 503 with
/// `Retry-After` at once instead of queueing without bound (health and metrics always answer).
/// One middleware for both, since every layer costs on the hot path.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    // The request's log lines carry its id (the caller's x-request-id, or a new one). A
    // task-local, not a span: an INFO span per request cost a quarter of an L1 hit's CPU.
    let id = req
        .headers()
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let res = async {
        if route.starts_with("/v1/") {
            match state.limiter.clone().try_acquire_owned() {
                Ok(_permit) => {
                    state.metrics.in_flight.inc();
                    let _counted = InFlight(&state.metrics);
                    next.run(req).await
                }
                Err(_) => {
                    state.metrics.overload_rejections.inc();
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "Too many requests are in flight; retry shortly.",
                    )
                    .into_response()
                }
            }
        } else {
            next.run(req).await
        }
    };
    let res = REQUEST_ID.scope(id, res).await;
    let status = res.status();
    let labels = [route, method.as_str(), status.as_str()];
    state.metrics.http_requests.with_label_values(&labels).inc();
    state
        .metrics
        .http_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    res
}

/// Keeps the in-flight gauge right even if the handler is dropped mid-request.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}
