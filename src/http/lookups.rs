//! Lookup routes: each parses its input into a key, reads through the cache, and answers the
//! cached bytes with `x-cache`, `age` and `ETag`. Loaders encode JSON once, at fill time.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::extract::{if_none_match, PathId, PathText, QueryPairs};
use super::AppState;
use crate::cache::{fnv1a, now_ms, CacheKey, CacheStatus, LoadFuture, Loaded, Lookup, Mode, Tag};
use crate::domain::{
    greeting, Channel, Conversation, Lead, LeadId, OrgId, Organization, PhoneNumber,
};
use crate::store::{Store, StoreError};

const X_CACHE: &str = "x-cache";

fn encode<T: Serialize>(v: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| StoreError::Encode(e.to_string()))
}

/// A resource: its ETag is its row version.
fn found_versioned<T: Serialize>(v: &T, version: i64) -> Result<Loaded, StoreError> {
    Ok(Loaded::Found {
        body: encode(v)?,
        etag: format!("\"{version}\""),
    })
}

/// A composite answer: its ETag is a hash of its bytes.
fn found_hashed<T: Serialize>(v: &T) -> Result<Loaded, StoreError> {
    let body = encode(v)?;
    let etag = format!("\"h{:016x}\"", fnv1a(&body));
    Ok(Loaded::Found { body, etag })
}

fn mode(headers: &HeaderMap) -> Mode {
    let no_cache = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| matches!(d.trim(), "no-cache" | "no-store"))
        });
    if no_cache {
        Mode::Bypass
    } else {
        Mode::ReadThrough
    }
}

/// RFC 7234's warning 110, on answers served past their TTL because Postgres could not refresh
/// them in time.
const STALE_WARNING: &str = "110 sidecache \"Response is Stale\"";

fn cache_headers(res: &mut Response, lookup: &Lookup) {
    status_headers(res, lookup.status, lookup.entry.age_secs(now_ms()));
}

fn status_headers(res: &mut Response, status: CacheStatus, age: u64) {
    let h = res.headers_mut();
    h.insert(X_CACHE, HeaderValue::from_static(status.as_str()));
    h.insert(header::AGE, HeaderValue::from(age));
    if status == CacheStatus::Stale {
        h.insert(header::WARNING, HeaderValue::from_static(STALE_WARNING));
    }
}

/// The answer for one cached lookup: 200 with the bytes, 304 if the client has them, or the
/// kind's 404 for a negative entry.
pub fn respond(
    lookup: Lookup,
    headers: &HeaderMap,
    missing: impl FnOnce() -> ApiError,
) -> Response {
    let entry = &lookup.entry;
    let mut res = if entry.negative {
        missing().into_response()
    } else if if_none_match(headers, &entry.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(axum::body::Body::from(entry.body.clone()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    if !entry.negative {
        if let Ok(v) = HeaderValue::from_maybe_shared(entry.etag.clone()) {
            res.headers_mut().insert(header::ETAG, v);
        }
    }
    cache_headers(&mut res, &lookup);
    res
}

fn phone_param(state: &AppState, raw: &str) -> Result<PhoneNumber, ApiError> {
    state
        .phones
        .parse(raw)
        .map_err(|e| ApiError::bad_request("invalid_phone", e.to_string()))
}

fn phone_query(
    state: &AppState,
    q: &QueryPairs,
    name: &'static str,
) -> Result<PhoneNumber, ApiError> {
    let raw = q.get(name).ok_or_else(|| {
        ApiError::bad_request(
            "missing_parameter",
            format!("The `{name}` query parameter is required."),
        )
    })?;
    state
        .phones
        .parse_query_value(raw)
        .map_err(|e| ApiError::bad_request("invalid_phone", format!("{name}: {e}")))
}

fn channel_query(q: &QueryPairs) -> Result<Channel, ApiError> {
    match q.get("channel") {
        None => Ok(Channel::Voice),
        Some(raw) => raw
            .parse()
            .map_err(|e: crate::domain::ParseError| ApiError::bad_request("invalid_channel", e.0)),
    }
}

fn u32_query(
    q: &QueryPairs,
    name: &'static str,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    let Some(raw) = q.get(name) else {
        return Ok(default);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "`{name}` must be an integer from {} to {}.",
                    range.start(),
                    range.end()
                ),
            )
        })
}

fn lead_missing() -> ApiError {
    ApiError::not_found("lead_not_found", "No lead with that id or phone number.")
}
fn org_missing() -> ApiError {
    ApiError::not_found(
        "organization_not_found",
        "No organization with that id or phone number.",
    )
}

// ---- loaders -------------------------------------------------------------------------------

fn load_org_by_id(store: Store, id: OrgId) -> LoadFuture {
    Box::pin(async move {
        match store.org_by_id(id).await? {
            Some(o) => found_versioned(&o, o.version),
            None => Ok(Loaded::NotFound),
        }
    })
}

fn load_org_by_phone(store: Store, phone: PhoneNumber) -> LoadFuture {
    Box::pin(async move {
        match store.org_by_phone(&phone).await? {
            Some(o) => found_versioned(&o, o.version),
            None => Ok(Loaded::NotFound),
        }
    })
}

fn load_lead_by_id(store: Store, id: LeadId) -> LoadFuture {
    Box::pin(async move {
        match store.lead_by_id(id).await? {
            Some(l) => found_versioned(&l, l.version),
            None => Ok(Loaded::NotFound),
        }
    })
}

fn load_lead_by_phone(store: Store, phone: PhoneNumber, org: OrgId) -> LoadFuture {
    Box::pin(async move {
        match store.lead_by_phone(&phone, org).await? {
            Some(l) => found_versioned(&l, l.version),
            None => Ok(Loaded::NotFound),
        }
    })
}

/// Everything a voice agent needs to start a call with this lead.
#[derive(Serialize, utoipa::ToSchema)]
struct Context {
    lead: Lead,
    organization: Organization,
    summary: Option<String>,
    conversation_count: i64,
    last_contact_at: Option<chrono::DateTime<Utc>>,
    /// The five most recent, newest first.
    recent_conversations: Vec<Conversation>,
    /// Ready to hand to a voice agent: the lead's attributes, then first_name, last_name,
    /// full_name, email, phone_number, lead_status, org_name, org_timezone, conversation_count
    /// and summary, all as strings.
    #[schema(value_type = std::collections::HashMap<String, String>)]
    dynamic_variables: serde_json::Map<String, Value>,
}

fn dynamic_variables(
    lead: &Lead,
    org: &Organization,
    summary: Option<&str>,
    count: i64,
) -> serde_json::Map<String, Value> {
    let mut vars = serde_json::Map::new();
    // Lead attributes first, so the built-in names below win over a same-named attribute.
    if let Value::Object(attrs) = &lead.attributes {
        for (k, v) in attrs {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            vars.insert(k.clone(), Value::String(s));
        }
    }
    let first = lead
        .first_name
        .clone()
        .unwrap_or_else(|| greeting::UNKNOWN_FIRST_NAME.to_owned());
    let full = [lead.first_name.as_deref(), lead.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let mut put = |k: &str, v: String| {
        vars.insert(k.to_owned(), Value::String(v));
    };
    put("first_name", first);
    put("last_name", lead.last_name.clone().unwrap_or_default());
    put("full_name", full);
    put("email", lead.email.clone().unwrap_or_default());
    put("phone_number", lead.phone_number.clone());
    put("lead_status", lead.status.clone());
    put("org_name", org.name.clone());
    put("org_timezone", org.timezone.clone());
    put("conversation_count", count.to_string());
    put("summary", summary.unwrap_or_default().to_owned());
    vars
}

fn load_context(store: Store, id: LeadId) -> LoadFuture {
    Box::pin(async move {
        let Some(lo) = store.lead_with_org(id).await? else {
            return Ok(Loaded::NotFound);
        };
        let recent = store.recent_conversations(id, 5, 0).await?;
        let stats = store.conversation_stats(id).await?;
        let summary = stats.summary();
        let ctx = Context {
            dynamic_variables: dynamic_variables(
                &lo.lead,
                &lo.org,
                summary.as_deref(),
                stats.count,
            ),
            lead: lo.lead,
            organization: lo.org,
            summary,
            conversation_count: stats.count,
            last_contact_at: stats.last_contact_at,
            recent_conversations: recent,
        };
        found_hashed(&ctx)
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct Summary {
    lead_id: LeadId,
    summary: Option<String>,
    conversation_count: i64,
    last_contact_at: Option<chrono::DateTime<Utc>>,
}

fn load_summary(store: Store, id: LeadId) -> LoadFuture {
    Box::pin(async move {
        if !store.lead_exists(id).await? {
            return Ok(Loaded::NotFound);
        }
        let stats = store.conversation_stats(id).await?;
        found_hashed(&Summary {
            lead_id: id,
            summary: stats.summary(),
            conversation_count: stats.count,
            last_contact_at: stats.last_contact_at,
        })
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct Greeting<'a> {
    /// Null for an unknown caller (in call initiation).
    lead_id: Option<LeadId>,
    channel: Channel,
    greeting: &'a str,
}

/// The template for a channel: `settings.greeting_templates.<channel>` if the organization set
/// one, else its `greeting_template`.
fn template_for(org: &Organization, channel: Channel) -> &str {
    org.settings
        .get("greeting_templates")
        .and_then(|t| t.get(channel.as_str()))
        .and_then(Value::as_str)
        .unwrap_or(&org.greeting_template)
}

fn greeting_text(org: &Organization, first_name: Option<&str>, channel: Channel) -> String {
    greeting::render(
        template_for(org, channel),
        first_name,
        &org.name,
        greeting::zone(&org.timezone),
        Utc::now(),
    )
}

fn load_greeting(store: Store, id: LeadId, channel: Channel) -> LoadFuture {
    Box::pin(async move {
        let Some(lo) = store.lead_with_org(id).await? else {
            return Ok(Loaded::NotFound);
        };
        let text = greeting_text(&lo.org, lo.lead.first_name.as_deref(), channel);
        found_hashed(&Greeting {
            lead_id: Some(id),
            channel,
            greeting: &text,
        })
    })
}

#[derive(Serialize, utoipa::ToSchema)]
struct History {
    lead_id: LeadId,
    limit: u32,
    offset: u32,
    conversations: Vec<Conversation>,
}

fn load_history(store: Store, id: LeadId, limit: u32, offset: u32) -> LoadFuture {
    Box::pin(async move {
        let conversations = store
            .recent_conversations(id, i64::from(limit), i64::from(offset))
            .await?;
        if conversations.is_empty() && !store.lead_exists(id).await? {
            return Ok(Loaded::NotFound);
        }
        found_hashed(&History {
            lead_id: id,
            limit,
            offset,
            conversations,
        })
    })
}

// ---- lookups shared by routes ---------------------------------------------------------------

async fn lead_lookup(state: &AppState, id: LeadId, mode: Mode) -> Result<Lookup, ApiError> {
    let store = state.store.clone();
    Ok(state
        .cache
        .get(&CacheKey::lead_by_id(id), &[], mode, move || {
            load_lead_by_id(store, id)
        })
        .await?)
}

#[derive(Deserialize)]
struct OrgRef {
    organization_id: OrgId,
}

#[derive(Deserialize)]
struct IdRef<T> {
    id: T,
}

/// Context or greeting: values that embed the lead's organization, so they carry its tag. The
/// tag must be known before loading (fences are taken first), so the organization is resolved
/// from the cached lead on a miss; a hit never needs it. An unknown lead answers with the lead's
/// own (negative) lookup.
async fn org_dependent(
    state: &AppState,
    id: LeadId,
    key: CacheKey,
    mode: Mode,
    load: impl FnOnce(Store) -> LoadFuture + Send + 'static,
) -> Result<Lookup, ApiError> {
    if mode == Mode::ReadThrough {
        if let Some(hit) = state.cache.get_l1(&key).await {
            return Ok(hit);
        }
    }
    let lead = lead_lookup(state, id, Mode::ReadThrough).await?;
    if lead.entry.negative {
        return Ok(lead);
    }
    let org = serde_json::from_slice::<OrgRef>(&lead.entry.body)
        .map_err(|e| {
            ApiError::from(StoreError::Encode(format!(
                "cached lead is not a lead: {e}"
            )))
        })?
        .organization_id;
    let store = state.store.clone();
    Ok(state
        .cache
        .get(&key, &[Tag::Org(org)], mode, move || load(store))
        .await?)
}

// ---- routes ---------------------------------------------------------------------------------

#[utoipa::path(
    get,
    path = "/v1/organizations/{id}",
    tag = "lookups",
    description = "An organization by id.",
    params(("id" = uuid::Uuid, Path), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = Organization, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn org_by_id(
    state: axum::extract::State<AppState>,
    PathId(id): PathId<OrgId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let lookup = state
        .cache
        .get(&CacheKey::org_by_id(id), &[], mode(&headers), move || {
            load_org_by_id(store, id)
        })
        .await?;
    Ok(respond(lookup, &headers, org_missing))
}

#[utoipa::path(
    get,
    path = "/v1/organizations/by-phone/{phone}",
    tag = "lookups",
    description = "The organization whose number was called.",
    params(("phone" = String, Path, description = "Any common spelling; E.164 preferred", example = "+15550100001"), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = Organization, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn org_by_phone(
    state: axum::extract::State<AppState>,
    PathText(raw): PathText,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let phone = phone_param(&state, &raw)?;
    let store = state.store.clone();
    let key = CacheKey::org_by_phone(&phone);
    let lookup = state
        .cache
        .get(&key, &[], mode(&headers), move || {
            load_org_by_phone(store, phone)
        })
        .await?;
    Ok(respond(lookup, &headers, org_missing))
}

#[utoipa::path(
    get,
    path = "/v1/leads/{id}",
    tag = "lookups",
    description = "A lead by id.",
    params(("id" = uuid::Uuid, Path), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = Lead, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn lead_by_id(
    state: axum::extract::State<AppState>,
    PathId(id): PathId<LeadId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lookup = lead_lookup(&state, id, mode(&headers)).await?;
    Ok(respond(lookup, &headers, lead_missing))
}

fn org_query(q: &QueryPairs) -> Result<OrgId, ApiError> {
    let raw = q.get("organization_id").ok_or_else(|| {
        ApiError::bad_request(
            "missing_parameter",
            "The `organization_id` query parameter is required.",
        )
    })?;
    raw.parse()
        .map_err(|e: crate::domain::ParseError| ApiError::bad_request("invalid_id", e.0))
}

#[utoipa::path(
    get,
    path = "/v1/leads/by-phone/{phone}",
    tag = "lookups",
    description = "The lead with that phone number in that organization.",
    params(("phone" = String, Path, example = "+15550200001"), ("organization_id" = uuid::Uuid, Query), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = Lead, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn lead_by_phone(
    state: axum::extract::State<AppState>,
    PathText(raw): PathText,
    q: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let phone = phone_param(&state, &raw)?;
    let org = org_query(&q)?;
    let store = state.store.clone();
    let key = CacheKey::lead_by_phone(&phone, org);
    let lookup = state
        .cache
        .get(&key, &[], mode(&headers), move || {
            load_lead_by_phone(store, phone, org)
        })
        .await?;
    Ok(respond(lookup, &headers, lead_missing))
}

#[utoipa::path(
    get,
    path = "/v1/leads/{id}/context",
    tag = "lookups",
    description = "What a voice agent needs to start a call with this lead.",
    params(("id" = uuid::Uuid, Path), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = Context, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn context(
    state: axum::extract::State<AppState>,
    PathId(id): PathId<LeadId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lookup = org_dependent(
        &state,
        id,
        CacheKey::context(id),
        mode(&headers),
        move |s| load_context(s, id),
    )
    .await?;
    Ok(respond(lookup, &headers, lead_missing))
}

#[utoipa::path(
    get,
    path = "/v1/leads/{id}/summary",
    tag = "lookups",
    description = "The latest conversation summaries, newest first.",
    params(("id" = uuid::Uuid, Path), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = Summary, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn summary(
    state: axum::extract::State<AppState>,
    PathId(id): PathId<LeadId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let lookup = state
        .cache
        .get(&CacheKey::summary(id), &[], mode(&headers), move || {
            load_summary(store, id)
        })
        .await?;
    Ok(respond(lookup, &headers, lead_missing))
}

#[utoipa::path(
    get,
    path = "/v1/leads/{id}/greeting",
    tag = "lookups",
    description = "The organization's greeting for this lead.",
    params(("id" = uuid::Uuid, Path), ("channel" = Option<Channel>, Query, description = "Default voice"), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = Greeting, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn greeting(
    state: axum::extract::State<AppState>,
    PathId(id): PathId<LeadId>,
    q: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = channel_query(&q)?;
    let lookup = org_dependent(
        &state,
        id,
        CacheKey::greeting(id, channel),
        mode(&headers),
        move |s| load_greeting(s, id, channel),
    )
    .await?;
    Ok(respond(lookup, &headers, lead_missing))
}

#[utoipa::path(
    get,
    path = "/v1/leads/{id}/history",
    tag = "lookups",
    description = "A page of the lead's conversations, newest first.",
    params(("id" = uuid::Uuid, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Default 20"), ("offset" = Option<u32>, Query, minimum = 0, maximum = 100000, description = "Default 0"), ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly (x-cache: BYPASS)"), ("if-none-match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "Found", body = History, headers(
            ("x-cache" = String, description = "HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("age" = u64, description = "Seconds since the value was read from Postgres"),
            ("etag" = String, description = "Validator for If-None-Match"),
        )),
        LookupFailures,
    )
)]
pub(super) async fn history(
    state: axum::extract::State<AppState>,
    PathId(id): PathId<LeadId>,
    q: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let limit = u32_query(&q, "limit", 20, 1..=100)?;
    let offset = u32_query(&q, "offset", 0, 0..=100_000)?;
    let store = state.store.clone();
    let key = CacheKey::history(id, limit, offset);
    let lookup = state
        .cache
        .get(&key, &[Tag::History(id)], mode(&headers), move || {
            load_history(store, id, limit, offset)
        })
        .await?;
    Ok(respond(lookup, &headers, lead_missing))
}

/// The least favourable of several statuses (for a composite answer's `x-cache`). A stale part
/// makes the whole answer stale: that is what a caller must be told.
fn combine(a: CacheStatus, b: CacheStatus) -> CacheStatus {
    let rank = |s| match s {
        CacheStatus::HitL1 => 0,
        CacheStatus::HitL2 => 1,
        CacheStatus::Miss => 2,
        CacheStatus::Bypass => 3,
        CacheStatus::Stale => 4,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// The error answers every cached lookup can give (for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum LookupFailures {
    /// The client's copy (If-None-Match) is current
    #[response(status = 304)]
    NotModified,
    /// Malformed input
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// Nothing there (cached briefly as a negative entry)
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Postgres unavailable and nothing servable cached
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The answer of `GET /v1/calls/initiation` (assembled from the parts' cached bytes; this type
/// only describes it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Initiation {
    organization: Organization,
    /// Null when the caller is not a lead of the organization.
    lead: Option<Lead>,
    context: Option<Context>,
    greeting: Greeting<'static>,
}

/// `GET /v1/calls/initiation`: organization, lead, context and greeting in one round trip, each
/// part from the cache. The body is assembled from the parts' cached bytes without re-encoding.
#[utoipa::path(
    get,
    path = "/v1/calls/initiation",
    tag = "lookups",
    description = "Organization, lead, context and greeting in one round trip, each from the cache. An unknown caller gets `lead: null` and the greeting for an unknown caller.",
    params(
        ("caller" = String, Query, description = "The number that called", example = "+15550200001"),
        ("callee" = String, Query, description = "The number that was called", example = "+15550100001"),
        ("channel" = Option<Channel>, Query, description = "Default voice"),
        ("cache-control" = Option<String>, Header, description = "`no-cache` reads Postgres directly"),
    ),
    responses(
        (status = 200, description = "Found", body = Initiation, headers(
            ("x-cache" = String, description = "The least cached part: HIT-L1, HIT-L2, MISS, STALE or BYPASS"),
            ("x-cache-detail" = String, description = "Each part's status"),
            ("age" = u64, description = "Seconds since the oldest part was read from Postgres"),
        )),
        (status = 400, description = "Malformed input", body = ErrorBody),
        (status = 404, description = "No organization has the callee's number", body = ErrorBody),
        (status = 503, description = "Postgres unavailable and nothing servable cached", body = ErrorBody),
    )
)]
pub(super) async fn initiation(
    state: axum::extract::State<AppState>,
    q: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = phone_query(&state, &q, "caller")?;
    let callee = phone_query(&state, &q, "callee")?;
    let channel = channel_query(&q)?;
    let mode = mode(&headers);

    let store = state.store.clone();
    let org = state
        .cache
        .get(&CacheKey::org_by_phone(&callee), &[], mode, move || {
            load_org_by_phone(store, callee)
        })
        .await?;
    if org.entry.negative {
        return Err(org_missing());
    }
    let org_id = serde_json::from_slice::<IdRef<OrgId>>(&org.entry.body)
        .map_err(|e| ApiError::from(StoreError::Encode(format!("cached organization: {e}"))))?
        .id;
    let store = state.store.clone();
    let lead = state
        .cache
        .get(
            &CacheKey::lead_by_phone(&caller, org_id),
            &[],
            mode,
            move || load_lead_by_phone(store, caller, org_id),
        )
        .await?;

    let mut status = combine(org.status, lead.status);
    let mut age = org
        .entry
        .age_secs(now_ms())
        .max(lead.entry.age_secs(now_ms()));
    let mut detail = format!(
        "organization={}, lead={}",
        org.status.as_str(),
        lead.status.as_str()
    );
    let mut body = BytesMut::with_capacity(org.entry.body.len() + lead.entry.body.len() * 4 + 256);
    body.put_slice(b"{\"organization\":");
    body.put_slice(&org.entry.body);

    if lead.entry.negative {
        let o: Organization = serde_json::from_slice(&org.entry.body)
            .map_err(|e| ApiError::from(StoreError::Encode(format!("cached organization: {e}"))))?;
        let text = greeting_text(&o, None, channel);
        let g = encode(&Greeting {
            lead_id: None,
            channel,
            greeting: &text,
        })?;
        body.put_slice(b",\"lead\":null,\"context\":null,\"greeting\":");
        body.put_slice(&g);
    } else {
        let lead_id = serde_json::from_slice::<IdRef<LeadId>>(&lead.entry.body)
            .map_err(|e| ApiError::from(StoreError::Encode(format!("cached lead: {e}"))))?
            .id;
        let ctx_fut = org_dependent(
            &state,
            lead_id,
            CacheKey::context(lead_id),
            mode,
            move |s| load_context(s, lead_id),
        );
        let greet_fut = org_dependent(
            &state,
            lead_id,
            CacheKey::greeting(lead_id, channel),
            mode,
            move |s| load_greeting(s, lead_id, channel),
        );
        let (ctx, greet) = tokio::join!(ctx_fut, greet_fut);
        let (ctx, greet) = (ctx?, greet?);
        body.put_slice(b",\"lead\":");
        body.put_slice(&lead.entry.body);
        body.put_slice(b",\"context\":");
        match Some(&ctx).filter(|c| !c.entry.negative) {
            Some(c) => {
                status = combine(status, c.status);
                age = age.max(c.entry.age_secs(now_ms()));
                body.put_slice(&c.entry.body);
            }
            None => body.put_slice(b"null"),
        }
        body.put_slice(b",\"greeting\":");
        match Some(&greet).filter(|g| !g.entry.negative) {
            Some(g) => {
                status = combine(status, g.status);
                age = age.max(g.entry.age_secs(now_ms()));
                body.put_slice(&g.entry.body);
            }
            None => {
                // The lead vanished between the parts: greet as an unknown caller.
                let o: Organization = serde_json::from_slice(&org.entry.body).map_err(|e| {
                    ApiError::from(StoreError::Encode(format!("cached organization: {e}")))
                })?;
                let text = greeting_text(&o, None, channel);
                body.put_slice(&encode(&Greeting {
                    lead_id: None,
                    channel,
                    greeting: &text,
                })?);
            }
        }
        detail.push_str(&format!(
            ", context={}, greeting={}",
            ctx.status.as_str(),
            greet.status.as_str()
        ));
    }
    body.put_u8(b'}');

    let mut res = Response::new(axum::body::Body::from(body.freeze()));
    status_headers(&mut res, status, age);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&detail) {
        h.insert("x-cache-detail", v);
    }
    Ok(res)
}
