//! The operator surface under `/admin`, mounted only when `admin.token` is set: invalidation and
//! flush (fleet-wide, through the same path as writes), stats as JSON and as a Server-Sent Events
//! stream, and a status page fed by that stream. Every route but the page requires
//! `Authorization: Bearer <token>`; the page itself holds no data.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use prometheus::core::Collector;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::AppState;
use crate::cache::{CacheKey, Deletion, Dropped, Kind, Tag};
use crate::labels::LookupResult;
use crate::lifecycle::Phase;

/// The status page: static HTML and a little JS, built into the binary.
const PAGE: &str = include_str!("admin.html");

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
                request_id = %super::request_id(),
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

/// `POST /admin/flush`: every instance's L1 and this namespace in Redis.
#[utoipa::path(post, path = "/admin/flush", tag = "admin",
    description = "Empties every instance's L1 and this namespace in Redis (not the whole Redis).",
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

/// Request counts and latency bucket counts of the API routes (cumulative), for rates between
/// two snapshots.
#[derive(Clone, Default)]
struct Window {
    at: Option<Instant>,
    requests: f64,
    errors: f64,
    buckets: Vec<(f64, f64)>,
    lookups: Vec<[u64; 5]>,
}

fn api_traffic(state: &AppState) -> (f64, f64, Vec<(f64, f64)>) {
    let mut requests = 0.0;
    let mut errors = 0.0;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for family in state.metrics.http_duration.collect() {
        for m in family.get_metric() {
            let labels = m.get_label();
            let route = labels
                .iter()
                .find(|l| l.name() == "route")
                .map_or("", |l| l.value());
            if !route.starts_with("/v1/") {
                continue;
            }
            let h = m.get_histogram();
            requests += h.get_sample_count() as f64;
            if labels
                .iter()
                .any(|l| l.name() == "status" && l.value().starts_with('5'))
            {
                errors += h.get_sample_count() as f64;
            }
            for (i, b) in h.get_bucket().iter().enumerate() {
                if buckets.len() <= i {
                    buckets.push((b.upper_bound(), 0.0));
                }
                buckets[i].1 += b.cumulative_count() as f64;
            }
        }
    }
    (requests, errors, buckets)
}

/// The `q` quantile (0..1) of cumulative buckets, interpolated within a bucket; seconds.
fn quantile(buckets: &[(f64, f64)], total: f64, q: f64) -> Option<f64> {
    if total <= 0.0 {
        return None;
    }
    let rank = total * q;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            let span = (count - prev.1).max(f64::EPSILON);
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / span);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

fn ratio(part: u64, total: u64) -> Value {
    if total == 0 {
        Value::Null
    } else {
        json!((part as f64 / total as f64 * 10_000.0).round() / 10_000.0)
    }
}

fn per_kind(counts: &[[u64; 5]]) -> Map<String, Value> {
    let mut kinds = Map::new();
    for (kind, c) in Kind::ALL.iter().zip(counts) {
        let [l1, l2, miss, negative, stale] = *c;
        let total = l1 + l2 + miss + negative + stale;
        kinds.insert(
            kind.as_str().to_owned(),
            json!({
                "lookups": total,
                "hit_l1": l1, "hit_l2": l2, "miss": miss, "negative": negative, "stale": stale,
                "hit_ratio": ratio(l1 + l2 + negative, total),
                "l1_hit_ratio": ratio(l1, total),
            }),
        );
    }
    kinds
}

fn lag(state: &AppState) -> Value {
    let mut out = Map::new();
    for family in state.metrics.invalidation_lag.collect() {
        for m in family.get_metric() {
            let source = m
                .get_label()
                .iter()
                .find(|l| l.name() == "source")
                .map_or("", |l| l.value())
                .to_owned();
            let h = m.get_histogram();
            let buckets: Vec<(f64, f64)> = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count() as f64))
                .collect();
            let n = h.get_sample_count() as f64;
            out.insert(
                source,
                json!({
                    "count": h.get_sample_count(),
                    "mean_ms": if n > 0.0 { json!(h.get_sample_sum() / n * 1000.0) } else { Value::Null },
                    "p99_ms": quantile(&buckets, n, 0.99).map(|s| s * 1000.0),
                }),
            );
        }
    }
    Value::Object(out)
}

/// Everything an operator looks at, as JSON. With `prev`, also the rates since that snapshot
/// (requests/s, 5xx/s, p99 and hit ratios over the last interval), and `prev` moves on.
async fn snapshot(state: &AppState, prev: Option<&mut Window>) -> Value {
    let (entries, bytes) = state.cache.local().usage().await;
    state.metrics.l1_entries.set(entries as i64);
    state.metrics.l1_bytes.set(bytes as i64);
    let counts: Vec<[u64; 5]> = Kind::ALL
        .iter()
        .map(|k| state.metrics.lookup_counts(*k))
        .collect();
    let totals = counts.iter().fold([0u64; 5], |mut acc, c| {
        for i in 0..5 {
            acc[i] += c[i];
        }
        acc
    });
    let lookups: u64 = totals.iter().sum();
    let (requests, errors, buckets) = api_traffic(state);
    let remote = state.cache.remote();
    let coherence = state.cache.coherence();
    let pool = state.store.pool();
    let mut out = json!({
        "instance": state.instance,
        "status": state.health.phase().as_str(),
        "uptime_secs": state.health.uptime().as_secs(),
        "lookups": {
            "total": lookups,
            "hit_ratio": ratio(totals[0] + totals[1] + totals[3], lookups),
            "by_result": LookupResult::ALL.iter().zip(totals).map(|(r, n)| (r.as_str().to_owned(), json!(n))).collect::<Map<_, _>>(),
            "by_kind": per_kind(&counts),
        },
        "l1": {
            "enabled": state.cache.local().enabled(),
            "entries": entries,
            "bytes": bytes,
            "max_bytes": state.l1_max_bytes,
        },
        "http": {
            "api_requests": requests,
            "api_5xx": errors,
            "in_flight": state.metrics.in_flight.get(),
            "overload_rejections": state.metrics.overload_rejections.get(),
        },
        "redis": {
            "enabled": state.redis_enabled,
            "url": state.redis_url,
            "connected": remote.is_some_and(|r| r.is_up()),
            "breaker": remote.map_or("disabled", |r| r.breaker_state().as_str()),
            "owed_invalidations": remote.is_some_and(|r| r.is_up() && !r.usable()),
        },
        "postgres": {
            "url": state.postgres_url,
            "connected": state.health.postgres_up(),
            "pool_size": pool.size(),
            "pool_idle": pool.num_idle(),
        },
        "listener": {
            "state": coherence.listener().as_str(),
            "applied_id": state.listener.as_ref().and_then(|l| l.applied_id()),
            "backlog": state.metrics.outbox_backlog.get(),
        },
        "bus": {
            "state": coherence.bus().as_str(),
            "gaps": state.metrics.bus_gaps.get(),
        },
        "invalidation_lag": lag(state),
    });
    if let Some(prev) = prev {
        let now = Instant::now();
        let live = match prev.at {
            Some(at) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                let window: Vec<(f64, f64)> = buckets
                    .iter()
                    .enumerate()
                    .map(|(i, (le, c))| (*le, c - prev.buckets.get(i).map_or(0.0, |b| b.1)))
                    .collect();
                let n = requests - prev.requests;
                let delta: Vec<[u64; 5]> = counts
                    .iter()
                    .zip(prev.lookups.iter().chain(std::iter::repeat(&[0u64; 5])))
                    .map(|(c, p)| std::array::from_fn(|i| c[i].saturating_sub(p[i])))
                    .collect();
                json!({
                    "interval_secs": secs,
                    "requests_per_sec": n / secs,
                    "errors_per_sec": (errors - prev.errors) / secs,
                    "p50_ms": quantile(&window, n, 0.5).map(|s| s * 1000.0),
                    "p99_ms": quantile(&window, n, 0.99).map(|s| s * 1000.0),
                    "by_kind": per_kind(&delta),
                })
            }
            None => Value::Null,
        };
        out["live"] = live;
        *prev = Window {
            at: Some(now),
            requests,
            errors,
            buckets,
            lookups: counts,
        };
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
        prev: Window,
    }
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticker = Ticker {
        state,
        interval,
        prev: Window::default(),
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

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [
            (0.001, 50.0),
            (0.01, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&b, 100.0, 0.5), Some(0.001));
        let p99 = quantile(&b, 100.0, 0.99).unwrap();
        assert!((0.01..=0.1).contains(&p99), "{p99}");
        assert_eq!(quantile(&b, 0.0, 0.5), None);
    }
}
