//! The consistency auditor's families: entries checked against Postgres, and those found stale.

use prometheus::IntCounter;

use super::Builder;
use crate::labels::Kind;

const CHECKED: &str =
    "Cached entries the consistency auditor reloaded from Postgres and compared (L1 and Redis).";
const STALE: &str = "Cached entries found older than Postgres past the in-flight window (audit.window_ms), by kind and tier (l1, l2); each was dropped. Any is a bug or a write that bypassed the change feed.";

/// The tiers the auditor samples, as labelled.
pub const AUDIT_TIERS: [&str; 2] = ["l1", "l2"];

pub struct AuditMetrics {
    pub checked: IntCounter,
    /// Per kind, per tier (every series exists from the start, so an alert sees the first one).
    stale: Vec<[IntCounter; 2]>,
}

impl AuditMetrics {
    pub(super) fn new(b: &Builder) -> Self {
        let checked = b
            .counter_vec("sidecache_audit_checked_total", CHECKED, &[])
            .with_label_values::<&str>(&[]);
        let stale = b.counter_vec("sidecache_audit_stale_total", STALE, &["kind", "tier"]);
        let stale = Kind::ALL
            .iter()
            .map(|k| AUDIT_TIERS.map(|t| stale.with_label_values(&[k.as_str(), t])))
            .collect();
        AuditMetrics { checked, stale }
    }

    /// Stale entries found so far, every kind and tier.
    pub fn stale_total(&self) -> u64 {
        self.stale.iter().flatten().map(IntCounter::get).sum()
    }

    /// A stale entry of `kind` found in tier `tier` (an index of [`AUDIT_TIERS`]).
    pub fn stale(&self, kind: Kind, tier: usize) {
        self.stale[kind.index()][tier].inc();
    }
}
