//! `[audit]`: the consistency auditor, which samples cached entries and checks them against
//! Postgres.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{typed, Invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Cached entries checked per second, alternating L1 and Redis; 0 = no auditor.
    pub samples_per_sec: f64,
    /// How long a disagreement may last before it counts as stale: a change whose invalidation
    /// is still on its way is in flight, not stale (`window_ms`).
    #[serde(rename = "window_ms", with = "typed::nonzero_millis")]
    pub window: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            samples_per_sec: 1.0,
            window: Duration::from_millis(5000),
        }
    }
}

/// More than this is a load test of Postgres, not an audit.
const MAX_SAMPLES_PER_SEC: f64 = 1000.0;

impl AuditSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=MAX_SAMPLES_PER_SEC).contains(&self.samples_per_sec) {
            return Err(Invalid::new(
                "audit.samples_per_sec",
                format!("must be between 0 (off) and {MAX_SAMPLES_PER_SEC}"),
            ));
        }
        Ok(())
    }

    /// The pause between two samples; `None` when the auditor is off.
    pub fn interval(&self) -> Option<Duration> {
        (self.samples_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / self.samples_per_sec))
    }
}
