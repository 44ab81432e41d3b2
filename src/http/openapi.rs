//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they answer
//! (utoipa), served as JSON at `/openapi.json`. The admin routes are in it only when they are
//! mounted (`admin.token` set), so the document describes exactly what this instance serves.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, events, lookups, ops, ratelimits, sessions, webhooks, writes, AppState};
use crate::labels::Platform;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sidecache",
        description = "A caching sidecar for voice-agent platforms: read-through lookups (process memory, Redis, Postgres) that stay fresh. Every lookup answer carries `x-cache` and `age`; errors are `{\"error\": {\"code\", \"message\"}}`. With `proxy.upstream` set, every request no route here answers is passed to the handler app unchanged (502 `upstream_unavailable`, 504 `upstream_timeout` when it cannot answer); without it, unknown routes are 404 JSON.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        lookups::org_by_id,
        lookups::org_by_phone,
        lookups::lead_by_id,
        lookups::lead_by_phone,
        lookups::context,
        lookups::summary,
        lookups::greeting,
        lookups::history,
        lookups::initiation,
        writes::create_org,
        writes::update_org,
        writes::create_lead,
        writes::update_lead,
        writes::delete_lead,
        writes::create_conversation,
        writes::update_conversation,
        sessions::put,
        sessions::get,
        sessions::patch,
        sessions::touch,
        sessions::delete,
        sessions::list,
        events::post_session,
        events::get_session,
        events::post_topic,
        events::get_topic,
        ratelimits::check,
        webhooks::elevenlabs,
        webhooks::vapi,
        webhooks::retell,
        webhooks::twilio,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        admin::invalidate,
        admin::flush,
        admin::stats,
        admin::stream,
    ),
    modifiers(&AdminToken),
    tags(
        (name = "lookups", description = "Cached, read-through"),
        (name = "writes", description = "To Postgres first, then invalidation, then the answer"),
        (name = "sessions", description = "Call sessions shared by handler instances (Redis; this instance's memory while it is away)"),
        (name = "events", description = "Event streams per session and topic, delivered over Server-Sent Events on every instance"),
        (name = "rate limits", description = "Named limits, exact across the fleet (GCRA)"),
        (name = "webhooks", description = "The voice platforms' call-start webhooks, each mounted only when its secret is set"),
        (name = "operations", description = "Health, readiness, metrics"),
        (name = "admin", description = "Mounted only when admin.token is set; bearer token"),
    )
)]
struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = doc.components.as_mut() {
            components.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The document as this instance serves it: admin routes only when mounted, and the webhooks
/// of the platforms `mounted` says are.
pub fn document(
    admin_mounted: bool,
    mounted: impl Fn(Platform) -> bool,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    if !admin_mounted {
        doc.paths
            .paths
            .retain(|path, _| !path.starts_with("/admin"));
    }
    doc.paths.paths.retain(|path, _| {
        Platform::ALL
            .iter()
            .all(|p| mounted(*p) || !path.starts_with(&format!("/v1/webhooks/{}", p.as_str())))
    });
    doc
}

/// Built on each request: it is asked for rarely, and a process-wide copy would be wrong for a
/// second instance in the same process (tests) with the other admin setting.
pub(super) async fn serve(State(state): State<AppState>) -> Response {
    let body = document(state.admin_token.is_set(), |p| state.hooks.mounted(p))
        .to_json()
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
