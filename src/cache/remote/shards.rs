//! What the tier does to the whole namespace, shard by shard: invalidations, a kind's fence, a
//! reset, the server check and the sweep.
//!
//! **Fencing on a Redis Cluster.** A fill must compare its tokens with the fences it depends on
//! (the key's, its kind's, one per tag) and store the value in one atomic step, and on a cluster
//! one step (a Lua script) reaches one hash slot. Reading the kind and tag fences in a second step
//! from their own slots would leave a window between that check and the `SET` in which an
//! invalidation can bump a fence and delete the tag's members, after which the stale value lands.
//! So the namespace is cut into shards (`redis::keys`), and everything a fill checks is
//! **replicated per shard**: each shard has its own incarnation, server record, fence clock, kind
//! fences, tag fences and tag member sets. A key's value, lease and fence live only in its shard,
//! and a fill checks only its shard's copies, atomically. Exactness follows from one rule: every
//! invalidation bumps the fence in **every shard a fill could be checking** — a key's fence in the
//! key's shard; a tag's fence, and its member set, in every shard (a tag's members may be in any
//! of them); a kind's fence in every shard. A fill that read its tokens before an invalidation
//! therefore meets a moved fence in its own shard, whichever shard that is. Shards are independent
//! in everything else: a failover rotates the incarnation of the shards its master held (each
//! shard's server record names the node that ran its script), and the tag invalidation that
//! reaches shard A before shard B only means a fill in B is refused slightly later — never that
//! one is let through, because the write that caused it committed before any shard was touched,
//! and B's fill carries tokens read before B's bump. The price is one script per shard for a tag
//! or kind invalidation (12 small scripts, sent concurrently), paid on writes, not on lookups.

use std::sync::atomic::Ordering;

use futures_util::future::try_join_all;

use super::incarnation::{candidate as new_incarnation, cause_from_script};
use super::{Remote, CHUNK, FENCE_TTL, MARKER_TTL};
use crate::cache::keys::{CacheKey, Kind, Tag};
use crate::cache::remote::types::{Deletion, Dropped, Marker};
use crate::cache::CacheError;
use crate::labels::{RedisOp, ResetCause};
use crate::redis::{Conn, MarkerMode, RedisError};

impl Remote {
    /// Every shard an invalidation must reach, with the keys that live there: the keys' own
    /// shards, and every shard when there are tags.
    fn by_shard<'a>(&self, d: &'a Deletion) -> Vec<(usize, Vec<&'a CacheKey>)> {
        let mut shards: Vec<Vec<&CacheKey>> = vec![Vec::new(); self.keys.shards()];
        for k in &d.keys {
            shards[self.keys.shard_of(k.as_str())].push(k);
        }
        shards
            .into_iter()
            .enumerate()
            .filter(|(_, keys)| !keys.is_empty() || !d.tags.is_empty())
            .collect()
    }

    pub(super) async fn try_invalidate(
        &self,
        d: &Deletion,
        marker: &Marker,
    ) -> Result<Dropped, CacheError> {
        if d.keys.is_empty() && d.tags.is_empty() {
            return Ok(Dropped::Entries(0));
        }
        let conn = self.conn()?;
        let parts = self.by_shard(d);
        let done = try_join_all(parts.iter().map(|(shard, keys)| {
            self.invalidate_shard(conn.clone(), *shard, keys, &d.tags, marker)
        }))
        .await?;
        // Already applied only if every shard says so (a replay after an instance stopped half-way
        // finishes the shards it did not reach).
        let mut dropped = None;
        for part in done {
            if let Dropped::Entries(n) = part {
                dropped = Some(dropped.unwrap_or(0) + n);
            }
        }
        Ok(dropped.map_or(Dropped::AlreadyApplied, Dropped::Entries))
    }

    /// One shard's part of an invalidation: its keys first, then every tag, at most [`CHUNK`] of
    /// them per call. The shard's markers are checked in every chunk and set with the last, so an
    /// instance that stops half-way leaves the rest to the next one.
    async fn invalidate_shard(
        &self,
        mut conn: Conn,
        shard: usize,
        keys: &[&CacheKey],
        tags: &[Tag],
        marker: &Marker,
    ) -> Result<Dropped, CacheError> {
        let key_chunks = keys.chunks(CHUNK).map(|c| (c, &[][..]));
        let tag_chunks = tags.chunks(CHUNK).map(|c| (&[][..], c));
        let chunks: Vec<(&[&CacheKey], &[Tag])> = key_chunks.chain(tag_chunks).collect();
        let last = chunks.len().saturating_sub(1);
        let mut dropped = 0;
        for (i, (keys, tags)) in chunks.into_iter().enumerate() {
            let mut inv = self.scripts.invalidate.prepare_invoke();
            inv.key(self.keys.clock(shard));
            for k in keys {
                inv.key(self.value_key(k)).key(self.keys.fence(k.as_str()));
            }
            for t in tags {
                inv.key(self.keys.tag_fence(&t.name(), shard))
                    .key(self.keys.tag_members(&t.name(), shard));
            }
            let mode = match marker {
                Marker::None => MarkerMode::None,
                Marker::Write(_) if i != last => MarkerMode::None,
                Marker::Write(txid) => {
                    inv.key(self.keys.marker(txid.0, shard));
                    MarkerMode::Mark
                }
                Marker::Replay { txid, group } => {
                    inv.key(self.keys.marker(txid.0, shard))
                        .key(self.keys.group_marker(txid.0, group, shard));
                    if i == last {
                        MarkerMode::SkipOrMark
                    } else {
                        MarkerMode::Skip
                    }
                }
            };
            inv.arg(keys.len())
                .arg(FENCE_TTL.as_millis() as u64)
                .arg(mode.as_str())
                .arg(MARKER_TTL.as_millis() as u64);
            let n: i64 = self
                .run(RedisOp::Invalidate, inv.invoke_async(&mut conn))
                .await?;
            if n < 0 {
                return Ok(Dropped::AlreadyApplied);
            }
            dropped += n as u64;
        }
        Ok(Dropped::Entries(dropped))
    }

    /// Drops every value of `kind` (admin): moves the kind's fence in every shard first, so no
    /// fill that read Postgres before this lands, then deletes the kind's values by SCANning this
    /// namespace for its key prefix (never the whole keyspace; every master of a cluster), moving
    /// each key's fence as it goes.
    pub async fn invalidate_kind(&self, kind: Kind) -> Result<u64, CacheError> {
        let conn = self.conn()?;
        try_join_all((0..self.keys.shards()).map(|shard| {
            let mut conn = conn.clone();
            let mut bump = self.scripts.bump.prepare_invoke();
            bump.key(self.keys.clock(shard))
                .key(self.keys.kind_fence(kind, shard))
                .arg(FENCE_TTL.as_millis() as u64);
            async move {
                self.run(RedisOp::Invalidate, bump.invoke_async::<i64>(&mut conn))
                    .await
            }
        }))
        .await?;
        let pattern = self.keys.kind_pattern(kind.key_prefix());
        let mut dropped = 0;
        for keys in self.redis.scan(&pattern).await? {
            let keys: Vec<CacheKey> = keys
                .iter()
                .filter_map(|k| self.keys.strip(k).and_then(CacheKey::parse))
                .filter(|k| k.kind() == kind)
                .collect();
            let d = Deletion {
                keys,
                tags: Vec::new(),
            };
            if let Dropped::Entries(n) = self.try_invalidate(&d, &Marker::None).await? {
                dropped += n;
            }
        }
        Ok(dropped)
    }

    /// Deletes the values not filled under their shard's current incarnation, SCANning only this
    /// namespace (on every master of a cluster) off the data connection where it can (one
    /// server), so lookups are not held up. Fences, tag sets, leases and markers are left alone: a
    /// fence moved after the reset must stay, or a fill that read before it could land. Returns
    /// how many values went.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        let mut removed = 0u64;
        for keys in self.redis.scan(&self.keys.all_pattern()).await? {
            let mut shards: Vec<Vec<&String>> = vec![Vec::new(); self.keys.shards()];
            for k in &keys {
                if let Some(key) = self.keys.strip(k).and_then(CacheKey::parse) {
                    shards[self.keys.shard_of(key.as_str())].push(k);
                }
            }
            for (shard, values) in shards.into_iter().enumerate() {
                if values.is_empty() {
                    continue;
                }
                let mut inv = self.scripts.sweep.prepare_invoke();
                inv.key(self.keys.incarnation(shard));
                for k in values {
                    inv.key(k.as_str());
                }
                let n: Result<u64, _> = if self.redis.is_cluster() {
                    inv.invoke_async(&mut self.conn()?).await
                } else {
                    inv.invoke_async(&mut self.redis.control().await?).await
                };
                removed += n.map_err(|e| RedisError::Redis(e.to_string()))?;
            }
        }
        Ok(removed)
    }

    /// Moves every shard of the namespace to a new incarnation (one after the other: a reset
    /// that stops half-way is owed, and retried whole).
    pub(super) async fn try_reset(&self, cause: ResetCause) -> Result<(), CacheError> {
        let mut conn = self.conn()?;
        let candidate = new_incarnation();
        for shard in 0..self.keys.shards() {
            let mut set = redis::cmd("SET");
            set.arg(self.keys.incarnation(shard)).arg(&candidate[..]);
            self.run(RedisOp::Reset, set.query_async::<()>(&mut conn))
                .await?;
            self.incarnation.made(shard, &candidate, cause);
        }
        Ok(())
    }

    /// Checks the server behind each shard of the namespace (resetting the shard if its server
    /// changed or evicted keys) and notes its incarnation, so an instance serving only L1 hits
    /// still learns of a reset within one probe.
    pub(super) async fn check(&self) -> Result<(), CacheError> {
        if self.checks_held.load(Ordering::Acquire) {
            return Err(RedisError::Unavailable.into());
        }
        let mut conn = self.conn()?;
        let failures = self.redis.failures();
        // One shard after the other: while the breaker is half-open the first is its probe, and
        // the rest follow once it closed.
        let mut all = true;
        for shard in 0..self.keys.shards() {
            all &= self.check_shard(&mut conn, shard).await?;
        }
        if self.server_checks.swap(all, Ordering::Relaxed) && !all {
            tracing::warn!(
                "redis denies INFO to this user: a restart from a snapshot, a failover or an \
                 eviction cannot be detected, and could let a stale fill through"
            );
        }
        self.checked_through.store(failures, Ordering::Release);
        Ok(())
    }

    /// One shard's check; true if `INFO` could be read.
    async fn check_shard(&self, conn: &mut Conn, shard: usize) -> Result<bool, CacheError> {
        let candidate = new_incarnation();
        let mut inv = self.scripts.check.prepare_invoke();
        inv.key(self.keys.incarnation(shard))
            .key(self.keys.server(shard))
            .arg(&candidate[..]);
        let (incarnation, reset, checked): (Vec<u8>, Vec<u8>, i64) =
            self.run(RedisOp::Check, inv.invoke_async(conn)).await?;
        if !reset.is_empty() {
            self.incarnation
                .made(shard, &candidate, cause_from_script(&reset));
        } else {
            self.incarnation
                .observe(shard, &incarnation, incarnation[..] == candidate[..]);
        }
        Ok(checked == 1)
    }
}
