//! The voice platforms' call-start webhooks, answered from the same cached lookups as
//! `/v1/calls/initiation`.
//!
//! One model for all of them: each adapter parses its platform's request into a [`CallStart`],
//! [`resolve`] turns that into what is [`Known`] within the deadline — everything, the
//! organization only, or nothing — and the adapter renders that in its platform's format. The
//! adapters are pure functions (parse, render, verify), tested by tables of real bodies; the HTTP
//! edge (`http::webhooks`) owns headers, timing, the call's session and the proxy.
//!
//! Fail open: a platform that gets an error, an empty body or a payload it rejects drops the call,
//! so every answer past the signature check is a 200 with a valid payload.

mod claim;
mod elevenlabs;
mod resolve;
mod retell;
mod sign;
mod twilio;
mod vapi;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use claim::{Claim, Claims};
pub use resolve::{resolve, Decoded};

use crate::domain::{LeadId, Organization};
use crate::labels::WebhookOutcome;

pub use elevenlabs::ElevenLabs;
pub use retell::{Retell, RetellRefusal};
pub use twilio::Twilio;
pub use vapi::{Vapi, VapiAuth, VapiMessage};

/// Said when nothing is known about the call within the deadline.
pub const GENERIC_GREETING: &str = "Hello! Thanks for calling. How can I help you today?";

/// A call start, whatever platform sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStart {
    /// The caller's number as the platform sent it (`anonymous` and the like are unknown callers).
    pub caller: String,
    /// The called number.
    pub callee: String,
    /// The platform's id of the call, when it has one yet (Retell's call-inbound has none).
    pub call_id: Option<String>,
    /// The agent or assistant the platform would use.
    pub agent_id: Option<String>,
}

/// A request a platform adapter cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not the platform's encoding at all (400).
    Malformed(String),
    /// Well-formed, but missing what a call start must carry (422).
    Invalid(String),
}

/// The answer to a webhook, rendered.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub content_type: &'static str,
    pub body: bytes::Bytes,
}

impl Rendered {
    fn json(v: &impl serde::Serialize) -> Self {
        Rendered {
            content_type: "application/json",
            body: serde_json::to_vec(v)
                .expect("a JSON value serializes")
                .into(),
        }
    }
}

/// What is known about a call within the deadline.
#[derive(Debug, Clone)]
pub struct Known {
    pub outcome: WebhookOutcome,
    /// `None` for `fallback` and `unknown_number`.
    pub org: Option<Arc<Organization>>,
    /// The caller's lead, when the caller is one.
    pub lead_id: Option<LeadId>,
    /// The prompt's variables, all strings: the context's for a known caller (the lead's
    /// attributes and the built-in names), the organization's for an unknown one, and always
    /// `greeting`, `caller_number` and `known_caller`.
    pub variables: Map<String, Value>,
    /// The first thing the agent says.
    pub greeting: String,
    /// The organization's `settings.voice`.
    pub voice: Arc<Voice>,
}

impl Known {
    /// Nothing known: no organization answered within the deadline.
    pub fn fallback(caller: &str) -> Self {
        Known::without_org(WebhookOutcome::Fallback, caller)
    }

    /// No organization has the called number.
    pub fn unknown_number(caller: &str) -> Self {
        Known::without_org(WebhookOutcome::UnknownNumber, caller)
    }

    fn without_org(outcome: WebhookOutcome, caller: &str) -> Self {
        let mut variables = Map::new();
        finish_variables(&mut variables, GENERIC_GREETING, caller, false);
        Known {
            outcome,
            org: None,
            lead_id: None,
            variables,
            greeting: GENERIC_GREETING.to_owned(),
            voice: Arc::default(),
        }
    }

    /// The organization's id as a string, if one is known.
    pub fn org_id(&self) -> Option<String> {
        self.org.as_ref().map(|o| o.id.to_string())
    }
}

/// The variables every answer carries, beside the lookups' own.
fn finish_variables(vars: &mut Map<String, Value>, greeting: &str, caller: &str, known: bool) {
    let mut put = |k: &str, v: &str| {
        vars.insert(k.to_owned(), Value::String(v.to_owned()));
    };
    put("greeting", greeting);
    put("caller_number", caller);
    put("known_caller", if known { "true" } else { "false" });
}

/// An organization's `settings.voice`: per-platform choices. A value of the wrong shape is
/// ignored (with a warning), never a failed call.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Voice {
    pub elevenlabs: ElevenLabsVoice,
    pub vapi: VapiVoice,
    pub retell: RetellVoice,
    pub twilio: TwilioVoice,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ElevenLabsVoice {
    /// The overrides the agent has enabled: `first_message`, `language`, `prompt`, `voice_id`.
    pub overrides: Vec<String>,
    pub language: Option<String>,
    pub prompt: Option<String>,
    pub voice_id: Option<String>,
    /// Values for every variable the agent defines (strings, numbers, booleans or null), under
    /// what the lookups know.
    pub dynamic_variable_defaults: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VapiVoice {
    pub assistant_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RetellVoice {
    pub override_agent_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TwilioVoice {
    /// TwiML with `{name}` placeholders for the variables (values XML-escaped).
    pub twiml: Option<String>,
}

impl Voice {
    /// The `voice` object of an organization's settings.
    pub fn of(org: &Organization) -> Self {
        let Some(v) = org.settings.get("voice") else {
            return Voice::default();
        };
        Voice::deserialize(v).unwrap_or_else(|e| {
            tracing::warn!(organization = %org.id, error = %e, "settings.voice ignored: not of the documented shape");
            Voice::default()
        })
    }
}

/// A JSON object's string field, if it is one and not empty.
fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// The body as a JSON object, or why not.
fn json_object(body: &[u8]) -> Result<Value, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Refusal::Invalid("the body must be a JSON object".into())),
        Err(e) => Err(Refusal::Malformed(format!("the body is not JSON: {e}"))),
    }
}

/// A required string field, or the refusal naming it.
fn required<'a>(v: &'a Value, path: &str, key: &str) -> Result<&'a str, Refusal> {
    str_field(v, key).ok_or_else(|| Refusal::Invalid(format!("`{path}{key}` is required")))
}

#[cfg(test)]
mod tests;
