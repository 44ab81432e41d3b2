//! The session service: every operation goes to Redis while it is up, and to this instance's
//! memory while it is off, down or skipped by the breaker. Operations on one id run one at a
//! time on this instance ([`Locks`]); before touching Redis, an operation first writes back
//! what this instance still owes it for that id, so a read never misses a write it
//! acknowledged from memory.
//!
//! An outage in short: sessions are instance-local meanwhile. Reads see what this instance
//! wrote since the outage began (not what it or others wrote before); a PATCH of a session this
//! instance does not hold is 404; a PUT creates it here; a DELETE is remembered. Conditional
//! writes (`If-Match`) need the shared store and are refused (503) rather than guessed. Every
//! operation acknowledged from memory is owed to Redis and replayed there, in order, when it
//! answers again: a merge patch is merged into whatever Redis holds (so it drops nobody's
//! fields), a put or a delete applies unless Redis holds a write of the session made at or
//! after it. A Redis write that failed ambiguously (a timeout: it may have landed) is owed the
//! same way, which is safe because a replayed patch is idempotent and a replayed put finds
//! itself already there.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::doc::{merge_patch, Clock, Doc};
use super::locks::Locks;
use super::memory::{Entry, Memory, Op, OpKind};
use super::model::{Answer, Page, SessionError, SessionsConfig};
use super::shared::{Deleted, Listed, Shared, Written};
use crate::domain::SessionId;
use crate::labels::{SessionOp, SessionOutcome, StateStore, StateUser};
use crate::metrics::Metrics;
use crate::redis::{Keys, Redis, RedisError};

/// A PATCH that keeps meeting other instances' writes gives up after this many rounds.
pub(super) const PATCH_ROUNDS: usize = 64;

/// Bytes of recently written sessions kept as the base of the next PATCH.
const RECENT_BYTES: u64 = 16 * 1024 * 1024;

pub struct Sessions {
    /// The copy of each session this instance last wrote or read in Redis, by id: the base of
    /// its next PATCH, so that a handler patching its own call's session (the common case)
    /// writes in one round trip. Never answered from: the write's version check decides, and
    /// a mismatch reads Redis again.
    pub(super) recent: moka::future::Cache<String, Arc<Doc>>,
    pub(super) cfg: SessionsConfig,
    pub(super) clock: Arc<Clock>,
    pub(super) shared: Option<Shared>,
    pub(super) memory: Memory,
    pub(super) locks: Locks,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) type Outcome<T> = Result<T, SessionError>;

impl Sessions {
    /// `redis`: the shared Redis and its key layout, `None` with Redis switched off.
    pub fn new(
        cfg: SessionsConfig,
        redis: Option<(Arc<Redis>, Keys)>,
        clock: Arc<Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shared = redis.map(|(r, k)| Shared::new(r, k));
        let recent = moka::future::Cache::builder()
            .max_capacity(RECENT_BYTES)
            .weigher(|k: &String, d: &Arc<Doc>| (k.len() + d.data.len() + 96) as u32)
            .time_to_live(Duration::from_secs(60))
            .build();
        Sessions {
            recent,
            memory: Memory::new(cfg.memory_max_entries),
            cfg,
            clock,
            shared,
            locks: Locks::default(),
            metrics,
        }
    }

    /// The clock sessions expire by.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    /// The largest `data`, in bytes.
    pub fn max_bytes(&self) -> usize {
        self.cfg.max_bytes
    }

    /// Where sessions go now: Redis, or memory (off, down, or the breaker open).
    pub fn store(&self) -> StateStore {
        match &self.shared {
            Some(s) if s.is_up() => StateStore::Redis,
            _ => StateStore::Memory,
        }
    }

    /// The Redis store while it may be asked.
    pub(super) fn up(&self) -> Option<&Shared> {
        self.shared.as_ref().filter(|s| s.is_up())
    }

    /// A session's lifetime: `asked` seconds, or the default; 1 s to `max_ttl`.
    pub fn ttl_ms(&self, asked: Option<u64>) -> Outcome<i64> {
        let max = self.cfg.max_ttl.as_secs();
        match asked {
            None => Ok(self.cfg.ttl.as_millis() as i64),
            Some(s) if (1..=max).contains(&s) => Ok(s as i64 * 1000),
            Some(_) => Err(SessionError::Invalid(format!(
                "`ttl_secs` must be between 1 and {max}"
            ))),
        }
    }

    fn encode(&self, data: &Map<String, Value>) -> Outcome<String> {
        let text = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
        if text.len() > self.cfg.max_bytes {
            return Err(SessionError::TooLarge {
                max: self.cfg.max_bytes,
            });
        }
        Ok(text)
    }

    /// Counts an operation by where it ran and how it ended.
    pub(super) fn record(&self, op: SessionOp, out: Result<StateStore, &SessionError>) {
        let m = &self.metrics.state;
        match out {
            Ok(store) => m.session_op(op, store, SessionOutcome::Ok),
            Err(e) => m.session_op(op, self.store(), e.outcome()),
        }
    }

    fn counted(&self, op: SessionOp, out: Outcome<Answer>) -> Outcome<Answer> {
        self.record(op, out.as_ref().map(|a| a.store));
        out
    }

    pub(super) fn fell_back(&self, op: SessionOp, id: &str, e: &RedisError) {
        self.metrics.state.fallback(StateUser::Sessions);
        tracing::warn!(op = op.as_str(), session = id, error = %e, "redis failed: session kept in this instance's memory");
    }

    /// Where an operation goes: `Ok(Some(shared))` to Redis (after settling what this instance
    /// owes it for `id`), `Ok(None)` to memory, `Err` for a conditional write that only Redis
    /// can check while Redis cannot be asked.
    async fn route(
        &self,
        op: SessionOp,
        id: &str,
        now: i64,
        conditional: bool,
    ) -> Outcome<Option<&Shared>> {
        if let Some(shared) = self.up() {
            match self.settle(shared, id, now).await {
                Ok(()) => return Ok(Some(shared)),
                Err(e) => self.fell_back(op, id, &e),
            }
        }
        if conditional && self.shared.is_some() {
            return Err(SessionError::Unavailable);
        }
        Ok(None)
    }

    /// After a failed Redis operation: a conditional one is refused (503), anything else goes
    /// on from memory.
    fn after_failure(
        &self,
        op: SessionOp,
        id: &str,
        e: &RedisError,
        conditional: bool,
    ) -> Outcome<()> {
        self.fell_back(op, id, e);
        if conditional {
            Err(SessionError::Unavailable)
        } else {
            Ok(())
        }
    }

    /// Notes the copy this instance just wrote to Redis (the base of its next PATCH).
    async fn remember(&self, id: &str, doc: &Doc) {
        self.recent
            .insert(id.to_owned(), Arc::new(doc.clone()))
            .await;
    }

    /// Keeps `doc` in memory with the operation it owes Redis (when Redis is on).
    fn keep(&self, id: &str, doc: Doc, op: Op, now: i64) -> Outcome<()> {
        let mut entry = self.memory.entry(id, now).unwrap_or(Entry {
            doc: doc.clone(),
            tombstone: false,
            owed: Vec::new(),
        });
        entry.doc = doc;
        entry.tombstone = matches!(op.kind, OpKind::Delete);
        if self.shared.is_some() {
            entry.owe(op);
        }
        self.memory
            .put(id, entry, now)
            .map_err(|_| SessionError::MemoryFull)
    }

    /// Creates or replaces a session (`expect`: the version it must be at).
    pub async fn put(
        &self,
        id: &SessionId,
        data: &Map<String, Value>,
        ttl_secs: Option<u64>,
        expect: Option<u64>,
    ) -> Outcome<Answer> {
        let out = self.put_inner(id, data, ttl_secs, expect).await;
        self.counted(SessionOp::Put, out)
    }

    async fn put_inner(
        &self,
        id: &SessionId,
        data: &Map<String, Value>,
        ttl_secs: Option<u64>,
        expect: Option<u64>,
    ) -> Outcome<Answer> {
        let ttl = self.ttl_ms(ttl_secs)?;
        let text = self.encode(data)?;
        let id = id.as_str();
        let _held = self.locks.lock(id).await;
        let now = self.clock.now_ms();
        let doc = |version, created_ms, data| Doc {
            version,
            created_ms,
            updated_ms: now,
            expires_ms: now + ttl,
            data,
        };
        if let Some(shared) = self
            .route(SessionOp::Put, id, now, expect.is_some())
            .await?
        {
            self.recent.invalidate(id).await;
            match shared.write(id, expect, &text, now, ttl).await {
                Ok(Written::Yes {
                    version,
                    created_ms,
                    replaced,
                }) => {
                    let doc = doc(version, created_ms, text);
                    self.remember(id, &doc).await;
                    return Ok(Answer {
                        doc,
                        store: StateStore::Redis,
                        created: !replaced,
                    });
                }
                Ok(Written::Mismatch { current }) => {
                    return Err(SessionError::VersionMismatch { current })
                }
                Err(e) => self.after_failure(SessionOp::Put, id, &e, expect.is_some())?,
            }
        }
        let cur = self.memory.get(id, now);
        let version = cur.as_ref().map_or(0, |e| e.doc.version);
        if expect.is_some_and(|e| e != version) {
            return Err(SessionError::VersionMismatch { current: version });
        }
        let created_ms = cur.as_ref().map_or(now, |e| e.doc.created_ms);
        let kept = doc(version + 1, created_ms, text.clone());
        let op = Op {
            at_ms: now,
            expires_ms: now + ttl,
            kind: OpKind::Put(text),
        };
        self.keep(id, kept.clone(), op, now)?;
        Ok(Answer {
            doc: kept,
            store: StateStore::Memory,
            created: cur.is_none(),
        })
    }

    /// Reads a session; `touch` slides its expiry as a write would.
    pub async fn get(&self, id: &SessionId, touch: bool) -> Outcome<Answer> {
        let op = if touch {
            SessionOp::Touch
        } else {
            SessionOp::Get
        };
        let out = if touch {
            self.touch_inner(id, None).await
        } else {
            self.get_inner(id).await
        };
        self.counted(op, out)
    }

    /// Whether a session exists: `None` when that cannot be known (Redis is on but cannot be
    /// asked, and this instance does not hold it).
    pub async fn exists(&self, id: &SessionId) -> Option<bool> {
        let id = id.as_str();
        let _held = self.locks.lock(id).await;
        let now = self.clock.now_ms();
        if let Ok(Some(shared)) = self.route(SessionOp::Get, id, now, false).await {
            if let Ok(doc) = shared.get(id, now).await {
                return Some(doc.is_some());
            }
        }
        if self.memory.get(id, now).is_some() {
            Some(true)
        } else {
            self.shared.is_none().then_some(false)
        }
    }

    /// Slides a session's expiry to now + `ttl_secs` (or the default).
    pub async fn touch(&self, id: &SessionId, ttl_secs: Option<u64>) -> Outcome<Answer> {
        let out = self.touch_inner(id, ttl_secs).await;
        self.counted(SessionOp::Touch, out)
    }

    async fn get_inner(&self, id: &SessionId) -> Outcome<Answer> {
        let id = id.as_str();
        // Nothing held here for this id: no write this instance acknowledged from memory can be
        // missed by reading Redis, so the read need not queue behind the id's lock.
        if let Some(shared) = self.up().filter(|_| !self.memory.holds(id)) {
            let now = self.clock.now_ms();
            match shared.get(id, now).await {
                Ok(Some(doc)) => return Ok(redis_answer(doc)),
                Ok(None) => return Err(SessionError::NotFound),
                Err(e) => self.fell_back(SessionOp::Get, id, &e),
            }
        }
        let _held = self.locks.lock(id).await;
        let now = self.clock.now_ms();
        if let Some(shared) = self.route(SessionOp::Get, id, now, false).await? {
            match shared.get(id, now).await {
                Ok(Some(doc)) => return Ok(redis_answer(doc)),
                Ok(None) => return Err(SessionError::NotFound),
                Err(e) => self.fell_back(SessionOp::Get, id, &e),
            }
        }
        self.memory
            .get(id, now)
            .map(|e| memory_answer(e.doc))
            .ok_or(SessionError::NotFound)
    }

    async fn touch_inner(&self, id: &SessionId, ttl_secs: Option<u64>) -> Outcome<Answer> {
        let ttl = self.ttl_ms(ttl_secs)?;
        let id = id.as_str();
        let _held = self.locks.lock(id).await;
        let now = self.clock.now_ms();
        if let Some(shared) = self.route(SessionOp::Touch, id, now, false).await? {
            match shared.touch(id, now, ttl).await {
                Ok(Some(doc)) => return Ok(redis_answer(doc)),
                Ok(None) => return Err(SessionError::NotFound),
                Err(e) => self.fell_back(SessionOp::Touch, id, &e),
            }
        }
        let mut doc = self.memory.get(id, now).ok_or(SessionError::NotFound)?.doc;
        doc.expires_ms = now + ttl;
        let op = Op {
            at_ms: now,
            expires_ms: now + ttl,
            kind: OpKind::Touch,
        };
        self.keep(id, doc.clone(), op, now)?;
        Ok(memory_answer(doc))
    }

    /// Applies a JSON Merge Patch to a session's data, atomically with respect to every other
    /// write: read, merge, then write only if the version is still the one read (else again).
    pub async fn patch(
        &self,
        id: &SessionId,
        patch: &Map<String, Value>,
        ttl_secs: Option<u64>,
        expect: Option<u64>,
    ) -> Outcome<Answer> {
        let out = self.patch_inner(id, patch, ttl_secs, expect).await;
        self.counted(SessionOp::Patch, out)
    }

    pub(super) fn merged(&self, base: &Doc, patch: &Map<String, Value>) -> Outcome<String> {
        let mut data = Value::Object(base.data_object());
        merge_patch(&mut data, &Value::Object(patch.clone()));
        match data {
            Value::Object(m) => self.encode(&m),
            _ => unreachable!("an object patched with an object stays an object"),
        }
    }

    async fn patch_inner(
        &self,
        id: &SessionId,
        patch: &Map<String, Value>,
        ttl_secs: Option<u64>,
        expect: Option<u64>,
    ) -> Outcome<Answer> {
        let ttl = self.ttl_ms(ttl_secs)?;
        let id = id.as_str();
        let _held = self.locks.lock(id).await;
        let mut now = self.clock.now_ms();
        let owe = |now: i64| Op {
            at_ms: now,
            expires_ms: now + ttl,
            kind: OpKind::Patch(patch.clone()),
        };
        let conditional = expect.is_some();
        if let Some(shared) = self.route(SessionOp::Patch, id, now, conditional).await? {
            let mut rounds = 0;
            // The copy this instance last saw, if it could still be current; else Redis's.
            let mut cached = self
                .recent
                .get(id)
                .await
                .filter(|d| !d.expired(now) && expect.is_none_or(|e| e == d.version));
            loop {
                let base = match cached.take() {
                    Some(doc) => Arc::unwrap_or_clone(doc),
                    None => match shared.get(id, now).await {
                        Ok(Some(doc)) => doc,
                        Ok(None) => {
                            self.recent.invalidate(id).await;
                            return Err(SessionError::NotFound);
                        }
                        Err(e) => {
                            self.after_failure(SessionOp::Patch, id, &e, conditional)?;
                            break;
                        }
                    },
                };
                if expect.is_some_and(|e| e != base.version) {
                    return Err(SessionError::VersionMismatch {
                        current: base.version,
                    });
                }
                let text = self.merged(&base, patch)?;
                let doc = Doc {
                    version: base.version + 1,
                    created_ms: base.created_ms,
                    updated_ms: now,
                    expires_ms: now + ttl,
                    data: text,
                };
                match shared
                    .write(id, Some(base.version), &doc.data, now, ttl)
                    .await
                {
                    Ok(Written::Yes { version, .. }) => {
                        let doc = Doc { version, ..doc };
                        self.remember(id, &doc).await;
                        return Ok(redis_answer(doc));
                    }
                    Ok(Written::Mismatch { current }) if conditional => {
                        self.recent.invalidate(id).await;
                        return Err(SessionError::VersionMismatch { current });
                    }
                    Ok(Written::Mismatch { .. }) => {
                        rounds += 1;
                        if rounds >= PATCH_ROUNDS {
                            return Err(SessionError::Busy);
                        }
                        now = self.clock.now_ms();
                    }
                    Err(e) => {
                        // It may or may not have landed: owe the patch (merging it again is
                        // harmless) and answer from what it made of the copy just read.
                        self.recent.invalidate(id).await;
                        self.after_failure(SessionOp::Patch, id, &e, conditional)?;
                        self.keep(id, doc.clone(), owe(now), now)?;
                        return Ok(memory_answer(doc));
                    }
                }
            }
        }
        let base = self.memory.get(id, now).ok_or(SessionError::NotFound)?.doc;
        if expect.is_some_and(|e| e != base.version) {
            return Err(SessionError::VersionMismatch {
                current: base.version,
            });
        }
        let doc = Doc {
            version: base.version + 1,
            created_ms: base.created_ms,
            updated_ms: now,
            expires_ms: now + ttl,
            data: self.merged(&base, patch)?,
        };
        self.keep(id, doc.clone(), owe(now), now)?;
        Ok(memory_answer(doc))
    }

    /// Deletes a session. Where it was deleted from.
    pub async fn delete(&self, id: &SessionId, expect: Option<u64>) -> Outcome<StateStore> {
        let out = self.delete_inner(id, expect).await;
        self.record(SessionOp::Delete, out.as_ref().copied());
        out
    }

    async fn delete_inner(&self, id: &SessionId, expect: Option<u64>) -> Outcome<StateStore> {
        let id = id.as_str();
        let _held = self.locks.lock(id).await;
        let now = self.clock.now_ms();
        let conditional = expect.is_some();
        self.recent.invalidate(id).await;
        if let Some(shared) = self.route(SessionOp::Delete, id, now, conditional).await? {
            match shared.delete(id, expect, now).await {
                Ok(Deleted::Yes) => return Ok(StateStore::Redis),
                Ok(Deleted::NotFound) => return Err(SessionError::NotFound),
                Ok(Deleted::Mismatch { current }) => {
                    return Err(SessionError::VersionMismatch { current })
                }
                Err(e) => self.after_failure(SessionOp::Delete, id, &e, conditional)?,
            }
        }
        let cur = self.memory.get(id, now);
        if let (Some(e), Some(c)) = (expect, &cur) {
            if e != c.doc.version {
                return Err(SessionError::VersionMismatch {
                    current: c.doc.version,
                });
            }
        }
        if self.shared.is_none() {
            // Memory is the only store: what it does not hold does not exist.
            return match self.memory.remove(id) {
                Some(e) if !e.tombstone && !e.doc.expired(now) => Ok(StateStore::Memory),
                _ => Err(SessionError::NotFound),
            };
        }
        // Redis may hold it: remember the delete, owed to Redis.
        let tombstone = Doc {
            version: cur.as_ref().map_or(0, |e| e.doc.version),
            created_ms: now,
            updated_ms: now,
            expires_ms: now + self.cfg.max_ttl.as_millis() as i64,
            data: String::new(),
        };
        let op = Op {
            at_ms: now,
            expires_ms: tombstone.expires_ms,
            kind: OpKind::Delete,
        };
        self.keep(id, tombstone, op, now)?;
        Ok(StateStore::Memory)
    }
}

fn redis_answer(doc: Doc) -> Answer {
    Answer {
        doc,
        store: StateStore::Redis,
        created: false,
    }
}

fn memory_answer(doc: Doc) -> Answer {
    Answer {
        doc,
        store: StateStore::Memory,
        created: false,
    }
}

pub(super) fn page(sessions: Vec<Listed>, more: bool, count: usize) -> Page {
    let next_cursor = if more {
        sessions.last().map(|s| s.id.clone())
    } else {
        None
    };
    Page {
        sessions,
        next_cursor,
        count,
        store: StateStore::Redis,
    }
}
