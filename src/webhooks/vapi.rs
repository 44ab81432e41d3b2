//! Vapi's server messages: `assistant-request` is the call start, answered with the assistant and
//! its overrides; every other message type belongs to the handler app.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{json_object, sign, str_field, CallStart, Known, Refusal, Rendered};
use crate::labels::WebhookOutcome;

/// How far `x-timestamp` may be from now (ms), against replays of a signed message.
pub(super) const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// What a Vapi request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VapiMessage {
    CallStart(CallStart),
    /// Another message type (status updates, end-of-call reports, tool calls…).
    Other(String),
}

/// The credentials a request presented, and the configured ones.
pub struct VapiAuth<'a> {
    pub secret_header: Option<&'a [u8]>,
    pub bearer: Option<&'a [u8]>,
    pub signature: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub secret: &'a str,
    pub hmac_secret: &'a str,
}

/// The adapter: parse, verify, render.
pub struct Vapi;

impl Vapi {
    /// `{"message": {"type", "customer": {"number"}, "phoneNumber": {"number"}, "call": {"id"}}}`.
    pub fn parse(body: &[u8]) -> Result<VapiMessage, Refusal> {
        let v = json_object(body)?;
        let Some(m) = v.get("message").filter(|m| m.is_object()) else {
            return Err(Refusal::Invalid("`message` must be an object".into()));
        };
        let Some(kind) = str_field(m, "type") else {
            return Err(Refusal::Invalid("`message.type` is required".into()));
        };
        if kind != "assistant-request" {
            return Ok(VapiMessage::Other(kind.to_owned()));
        }
        let call = m.get("call").unwrap_or(&Value::Null);
        let number = |v: &Value| v.get("number").and_then(Value::as_str).map(str::to_owned);
        let caller = m
            .get("customer")
            .and_then(number)
            .or_else(|| call.get("customer").and_then(number))
            .unwrap_or_default();
        // A web call has no phone number: it is nobody's number.
        let callee = m.get("phoneNumber").and_then(number).unwrap_or_default();
        Ok(VapiMessage::CallStart(CallStart {
            caller,
            callee,
            call_id: str_field(call, "id").map(str::to_owned),
            agent_id: str_field(call, "assistantId").map(str::to_owned),
        }))
    }

    /// Whichever is configured: the secret (as `X-Vapi-Secret` or Bearer) or the HMAC over
    /// `{x-timestamp}.{body}`, within [`MAX_SKEW_MS`] of `now_ms`.
    pub fn verify(auth: &VapiAuth<'_>, body: &[u8], now_ms: i64) -> bool {
        let secret = auth.secret.as_bytes();
        if !secret.is_empty()
            && [auth.secret_header, auth.bearer]
                .into_iter()
                .flatten()
                .any(|p| sign::same(p, secret))
        {
            return true;
        }
        let (Some(sig), Some(ts)) = (auth.signature, auth.timestamp) else {
            return false;
        };
        if auth.hmac_secret.is_empty() || !fresh(ts, now_ms) {
            return false;
        }
        let mac = sign::hmac_sha256(auth.hmac_secret.as_bytes(), &[ts.as_bytes(), b".", body]);
        sign::same_hex(sig.strip_prefix("sha256=").unwrap_or(sig), &mac)
    }

    /// `{"assistantId", "assistantOverrides": {"variableValues", "firstMessage"}}`, or Vapi's
    /// `{"error": …}` (spoken, then the call ends) when the number is nobody's or no assistant
    /// is configured.
    pub fn render(
        known: &Known,
        default_assistant: &str,
        unknown_number_message: &str,
    ) -> Rendered {
        let assistant = known
            .voice
            .vapi
            .assistant_id
            .as_deref()
            .filter(|a| !a.is_empty())
            .or((!default_assistant.is_empty()).then_some(default_assistant));
        match assistant {
            Some(id) if known.outcome != WebhookOutcome::UnknownNumber => {
                Rendered::json(&Assistant {
                    assistant_id: id,
                    assistant_overrides: Overrides {
                        variable_values: &known.variables,
                        first_message: &known.greeting,
                    },
                })
            }
            _ => Rendered::json(&json!({ "error": unknown_number_message })),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Assistant<'a> {
    assistant_id: &'a str,
    assistant_overrides: Overrides<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Overrides<'a> {
    variable_values: &'a Map<String, Value>,
    first_message: &'a str,
}

/// A timestamp in seconds or milliseconds since the epoch, near enough to `now_ms`.
fn fresh(ts: &str, now_ms: i64) -> bool {
    let Ok(t) = ts.trim().parse::<i64>() else {
        return false;
    };
    let ms = if t < 100_000_000_000 { t * 1000 } else { t };
    (now_ms - ms).abs() <= MAX_SKEW_MS
}
