//! `[sessions]`, `[events]` and `[rate_limits]`: the state handlers share during a call —
//! session documents, event streams and named rate limits.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{typed, Invalid};
use crate::sessions::{DownPolicy, EventsConfig, LimitConfig, SessionsConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsSettings {
    /// Lifetime of a session after its last write or touch, unless the write names its own
    /// (`ttl_secs`).
    #[serde(rename = "ttl_secs", with = "typed::nonzero_secs")]
    pub ttl: Duration,
    /// The longest lifetime a write may ask for (`max_ttl_secs`).
    #[serde(rename = "max_ttl_secs", with = "typed::nonzero_secs")]
    pub max_ttl: Duration,
    /// Largest `data` document, as JSON bytes.
    pub max_bytes: NonZeroUsize,
    /// Sessions this instance holds in memory while Redis is off or away; past it, new sessions
    /// are refused (503) rather than evicting one that was acknowledged.
    pub memory_max_entries: NonZeroUsize,
}

impl Default for SessionsSettings {
    fn default() -> Self {
        SessionsSettings {
            ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(86400),
            max_bytes: NonZeroUsize::new(64 * 1024).unwrap(),
            memory_max_entries: NonZeroUsize::new(100_000).unwrap(),
        }
    }
}

impl SessionsSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.ttl > self.max_ttl {
            return Err(Invalid::new(
                "sessions.ttl_secs",
                "must not be longer than sessions.max_ttl_secs",
            ));
        }
        if self.max_bytes.get() > 16 * 1024 * 1024 {
            return Err(Invalid::new("sessions.max_bytes", "must be at most 16 MiB"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// Events a stream retains (older ones are trimmed as new ones arrive).
    pub max_len: NonZeroUsize,
    /// How long a stream keeps events (`retention_secs`).
    #[serde(rename = "retention_secs", with = "typed::nonzero_secs")]
    pub retention: Duration,
    /// SSE subscribers this instance serves at once; more are refused with 503.
    pub max_subscribers: NonZeroUsize,
    /// A `: keep-alive` comment is sent after this long without an event (`keepalive_secs`).
    #[serde(rename = "keepalive_secs", with = "typed::nonzero_secs")]
    pub keepalive: Duration,
    /// Events read ahead for one subscriber; a subscriber that leaves them unread for
    /// `slow_cut_secs` is cut (with a final `event: cut`, and can resume).
    pub subscriber_buffer: NonZeroUsize,
    #[serde(rename = "slow_cut_secs", with = "typed::nonzero_secs")]
    pub slow_cut: Duration,
}

impl Default for EventsSettings {
    fn default() -> Self {
        EventsSettings {
            max_len: NonZeroUsize::new(1000).unwrap(),
            retention: Duration::from_secs(3600),
            max_subscribers: NonZeroUsize::new(10_000).unwrap(),
            keepalive: Duration::from_secs(15),
            subscriber_buffer: NonZeroUsize::new(256).unwrap(),
            slow_cut: Duration::from_secs(10),
        }
    }
}

impl EventsSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.max_len.get() > 1_000_000 {
            return Err(Invalid::new("events.max_len", "must be at most 1000000"));
        }
        Ok(())
    }
}

/// What a rate-limit check does while Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisDown {
    /// Count in this instance's memory (each instance admits up to the limit).
    #[default]
    Local,
    /// Admit everything.
    Allow,
    /// Refuse everything.
    Deny,
}

/// One named limit: `limit` requests per `period_secs`, up to `burst` at once (default `limit`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub limit: NonZeroU32,
    #[serde(rename = "period_secs", with = "typed::nonzero_secs")]
    pub period: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub on_redis_down: OnRedisDown,
    /// `[rate_limits.limits.<name>]`; names are 1-64 characters of `[a-z0-9_-]`.
    pub limits: BTreeMap<String, LimitSettings>,
}

impl RateLimitSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        for (name, l) in &self.limits {
            let key = format!("rate_limits.limits.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(Invalid::new(
                    key,
                    "a limit's name must be 1-64 characters of [a-z0-9_-]",
                ));
            }
            if l.period > Duration::from_secs(30 * 86400) {
                return Err(Invalid::new(
                    format!("{key}.period_secs"),
                    "must be at most 30 days",
                ));
            }
        }
        Ok(())
    }
}

impl SessionsSettings {
    /// The session store's settings.
    pub fn config(&self) -> SessionsConfig {
        SessionsConfig {
            ttl: self.ttl,
            max_ttl: self.max_ttl,
            max_bytes: self.max_bytes.get(),
            memory_max_entries: self.memory_max_entries.get(),
        }
    }
}

impl EventsSettings {
    /// The event streams' settings.
    pub fn config(&self) -> EventsConfig {
        EventsConfig {
            max_len: self.max_len.get(),
            retention: self.retention,
            max_subscribers: self.max_subscribers.get(),
            keepalive: self.keepalive,
            subscriber_buffer: self.subscriber_buffer.get(),
            slow_cut: self.slow_cut,
        }
    }
}

impl RateLimitSettings {
    /// Every configured limit by name.
    pub fn limits(&self) -> Vec<(String, LimitConfig)> {
        self.limits
            .iter()
            .map(|(name, l)| {
                let cfg = LimitConfig {
                    limit: l.limit.get(),
                    period: l.period,
                    burst: l.burst.unwrap_or(l.limit).get(),
                };
                (name.clone(), cfg)
            })
            .collect()
    }

    pub fn policy(&self) -> DownPolicy {
        match self.on_redis_down {
            OnRedisDown::Local => DownPolicy::Local,
            OnRedisDown::Allow => DownPolicy::Allow,
            OnRedisDown::Deny => DownPolicy::Deny,
        }
    }
}
