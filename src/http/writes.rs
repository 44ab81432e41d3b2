//! Write routes: validate the body into domain values, write Postgres (one statement), drop
//! every affected cache entry, then answer. When a write answers 2xx, nothing it replaced can be
//! read from this instance any more.

use std::future::Future;

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::error::{ApiError, ErrorBody};
use super::extract::{if_match, ApiJson, PathId};
use super::AppState;
use crate::domain::{
    Channel, Commit, Conversation, ConversationId, Direction, Lead, LeadId, LeadStatus, OrgId,
    Organization, ParseError, PhoneNumber,
};
use crate::store::{
    ConversationPatch, LeadPatch, NewConversation, NewLead, NewOrganization, OrganizationPatch,
    StoreError,
};

/// The error answers every write can give (for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum WriteFailures {
    /// Malformed input (phone, id, JSON)
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// Body larger than the limit
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Not `application/json`
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// Well-formed but invalid
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// Postgres unavailable; nothing was written
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

const MAX_NAME: usize = 200;
const MAX_TEMPLATE: usize = 2000;
const MAX_SUMMARY: usize = 16 * 1024;

fn invalid(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid_value", format!("`{field}` {msg}"))
}

fn text(field: &str, v: String, max: usize) -> Result<String, ApiError> {
    let t = v.trim();
    if t.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if t.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(t.to_owned())
}

fn optional_text(field: &str, v: Option<String>, max: usize) -> Result<Option<String>, ApiError> {
    v.map(|s| text(field, s, max)).transpose()
}

fn not_null<T>(field: &str, v: Option<Option<T>>) -> Result<Option<T>, ApiError> {
    match v {
        Some(None) => Err(invalid(field, "cannot be null")),
        Some(Some(x)) => Ok(Some(x)),
        None => Ok(None),
    }
}

fn phone(state: &AppState, v: &str) -> Result<PhoneNumber, ApiError> {
    state
        .phones
        .parse(v)
        .map_err(|e| ApiError::bad_request("invalid_phone", e.to_string()))
}

fn timezone(v: String) -> Result<String, ApiError> {
    let t = v.trim();
    t.parse::<chrono_tz::Tz>()
        .map(|_| t.to_owned())
        .map_err(|_| {
            invalid(
                "timezone",
                "must be an IANA time zone such as America/New_York",
            )
        })
}

fn object(field: &str, v: Value) -> Result<Value, ApiError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(invalid(field, "must be a JSON object"))
    }
}

fn email(v: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(e) = optional_text("email", v, 254)? else {
        return Ok(None);
    };
    let ok = e.split_once('@').is_some_and(|(user, host)| {
        !user.is_empty() && host.contains('.') && !host.starts_with('.') && !host.ends_with('.')
    }) && !e.contains(char::is_whitespace);
    if ok {
        Ok(Some(e))
    } else {
        Err(invalid("email", "must be an email address"))
    }
}

fn parsed<T: std::str::FromStr<Err = ParseError>>(field: &str, v: &str) -> Result<T, ApiError> {
    v.parse()
        .map_err(|e: ParseError| invalid(field, format!("is invalid: {}", e.0)))
}

/// 201/200 with the resource, its ETag and (for creations) its Location.
fn resource<T: Serialize>(
    status: StatusCode,
    body: &T,
    version: i64,
    location: Option<String>,
) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, loc);
    }
    res
}

fn lead_missing() -> ApiError {
    ApiError::not_found("lead_not_found", "No lead with that id.")
}

/// A store error, with "no such row" told in the route's own words.
fn missing_or(e: StoreError, missing: impl FnOnce() -> ApiError) -> ApiError {
    match e {
        StoreError::NotFound => missing(),
        e => e.into(),
    }
}

/// Runs a write and then drops what it touched, here and (over the bus) on the peers, as one
/// task: a client that hangs up mid-request drops its handler, and a write that committed must
/// still be invalidated. L1 is always dropped; if Redis could not be reached the deletion is
/// owed and retried, and L2 is bypassed until it lands, so the answer can go out.
async fn committed<T, E, F>(state: &AppState, write: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
    F: Future<Output = Result<(T, Commit), E>> + Send + 'static,
{
    let state = state.clone();
    let task = tokio::spawn(super::with_request_id(
        async move {
            let (value, commit) = write.await?;
            // Called as soon as the store returns: the commit happened just now.
            if let Err(e) = state.invalidator.commit(&commit, Instant::now()).await {
                tracing::warn!(request_id = %super::request_id(), error = %e, change = ?commit.change, "redis invalidation deferred; L2 bypassed until it lands");
            }
            Ok::<_, E>(value)
        }, // Its log lines belong to the request too.
    ));
    match task.await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => {
            tracing::error!(request_id = %super::request_id(), error = %e, "a write task failed");
            Err(ApiError::internal())
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOrg {
    name: String,
    phone_number: String,
    timezone: Option<String>,
    greeting_template: Option<String>,
    #[schema(value_type = Option<Object>)]
    settings: Option<Value>,
}

#[utoipa::path(
    post,
    path = "/v1/organizations",
    tag = "writes",
    description = "Creates an organization; drops the negative entry for its phone.",
    request_body = CreateOrg,
    responses(
        (status = 201, description = "Created", body = Organization, headers(("etag" = String, description = "The new version"))),
        (status = 409, description = "Duplicate phone number", body = ErrorBody),
        WriteFailures,
    )
)]
pub(super) async fn create_org(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<CreateOrg>,
) -> Result<Response, ApiError> {
    let new = NewOrganization {
        name: text("name", b.name, MAX_NAME)?,
        phone: phone(&state, &b.phone_number)?,
        timezone: b
            .timezone
            .map(timezone)
            .transpose()?
            .unwrap_or_else(|| "UTC".into()),
        greeting_template: optional_text("greeting_template", b.greeting_template, MAX_TEMPLATE)?,
        settings: object(
            "settings",
            b.settings
                .unwrap_or_else(|| Value::Object(Default::default())),
        )?,
    };
    let store = state.store.clone();
    let org = committed(&state, async move { store.create_org(&new).await }).await?;
    let loc = format!("/v1/organizations/{}", org.id);
    Ok(resource(StatusCode::CREATED, &org, org.version, Some(loc)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchOrg {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    phone_number: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    timezone: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    greeting_template: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    settings: Option<Option<Value>>,
}

#[utoipa::path(
    patch,
    path = "/v1/organizations/{id}",
    tag = "writes",
    description = "Changes an organization; drops its keys and its leads' context and greetings (by tag).",
    params(("id" = uuid::Uuid, Path), ("if-match" = Option<String>, Header, description = "`\"<version>\"`: only if the row is still at that version")),
    request_body = PatchOrg,
    responses(
        (status = 200, description = "Changed", body = Organization, headers(("etag" = String, description = "The new version"))),
        (status = 404, description = "No such row", body = ErrorBody),
        (status = 409, description = "Duplicate phone number", body = ErrorBody),
        (status = 412, description = "If-Match: the row moved on", body = ErrorBody),
        WriteFailures,
    )
)]
pub(super) async fn update_org(
    State(state): State<AppState>,
    PathId(id): PathId<OrgId>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PatchOrg>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let patch = OrganizationPatch {
        name: not_null("name", b.name)?
            .map(|v| text("name", v, MAX_NAME))
            .transpose()?,
        phone: not_null("phone_number", b.phone_number)?
            .map(|v| phone(&state, &v))
            .transpose()?,
        timezone: not_null("timezone", b.timezone)?
            .map(timezone)
            .transpose()?,
        greeting_template: not_null("greeting_template", b.greeting_template)?
            .map(|v| text("greeting_template", v, MAX_TEMPLATE))
            .transpose()?,
        settings: not_null("settings", b.settings)?
            .map(|v| object("settings", v))
            .transpose()?,
    };
    let store = state.store.clone();
    let org = committed(&state, async move {
        store.update_org(id, &patch, expected).await
    })
    .await?;
    Ok(resource(StatusCode::OK, &org, org.version, None))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateLead {
    #[schema(value_type = uuid::Uuid)]
    organization_id: String,
    phone_number: String,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    #[schema(value_type = Option<LeadStatus>)]
    status: Option<String>,
    #[schema(value_type = Option<Object>)]
    attributes: Option<Value>,
}

#[utoipa::path(
    post,
    path = "/v1/leads",
    tag = "writes",
    description = "Creates a lead; drops the negative entry for its phone.",
    request_body = CreateLead,
    responses(
        (status = 201, description = "Created", body = Lead, headers(("etag" = String, description = "The new version"))),
        (status = 409, description = "Duplicate phone number", body = ErrorBody),
        WriteFailures,
    )
)]
pub(super) async fn create_lead(
    State(state): State<AppState>,
    ApiJson(b): ApiJson<CreateLead>,
) -> Result<Response, ApiError> {
    let new = NewLead {
        org: parsed::<OrgId>("organization_id", &b.organization_id)?,
        phone: phone(&state, &b.phone_number)?,
        first_name: optional_text("first_name", b.first_name, MAX_NAME)?,
        last_name: optional_text("last_name", b.last_name, MAX_NAME)?,
        email: email(b.email)?,
        status: b
            .status
            .as_deref()
            .map(|s| parsed::<LeadStatus>("status", s))
            .transpose()?
            .unwrap_or(LeadStatus::New),
        attributes: object(
            "attributes",
            b.attributes
                .unwrap_or_else(|| Value::Object(Default::default())),
        )?,
    };
    let store = state.store.clone();
    let lead = committed(&state, async move { store.create_lead(&new).await }).await?;
    let loc = format!("/v1/leads/{}", lead.id);
    Ok(resource(
        StatusCode::CREATED,
        &lead,
        lead.version,
        Some(loc),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchLead {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    phone_number: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    status: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    attributes: Option<Option<Value>>,
}

/// A nullable text field of a patch: absent, cleared (`null`), or a new checked value.
fn nullable_text(
    field: &str,
    v: Option<Option<String>>,
    max: usize,
) -> Result<Option<Option<String>>, ApiError> {
    match v {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(s)) => Ok(Some(Some(text(field, s, max)?))),
    }
}

#[utoipa::path(
    patch,
    path = "/v1/leads/{id}",
    tag = "writes",
    description = "Changes a lead (a phone change drops both phone keys).",
    params(("id" = uuid::Uuid, Path), ("if-match" = Option<String>, Header, description = "`\"<version>\"`: only if the row is still at that version")),
    request_body = PatchLead,
    responses(
        (status = 200, description = "Changed", body = Lead, headers(("etag" = String, description = "The new version"))),
        (status = 404, description = "No such row", body = ErrorBody),
        (status = 409, description = "Duplicate phone number", body = ErrorBody),
        (status = 412, description = "If-Match: the row moved on", body = ErrorBody),
        WriteFailures,
    )
)]
pub(super) async fn update_lead(
    State(state): State<AppState>,
    PathId(id): PathId<LeadId>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PatchLead>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let patch = LeadPatch {
        phone: not_null("phone_number", b.phone_number)?
            .map(|v| phone(&state, &v))
            .transpose()?,
        first_name: nullable_text("first_name", b.first_name, MAX_NAME)?,
        last_name: nullable_text("last_name", b.last_name, MAX_NAME)?,
        email: match b.email {
            None => None,
            Some(None) => Some(None),
            Some(v) => Some(email(v)?),
        },
        status: not_null("status", b.status)?
            .map(|s| parsed::<LeadStatus>("status", &s))
            .transpose()?,
        attributes: not_null("attributes", b.attributes)?
            .map(|v| object("attributes", v))
            .transpose()?,
    };
    let store = state.store.clone();
    let lead = committed(&state, async move {
        store.update_lead(id, &patch, expected).await
    })
    .await?;
    Ok(resource(StatusCode::OK, &lead, lead.version, None))
}

#[utoipa::path(
    delete,
    path = "/v1/leads/{id}",
    tag = "writes",
    description = "Deletes a lead and its conversations.",
    params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such row", body = ErrorBody),
        WriteFailures,
    )
)]
pub(super) async fn delete_lead(
    State(state): State<AppState>,
    PathId(id): PathId<LeadId>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    committed(&state, async move {
        store
            .delete_lead(id)
            .await
            .map(|commit| ((), commit))
            .map_err(|e| missing_or(e, lead_missing))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateConversation {
    #[schema(value_type = Channel)]
    channel: String,
    #[schema(value_type = Direction)]
    direction: String,
    summary: Option<String>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
}

fn check_times(
    started: Option<DateTime<Utc>>,
    ended: Option<DateTime<Utc>>,
) -> Result<(), ApiError> {
    if let (Some(s), Some(e)) = (started, ended) {
        if e < s {
            return Err(invalid("ended_at", "must not be before started_at"));
        }
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/leads/{id}/conversations",
    tag = "writes",
    description = "Records a conversation; drops the lead's context, summary, greetings and history.",
    params(("id" = uuid::Uuid, Path)),
    request_body = CreateConversation,
    responses(
        (status = 201, description = "Created", body = Conversation, headers(("etag" = String, description = "The new version"))),
        (status = 404, description = "No such row", body = ErrorBody),
        WriteFailures,
    )
)]
pub(super) async fn create_conversation(
    State(state): State<AppState>,
    PathId(lead): PathId<LeadId>,
    ApiJson(b): ApiJson<CreateConversation>,
) -> Result<Response, ApiError> {
    check_times(b.started_at.or(Some(Utc::now())), b.ended_at)?;
    let new = NewConversation {
        channel: parsed::<Channel>("channel", &b.channel)?,
        direction: parsed::<Direction>("direction", &b.direction)?,
        summary: optional_text("summary", b.summary, MAX_SUMMARY)?,
        started_at: b.started_at,
        ended_at: b.ended_at,
    };
    let store = state.store.clone();
    let conv = committed(&state, async move {
        store
            .create_conversation(lead, &new)
            .await
            .map_err(|e| missing_or(e, lead_missing))
    })
    .await?;
    let loc = format!("/v1/conversations/{}", conv.id);
    Ok(resource(
        StatusCode::CREATED,
        &conv,
        conv.version,
        Some(loc),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchConversation {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    summary: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    ended_at: Option<Option<DateTime<Utc>>>,
}

#[utoipa::path(
    patch,
    path = "/v1/conversations/{id}",
    tag = "writes",
    description = "Changes a conversation's summary or end time.",
    params(("id" = uuid::Uuid, Path), ("if-match" = Option<String>, Header, description = "`\"<version>\"`: only if the row is still at that version")),
    request_body = PatchConversation,
    responses(
        (status = 200, description = "Changed", body = Conversation, headers(("etag" = String, description = "The new version"))),
        (status = 404, description = "No such row", body = ErrorBody),
        (status = 412, description = "If-Match: the row moved on", body = ErrorBody),
        WriteFailures,
    )
)]
pub(super) async fn update_conversation(
    State(state): State<AppState>,
    PathId(id): PathId<ConversationId>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PatchConversation>,
) -> Result<Response, ApiError> {
    let expected = if_match(&headers)?;
    let patch = ConversationPatch {
        summary: nullable_text("summary", b.summary, MAX_SUMMARY)?,
        ended_at: b.ended_at,
    };
    let store = state.store.clone();
    let conv = committed(&state, async move {
        store
            .update_conversation(id, &patch, expected)
            .await
            .map_err(|e| {
                missing_or(e, || {
                    ApiError::not_found("conversation_not_found", "No conversation with that id.")
                })
            })
    })
    .await?;
    Ok(resource(StatusCode::OK, &conv, conv.version, None))
}
