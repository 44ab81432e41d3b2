//! `[webhooks]` and `[proxy]`: the voice platforms' call-start webhooks sidecache answers itself,
//! and the handler app every other request is passed through to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{typed, Invalid, Secret};

const UNKNOWN_NUMBER: &str = "Sorry, this number is not in service. Goodbye.";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSettings {
    /// Every call-start webhook is answered within this long (`deadline_ms`): what is not known
    /// by then is answered from the organization's defaults or a generic greeting.
    #[serde(rename = "deadline_ms", with = "typed::nonzero_millis")]
    pub deadline: Duration,
    pub elevenlabs: ElevenLabsSettings,
    pub vapi: VapiSettings,
    pub retell: RetellSettings,
    pub twilio: TwilioSettings,
}

impl Default for WebhooksSettings {
    fn default() -> Self {
        WebhooksSettings {
            deadline: Duration::from_millis(500),
            elevenlabs: ElevenLabsSettings::default(),
            vapi: VapiSettings::default(),
            retell: RetellSettings::default(),
            twilio: TwilioSettings::default(),
        }
    }
}

/// ElevenLabs sends the request headers configured on the agent's webhook: one of them carries
/// the shared secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElevenLabsSettings {
    /// The header that carries the secret.
    pub header: String,
    /// Empty = `/v1/webhooks/elevenlabs` is not mounted.
    pub secret: Secret,
}

impl Default for ElevenLabsSettings {
    fn default() -> Self {
        ElevenLabsSettings {
            header: "x-sidecache-secret".into(),
            secret: Secret::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VapiSettings {
    /// The server URL secret, accepted as `X-Vapi-Secret` or `Authorization: Bearer`.
    pub secret: Secret,
    /// The HMAC secret of `x-signature` (hex HMAC-SHA256 over `{x-timestamp}.{body}`).
    pub hmac_secret: Secret,
    /// The assistant for organizations whose `settings.voice.vapi.assistant_id` is not set.
    pub default_assistant_id: String,
    /// Spoken (Vapi's `{"error": …}` answer) when no organization has the called number.
    pub unknown_number_message: String,
}

impl Default for VapiSettings {
    fn default() -> Self {
        VapiSettings {
            secret: Secret::default(),
            hmac_secret: Secret::default(),
            default_assistant_id: String::new(),
            unknown_number_message: UNKNOWN_NUMBER.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetellSettings {
    /// The API key Retell signs webhooks with (`x-retell-signature`).
    pub api_key: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioSettings {
    /// The account's auth token (`X-Twilio-Signature`).
    pub auth_token: Secret,
    /// The URL Twilio is configured to call, up to the path (`https://voice.example.com`):
    /// Twilio signs the URL it calls, which a proxy in front of sidecache may have rewritten.
    pub public_url: String,
    /// Said before hanging up when no organization has the called number.
    pub unknown_number_message: String,
}

impl Default for TwilioSettings {
    fn default() -> Self {
        TwilioSettings {
            auth_token: Secret::default(),
            public_url: String::new(),
            unknown_number_message: UNKNOWN_NUMBER.into(),
        }
    }
}

impl WebhooksSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.deadline > Duration::from_secs(5) {
            return Err(Invalid::new(
                "webhooks.deadline_ms",
                "must be at most 5000 (Vapi's whole budget is 7.5 s)",
            ));
        }
        let header = &self.elevenlabs.header;
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Invalid::new(
                "webhooks.elevenlabs.header",
                "must be a header name: letters, digits, '-' and '_'",
            ));
        }
        let twilio = &self.twilio;
        if twilio.auth_token.is_set() && !is_http_url(&twilio.public_url) {
            return Err(Invalid::new(
                "webhooks.twilio.public_url",
                "must be the http(s) URL Twilio calls (needed to check X-Twilio-Signature)",
            ));
        }
        for (key, message) in [
            (
                "webhooks.vapi.unknown_number_message",
                &self.vapi.unknown_number_message,
            ),
            (
                "webhooks.twilio.unknown_number_message",
                &twilio.unknown_number_message,
            ),
        ] {
            if message.trim().is_empty() {
                return Err(Invalid::new(key, "must not be empty"));
            }
        }
        Ok(())
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(['?', '#', ' ']))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// The handler app (`http://127.0.0.1:3000`) every request sidecache does not answer goes
    /// to; empty = unknown routes are 404.
    pub upstream: String,
    /// Connecting to the upstream (`connect_timeout_ms`); past it, 502.
    #[serde(rename = "connect_timeout_ms", with = "typed::nonzero_millis")]
    pub connect_timeout: Duration,
    /// Waiting for the upstream's answer to begin (`timeout_ms`); past it, 504. A body that
    /// streams (SSE) is not cut by it.
    #[serde(rename = "timeout_ms", with = "typed::nonzero_millis")]
    pub timeout: Duration,
    /// Also send each answered call-start webhook to the upstream, in the background.
    pub mirror_call_starts: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            upstream: String::new(),
            connect_timeout: Duration::from_millis(1000),
            timeout: Duration::from_secs(30),
            mirror_call_starts: false,
        }
    }
}

impl ProxySettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.upstream.is_empty() {
            if self.mirror_call_starts {
                return Err(Invalid::new(
                    "proxy.mirror_call_starts",
                    "needs proxy.upstream",
                ));
            }
            return Ok(());
        }
        let Some(rest) = self.upstream.strip_prefix("http://") else {
            return Err(Invalid::new(
                "proxy.upstream",
                "must be an http:// URL (the handler app beside sidecache; TLS is not spoken to it)",
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '?', '#', ' ', '@']) {
            return Err(Invalid::new(
                "proxy.upstream",
                "must be http://host[:port], without a path",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(is_http_url("https://voice.example.com"));
        assert!(is_http_url("http://127.0.0.1:8080/prefix"));
        for bad in ["", "ftp://x", "https://", "https:///x", "voice.example.com"] {
            assert!(!is_http_url(bad), "{bad}");
        }
        let proxy = |u: &str| ProxySettings {
            upstream: u.into(),
            ..ProxySettings::default()
        };
        assert!(proxy("http://127.0.0.1:3000").validate().is_ok());
        assert!(proxy("http://app:3000/").validate().is_ok());
        assert!(proxy("").validate().is_ok());
        for bad in ["https://app", "http://app/x", "http://", "app:3000"] {
            assert!(proxy(bad).validate().is_err(), "{bad}");
        }
    }
}
