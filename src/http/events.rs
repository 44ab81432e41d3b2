//! Event routes: `POST` and `GET /v1/sessions/{id}/events` and `/v1/topics/{name}/events`.
//! A `GET` that accepts `text/event-stream` is a Server-Sent Events subscription (`id:`,
//! `event: <type>`, `data: <Event JSON>`; `: keep-alive` comments; `event: gap`, `end` and `cut`
//! as the contract says); any other `GET` is the JSON polling form.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, PathId, QueryPairs};
use super::sessions::X_SESSION_STORE;
use super::AppState;
use crate::domain::{EventType, SessionId, TopicName};
use crate::sessions::{EventsError, Item, Stream};

/// Types the stream itself uses; clients cannot post them.
const RESERVED: [&str; 3] = ["end", "gap", "cut"];

/// An event, as posted and as delivered.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct EventSchema {
    /// `<ms>-<seq>`: opaque, increasing within its stream.
    #[schema(example = "1764669600000-0")]
    id: String,
    #[schema(example = "transcript")]
    r#type: String,
    #[schema(value_type = Object)]
    data: Value,
    at: chrono::DateTime<chrono::Utc>,
}

/// `POST …/events`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewEvent {
    /// 1-64 characters of `[A-Za-z0-9._:-]`; not `end`, `gap` or `cut`.
    r#type: String,
    /// Any JSON value.
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Value,
}

impl From<EventsError> for ApiError {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::NoSession => {
                ApiError::not_found("session_not_found", "No such session (it may have expired).")
            }
            EventsError::TooManySubscribers => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_subscribers",
                "This instance serves as many event subscribers as it may; retry shortly or elsewhere.",
            ),
        }
    }
}

/// A stream position as given by a client (`<ms>-<seq>`), or `invalid_query`.
fn position(raw: &str, from: &str) -> Result<String, ApiError> {
    // Both parts below u64::MAX: `(<id>` (after it) must name a position Redis can step past.
    let part = |p: &str| p.parse::<u64>().is_ok_and(|n| n < u64::MAX);
    let ok = raw
        .split_once('-')
        .is_some_and(|(ms, seq)| part(ms) && part(seq));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::bad_request(
            "invalid_event_id",
            format!("`{from}` must be an event id such as 1764669600000-0"),
        ))
    }
}

async fn publish(state: &AppState, stream: Stream, b: NewEvent) -> Result<Response, ApiError> {
    let kind = b
        .r#type
        .parse::<EventType>()
        .map_err(|e| ApiError::unprocessable("invalid_value", format!("`type`: {}", e.0)))?;
    if RESERVED.contains(&kind.as_str()) {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "`type` must not be end, gap or cut: the stream uses them itself",
        ));
    }
    let data = serde_json::to_string(&b.data).unwrap_or_else(|_| "null".into());
    let (event, store) = state.events.publish(&stream, kind.as_str(), &data).await?;
    let mut res = (StatusCode::CREATED, event.to_json()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_SESSION_STORE, HeaderValue::from_static(store.as_str()));
    Ok(res)
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The most events one poll answers.
const MAX_POLL: u64 = 1000;

async fn read(
    state: &AppState,
    stream: Stream,
    q: &QueryPairs<'_>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let after = match q.get("after") {
        Some(a) if !a.is_empty() => Some(position(&a, "after")?),
        _ => None,
    };
    match q.get("from").as_deref() {
        None | Some("") | Some("now") => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`from` may only be `now`",
            ))
        }
    }
    let from_now = q.get("from").as_deref() == Some("now");
    if wants_sse(headers) {
        let last = headers
            .get("last-event-id")
            .map(|v| {
                v.to_str()
                    .map_err(|_| {
                        ApiError::bad_request("invalid_event_id", "Last-Event-ID is not text")
                    })
                    .and_then(|s| position(s.trim(), "Last-Event-ID"))
            })
            .transpose()?;
        let start = match (last.or(after), from_now) {
            (Some(a), _) => Some(a),
            (None, true) => Some(state.events.tail(&stream).await),
            (None, false) => None,
        };
        return subscribe(state, stream, start).await;
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<u64>()
            .ok()
            .filter(|l| (1..=MAX_POLL).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("`limit` must be between 1 and {MAX_POLL}"),
                )
            })?,
    };
    if let Stream::Session(id) = &stream {
        if state.sessions.exists(id).await == Some(false) {
            return Err(EventsError::NoSession.into());
        }
    }
    let after = match (after, from_now) {
        (Some(a), _) => Some(a),
        (None, true) => Some(state.events.tail(&stream).await),
        (None, false) => None,
    };
    let batch = state
        .events
        .read(&stream, after.as_deref(), limit as usize)
        .await;
    let mut next_after = batch.resume.clone().or(after);
    let mut events = Vec::with_capacity(batch.events.len());
    for e in batch.events.iter().filter(|e| e.kind != "end") {
        events.push(serde_json::from_str::<Value>(&e.to_json()).unwrap_or(Value::Null));
    }
    if let Some(e) = batch.events.last() {
        next_after = Some(e.id.clone());
    }
    Ok(
        axum::Json(json!({"events": events, "next_after": next_after, "gap": batch.gap}))
            .into_response(),
    )
}

async fn subscribe(
    state: &AppState,
    stream: Stream,
    after: Option<String>,
) -> Result<Response, ApiError> {
    let sub = state.events.subscribe(stream, after).await?;
    let draining = state.health.clone();
    let events = futures_util::stream::unfold(
        (sub, draining, false),
        |(mut sub, health, done)| async move {
            if done {
                return None;
            }
            let item = tokio::select! {
                item = sub.next() => item?,
                _ = health.draining() => return None,
            };
            let (event, last) = match item {
                Item::Event(e) => (
                    SseEvent::default()
                        .id(e.id.clone())
                        .event(e.kind.clone())
                        .data(e.to_json()),
                    false,
                ),
                Item::Gap {
                    missed_after,
                    resumed_after,
                } => (
                    SseEvent::default().event("gap").data(
                        json!({"missed_after": missed_after, "resumed_after": resumed_after})
                            .to_string(),
                    ),
                    false,
                ),
                Item::End => (SseEvent::default().event("end").data("{}"), true),
                Item::Cut { resume_after } => (
                    SseEvent::default().event("cut").data(
                        json!({"reason": "slow_subscriber", "resume_after": resume_after})
                            .to_string(),
                    ),
                    true,
                ),
            };
            Some((Ok::<_, Infallible>(event), (sub, health, last)))
        },
    );
    let keepalive = KeepAlive::new()
        .interval(state.events.keepalive())
        .text("keep-alive");
    let mut res = Sse::new(events).keep_alive(keepalive).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(res)
}

#[utoipa::path(post, path = "/v1/sessions/{id}/events", tag = "events",
    description = "Appends an event to the session's stream and delivers it to its subscribers on every instance.",
    params(("id" = String, Path)),
    request_body = NewEvent,
    responses(
        (status = 201, description = "Appended", body = EventSchema, headers(("x-session-store" = String))),
        (status = 400, description = "Malformed id or JSON", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid type", body = ErrorBody),
    ))]
pub(super) async fn post_session(
    State(state): State<AppState>,
    PathId(id): PathId<SessionId>,
    ApiJson(b): ApiJson<NewEvent>,
) -> Result<Response, ApiError> {
    publish(&state, Stream::Session(id), b).await
}

#[utoipa::path(get, path = "/v1/sessions/{id}/events", tag = "events",
    description = "With `Accept: text/event-stream`: a Server-Sent Events subscription, starting after `Last-Event-ID` (or `?after=`), else from the oldest retained event (`?from=now`: live only); `event: gap` when events after the resume point were trimmed, `event: end` when the session goes away, `event: cut` when the subscriber fell too far behind (resume with its last id). Otherwise, a page of events for polling clients.",
    params(("id" = String, Path), ("after" = Option<String>, Query), ("from" = Option<String>, Query), ("limit" = Option<u64>, Query)),
    responses(
        (status = 200, description = "Events (JSON), or an SSE stream", body = Object,
            example = json!({"events": [{"id": "1764669600000-0", "type": "transcript", "data": {"text": "hello"}, "at": "2026-12-02T10:00:00.000Z"}], "next_after": "1764669600000-0", "gap": false})),
        (status = 400, description = "Malformed id or position", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "Too many subscribers on this instance", body = ErrorBody),
    ))]
pub(super) async fn get_session(
    State(state): State<AppState>,
    PathId(id): PathId<SessionId>,
    q: QueryPairs<'static>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read(&state, Stream::Session(id), &q, &headers).await
}

#[utoipa::path(post, path = "/v1/topics/{name}/events", tag = "events",
    description = "Appends an event to a topic's stream (team or user notifications, broadcasts); no session needed.",
    params(("name" = String, Path)),
    request_body = NewEvent,
    responses(
        (status = 201, description = "Appended", body = EventSchema, headers(("x-session-store" = String))),
        (status = 400, description = "Malformed name or JSON", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid type", body = ErrorBody),
    ))]
pub(super) async fn post_topic(
    State(state): State<AppState>,
    PathId(name): PathId<TopicName>,
    ApiJson(b): ApiJson<NewEvent>,
) -> Result<Response, ApiError> {
    publish(&state, Stream::Topic(name), b).await
}

#[utoipa::path(get, path = "/v1/topics/{name}/events", tag = "events",
    description = "A topic's events: an SSE subscription or a page, as for a session's.",
    params(("name" = String, Path), ("after" = Option<String>, Query), ("from" = Option<String>, Query), ("limit" = Option<u64>, Query)),
    responses(
        (status = 200, description = "Events (JSON), or an SSE stream", body = Object),
        (status = 400, description = "Malformed name or position", body = ErrorBody),
        (status = 503, description = "Too many subscribers on this instance", body = ErrorBody),
    ))]
pub(super) async fn get_topic(
    State(state): State<AppState>,
    PathId(name): PathId<TopicName>,
    q: QueryPairs<'static>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    read(&state, Stream::Topic(name), &q, &headers).await
}
