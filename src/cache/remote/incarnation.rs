//! The namespace's incarnation: how the L2 tier stays correct when Redis loses state.
//!
//! A fence counter that is missing reads as 0, which is only sound while nothing that Redis
//! remembered has been forgotten. Redis forgets in several ways: a restart without persistence,
//! `FLUSHALL`, eviction, a restart from an older snapshot, a failover to a replica that had not
//! received the last writes, or the fence's own expiry. Were a fence forgotten between a load's
//! read of its token and its fill, the old token would match again and an old value would land.
//!
//! So every token also carries the namespace's *incarnation*, a random token with no expiry,
//! created by the first read that finds none. A fill lands only if the incarnation is the same as
//! when its tokens were read, and every stored value starts with the incarnation it was filled
//! under: a value of another incarnation reads as absent. Changing the incarnation therefore
//! refuses every fill in flight and voids every value at once; it is how a reset is made:
//! - state lost outright (restart without persistence, `FLUSHALL`, the incarnation evicted): the
//!   incarnation is gone, the next read makes a new one, and no token of the old one matches;
//! - the server changed (restart from a snapshot, failover) or evicted keys: the fill script and
//!   the health probe compare the server's `run_id` and `evicted_keys` (from `INFO`) with what the
//!   namespace last recorded, and rotate the incarnation on any difference. The fill's own check
//!   leaves no window for a fill; reads of values that were stale in the restored state are
//!   possible until the next probe of any instance (500 ms);
//! - fence expiry: fences outlive their last bump by [`FENCE_TTL`](super::FENCE_TTL); a fill whose tokens are older
//!   than [`MAX_FILL_AGE`](super::MAX_FILL_AGE) (half of that) is not sent;
//! - an admin flush, or a change listener that was away longer than the outbox keeps rows.
//!
//! An instance that sees a new incarnation drops its L1 (entries copied from the old one may be
//! stale), on a read or on its probe.
//!
//! On a Redis Cluster each shard (see `redis::keys`) has an incarnation of its own, checked
//! against the server that holds the shard's slot: a failover of one master rotates the
//! incarnations of the shards it held. A reset of any shard drops the whole L1.
//!

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cache::keys::fnv1a;
use crate::labels::ResetCause;
use crate::metrics::Metrics;

/// A new random incarnation token: 16 hex digits.
pub(super) fn candidate() -> [u8; 16] {
    let mut out = [0u8; 16];
    let v: u64 = rand::random();
    for (i, b) in out.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The reason a Lua script gave for rotating the incarnation.
pub(super) fn cause_from_script(s: &[u8]) -> ResetCause {
    match s {
        b"server_changed" => ResetCause::ServerChanged,
        b"evictions" => ResetCause::Evictions,
        _ => ResetCause::StateLost,
    }
}

/// Which incarnation this instance last saw in each shard, and how many resets it has seen or
/// made.
pub(super) struct Incarnation {
    /// Per shard, a hash of the incarnation last seen (0: none yet).
    seen: Vec<AtomicU64>,
    /// Resets seen or made; the cache drops L1 when it moves.
    resets: AtomicU64,
    /// When a reset was last logged as a warning (Unix ms).
    last_warning_ms: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Incarnation {
    pub(super) fn new(metrics: Arc<Metrics>, shards: usize) -> Self {
        Incarnation {
            seen: (0..shards.max(1)).map(|_| AtomicU64::new(0)).collect(),
            resets: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
            metrics,
        }
    }

    /// Notes the incarnation a read or check returned; a change from the last one seen counts as
    /// a reset. `created`: this instance's own candidate became the incarnation, because there
    /// was none (Redis lost the namespace's state).
    pub(super) fn observe(&self, shard: usize, incarnation: &[u8], created: bool) {
        let h = fnv1a(incarnation) | 1;
        let before = self.seen[shard].swap(h, Ordering::AcqRel);
        if before != 0 && before != h {
            self.count(if created {
                ResetCause::StateLost
            } else {
                ResetCause::Observed
            });
        }
    }

    /// Records a new incarnation this instance made itself (so it is not observed again).
    pub(super) fn made(&self, shard: usize, incarnation: &[u8], cause: ResetCause) {
        self.seen[shard].store(fnv1a(incarnation) | 1, Ordering::Release);
        self.count(cause);
    }

    /// How many resets this instance has seen or made.
    pub(super) fn resets(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
    }

    fn count(&self, cause: ResetCause) {
        self.resets.fetch_add(1, Ordering::AcqRel);
        self.metrics.redis_reset(cause);
        if cause == ResetCause::Observed || cause == ResetCause::Admin {
            return;
        }
        // At most one warning a minute: an evicting Redis resets on every probe.
        let now = crate::cache::now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                cause = cause.as_str(),
                "redis namespace reset: fills in flight are refused, cached values voided, L1 dropped{}",
                if cause == ResetCause::Evictions {
                    " (Redis is evicting keys: give it more memory or maxmemory-policy noeviction)"
                } else {
                    ""
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_incarnation_counts_once_and_an_own_one_not_as_observed() {
        let inc = Incarnation::new(Metrics::new(), 2);
        inc.observe(0, b"aaaa", false);
        assert_eq!(inc.resets(), 0, "the first one seen is no reset");
        inc.observe(0, b"aaaa", false);
        assert_eq!(inc.resets(), 0);
        inc.observe(1, b"dddd", false);
        assert_eq!(inc.resets(), 0, "each shard has its own");
        inc.observe(0, b"bbbb", false);
        assert_eq!(inc.resets(), 1);
        inc.made(0, b"cccc", ResetCause::Admin);
        inc.observe(0, b"cccc", false);
        assert_eq!(inc.resets(), 2, "its own reset is not observed again");
        let c = candidate();
        assert!(c.iter().all(u8::is_ascii_hexdigit));
        assert_ne!(candidate(), c);
    }
}
