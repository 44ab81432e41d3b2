//! The HTTP surface: `router(state)` with lookups, writes and operations routes, the metrics
//! middleware and JSON fallbacks for unknown routes and methods.

mod admin;
mod error;
mod events;
mod extract;
mod front;
mod lookups;
mod middleware;
/// The OpenAPI document (`/openapi.json`).
pub mod openapi;
mod ops;
mod proxy;
mod ratelimits;
mod report;
mod request_id;
mod sessions;
mod webhooks;
mod writes;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, patch, post, put};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

pub use error::ApiError;
#[doc(hidden)]
pub use extract::Conditions;
pub use front::{serve, Front};
/// The answer for one cached lookup (exposed for the micro-benchmarks).
#[doc(hidden)]
pub use lookups::respond;
pub use proxy::{Peer, Proxy};
pub(crate) use request_id::{request_id, with_request_id};
pub use webhooks::Hooks;

use crate::answers::Answers;
use crate::cache::Tiered;
use crate::config::Secret;
use crate::domain::PhoneParser;
use crate::invalidation::{Bus, Invalidator, Listener};
use crate::labels::Platform;
use crate::lifecycle::Health;
use crate::metrics::Metrics;
use crate::sessions::{Events, RateLimiter, Sessions};
use crate::store::Store;

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
    /// Call sessions (Redis, or memory while it is away).
    pub sessions: Arc<Sessions>,
    /// Event streams and their SSE subscribers.
    pub events: Arc<Events>,
    /// Named rate limits.
    pub rate_limits: Arc<RateLimiter>,
    /// The call-start webhooks' settings and recent answers.
    pub hooks: Arc<Hooks>,
    /// The handler app every request sidecache does not answer goes to (`proxy.upstream`).
    pub proxy: Option<Arc<Proxy>>,
    /// The consistency auditor (`audit.samples_per_sec` > 0).
    pub auditor: Option<Arc<crate::audit::Auditor>>,
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

/// The body limit of the webhook routes (at least; `server.body_limit_bytes` if larger).
const WEBHOOK_BODY_LIMIT: usize = 8 << 20;

/// Builds the router behind the [`Front`] door (which gives every answer its `x-request-id`).
/// `body_limit` bounds every request body.
pub(crate) fn router(state: AppState, body_limit: usize) -> Router {
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
    // A session's data may be as large as `sessions.max_bytes`, beside its envelope.
    let session_limit = body_limit.max(state.sessions.max_bytes() + 4096);
    let state_routes = Router::new()
        .route("/v1/sessions", get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            put(sessions::put)
                .get(sessions::get)
                .patch(sessions::patch)
                .delete(sessions::delete),
        )
        .route("/v1/sessions/{id}/touch", post(sessions::touch))
        .layer(DefaultBodyLimit::max(session_limit))
        .route(
            "/v1/sessions/{id}/events",
            post(events::post_session).get(events::get_session),
        )
        .route(
            "/v1/topics/{name}/events",
            post(events::post_topic).get(events::get_topic),
        )
        .route("/v1/rate-limits/{name}/check", post(ratelimits::check));
    let v1 = v1.merge(state_routes);
    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::serve));
    let mut app = v1.merge(ops);
    let hooks = &state.hooks;
    for (platform, path, handler) in [
        (
            Platform::ElevenLabs,
            "/v1/webhooks/elevenlabs",
            post(webhooks::elevenlabs),
        ),
        (Platform::Vapi, "/v1/webhooks/vapi", post(webhooks::vapi)),
        (
            Platform::Retell,
            "/v1/webhooks/retell",
            post(webhooks::retell),
        ),
        (
            Platform::Twilio,
            "/v1/webhooks/twilio/voice",
            post(webhooks::twilio),
        ),
    ] {
        if hooks.mounted(platform) {
            // A platform's event other than call start (a Vapi end-of-call report, a Retell
            // `call_analyzed` with its transcript) may be far larger than a lookup's body.
            app = app.route(
                path,
                handler.layer(DefaultBodyLimit::max(body_limit.max(WEBHOOK_BODY_LIMIT))),
            );
        }
    }
    if state.admin_token.is_set() {
        let protected = Router::new()
            .route("/admin/invalidate", post(admin::invalidate))
            .route("/admin/flush", post(admin::flush))
            .route("/admin/stats", get(admin::stats))
            .route("/admin/stream", get(admin::stream))
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                middleware::require_token,
            ));
        app = app
            .merge(protected)
            .route("/admin/", get(admin::page))
            .route(
                "/admin",
                get(|| async { axum::response::Redirect::permanent("/admin/") }),
            );
    }
    // Any request no route answers is the handler app's when there is one.
    let app = match state.proxy.clone() {
        Some(proxy) => {
            let metrics = state.metrics.clone();
            app.fallback(move |req: axum::extract::Request| async move {
                proxy.forward(&metrics, req).await
            })
        }
        None => app.fallback(not_found),
    };
    app.method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::track,
        ))
        // A bug must not take the process down or answer without the JSON shape.
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| middleware::panicked(),
        ))
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
