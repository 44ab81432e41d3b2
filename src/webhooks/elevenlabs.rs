//! ElevenLabs' conversation initiation client data webhook (Twilio and SIP calls): the request
//! names the caller and the called number; the answer must carry `type`, every variable the agent
//! defines, and overrides only for the fields the agent has enabled, or the call fails.

use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::{json_object, required, sign, str_field, CallStart, Known, Refusal, Rendered};

/// The overrides an agent may enable, by their names in `settings.voice.elevenlabs.overrides`.
const OVERRIDES: [&str; 4] = ["first_message", "language", "prompt", "voice_id"];

/// The adapter: parse, verify, render.
pub struct ElevenLabs;

impl ElevenLabs {
    /// `{caller_id, agent_id, called_number, call_sid}`.
    pub fn parse(body: &[u8]) -> Result<CallStart, Refusal> {
        let v = json_object(body)?;
        Ok(CallStart {
            caller: required(&v, "", "caller_id")?.to_owned(),
            callee: required(&v, "", "called_number")?.to_owned(),
            call_id: str_field(&v, "call_sid").map(str::to_owned),
            agent_id: str_field(&v, "agent_id").map(str::to_owned),
        })
    }

    /// The configured header carries the configured secret.
    pub fn verify(presented: Option<&[u8]>, secret: &str) -> bool {
        presented.is_some_and(|p| sign::same(p, secret.as_bytes()))
    }

    /// `{"type": "conversation_initiation_client_data", "dynamic_variables", "conversation_config_override"?}`.
    pub fn render(known: &Known) -> Rendered {
        let el = &known.voice.elevenlabs;
        let enabled = |name: &str| el.overrides.iter().any(|o| o == name);
        let mut agent = Map::new();
        let mut tts = Map::new();
        for name in OVERRIDES.into_iter().filter(|n| enabled(n)) {
            match name {
                "first_message" => {
                    agent.insert(name.into(), known.greeting.clone().into());
                }
                "language" => {
                    if let Some(l) = &el.language {
                        agent.insert(name.into(), l.clone().into());
                    }
                }
                "prompt" => {
                    if let Some(p) = &el.prompt {
                        agent.insert(name.into(), json!({ "prompt": p }));
                    }
                }
                _ => {
                    if let Some(v) = &el.voice_id {
                        tts.insert(name.into(), v.clone().into());
                    }
                }
            }
        }
        let mut config = Map::new();
        if !agent.is_empty() {
            config.insert("agent".into(), agent.into());
        }
        if !tts.is_empty() {
            config.insert("tts".into(), tts.into());
        }
        Rendered::json(&Answer {
            kind: "conversation_initiation_client_data",
            dynamic_variables: Variables {
                known: &known.variables,
                defaults: &el.dynamic_variable_defaults,
            },
            conversation_config_override: config,
        })
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dynamic_variables: Variables<'a>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    conversation_config_override: Map<String, Value>,
}

/// Every variable the agent defines: what is known, then the defaults for the rest, without
/// ElevenLabs' own `system__` ones (which may not be set).
struct Variables<'a> {
    known: &'a Map<String, Value>,
    defaults: &'a Map<String, Value>,
}

impl Serialize for Variables<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let defaults = self
            .defaults
            .iter()
            .filter(|(k, _)| !self.known.contains_key(*k));
        s.collect_map(
            self.known
                .iter()
                .chain(defaults)
                .filter(|(k, _)| !k.starts_with("system__"))
                .map(|(k, v)| (k, Variable(v))),
        )
    }
}

/// ElevenLabs takes strings, numbers, booleans and null; anything else goes as its JSON text.
struct Variable<'a>(&'a Value);

impl Serialize for Variable<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            v @ (Value::Array(_) | Value::Object(_)) => s.serialize_str(&v.to_string()),
            other => other.serialize(s),
        }
    }
}
