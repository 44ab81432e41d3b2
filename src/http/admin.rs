//! The operator surface under `/admin`, mounted only when `admin.token` is set: invalidation and
//! flush (fleet-wide, through the same path as writes), stats as JSON and as a Server-Sent Events
//! stream, and a status page fed by that stream. Every route but the page requires
//! `Authorization: Bearer <token>`; the page itself holds no data.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::report::Report;
use super::AppState;
use crate::cache::{CacheKey, Deletion, Dropped, Kind, Tag};
use crate::labels::LookupResult;
use crate::lifecycle::Phase;
use crate::metrics::{hit_ratio, l1_hit_ratio, Counts, Snapshot};

/// The status page: static HTML and a little JS, built into the binary.
const PAGE: &str = include_str!("admin.html");

pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct InvalidateBody {
    /// Cache keys, e.g. `lead:id:<uuid>`, `greeting:<uuid>:voice`.
    #[serde(default)]
    keys: Vec<String>,
    /// `org:<uuid>` (its leads' context and greetings) or `history:<uuid>`.
    #[serde(default)]
    tags: Vec<String>,
    /// Whole kinds: lead_phone, lead_id, org_phone, org_id, context, summary, greeting, history.
    #[serde(default)]
    kinds: Vec<String>,
}

const MAX_ITEMS: usize = 10_000;

/// `POST /admin/invalidate {keys?, tags?, kinds?}`: drops them here and on every peer.
#[utoipa::path(post, path = "/admin/invalidate", tag = "admin",
    description = "Drops keys, tags and whole kinds from every tier of every instance.",
    security(("admin_token" = [])),
    request_body = InvalidateBody,
    responses(
        (status = 200, description = "What was dropped", body = Object),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 422, description = "Unknown keys, tags or kinds, or none given", body = ErrorBody),
    ))]
pub(super) async fn invalidate(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<InvalidateBody>,
) -> Result<Response, ApiError> {
    if b.keys.is_empty() && b.tags.is_empty() && b.kinds.is_empty() {
        return Err(ApiError::unprocessable(
            "nothing_to_invalidate",
            "Name at least one of `keys`, `tags` or `kinds`.",
        ));
    }
    if b.keys.len() + b.tags.len() + b.kinds.len() > MAX_ITEMS {
        return Err(ApiError::unprocessable(
            "too_many_items",
            format!("At most {MAX_ITEMS} keys, tags and kinds in one request."),
        ));
    }
    let bad = |what: &str, items: Vec<&String>, examples: &str| -> ApiError {
        let shown: Vec<&str> = items.iter().take(5).map(|s| s.as_str()).collect();
        ApiError::unprocessable(
            "invalid_value",
            format!("Unknown {what} {shown:?}; {examples}."),
        )
    };
    let keys: Vec<Option<CacheKey>> = b.keys.iter().map(|k| CacheKey::parse(k)).collect();
    let bad_keys: Vec<&String> = b
        .keys
        .iter()
        .zip(&keys)
        .filter(|(_, k)| k.is_none())
        .map(|(s, _)| s)
        .collect();
    if !bad_keys.is_empty() {
        return Err(bad(
            "keys",
            bad_keys,
            "keys look like `lead:id:<uuid>` or `greeting:<uuid>:voice` (see README)",
        ));
    }
    let tags: Vec<Option<Tag>> = b.tags.iter().map(|t| Tag::parse(t)).collect();
    let bad_tags: Vec<&String> = b
        .tags
        .iter()
        .zip(&tags)
        .filter(|(_, t)| t.is_none())
        .map(|(s, _)| s)
        .collect();
    if !bad_tags.is_empty() {
        return Err(bad(
            "tags",
            bad_tags,
            "tags are `org:<uuid>` or `history:<uuid>`",
        ));
    }
    let kinds: Vec<Option<Kind>> = b.kinds.iter().map(|k| Kind::parse(k)).collect();
    let bad_kinds: Vec<&String> = b
        .kinds
        .iter()
        .zip(&kinds)
        .filter(|(_, k)| k.is_none())
        .map(|(s, _)| s)
        .collect();
    if !bad_kinds.is_empty() {
        return Err(bad(
            "kinds",
            bad_kinds,
            "kinds are lead_phone, lead_id, org_phone, org_id, context, summary, greeting, history",
        ));
    }
    let deletion = Deletion {
        keys: keys.into_iter().flatten().collect(),
        tags: tags.into_iter().flatten().collect(),
    };
    let kinds: Vec<Kind> = kinds.into_iter().flatten().collect();
    let mut redis_dropped = 0u64;
    let mut redis_ok = true;
    let (keys_out, tags_out): (Vec<String>, Vec<String>) = (
        deletion
            .keys
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect(),
        deletion.tags.iter().map(Tag::name).collect(),
    );
    if !deletion.keys.is_empty() || !deletion.tags.is_empty() {
        match state.invalidator.admin(deletion).await {
            Ok(Some(Dropped::Entries(n))) => redis_dropped += n,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(request_id = %super::request_id(), error = %e, "admin invalidation: redis deletion deferred");
                redis_ok = false;
            }
        }
    }
    if !kinds.is_empty() {
        match state.invalidator.admin_kinds(&kinds).await {
            Ok(n) => redis_dropped += n,
            Err(e) => {
                tracing::warn!(request_id = %super::request_id(), error = %e, "admin invalidation of kinds: redis incomplete");
                redis_ok = false;
            }
        }
    }
    Ok(axum::Json(json!({
        "dropped": {
            "keys": keys_out,
            "tags": tags_out,
            "kinds": kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        },
        "redis_values_dropped": redis_dropped,
        "redis": if state.redis_enabled { if redis_ok { "done" } else { "deferred" } } else { "disabled" },
        "peers": if state.bus.is_some() { "notified" } else { "no bus" },
    }))
    .into_response())
}

/// `POST /admin/flush`: every instance's L1 and every cached value of this namespace in Redis.
#[utoipa::path(post, path = "/admin/flush", tag = "admin",
    description = "Empties every instance's L1 and removes every cached value of this namespace in Redis (not the whole Redis); `redis_keys_removed` counts the values. Fences and other bookkeeping keys are kept until they expire: a fence moved after the flush must stay.",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Flushed", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Redis could not be flushed (L1 was)", body = ErrorBody),
    ))]
pub(super) async fn flush(State(state): State<AppState>) -> Result<Response, ApiError> {
    let removed = state.invalidator.flush_all().await;
    let (redis, removed) = match (state.redis_enabled, removed) {
        (false, _) => ("disabled", 0),
        (true, Ok(n)) => ("flushed", n),
        (true, Err(e)) => {
            tracing::warn!(request_id = %super::request_id(), error = %e, "admin flush: redis not flushed");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis_unavailable",
                "L1 was flushed here and on the peers, but Redis could not be flushed; retry.",
            ));
        }
    };
    Ok(axum::Json(json!({
        "l1": "flushed",
        "peers": if state.bus.is_some() { "notified" } else { "no bus" },
        "redis": redis,
        "redis_keys_removed": removed,
    }))
    .into_response())
}

/// `GET /admin/stats`.
#[utoipa::path(get, path = "/admin/stats", tag = "admin",
    description = "Hits, misses and stale answers by kind and tier, L1 size, breaker, Redis and Postgres state, listener and bus state, invalidation lag.",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A snapshot", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ))]
pub(super) async fn stats(State(state): State<AppState>) -> Response {
    axum::Json(snapshot(&state, None).await).into_response()
}

/// The consistency auditor: how much it checked, how much it found stale, its last findings.
fn audit(state: &AppState) -> Value {
    let Some(auditor) = &state.auditor else {
        return json!({"enabled": false});
    };
    let findings = auditor.findings();
    json!({
        "enabled": true,
        "checked": state.metrics.audit.checked.get(),
        "stale": state.metrics.audit.stale_total(),
        "last_findings": findings,
    })
}

fn per_kind(counts: &[Counts]) -> Map<String, Value> {
    let mut kinds = Map::new();
    for (kind, c) in Kind::ALL.iter().zip(counts) {
        let mut row = Map::new();
        row.insert("lookups".into(), json!(c.iter().sum::<u64>()));
        for r in LookupResult::ALL {
            row.insert(r.as_str().into(), json!(c[r.index()]));
        }
        row.insert("hit_ratio".into(), json!(hit_ratio(c)));
        row.insert("l1_hit_ratio".into(), json!(l1_hit_ratio(c)));
        kinds.insert(kind.as_str().to_owned(), Value::Object(row));
    }
    kinds
}

fn lag(state: &AppState) -> Value {
    let ms = |s: Option<f64>| s.map(|s| s * 1000.0);
    Value::Object(
        state
            .metrics
            .lags()
            .into_iter()
            .map(|l| {
                let v =
                    json!({"count": l.count, "mean_ms": ms(l.mean_secs), "p99_ms": ms(l.p99_secs)});
                (l.source, v)
            })
            .collect(),
    )
}

/// Everything an operator looks at, as JSON. With `prev`, also the rates since that snapshot
/// (requests/s, 5xx/s, p99 and hit ratios over the last interval), and `prev` moves on.
async fn snapshot(state: &AppState, prev: Option<&mut Option<Snapshot>>) -> Value {
    let (entries, bytes) = state.cache.local().usage().await;
    state.metrics.l1_entries.set(entries as i64);
    state.metrics.l1_bytes.set(bytes as i64);
    let now = state.metrics.snapshot();
    let totals = now.totals();
    let r = Report::gather(state);
    let mut out = json!({
        "instance": state.instance,
        "status": r.phase.as_str(),
        "uptime_secs": state.health.uptime().as_secs(),
        "lookups": {
            "total": totals.iter().sum::<u64>(),
            "hit_ratio": hit_ratio(&totals),
            "by_result": LookupResult::ALL.iter().zip(totals).map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect::<Map<_, _>>(),
            "by_kind": per_kind(&now.lookups),
        },
        "l1": {
            "enabled": r.l1_enabled,
            "entries": entries,
            "bytes": bytes,
            "max_bytes": state.l1_max_bytes,
        },
        "http": {
            "api_requests": now.api_requests,
            "api_5xx": now.api_errors,
            "in_flight": state.metrics.in_flight.get(),
            "overload_rejections": state.metrics.overload_rejections.get(),
        },
        "audit": audit(state),
        "redis": {
            "enabled": r.redis_enabled,
            "url": state.redis_url,
            "connected": r.redis_connected,
            "breaker": r.breaker,
            "owed_invalidations": r.owed,
        },
        "postgres": {
            "url": state.postgres_url,
            "connected": r.postgres_up,
            "pool_size": r.pool_size,
            "pool_idle": r.pool_idle,
        },
        "listener": {
            "state": r.listener.as_str(),
            "applied_id": r.applied_id,
            "backlog": state.metrics.outbox_backlog.get(),
        },
        "bus": {
            "state": r.bus.as_str(),
            "gaps": state.metrics.bus_gaps.get(),
        },
        "invalidation_lag": lag(state),
    });
    if let Some(prev) = prev {
        let ms = |s: Option<f64>| s.map(|s| s * 1000.0);
        out["live"] = match prev.as_ref() {
            Some(earlier) => {
                let rates = now.since(earlier);
                json!({
                    "interval_secs": rates.interval_secs,
                    "requests_per_sec": rates.requests_per_sec,
                    "errors_per_sec": rates.errors_per_sec,
                    "p50_ms": ms(rates.p50_secs),
                    "p99_ms": ms(rates.p99_secs),
                    "by_kind": per_kind(&rates.lookups),
                })
            }
            None => Value::Null,
        };
        *prev = Some(now);
    }
    out
}

/// `GET /admin/stream`: a `stats` event every second (with the rates over the last second), until
/// the client goes away or sidecache starts draining.
#[utoipa::path(get, path = "/admin/stream", tag = "admin",
    description = "Server-Sent Events: a `stats` event a second (the snapshot of /admin/stats plus `live` rates over the last second) until the client leaves or sidecache drains.",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The event stream", body = String, content_type = "text/event-stream"),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    ))]
pub(super) async fn stream(State(state): State<AppState>) -> Response {
    struct Ticker {
        state: AppState,
        interval: tokio::time::Interval,
        prev: Option<Snapshot>,
    }
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticker = Ticker {
        state,
        interval,
        prev: None,
    };
    let events = futures_util::stream::unfold(ticker, |mut t| async move {
        tokio::select! {
            _ = t.interval.tick() => {}
            _ = t.state.health.draining() => return None,
        }
        if t.state.health.phase() == Phase::Draining {
            return None;
        }
        let snap = snapshot(&t.state, Some(&mut t.prev)).await;
        let event = Event::default()
            .event("stats")
            .json_data(snap)
            .unwrap_or_else(|_| Event::default().event("stats").data("{}"));
        Some((Ok::<_, Infallible>(event), t))
    });
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
