//! Lookup routes: each parses its input, asks [`Answers`](crate::answers::Answers) for the
//! lookup, and answers the cached bytes with `x-cache`, `age` and `ETag`.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorBody};
use super::extract::{parse_id, Conditions, PathText, QueryPairs};
use super::AppState;
use crate::answers::{Context, Greeting, History, Summary};
use crate::cache::{now_ms, CacheStatus, Lookup, Mode};
use crate::domain::{Channel, Lead, OrgId, Organization, PhoneNumber};
use crate::labels::LookupRoute;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const X_CACHE_DETAIL: HeaderName = HeaderName::from_static("x-cache-detail");

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
    conditions: &Conditions,
    missing: impl FnOnce() -> ApiError,
) -> Response {
    let entry = &lookup.entry;
    let mut res = if entry.negative {
        missing().into_response()
    } else if conditions.not_modified(&entry.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(axum::body::Body::from(entry.body.clone()));
        // Room for every header of the answer at once (the front door adds x-request-id).
        *r.headers_mut() = HeaderMap::with_capacity(6);
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
    q: &QueryPairs<'_>,
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
        .parse_query_value(&raw)
        .map_err(|e| ApiError::bad_request("invalid_phone", format!("{name}: {e}")))
}

fn channel_query(q: &QueryPairs<'_>) -> Result<Channel, ApiError> {
    match q.get("channel") {
        None => Ok(Channel::Voice),
        Some(raw) => raw
            .parse()
            .map_err(|e: crate::domain::ParseError| ApiError::bad_request("invalid_channel", e.0)),
    }
}

fn u32_query(
    q: &QueryPairs<'_>,
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

/// Answers one lookup route: `param` is its decoded path parameter ("" for initiation), `q` its
/// query. The router's handlers below and the front door's hot path both come here.
pub(super) async fn answer(
    state: &AppState,
    route: LookupRoute,
    param: &str,
    q: &QueryPairs<'_>,
    conditions: &Conditions,
) -> Result<Response, ApiError> {
    let (answers, mode) = (&state.answers, conditions.mode);
    let (lookup, missing): (Lookup, fn() -> ApiError) = match route {
        LookupRoute::OrgById => (
            answers.org_by_id(parse_id(param)?, mode).await?,
            org_missing,
        ),
        LookupRoute::OrgByPhone => {
            let phone = phone_param(state, param)?;
            (answers.org_by_phone(&phone, mode).await?, org_missing)
        }
        LookupRoute::LeadById => (
            answers.lead_by_id(parse_id(param)?, mode).await?,
            lead_missing,
        ),
        LookupRoute::LeadByPhone => {
            let phone = phone_param(state, param)?;
            let org = org_query(q)?;
            (
                answers.lead_by_phone(&phone, org, mode).await?,
                lead_missing,
            )
        }
        LookupRoute::Context => (answers.context(parse_id(param)?, mode).await?, lead_missing),
        LookupRoute::Summary => (answers.summary(parse_id(param)?, mode).await?, lead_missing),
        LookupRoute::Greeting => {
            let id = parse_id(param)?;
            let channel = channel_query(q)?;
            (answers.greeting(id, channel, mode).await?, lead_missing)
        }
        LookupRoute::History => {
            let id = parse_id(param)?;
            let limit = u32_query(q, "limit", 20, 1..=100)?;
            let offset = u32_query(q, "offset", 0, 0..=100_000)?;
            (
                answers.history(id, limit, offset, mode).await?,
                lead_missing,
            )
        }
        LookupRoute::Initiation => return initiation_answer(state, q, mode).await,
        LookupRoute::Session => return super::sessions::get_answer(state, param, q).await,
    };
    Ok(respond(lookup, conditions, missing))
}

async fn initiation_answer(
    state: &AppState,
    q: &QueryPairs<'_>,
    mode: Mode,
) -> Result<Response, ApiError> {
    let caller = phone_query(state, q, "caller")?;
    let callee = phone_query(state, q, "callee")?;
    let channel = channel_query(q)?;
    let Some(init) = state
        .answers
        .initiation(&caller, &callee, channel, mode)
        .await?
    else {
        return Err(org_missing());
    };
    let mut res = Response::new(axum::body::Body::from(init.body()));
    status_headers(&mut res, init.status(), init.age_secs(now_ms()));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&init.detail()) {
        h.insert(X_CACHE_DETAIL, v);
    }
    Ok(res)
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
    PathText(raw): PathText,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(
        &state,
        LookupRoute::OrgById,
        &raw,
        &QueryPairs::of(None),
        &conditions,
    )
    .await
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
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(
        &state,
        LookupRoute::OrgByPhone,
        &raw,
        &QueryPairs::of(None),
        &conditions,
    )
    .await
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
    PathText(raw): PathText,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(
        &state,
        LookupRoute::LeadById,
        &raw,
        &QueryPairs::of(None),
        &conditions,
    )
    .await
}

fn org_query(q: &QueryPairs<'_>) -> Result<OrgId, ApiError> {
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
    q: QueryPairs<'static>,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(&state, LookupRoute::LeadByPhone, &raw, &q, &conditions).await
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
    PathText(raw): PathText,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(
        &state,
        LookupRoute::Context,
        &raw,
        &QueryPairs::of(None),
        &conditions,
    )
    .await
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
    PathText(raw): PathText,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(
        &state,
        LookupRoute::Summary,
        &raw,
        &QueryPairs::of(None),
        &conditions,
    )
    .await
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
    PathText(raw): PathText,
    q: QueryPairs<'static>,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(&state, LookupRoute::Greeting, &raw, &q, &conditions).await
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
    PathText(raw): PathText,
    q: QueryPairs<'static>,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(&state, LookupRoute::History, &raw, &q, &conditions).await
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
    q: QueryPairs<'static>,
    conditions: Conditions,
) -> Result<Response, ApiError> {
    answer(&state, LookupRoute::Initiation, "", &q, &conditions).await
}
