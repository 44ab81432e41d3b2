//! Session routes: `PUT/GET/PATCH/DELETE /v1/sessions/{id}`, `POST /v1/sessions/{id}/touch`
//! and `GET /v1/sessions`. Every answer that carries a session carries its `ETag` and
//! `x-session-store` (`redis`, or `memory` while Redis is off or away).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{payload_too_large, unsupported_media_type, ApiError, ErrorBody};
use super::extract::{if_match, media_type, parse_id, ApiJson, PathId, PathText, QueryPairs};
use super::AppState;
use crate::domain::SessionId;
use crate::labels::StateStore;
use crate::sessions::{rfc3339_ms, Answer, SessionError};

pub(super) const X_SESSION_STORE: HeaderName = HeaderName::from_static("x-session-store");

/// A session, as every session route answers it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct Session {
    /// 1-128 characters of `[A-Za-z0-9._:-]`.
    #[schema(example = "call:CA1234")]
    id: String,
    #[schema(value_type = Object)]
    data: Value,
    /// Bumped by every write (not by a touch); the `ETag`.
    version: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// `PUT /v1/sessions/{id}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutSession {
    #[schema(value_type = Object)]
    data: Map<String, Value>,
    /// Lifetime from now, 1 to `sessions.max_ttl_secs` (default `sessions.ttl_secs`).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /v1/sessions/{id}/touch`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Touch {
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// The error answers every session route can give (for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum SessionFailures {
    /// Malformed id, query, header or JSON
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// No such session
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Well-formed but invalid (ttl out of range, data not an object)
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// Redis is away, and this instance's memory is full or the write is conditional
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound => ApiError::not_found("session_not_found", "No such session (it may have expired)."),
            SessionError::VersionMismatch { current } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                if current == 0 {
                    "The session does not exist.".to_owned()
                } else {
                    format!("The session has moved on to version {current}; fetch it again and retry.")
                },
            ),
            SessionError::TooLarge { max } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "session_too_large",
                format!("The session's data would be larger than {max} bytes."),
            ),
            SessionError::Invalid(m) => ApiError::unprocessable("invalid_value", m),
            SessionError::MemoryFull => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_store_full",
                "Redis is unavailable and this instance holds as many sessions in memory as it may; retry shortly.",
            ),
            SessionError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_store_unavailable",
                "Redis is unavailable, and a conditional (If-Match) write can only be checked against the shared store; retry shortly.",
            ),
            SessionError::Busy => ApiError::new(
                StatusCode::CONFLICT,
                "session_busy",
                "The session is being written by others too often; retry.",
            ),
        }
    }
}

fn store_header(store: StateStore) -> HeaderValue {
    HeaderValue::from_static(store.as_str())
}

/// A session answer: its JSON, `ETag`, `x-session-store`.
fn answer(status: StatusCode, id: &SessionId, a: &Answer) -> Response {
    let mut res = (status, a.doc.render(id)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", a.doc.version)) {
        h.insert(header::ETAG, v);
    }
    h.insert(X_SESSION_STORE, store_header(a.store));
    res
}

/// `If-Match` as a session version.
fn expected(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    Ok(if_match(headers)?.map(|v| v as u64))
}

/// An unsigned query value, or `invalid_query`.
fn query_number(q: &QueryPairs<'_>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("`{name}` must be a non-negative integer"),
                )
            })
        })
        .transpose()
}

fn query_bool(q: &QueryPairs<'_>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "invalid_query",
            format!("`{name}` must be true or false"),
        )),
    }
}

/// A JSON object from a body sent as `application/json` or, where `merge` allows,
/// `application/merge-patch+json`. `None` for an empty body where `optional`.
fn json_object(
    headers: &HeaderMap,
    body: &[u8],
    merge: bool,
    optional: bool,
) -> Result<Option<Map<String, Value>>, ApiError> {
    if optional && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let accepted = match media_type(headers).as_deref() {
        Some("application/json") => true,
        Some("application/merge-patch+json") => merge,
        _ => false,
    };
    if !accepted {
        return Err(unsupported_media_type(if merge {
            "Send the merge patch as `application/merge-patch+json` or `application/json`."
        } else {
            "Send the body as JSON with `Content-Type: application/json`."
        }));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(ApiError::unprocessable(
            "invalid_body",
            "The body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::bad_request("malformed_json", e.to_string())),
    }
}

#[utoipa::path(put, path = "/v1/sessions/{id}", tag = "sessions",
    description = "Creates or replaces a session; its expiry slides to now + `ttl_secs`.",
    params(("id" = String, Path, description = "1-128 characters of [A-Za-z0-9._:-]"),
        ("if-match" = Option<String>, Header, description = "`\"<version>\"`: only if the session is still at that version")),
    request_body = PutSession,
    responses(
        (status = 201, description = "Created", body = Session, headers(("etag" = String), ("x-session-store" = String))),
        (status = 200, description = "Replaced", body = Session, headers(("etag" = String), ("x-session-store" = String))),
        (status = 412, description = "If-Match: the session moved on", body = ErrorBody),
        (status = 413, description = "Data larger than sessions.max_bytes", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        SessionFailures,
    ))]
pub(super) async fn put(
    State(state): State<AppState>,
    PathId(id): PathId<SessionId>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PutSession>,
) -> Result<Response, ApiError> {
    let expect = expected(&headers)?;
    let a = state.sessions.put(&id, &b.data, b.ttl_secs, expect).await?;
    if a.created {
        // A stream left by an earlier session of this id is not this one's.
        state.events.session_created(&id).await;
    }
    let status = if a.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(answer(status, &id, &a))
}

#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    description = "A session; `?touch=true` slides its expiry as a write would.",
    params(("id" = String, Path), ("touch" = Option<bool>, Query)),
    responses(
        (status = 200, description = "The session", body = Session, headers(("etag" = String), ("x-session-store" = String))),
        SessionFailures,
    ))]
pub(super) async fn get(
    State(state): State<AppState>,
    PathText(id): PathText,
    q: QueryPairs<'static>,
) -> Result<Response, ApiError> {
    get_answer(&state, &id, &q).await
}

/// A session's `GET`, as the front door and the router both answer it.
pub(super) async fn get_answer(
    state: &AppState,
    raw_id: &str,
    q: &QueryPairs<'_>,
) -> Result<Response, ApiError> {
    let id: SessionId = parse_id(raw_id)?;
    let touch = query_bool(q, "touch")?;
    let a = state.sessions.get(&id, touch).await?;
    Ok(answer(StatusCode::OK, &id, &a))
}

#[utoipa::path(patch, path = "/v1/sessions/{id}", tag = "sessions",
    description = "Applies a JSON Merge Patch (RFC 7396: `null` removes a member) to the session's data, atomically: concurrent patches never lose each other's fields. The expiry slides to now + `ttl_secs`.",
    params(("id" = String, Path), ("ttl_secs" = Option<u64>, Query),
        ("if-match" = Option<String>, Header, description = "`\"<version>\"`: only if the session is still at that version")),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Patched", body = Session, headers(("etag" = String), ("x-session-store" = String))),
        (status = 409, description = "Written by others too often to apply; retry", body = ErrorBody),
        (status = 412, description = "If-Match: the session moved on", body = ErrorBody),
        (status = 413, description = "Data would be larger than sessions.max_bytes", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        SessionFailures,
    ))]
pub(super) async fn patch(
    State(state): State<AppState>,
    PathId(id): PathId<SessionId>,
    q: QueryPairs<'static>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|_| payload_too_large())?;
    let ttl = query_number(&q, "ttl_secs")?;
    let expect = expected(&headers)?;
    let patch = json_object(&headers, &body, true, false)?.unwrap_or_default();
    let a = state.sessions.patch(&id, &patch, ttl, expect).await?;
    Ok(answer(StatusCode::OK, &id, &a))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/touch", tag = "sessions",
    description = "Slides the session's expiry to now + `ttl_secs` (the body is optional).",
    params(("id" = String, Path)),
    request_body(content = Option<Touch>, content_type = "application/json"),
    responses(
        (status = 200, description = "Touched", body = Session, headers(("etag" = String), ("x-session-store" = String))),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
        SessionFailures,
    ))]
pub(super) async fn touch(
    State(state): State<AppState>,
    PathId(id): PathId<SessionId>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|_| payload_too_large())?;
    let ttl = match json_object(&headers, &body, false, true)? {
        None => None,
        Some(m) => {
            serde_json::from_value::<Touch>(Value::Object(m))
                .map_err(|e| ApiError::unprocessable("invalid_body", e.to_string()))?
                .ttl_secs
        }
    };
    let a = state.sessions.touch(&id, ttl).await?;
    Ok(answer(StatusCode::OK, &id, &a))
}

#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    description = "Deletes a session; its event stream ends (`event: end`).",
    params(("id" = String, Path),
        ("if-match" = Option<String>, Header, description = "`\"<version>\"`: only if the session is still at that version")),
    responses(
        (status = 204, description = "Deleted", headers(("x-session-store" = String))),
        (status = 412, description = "If-Match: the session moved on", body = ErrorBody),
        SessionFailures,
    ))]
pub(super) async fn delete(
    State(state): State<AppState>,
    PathId(id): PathId<SessionId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let expect = expected(&headers)?;
    let store = state.sessions.delete(&id, expect).await?;
    state.events.session_ended(&id).await;
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut()
        .insert(X_SESSION_STORE, store_header(store));
    Ok(res)
}

/// The most sessions one page lists.
const MAX_PAGE: u64 = 1000;

#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    description = "Live sessions whose id starts with `prefix`, in id order, a page at a time (`next_cursor` is the `cursor` of the next page; null on the last). `count` is how many match the prefix in all. Never scans the keyspace.",
    params(("prefix" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<u64>, Query, description = "1-1000, default 100")),
    responses(
        (status = 200, description = "A page", body = Object, headers(("x-session-store" = String)),
            example = json!({"sessions": [{"id": "call:CA1", "updated_at": "2026-12-02T10:00:00.000Z", "expires_at": "2026-12-02T11:00:00.000Z"}], "next_cursor": null, "count": 1})),
        (status = 400, description = "Malformed query", body = ErrorBody),
    ))]
pub(super) async fn list(
    State(state): State<AppState>,
    q: QueryPairs<'static>,
) -> Result<Response, ApiError> {
    let prefix = q.get("prefix").unwrap_or_default().into_owned();
    if !prefix.is_empty() && prefix.parse::<SessionId>().is_err() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`prefix` must be up to 128 characters of [A-Za-z0-9._:-]",
        ));
    }
    let cursor =
        match q.get("cursor") {
            Some(c) if !c.is_empty() => Some(c.parse::<SessionId>().map_err(|e| {
                ApiError::bad_request("invalid_query", format!("`cursor`: {}", e.0))
            })?),
            _ => None,
        };
    let limit = query_number(&q, "limit")?.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        ));
    }
    let page = state
        .sessions
        .list(
            &prefix,
            cursor.as_ref().map(SessionId::as_str),
            limit as usize,
        )
        .await?;
    let sessions: Vec<Value> = page
        .sessions
        .iter()
        .map(|s| {
            json!({"id": s.id, "updated_at": rfc3339_ms(s.updated_ms), "expires_at": rfc3339_ms(s.expires_ms)})
        })
        .collect();
    let mut res = axum::Json(json!({
        "sessions": sessions,
        "next_cursor": page.next_cursor,
        "count": page.count,
    }))
    .into_response();
    res.headers_mut()
        .insert(X_SESSION_STORE, store_header(page.store));
    Ok(res)
}
