//! `[cache]`, `[cache.ttl]`, `[cache.max_stale]`: the tiers' sizes, lifetimes per kind, and the
//! fail-safe budgets of a lookup.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{typed, Invalid};
use crate::cache::{FailSafe, Kind, Local, Policies, Policy};
use crate::domain::Region;

/// A duration per kind of data, in seconds: time to live of a found value (`cache.ttl`), or how
/// long past it a value may still be served when Postgres cannot be reached (`cache.max_stale`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlSettings {
    #[serde(with = "typed::secs")]
    pub lead_phone: Duration,
    #[serde(with = "typed::secs")]
    pub lead_id: Duration,
    #[serde(with = "typed::secs")]
    pub org_phone: Duration,
    #[serde(with = "typed::secs")]
    pub org_id: Duration,
    #[serde(with = "typed::secs")]
    pub context: Duration,
    #[serde(with = "typed::secs")]
    pub summary: Duration,
    #[serde(with = "typed::secs")]
    pub greeting: Duration,
    #[serde(with = "typed::secs")]
    pub history: Duration,
}

impl Default for TtlSettings {
    fn default() -> Self {
        let secs = Duration::from_secs;
        TtlSettings {
            lead_phone: secs(900),
            lead_id: secs(900),
            org_phone: secs(1800),
            org_id: secs(1800),
            context: secs(600),
            summary: secs(1200),
            greeting: secs(300),
            history: secs(600),
        }
    }
}

impl TtlSettings {
    /// The same value for every kind.
    pub fn uniform(d: Duration) -> Self {
        TtlSettings {
            lead_phone: d,
            lead_id: d,
            org_phone: d,
            org_id: d,
            context: d,
            summary: d,
            greeting: d,
            history: d,
        }
    }

    /// The value for `kind`.
    pub fn get(&self, kind: Kind) -> Duration {
        match kind {
            Kind::LeadByPhone => self.lead_phone,
            Kind::LeadById => self.lead_id,
            Kind::OrgByPhone => self.org_phone,
            Kind::OrgById => self.org_id,
            Kind::Context => self.context,
            Kind::Summary => self.summary,
            Kind::Greeting => self.greeting,
            Kind::History => self.history,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    #[serde(deserialize_with = "typed::flexible_bool")]
    pub l1_enabled: bool,
    pub l1_max_bytes: u64,
    /// L1 keeps an entry at most this long, whatever its kind's TTL (`l1_max_ttl_secs`).
    #[serde(rename = "l1_max_ttl_secs", with = "typed::nonzero_secs")]
    pub l1_max_ttl: Duration,
    /// Lifetime of a not-found answer (`negative_ttl_secs`).
    #[serde(rename = "negative_ttl_secs", with = "typed::nonzero_secs")]
    pub negative_ttl: Duration,
    pub jitter: f64,
    /// Region assumed for phone numbers written without a country code.
    #[serde(with = "typed::region")]
    pub default_region: Region,
    /// With a stale value at hand, a slower load is not waited for (`soft_timeout_ms`).
    #[serde(rename = "soft_timeout_ms", with = "typed::nonzero_millis")]
    pub soft_timeout: Duration,
    /// Without one, a lookup gives up after this long (`lookup_deadline_ms`).
    #[serde(rename = "lookup_deadline_ms", with = "typed::nonzero_millis")]
    pub lookup_deadline: Duration,
    /// After a failed load, the key is not loaded again for this long (`fail_safe_throttle_ms`).
    #[serde(rename = "fail_safe_throttle_ms", with = "typed::millis")]
    pub fail_safe_throttle: Duration,
    pub refresh_ahead: f64,
    pub ttl: TtlSettings,
    pub max_stale: TtlSettings,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            l1_enabled: true,
            l1_max_bytes: 256 * 1024 * 1024,
            l1_max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
            jitter: 0.1,
            default_region: Region::default(),
            soft_timeout: Duration::from_millis(50),
            lookup_deadline: Duration::from_millis(1000),
            fail_safe_throttle: Duration::from_millis(1000),
            refresh_ahead: 0.1,
            ttl: TtlSettings::default(),
            max_stale: TtlSettings::uniform(Duration::from_secs(3600)),
        }
    }
}

impl CacheSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(Invalid::new("cache.jitter", "must be between 0 and 0.5"));
        }
        if self.l1_max_bytes < 1024 * 1024 {
            return Err(Invalid::new(
                "cache.l1_max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        // `max_stale` shares the type and may be 0 (no stale answers); a TTL may not.
        for kind in Kind::ALL {
            if self.ttl.get(kind).is_zero() {
                return Err(Invalid::new(
                    format!("cache.ttl.{kind}"),
                    "must be greater than 0",
                ));
            }
        }
        if !(0.0..0.5).contains(&self.refresh_ahead) {
            return Err(Invalid::new(
                "cache.refresh_ahead",
                "must be at least 0 and below 0.5",
            ));
        }
        Ok(())
    }

    /// The in-process tier, sized by `l1_max_bytes` (a disabled one when `l1_enabled` is false).
    pub fn local(&self) -> Local {
        Local::new(self.l1_enabled, self.l1_max_bytes)
    }

    /// Cache policies per kind.
    pub fn policies(&self) -> Policies {
        Policies::new(|kind| Policy {
            ttl: self.ttl.get(kind),
            negative_ttl: self.negative_ttl,
            l1_max_ttl: self.l1_max_ttl,
            jitter: self.jitter,
            max_stale: self.max_stale.get(kind),
        })
    }

    /// Stale answers, deadlines and refresh-ahead.
    pub fn fail_safe(&self) -> FailSafe {
        FailSafe {
            soft_timeout: self.soft_timeout,
            deadline: self.lookup_deadline,
            throttle: self.fail_safe_throttle,
            refresh_ahead: self.refresh_ahead,
        }
    }
}
