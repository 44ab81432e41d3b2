//! Dropping from the tiers, and following Redis's resets: what invalidations, flushes and the
//! probe do to this cache.

use std::sync::atomic::Ordering;

use super::Tiered;
use crate::cache::remote::{Deletion, Dropped, Marker, ResetCause};
use crate::cache::CacheError;
use crate::labels::{FlushReason, Target, Tier};

impl Tiered {
    /// Drops keys and tags from L1: their generations move at once, so no fill that began
    /// earlier can store or serve what it read.
    pub async fn invalidate_local(&self, deletion: &Deletion) {
        for k in &deletion.keys {
            self.local.invalidate_key(k).await;
        }
        for t in &deletion.tags {
            self.local.invalidate_tag(t);
        }
        self.count_invalidated(Tier::L1, deletion);
    }

    /// Drops keys and tags from Redis, with the given bookkeeping marker. A failure is owed and
    /// retried, and L2 is bypassed until it lands. `Ok(None)` when Redis is off.
    pub async fn invalidate_remote(
        &self,
        deletion: Deletion,
        marker: Marker,
    ) -> Result<Option<Dropped>, CacheError> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let (nk, nt) = (deletion.keys.len() as u64, deletion.tags.len() as u64);
        let dropped = remote.invalidate(deletion, marker).await?;
        if dropped != Dropped::AlreadyApplied {
            self.metrics.invalidated(Tier::L2, Target::Key, nk);
            self.metrics.invalidated(Tier::L2, Target::Tag, nt);
        }
        Ok(Some(dropped))
    }

    /// Drops keys and tags from both tiers: Redis first, then L1.
    ///
    /// The order matters. A lookup takes its L1 fence *before* it reads Redis; were L1 dropped
    /// first, a lookup starting between the two steps would hold a current fence and still read
    /// the old value from Redis, and keep it in L1 after the write answered. Dropping L1 last
    /// makes every lookup that could have read the old Redis value carry an outdated fence.
    pub async fn invalidate(
        &self,
        deletion: Deletion,
        marker: Marker,
    ) -> Result<Option<Dropped>, CacheError> {
        let local = deletion.clone();
        let remote = self.invalidate_remote(deletion, marker).await;
        self.invalidate_local(&local).await;
        remote
    }

    /// Drops all of L1 (a message may have been lost), counting why.
    pub fn flush_local(&self, reason: FlushReason) {
        self.local.flush();
        self.metrics.l1_flush(reason);
    }

    /// Drops L1 if Redis was reset since L1 last was: entries copied from the old incarnation
    /// may be stale (a reset can mean invalidations were lost). Two atomic loads otherwise.
    pub(super) fn sync_resets(&self) {
        let Some(remote) = &self.remote else { return };
        let now = remote.resets();
        if self.resets_seen.load(Ordering::Acquire) != now
            && self.resets_seen.swap(now, Ordering::AcqRel) != now
        {
            self.flush_local(FlushReason::RedisReset);
        }
    }

    /// Probes Redis (reconnecting it, checking the server behind the namespace, noting resets
    /// made elsewhere) and drops L1 after a reset. True when Redis answered.
    pub async fn probe_redis(&self) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let up = remote.probe().await;
        self.sync_resets();
        up
    }

    /// Resets the Redis namespace (a new incarnation: fills in flight refused, values voided)
    /// and drops L1. If Redis cannot be reached the reset is owed and L2 bypassed until it
    /// lands; L1 is dropped either way. The voided values stay until [`Tiered::sweep`] or their
    /// TTL.
    pub async fn reset(&self, cause: ResetCause) -> Result<(), CacheError> {
        let reset = match &self.remote {
            Some(remote) => {
                let out = remote.reset_namespace(cause).await;
                self.resets_seen.store(remote.resets(), Ordering::Release);
                out
            }
            None => Ok(()),
        };
        self.flush_local(match cause {
            ResetCause::Admin => FlushReason::Admin,
            ResetCause::ListenerGap => FlushReason::ListenerGap,
            _ => FlushReason::RedisReset,
        });
        reset
    }

    /// Deletes the Redis values a reset voided; returns how many.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        match &self.remote {
            Some(remote) => remote.sweep().await,
            None => Ok(0),
        }
    }

    fn count_invalidated(&self, tier: Tier, d: &Deletion) {
        self.metrics
            .invalidated(tier, Target::Key, d.keys.len() as u64);
        self.metrics
            .invalidated(tier, Target::Tag, d.tags.len() as u64);
    }
}
