//! The voice platforms' call-start webhooks over HTTP: check the signature, parse with the
//! platform's adapter, resolve within `webhooks.deadline_ms`, render, and open the call's session
//! in the background. Past the signature check every call start is a 200 with a valid payload.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::error::{payload_too_large, ErrorBody};
use super::{ApiError, AppState};
use crate::config::WebhooksSettings;
use crate::domain::SessionId;
use crate::labels::{Platform, WebhookOutcome};
use crate::webhooks::{
    resolve, CallStart, Claim, Claims, Decoded, ElevenLabs, Known, Refusal, Rendered, Retell,
    Twilio, Vapi, VapiAuth, VapiMessage,
};

/// How long an answered call start is remembered: a platform's retry within it gets the same
/// answer and opens no second session (Retell retries after its 10 s timeout, up to 3 times).
const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// The webhooks' settings and the answers of recent call starts.
pub struct Hooks {
    pub settings: WebhooksSettings,
    recent: moka::future::Cache<String, (Rendered, WebhookOutcome)>,
    /// Answers claimed across instances (Redis), for call starts without a platform call id.
    claims: Option<Claims>,
    /// Cached bodies decoded once.
    decoded: Decoded,
}

impl Hooks {
    pub fn new(settings: WebhooksSettings, claims: Option<Claims>) -> Self {
        Hooks {
            settings,
            claims,
            decoded: Decoded::default(),
            recent: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(RETRY_WINDOW)
                .build(),
        }
    }

    /// The platforms whose secret is configured (only those are mounted).
    pub fn mounted(&self, platform: Platform) -> bool {
        let s = &self.settings;
        match platform {
            Platform::ElevenLabs => s.elevenlabs.secret.is_set(),
            Platform::Vapi => s.vapi.secret.is_set() || s.vapi.hmac_secret.is_set(),
            Platform::Retell => s.retell.api_key.is_set(),
            Platform::Twilio => s.twilio.auth_token.is_set(),
        }
    }
}

fn now_ms() -> i64 {
    crate::cache::now_ms() as i64
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A refused signature: counted, logged, 401.
fn refused(state: &AppState, platform: Platform, started: Instant, why: &str) -> Response {
    state.metrics.edge.webhook(
        platform,
        WebhookOutcome::AuthFailed,
        started.elapsed().as_secs_f64(),
    );
    tracing::warn!(
        platform = platform.as_str(),
        request_id = %super::request_id(),
        why,
        "webhook refused"
    );
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "webhook_signature_invalid",
        format!(
            "The {} webhook's signature did not check: {why}.",
            platform.as_str()
        ),
    )
    .into_response()
}

fn refusal(r: Refusal) -> Response {
    match r {
        Refusal::Malformed(m) => ApiError::bad_request("malformed_webhook", m),
        Refusal::Invalid(m) => ApiError::unprocessable("invalid_webhook", m),
    }
    .into_response()
}

fn rendered(r: Rendered) -> Response {
    let mut res = Response::new(axum::body::Body::from(r.body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(r.content_type),
    );
    res
}

/// The webhook request as the platform sent it (mirrored or forwarded to the upstream as is).
struct Original {
    parts: Parts,
    body: Bytes,
}

/// Answers one call start: the remembered answer to a retry, else resolve and render it, open
/// its session and mirror it to the upstream in the background. `key` identifies the call start
/// across retries; `session` is the call's session id (minted by `render`'s caller when the
/// platform has none).
#[allow(clippy::too_many_arguments)]
async fn call_start(
    state: &AppState,
    platform: Platform,
    started: Instant,
    original: Original,
    call: CallStart,
    key: String,
    session: Option<String>,
    render: impl FnOnce(&Known, Option<&str>) -> Rendered,
) -> Response {
    let hooks = &state.hooks;
    if let Some((r, outcome)) = hooks.recent.get(&key).await {
        state
            .metrics
            .edge
            .webhook(platform, outcome, started.elapsed().as_secs_f64());
        return rendered(r);
    }
    let known = resolve(
        &state.answers,
        &hooks.decoded,
        &state.phones,
        &call,
        hooks.settings.deadline,
    )
    .await;
    let r = render(&known, session.as_deref());
    let outcome = known.outcome;
    // Without a platform call id the session id is ours: a retry that reached another instance
    // first must not get a second one.
    if call.call_id.is_none() {
        if let Some(claims) = &hooks.claims {
            if let Claim::Theirs(theirs, outcome) =
                claims.claim(&key, &r, outcome, RETRY_WINDOW).await
            {
                hooks.recent.insert(key, (theirs.clone(), outcome)).await;
                state
                    .metrics
                    .edge
                    .webhook(platform, outcome, started.elapsed().as_secs_f64());
                return rendered(theirs);
            }
        }
    }
    hooks.recent.insert(key, (r.clone(), outcome)).await;
    // The app gets the call start as the platform sent it, once the session is there.
    let mirror = state
        .proxy
        .clone()
        .filter(|p| p.mirrors_call_starts())
        .map(|p| (p, original));
    let session = session
        .filter(|_| outcome != WebhookOutcome::UnknownNumber)
        .and_then(|s| s.parse::<SessionId>().ok());
    match session {
        Some(id) => {
            // Opened before the answer goes, so the app finds the session when the call
            // reaches it — but never past the deadline: then it finishes in the background.
            // Waiting for it is also what bounds the work call starts leave behind.
            let state = state.clone();
            let opening = tokio::spawn(async move {
                open_session(&state, platform, &call, &known, &id).await;
                if let Some((proxy, o)) = mirror {
                    proxy.mirror(&state.metrics, o.parts, o.body);
                }
            });
            let left = hooks.settings.deadline.saturating_sub(started.elapsed());
            let _ = tokio::time::timeout(left, opening).await;
        }
        None => {
            if let Some((proxy, o)) = mirror {
                proxy.mirror(&state.metrics, o.parts, o.body);
            }
        }
    }
    state
        .metrics
        .edge
        .webhook(platform, outcome, started.elapsed().as_secs_f64());
    rendered(r)
}

/// Opens (or, for a call start seen by another instance, completes) the call's session: created
/// if there is none (one round trip, the usual case), else merged into what is there, so a
/// handler's own fields written meanwhile stay.
async fn open_session(
    state: &AppState,
    platform: Platform,
    call: &CallStart,
    known: &Known,
    id: &SessionId,
) {
    let mut data = Map::new();
    let mut put = |k: &str, v: Option<String>| {
        data.insert(k.to_owned(), v.map_or(Value::Null, Value::String));
    };
    put("platform", Some(platform.as_str().to_owned()));
    put("call_id", call.call_id.clone());
    put("caller", Some(call.caller.clone()));
    put("callee", Some(call.callee.clone()));
    put("agent_id", call.agent_id.clone());
    put("organization_id", known.org_id());
    put("lead_id", known.lead_id.map(|l| l.to_string()));
    put("outcome", Some(known.outcome.as_str().to_owned()));
    use crate::sessions::SessionError::{NotFound, VersionMismatch};
    let merge = || async {
        state
            .sessions
            .patch(id, &data, None, None)
            .await
            .map(|_| ())
    };
    let result = match create(state, id, &data, Some(0)).await {
        Err(VersionMismatch { .. }) => merge().await,
        // Redis away: a conditional write is refused; the unconditional ones keep the session
        // in memory until it is back.
        Err(_) => match merge().await {
            Err(NotFound) => create(state, id, &data, None).await,
            other => other,
        },
        created => created,
    };
    if let Err(e) = result {
        tracing::warn!(session = id.as_str(), error = %e, "the call's session could not be opened");
    }
}

/// Writes the session (`expect`: the version it must be at; 0 = must not exist) and, if that
/// created it, tells the event streams.
async fn create(
    state: &AppState,
    id: &SessionId,
    data: &Map<String, Value>,
    expect: Option<u64>,
) -> Result<(), crate::sessions::SessionError> {
    let a = state.sessions.put(id, data, None, expect).await?;
    if a.created {
        state.events.session_created(id).await;
    }
    Ok(())
}

/// `POST /v1/webhooks/elevenlabs`.
#[utoipa::path(post, path = "/v1/webhooks/elevenlabs", tag = "webhooks",
    description = "ElevenLabs' conversation initiation client data webhook (mounted when `webhooks.elevenlabs.secret` is set; the secret in the configured header). Answers within `webhooks.deadline_ms` with `type`, every dynamic variable and only the enabled overrides.",
    request_body(content = Object, content_type = "application/json", example = json!({"caller_id": "+15550200001", "agent_id": "agent_x", "called_number": "+15550100001", "call_sid": "CA123"})),
    responses(
        (status = 200, description = "The platform's answer (always, past the signature check)", body = Object, content_type = "application/json", example = json!({"type": "conversation_initiation_client_data", "dynamic_variables": {"first_name": "Ada", "greeting": "Good morning, Ada!"}, "conversation_config_override": {"agent": {"first_message": "Good morning, Ada!"}}})),
        (status = 400, description = "Not the platform's encoding", body = ErrorBody),
        (status = 401, description = "The signature or secret did not check", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Not a call start the platform sends", body = ErrorBody),
    ))]
pub(super) async fn elevenlabs(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let Ok(body) = body else {
        return payload_too_large().into_response();
    };
    let headers = &parts.headers;
    let cfg = &state.hooks.settings.elevenlabs;
    let presented = headers.get(cfg.header.as_str()).map(HeaderValue::as_bytes);
    if !ElevenLabs::verify(presented, cfg.secret.expose()) {
        let why = if presented.is_some() {
            "wrong secret"
        } else {
            "missing secret header"
        };
        return refused(&state, Platform::ElevenLabs, started, why);
    }
    let call = match ElevenLabs::parse(&body) {
        Ok(c) => c,
        Err(r) => return refusal(r),
    };
    let key = format!("elevenlabs:{}", retry_identity(&call));
    let session = call.call_id.as_ref().map(|id| format!("call:{id}"));
    call_start(
        &state,
        Platform::ElevenLabs,
        started,
        Original { parts, body },
        call,
        key,
        session,
        |k, _| ElevenLabs::render(k),
    )
    .await
}

/// `POST /v1/webhooks/vapi`.
#[utoipa::path(post, path = "/v1/webhooks/vapi", tag = "webhooks",
    description = "Vapi server messages (mounted when `webhooks.vapi.secret` or `hmac_secret` is set; `X-Vapi-Secret`, `Authorization: Bearer` or HMAC `x-signature`). `assistant-request` is answered with the assistant and its overrides (or Vapi's `{\"error\"}` form for an unknown number); other message types go to `proxy.upstream`, or are acknowledged with `{}`.",
    request_body(content = Object, content_type = "application/json", example = json!({"message": {"type": "assistant-request", "call": {"id": "call-1"}, "customer": {"number": "+15550200001"}, "phoneNumber": {"number": "+15550100001"}}})),
    responses(
        (status = 200, description = "The platform's answer (always, past the signature check)", body = Object, content_type = "application/json", example = json!({"assistantId": "asst-1", "assistantOverrides": {"variableValues": {"first_name": "Ada"}, "firstMessage": "Good morning, Ada!"}})),
        (status = 400, description = "Not the platform's encoding", body = ErrorBody),
        (status = 401, description = "The signature or secret did not check", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Not a call start the platform sends", body = ErrorBody),
    ))]
pub(super) async fn vapi(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let Ok(body) = body else {
        return payload_too_large().into_response();
    };
    let headers = &parts.headers;
    let cfg = &state.hooks.settings.vapi;
    let auth = VapiAuth {
        secret_header: headers.get("x-vapi-secret").map(HeaderValue::as_bytes),
        bearer: header_str(headers, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().as_bytes()),
        signature: header_str(headers, "x-signature"),
        timestamp: header_str(headers, "x-timestamp"),
        secret: cfg.secret.expose(),
        hmac_secret: cfg.hmac_secret.expose(),
    };
    if !Vapi::verify(&auth, &body, now_ms()) {
        return refused(
            &state,
            Platform::Vapi,
            started,
            "no configured credential matched",
        );
    }
    let call = match Vapi::parse(&body) {
        Ok(VapiMessage::CallStart(c)) => c,
        Ok(VapiMessage::Other(_)) => return not_a_call_start(&state, parts, body).await,
        Err(r) => return refusal(r),
    };
    let key = format!("vapi:{}", retry_identity(&call));
    let session = call.call_id.as_ref().map(|id| format!("call:{id}"));
    let (assistant, message) = (
        cfg.default_assistant_id.clone(),
        cfg.unknown_number_message.clone(),
    );
    call_start(
        &state,
        Platform::Vapi,
        started,
        Original { parts, body },
        call,
        key,
        session,
        |k, _| Vapi::render(k, &assistant, &message),
    )
    .await
}

/// `POST /v1/webhooks/retell`.
#[utoipa::path(post, path = "/v1/webhooks/retell", tag = "webhooks",
    description = "Retell's inbound call webhook (mounted when `webhooks.retell.api_key` is set; `x-retell-signature`, refused more than 5 minutes off). Every dynamic variable is a string; a retry within a minute gets the same answer.",
    request_body(content = Object, content_type = "application/json", example = json!({"event": "call_inbound", "call_inbound": {"from_number": "+15550200001", "to_number": "+15550100001", "agent_id": "agent_x"}})),
    responses(
        (status = 200, description = "The platform's answer (always, past the signature check)", body = Object, content_type = "application/json", example = json!({"call_inbound": {"dynamic_variables": {"first_name": "Ada"}, "override_agent_id": "agent_1", "metadata": {"organization_id": "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f"}}})),
        (status = 400, description = "Not the platform's encoding", body = ErrorBody),
        (status = 401, description = "The signature or secret did not check", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Not a call start the platform sends", body = ErrorBody),
    ))]
pub(super) async fn retell(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let Ok(body) = body else {
        return payload_too_large().into_response();
    };
    let headers = &parts.headers;
    let key_cfg = state.hooks.settings.retell.api_key.expose();
    let signature = header_str(headers, "x-retell-signature");
    if let Err(why) = Retell::verify(signature, &body, key_cfg, now_ms()) {
        let why = match why {
            crate::webhooks::RetellRefusal::Missing => "missing x-retell-signature",
            crate::webhooks::RetellRefusal::Wrong => "wrong signature",
            crate::webhooks::RetellRefusal::Stale => "signed more than 5 minutes from now",
        };
        return refused(&state, Platform::Retell, started, why);
    }
    let call = match Retell::parse(&body) {
        Ok(Ok(c)) => c,
        Ok(Err(_other_event)) => return not_a_call_start(&state, parts, body).await,
        Err(r) => return refusal(r),
    };
    // Retell has no call id before the call is answered: the session gets one of ours, handed
    // to the app in the answer's metadata (and so on Retell's call object).
    let key = format!("retell:{}", retry_identity(&call));
    let session = Some(format!("call:retell-{}", uuid::Uuid::new_v4()));
    call_start(
        &state,
        Platform::Retell,
        started,
        Original { parts, body },
        call,
        key,
        session,
        Retell::render,
    )
    .await
}

/// `POST /v1/webhooks/twilio/voice`.
#[utoipa::path(post, path = "/v1/webhooks/twilio/voice", tag = "webhooks",
    description = "Twilio's voice webhook (mounted when `webhooks.twilio.auth_token` is set; `X-Twilio-Signature` over `webhooks.twilio.public_url` + path and the form). Answers TwiML from the organization's `settings.voice.twilio.twiml`.",
    request_body(content = Object, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The platform's answer (always, past the signature check)", body = String, content_type = "text/xml"),
        (status = 400, description = "Not the platform's encoding", body = ErrorBody),
        (status = 401, description = "The signature or secret did not check", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Not a call start the platform sends", body = ErrorBody),
    ))]
pub(super) async fn twilio(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let Ok(body) = body else {
        return payload_too_large().into_response();
    };
    let headers = &parts.headers;
    let cfg = &state.hooks.settings.twilio;
    let params = Twilio::params(&body);
    let url = signed_url(&cfg.public_url, &parts.uri);
    let signature = header_str(headers, "x-twilio-signature");
    if !Twilio::verify(signature, &url, &params, cfg.auth_token.expose()) {
        let why = if signature.is_some() {
            "wrong signature"
        } else {
            "missing X-Twilio-Signature"
        };
        return refused(&state, Platform::Twilio, started, why);
    }
    let call = match Twilio::parse(&params) {
        Ok(c) => c,
        Err(r) => return refusal(r),
    };
    let key = format!("twilio:{}", retry_identity(&call));
    let session = call.call_id.as_ref().map(|id| format!("call:{id}"));
    let message = cfg.unknown_number_message.clone();
    call_start(
        &state,
        Platform::Twilio,
        started,
        Original { parts, body },
        call,
        key,
        session,
        |k, _| Twilio::render(k, &message),
    )
    .await
}

/// The URL Twilio signed: the configured public URL with the request's path and query.
fn signed_url(public: &str, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", public.trim_end_matches('/'))
}

/// What makes two requests the same call start: the platform's call id, or (Retell's
/// call-inbound has none) the caller, number and agent.
fn retry_identity(call: &CallStart) -> String {
    match &call.call_id {
        Some(id) => format!("id:{id}"),
        None => format!(
            "{}|{}|{}",
            call.caller,
            call.callee,
            call.agent_id.as_deref().unwrap_or("")
        ),
    }
}

/// A platform message that is not a call start: the upstream's to answer, or acknowledged when
/// there is none.
async fn not_a_call_start(state: &AppState, parts: Parts, body: Bytes) -> Response {
    if let Some(proxy) = &state.proxy {
        let req = axum::http::Request::from_parts(parts, axum::body::Body::from(body));
        return proxy.forward(&state.metrics, req).await;
    }
    let mut res = Response::new(axum::body::Body::from("{}"));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
