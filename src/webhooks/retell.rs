//! Retell's inbound call webhook: `call_inbound` names the caller, the number and the agent, but
//! no call id yet (the call object does not exist until it is answered). The answer's variables
//! must all be strings.

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::{json_object, required, sign, str_field, CallStart, Known, Refusal, Rendered};
use crate::labels::WebhookOutcome;

/// How far the signature's time may be from now (ms).
pub(super) const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetellRefusal {
    Missing,
    Wrong,
    Stale,
}

/// The adapter: parse, verify, render.
pub struct Retell;

impl Retell {
    /// `{"event": "call_inbound", "call_inbound": {from_number, to_number, agent_id?}}`; another
    /// event is `Ok(Err(event))`.
    pub fn parse(body: &[u8]) -> Result<Result<CallStart, String>, Refusal> {
        let v = json_object(body)?;
        let event = required(&v, "", "event")?;
        if event != "call_inbound" {
            return Ok(Err(event.to_owned()));
        }
        let Some(c) = v.get("call_inbound").filter(|c| c.is_object()) else {
            return Err(Refusal::Invalid("`call_inbound` must be an object".into()));
        };
        Ok(Ok(CallStart {
            caller: required(c, "call_inbound.", "from_number")?.to_owned(),
            callee: required(c, "call_inbound.", "to_number")?.to_owned(),
            call_id: None,
            agent_id: str_field(c, "agent_id").map(str::to_owned),
        }))
    }

    /// `x-retell-signature: v=<unix ms>,d=<hex HMAC-SHA256(api key, body + ms)>`, within
    /// [`MAX_SKEW_MS`] of `now_ms`.
    pub fn verify(
        header: Option<&str>,
        body: &[u8],
        api_key: &str,
        now_ms: i64,
    ) -> Result<(), RetellRefusal> {
        let header = header.ok_or(RetellRefusal::Missing)?;
        let (mut ts, mut digest) = (None, None);
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("v", v)) => ts = Some(v),
                Some(("d", d)) => digest = Some(d),
                _ => {}
            }
        }
        let (Some(ts), Some(digest)) = (ts, digest) else {
            return Err(RetellRefusal::Wrong);
        };
        let at: i64 = ts.parse().map_err(|_| RetellRefusal::Wrong)?;
        let mac = sign::hmac_sha256(api_key.as_bytes(), &[body, ts.as_bytes()]);
        if !sign::same_hex(digest, &mac) {
            return Err(RetellRefusal::Wrong);
        }
        if (now_ms - at).abs() > MAX_SKEW_MS {
            return Err(RetellRefusal::Stale);
        }
        Ok(())
    }

    /// `{"call_inbound": {"dynamic_variables", "override_agent_id"?, "metadata"}}`; for a number
    /// that is nobody's, no overrides (Retell's own inbound agent, if any, takes the call).
    /// `session` is the id of the call's session (`call:<id>`), for the handler app.
    pub fn render(known: &Known, session: Option<&str>) -> Rendered {
        if known.outcome == WebhookOutcome::UnknownNumber {
            return Rendered::json(&json!({ "call_inbound": { "dynamic_variables": {} } }));
        }
        let agent = known
            .voice
            .retell
            .override_agent_id
            .as_deref()
            .filter(|a| !a.is_empty());
        Rendered::json(&Answer {
            call_inbound: Inbound {
                dynamic_variables: Strings(&known.variables),
                override_agent_id: agent,
                metadata: Metadata {
                    organization_id: known.org_id(),
                    lead_id: known.lead_id.map(|l| l.to_string()),
                    session_id: session,
                },
            },
        })
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    call_inbound: Inbound<'a>,
}

#[derive(Serialize)]
struct Inbound<'a> {
    dynamic_variables: Strings<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    override_agent_id: Option<&'a str>,
    metadata: Metadata<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    organization_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lead_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
}

/// Retell takes only strings: null is empty, anything else its JSON text.
struct Strings<'a>(&'a Map<String, Value>);

impl Serialize for Strings<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, StringValue(v))))
    }
}

struct StringValue<'a>(&'a Value);

impl Serialize for StringValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::String(v) => s.serialize_str(v),
            Value::Null => s.serialize_str(""),
            other => s.serialize_str(&other.to_string()),
        }
    }
}
