//! `POST /v1/rate-limits/{name}/check`: one GCRA decision, with the IETF draft's `RateLimit-Policy`
//! and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers: `"<name>";q=<quota>;w=<window
//! s>` and `"<name>";r=<remaining>;t=<s until reset>`) and `Retry-After` when denied.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::{payload_too_large, ApiError, ErrorBody};
use super::extract::{json_body, PathText};
use super::AppState;

const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const STORE: HeaderName = HeaderName::from_static("x-ratelimit-store");

/// Longest key, in bytes.
const MAX_KEY: usize = 256;

/// `POST /v1/rate-limits/{name}/check`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Check {
    /// Who or what is limited, e.g. a user id or `ip:203.0.113.9` (1-256 bytes).
    key: String,
    /// How much this request counts (0 only looks; at most the limit's burst).
    #[serde(default = "one")]
    cost: u32,
}

fn one() -> u32 {
    1
}

fn secs_ceil(d: std::time::Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

#[utoipa::path(post, path = "/v1/rate-limits/{name}/check", tag = "rate limits",
    description = "Counts `cost` against `key` under the named limit, exactly across the fleet (one Redis call, GCRA). Answers 200 whether allowed or not; `Retry-After` when not.",
    params(("name" = String, Path, description = "A limit defined in [rate_limits.limits.<name>]")),
    request_body = Check,
    responses(
        (status = 200, description = "The decision", body = Object,
            headers(("ratelimit-policy" = String), ("ratelimit" = String), ("x-ratelimit-store" = String)),
            example = json!({"allowed": true, "limit": 10, "remaining": 9, "reset_after_ms": 6000, "retry_after_ms": 0})),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No limit of that name", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid key or cost", body = ErrorBody),
    ))]
pub(super) async fn check(
    State(state): State<AppState>,
    PathText(name): PathText,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|_| payload_too_large())?;
    check_answer(&state, &name, &headers, &body).await
}

/// One check, as the front door and the router both answer it.
pub(super) async fn check_answer(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let Some(limit) = state.rate_limits.limit(name) else {
        return Err(not_found());
    };
    let b: Check = json_body(headers, body)?;
    if b.key.is_empty() || b.key.len() > MAX_KEY || b.key.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_value",
            format!("`key` must be 1-{MAX_KEY} bytes without control characters"),
        ));
    }
    if b.cost > limit.burst {
        return Err(ApiError::unprocessable(
            "invalid_value",
            format!("`cost` must be at most the limit's burst, {}", limit.burst),
        ));
    }
    let Some(d) = state.rate_limits.check(name, &b.key, b.cost).await else {
        return Err(not_found());
    };
    let mut res = axum::Json(json!({
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "reset_after_ms": d.reset_after.as_millis() as u64,
        "retry_after_ms": d.retry_after.as_millis().max(u128::from(!d.allowed)) as u64,
    }))
    .into_response();
    let h = res.headers_mut();
    let policy = format!("\"{name}\";q={};w={}", limit.limit, limit.period.as_secs());
    let now = format!(
        "\"{name}\";r={};t={}",
        d.remaining,
        secs_ceil(d.reset_after)
    );
    for (n, v) in [(POLICY, policy), (RATELIMIT, now)] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(n, v);
        }
    }
    if !d.allowed {
        h.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(secs_ceil(d.retry_after).max(1)),
        );
    }
    // Where it was counted: `redis` (fleet-wide), or `memory` (this instance, Redis away).
    h.insert(STORE, HeaderValue::from_static(d.store.as_str()));
    Ok(res)
}

fn not_found() -> ApiError {
    ApiError::not_found(
        "rate_limit_not_found",
        "No rate limit of that name is configured.",
    )
}
