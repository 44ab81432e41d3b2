//! Upkeep of the session store: listing (from the Redis index, or from memory), replaying what
//! was acknowledged from memory during an outage, and the gauges of live sessions.

use super::memory::{Op, OpKind};
use super::model::Page;
use super::shared::{Listed, Replay, Replayed, Shared, Written};
use super::store::{page, Outcome, Sessions, PATCH_ROUNDS};
use crate::labels::{SessionOp, StateStore, WriteBack};
use crate::redis::RedisError;

impl Sessions {
    /// A page of live sessions whose id starts with `prefix`, after `cursor`, in id order.
    pub async fn list(&self, prefix: &str, cursor: Option<&str>, limit: usize) -> Outcome<Page> {
        let now = self.clock.now_ms();
        let out = match self.up() {
            Some(shared) => match shared.list(prefix, cursor, limit, now).await {
                Ok((sessions, more, count)) => Ok((page(sessions, more, count), StateStore::Redis)),
                Err(e) => {
                    self.fell_back(SessionOp::List, prefix, &e);
                    Ok((
                        self.list_memory(prefix, cursor, limit, now),
                        StateStore::Memory,
                    ))
                }
            },
            None => Ok((
                self.list_memory(prefix, cursor, limit, now),
                StateStore::Memory,
            )),
        };
        let out = out.map(|(mut p, store): (Page, StateStore)| {
            p.store = store;
            p
        });
        self.record(SessionOp::List, out.as_ref().map(|p| p.store));
        out
    }

    fn list_memory(&self, prefix: &str, cursor: Option<&str>, limit: usize, now: i64) -> Page {
        let (found, count) = self.memory.list(prefix, cursor, limit + 1, now);
        let more = found.len() > limit;
        let sessions = found
            .into_iter()
            .take(limit)
            .map(|(id, d)| Listed {
                id,
                updated_ms: d.updated_ms,
                expires_ms: d.expires_ms,
            })
            .collect();
        page(sessions, more, count)
    }

    /// Replays, in order, what this instance owes Redis for `id` (its lock held), then
    /// forgets the session here: Redis's copy is authoritative again. An error means Redis
    /// failed; what was replayed so far is not replayed again, and the caller goes on from
    /// memory.
    pub(super) async fn settle(
        &self,
        shared: &Shared,
        id: &str,
        now: i64,
    ) -> Result<(), RedisError> {
        let Some(entry) = self.memory.entry(id, now) else {
            return Ok(());
        };
        if entry.owed.is_empty() {
            return Ok(());
        }
        self.recent.invalidate(id).await;
        for (done, op) in entry.owed.iter().enumerate() {
            match self.replay(shared, id, op, now).await {
                Ok(result) => self.metrics.state.write_back(result),
                Err(e) => {
                    self.memory.settled(id, done);
                    return Err(e);
                }
            }
        }
        self.memory.remove(id);
        Ok(())
    }

    async fn replay(
        &self,
        shared: &Shared,
        id: &str,
        op: &Op,
        now: i64,
    ) -> Result<WriteBack, RedisError> {
        let mode = match &op.kind {
            OpKind::Put(data) => Replay::Put(data),
            OpKind::Delete => Replay::Delete,
            OpKind::Touch => Replay::Touch,
            OpKind::Patch(patch) => return self.replay_patch(shared, id, op, patch, now).await,
        };
        Ok(
            match shared
                .replay(id, mode, op.at_ms, op.expires_ms, now)
                .await?
            {
                Replayed::Applied => WriteBack::Written,
                Replayed::Superseded => WriteBack::Superseded,
                Replayed::Expired => WriteBack::Expired,
            },
        )
    }

    /// A patch is merged into whatever Redis holds now (it drops nobody's fields); the session
    /// keeps the later of the two update times and expiries.
    async fn replay_patch(
        &self,
        shared: &Shared,
        id: &str,
        op: &Op,
        patch: &serde_json::Map<String, serde_json::Value>,
        now: i64,
    ) -> Result<WriteBack, RedisError> {
        for _ in 0..PATCH_ROUNDS {
            let Some(base) = shared.get(id, now).await? else {
                // Deleted or expired since: nothing to patch.
                return Ok(WriteBack::Superseded);
            };
            let merged = match self.merged(&base, patch) {
                Ok(text) => text,
                // Grown past the bound meanwhile: the later writes win.
                Err(_) => return Ok(WriteBack::Superseded),
            };
            let updated = base.updated_ms.max(op.at_ms);
            let expires = base.expires_ms.max(op.expires_ms);
            match shared
                .write(id, Some(base.version), &merged, updated, expires - updated)
                .await?
            {
                Written::Yes { .. } => return Ok(WriteBack::Written),
                Written::Mismatch { .. } => continue,
            }
        }
        Err(RedisError::Redis(
            "session written too often to replay a patch".into(),
        ))
    }

    /// Settles every session that owes Redis something (stops at the first Redis failure).
    /// How many were settled.
    pub async fn write_back(&self) -> usize {
        let Some(shared) = self.up() else { return 0 };
        let mut settled = 0;
        for id in self.memory.owed() {
            let _held = self.locks.lock(&id).await;
            let now = self.clock.now_ms();
            if self.memory.entry(&id, now).is_none() {
                self.metrics.state.write_back(WriteBack::Expired);
                continue;
            }
            if self.settle(shared, &id, now).await.is_err() {
                break;
            }
            settled += 1;
        }
        settled
    }

    /// Whether sessions written here are still owed to Redis.
    pub fn owes(&self) -> bool {
        self.shared.is_some() && self.memory.owes()
    }

    /// Sets the gauges of live sessions (Redis: through the index).
    pub async fn measure(&self) {
        let now = self.clock.now_ms();
        let m = &self.metrics.state;
        m.sessions_active(StateStore::Memory)
            .set(self.memory.len(now) as i64);
        if let Some(shared) = self.up() {
            if let Ok(n) = shared.count(now).await {
                m.sessions_active(StateStore::Redis).set(n as i64);
            }
        }
    }
}
