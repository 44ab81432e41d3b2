//! Twilio's voice webhook: a form (`CallSid`, `From`, `To`, …) answered with TwiML from the
//! organization's template. Twilio signs the URL it called plus every POST parameter.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::{sign, CallStart, Known, Refusal, Rendered};
use crate::labels::WebhookOutcome;

/// The template when an organization has none: say the greeting.
pub(super) const DEFAULT_TWIML: &str = "<Response><Say>{greeting}</Say></Response>";

const XML_DECLARATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

/// The adapter: parse, verify, render.
pub struct Twilio;

impl Twilio {
    /// The form's parameters, in order.
    pub fn params(body: &[u8]) -> Vec<(String, String)> {
        form_urlencoded::parse(body).into_owned().collect()
    }

    /// `CallSid`, `From` and `To` from the parameters.
    pub fn parse(params: &[(String, String)]) -> Result<CallStart, Refusal> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, v)| k == name && !v.trim().is_empty())
                .map(|(_, v)| v.clone())
        };
        let need = |name: &str| {
            get(name).ok_or_else(|| Refusal::Invalid(format!("form field `{name}` is required")))
        };
        Ok(CallStart {
            // A withheld caller id comes as `anonymous` or empty: an unknown caller.
            caller: get("From").unwrap_or_default(),
            callee: need("To")?,
            call_id: Some(need("CallSid")?),
            agent_id: None,
        })
    }

    /// `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, url + each parameter's name and
    /// value, sorted by name)), as Twilio's own validators compute it.
    pub fn verify(
        signature: Option<&str>,
        url: &str,
        params: &[(String, String)],
        auth_token: &str,
    ) -> bool {
        let Some(sig) = signature else {
            return false;
        };
        let Ok(presented) = base64::engine::general_purpose::STANDARD.decode(sig.trim()) else {
            return false;
        };
        sign::same(&presented, &Self::signature(url, params, auth_token))
    }

    fn signature(url: &str, params: &[(String, String)], auth_token: &str) -> [u8; 20] {
        let mut sorted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (k, v) in params {
            sorted.entry(k).or_default().push(v);
        }
        let mut signed = String::from(url);
        for (k, mut values) in sorted {
            values.sort_unstable();
            values.dedup();
            for v in values {
                signed.push_str(k);
                signed.push_str(v);
            }
        }
        sign::hmac_sha1(auth_token.as_bytes(), &[signed.as_bytes()])
    }

    /// The signature Twilio would send (for tests and the benchmark's client).
    pub fn sign(url: &str, params: &[(String, String)], auth_token: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(Self::signature(url, params, auth_token))
    }

    /// TwiML from the organization's template (or [`DEFAULT_TWIML`]) with `{name}` filled from
    /// the variables, XML-escaped; a number that is nobody's says `unknown_number_message` and
    /// hangs up.
    pub fn render(known: &Known, unknown_number_message: &str) -> Rendered {
        let mut xml = String::from(XML_DECLARATION);
        if known.outcome == WebhookOutcome::UnknownNumber {
            xml.push_str("<Response><Say>");
            escape_into(&mut xml, unknown_number_message);
            xml.push_str("</Say><Hangup/></Response>");
        } else {
            let template = known
                .voice
                .twilio
                .twiml
                .as_deref()
                .filter(|t| !t.trim().is_empty())
                .unwrap_or(DEFAULT_TWIML);
            let template = template
                .trim_start()
                .strip_prefix(XML_DECLARATION)
                .unwrap_or(template);
            fill(&mut xml, template, known);
        }
        Rendered {
            content_type: "text/xml; charset=utf-8",
            body: xml.into(),
        }
    }
}

/// Copies `template` with each `{name}` of a known variable replaced by its escaped value;
/// anything else is left as written.
fn fill(out: &mut String, template: &str, known: &Known) {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let value = (after[name_len..].starts_with('}'))
            .then(|| known.variables.get(&after[..name_len]))
            .flatten();
        match value {
            Some(v) => {
                match v.as_str() {
                    Some(s) => escape_into(out, s),
                    None => escape_into(out, &v.to_string()),
                }
                rest = &after[name_len + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
}
