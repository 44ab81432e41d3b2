//! L2: Redis. Values live under `{namespace}:v1:{key}`. Fills are compare-and-set against fence
//! counters that every invalidation bumps (the memcache-lease idea): a fill that read Postgres
//! before a write committed carries an old fence token and is refused, wherever it runs.
//!
//! Redis keys, after the prefix:
//! - `{key}`             the encoded entry, prefixed with the incarnation it was filled under
//! - `fence:{key}`       counter bumped when the key is invalidated
//! - `kindfence:{kind}`  counter bumped when a whole kind is invalidated (admin)
//! - `tagfence:{tag}`    counter bumped when the tag is invalidated
//! - `tag:{tag}`         set of the value keys filled under the tag (dropped with it)
//!
//! and beside the prefix, so a SCAN of the namespace does not touch them:
//! - `{namespace}:v1incarnation`  a random token naming the current state of the namespace
//! - `{namespace}:v1server`       the server (`run_id`) and eviction count it was last checked at
//!
//! What happens when Redis loses state is in [`incarnation`].
//!
//! The hot path holds a `ConnectionManager` (one multiplexed connection that reconnects by
//! itself): no per-request checkout or PING. The deadpool pool serves control-plane commands.

mod incarnation;
mod sample;
mod shards;
mod types;

use incarnation::{candidate as new_incarnation, cause_from_script, Incarnation};
use types::Owed;
pub use types::{Deletion, Dropped, L2Read, Lease, Marker, RemoteConfig};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::keys::{CacheKey, Tag};
use super::CacheError;
pub use crate::labels::ResetCause;
use crate::labels::{BreakerState, RedisOp};
use crate::metrics::Metrics;
use crate::redis::{Conn, Keys, Redis, RedisError, Scripts};

/// How long a fence counter outlives its last bump. It only has to outlast any load that could
/// have read Postgres before the bump: fills older than [`MAX_FILL_AGE`] are not sent.
const FENCE_TTL: Duration = Duration::from_secs(120);

/// The oldest tokens a fill may use. A fence bumped after the tokens were read lives at least
/// [`FENCE_TTL`] past that read, so within this age it cannot have expired.
pub const MAX_FILL_AGE: Duration = Duration::from_secs(60);

/// How long the marker that says "this transaction's invalidation reached Redis" is kept: long
/// enough for every instance's change listener to see the transaction.
const MARKER_TTL: Duration = Duration::from_secs(600);

/// Invalidations are sent in chunks of at most this many keys and tags, so one batch job that
/// touched 100,000 rows does not become one Lua call that blocks Redis.
const CHUNK: usize = 500;

/// The Redis tier.
pub struct Remote {
    redis: Arc<Redis>,
    keys: Keys,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// Invalidations and resets that could not reach Redis; until they land, L2 is bypassed.
    pending: Mutex<Vec<Owed>>,
    has_pending: AtomicBool,
    /// The incarnation last seen, and the resets seen or made.
    incarnation: Incarnation,
    /// Whether the last check could read `INFO` (an ACL may deny it); warned about once.
    server_checks: AtomicBool,
    /// How many of the connection's failures a successful check of the server has covered (it
    /// started after them). L2 is read only while every failure is covered: a failure may be a
    /// restart, and values restored from an older snapshot must not be read before the check
    /// has seen the new server and reset the namespace.
    checked_through: AtomicU64,
    /// Holds every check back (tests: forces reads between a reconnect and its check).
    checks_held: AtomicBool,
}

impl Remote {
    /// Prepares the tier without connecting; [`Remote::connect`] does that (and may keep trying).
    pub fn new(cfg: &RemoteConfig, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        Ok(Remote {
            redis: Arc::new(Redis::new(&cfg.redis, metrics.clone())?),
            keys: match cfg.redis.cluster {
                Some(_) => Keys::sharded(&cfg.namespace),
                None => Keys::new(&cfg.namespace),
            },
            scripts: Scripts::default(),
            incarnation: Incarnation::new(
                metrics.clone(),
                if cfg.redis.cluster.is_some() {
                    crate::redis::SHARDS
                } else {
                    1
                },
            ),
            metrics,
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            server_checks: AtomicBool::new(true),
            // Not checked yet: nothing is read from L2 before the first check.
            checked_through: AtomicU64::new(u64::MAX),
            checks_held: AtomicBool::new(false),
        })
    }

    /// The Redis connection and its guarded call, shared with the sessions, events and rate
    /// limits (one breaker: when Redis fails, every user of it learns at once).
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// The key layout of this namespace.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Tries once to open the connection, then checks the server (L2 is read only after a
    /// check; see `usable`). Later drops are healed by the connection.
    pub async fn connect(&self) -> Result<(), CacheError> {
        self.redis.connect().await?;
        self.check().await
    }

    /// True once connected and while the breaker is not open.
    pub fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.redis.breaker_state()
    }

    /// True when reads may use L2: connected, the breaker not open, the server checked since
    /// the last failure, and no invalidation owed.
    pub fn usable(&self) -> bool {
        self.is_up()
            && self.checked_through.load(Ordering::Acquire) == self.redis.failures()
            && !self.has_pending.load(Ordering::Acquire)
    }

    /// True while invalidations (or a reset) that could not reach Redis are owed to it.
    pub fn owes(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    /// Holds back (or lets go) every check of the server. For tests.
    #[doc(hidden)]
    pub fn hold_checks(&self, held: bool) {
        self.checks_held.store(held, Ordering::Release);
        if !held {
            self.redis.wake();
        }
    }

    /// Completes when an operation failed and the server should be checked again.
    pub async fn check_wanted(&self) {
        self.redis.failed().await;
    }

    fn value_key(&self, key: &CacheKey) -> String {
        self.keys.value(key.as_str())
    }
    fn lease_key(&self, key: &CacheKey) -> String {
        self.keys.lease(key.as_str())
    }

    /// One guarded Redis call (timeout, breaker, metrics).
    async fn run<T, F>(&self, op: RedisOp, fut: F) -> Result<T, CacheError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        Ok(self.redis.run(op, fut).await?)
    }

    fn conn(&self) -> Result<Conn, CacheError> {
        Ok(self.redis.conn()?)
    }

    /// The keys the read and fill scripts share, in their order: the value, its lease, the
    /// incarnation, the server record, then the fences the value depends on (its key, its kind,
    /// one per tag; the order of `L2Read::tokens`).
    /// All of them are in the key's shard (one hash slot on a cluster).
    fn value_keys(&self, inv: &mut redis::ScriptInvocation<'_>, key: &CacheKey, tags: &[Tag]) {
        let shard = self.keys.shard_of(key.as_str());
        inv.key(self.value_key(key))
            .key(self.lease_key(key))
            .key(self.keys.incarnation(shard))
            .key(self.keys.server(shard))
            .key(self.keys.fence(key.as_str()))
            .key(self.keys.kind_fence(key.kind(), shard));
        for t in tags {
            inv.key(self.keys.tag_fence(&t.name(), shard));
        }
    }

    /// Reads a value and the fence tokens for it and its tags, in one round trip. On a miss, asks
    /// for the key's fill lease when `lease` is given (token, lifetime).
    pub async fn read(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        lease: Option<(&str, Duration)>,
    ) -> Result<L2Read, CacheError> {
        let mut conn = self.conn()?;
        let at = Instant::now();
        let mut inv = self.scripts.read.prepare_invoke();
        self.value_keys(&mut inv, key, tags);
        let (token, ttl) = lease.unwrap_or(("", Duration::ZERO));
        let candidate = new_incarnation();
        inv.arg(token)
            .arg(ttl.as_millis() as u64)
            .arg(&candidate[..]);
        let raw: Vec<redis::Value> = self.run(RedisOp::Read, inv.invoke_async(&mut conn)).await?;
        let mut it = raw.into_iter();
        let value = match it.next() {
            Some(redis::Value::BulkString(b)) => Some(Bytes::from(b)),
            _ => None,
        };
        let lease = match it.next() {
            Some(redis::Value::Int(1)) => Lease::Held(token.to_owned()),
            Some(redis::Value::Int(0)) => Lease::Busy,
            _ => Lease::NotAsked,
        };
        let incarnation = match it.next() {
            Some(redis::Value::BulkString(b)) => Bytes::from(b),
            _ => return Err(RedisError::Redis("read: no incarnation".into()).into()),
        };
        self.incarnation.observe(
            self.keys.shard_of(key.as_str()),
            &incarnation,
            incarnation[..] == candidate[..],
        );
        // The script returned only a value of this incarnation; what follows the prefix is it.
        let value = value.map(|v| v.slice(incarnation.len().min(v.len())..));
        let tokens = it
            .map(|v| match v {
                redis::Value::BulkString(b) => std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                redis::Value::Int(i) => i,
                _ => 0,
            })
            .collect();
        Ok(L2Read {
            value,
            incarnation,
            tokens,
            lease,
            at,
        })
    }

    /// Asks for a key's fill lease on its own (a stale value is there, so [`Remote::read`] did not).
    pub async fn take_lease(&self, key: &CacheKey, token: &str, ttl: Duration) -> Lease {
        let Ok(mut conn) = self.conn() else {
            return Lease::NotAsked;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lease_key(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        match self
            .run(RedisOp::Lease, cmd.query_async::<Option<String>>(&mut conn))
            .await
        {
            Ok(Some(_)) => Lease::Held(token.to_owned()),
            Ok(None) => Lease::Busy,
            Err(_) => Lease::NotAsked,
        }
    }

    /// While another load holds the key's lease: the value, once it is there (and filled under
    /// `incarnation`, the one this lookup read), and whether the lease is still held. One round
    /// trip.
    pub async fn peek(
        &self,
        key: &CacheKey,
        incarnation: &[u8],
    ) -> Result<(Option<Bytes>, bool), CacheError> {
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.value_key(key))
            .arg(self.lease_key(key))
            .arg(self.keys.incarnation(self.keys.shard_of(key.as_str())));
        let raw: Vec<Option<Vec<u8>>> = self.run(RedisOp::Mget, cmd.query_async(&mut conn)).await?;
        let mut it = raw.into_iter();
        let (value, leased, current) = (
            it.next().flatten(),
            it.next().flatten(),
            it.next().flatten(),
        );
        // Only a value of the incarnation this lookup read, which must still be the current one.
        let value = value
            .filter(|v| v.starts_with(incarnation) && current.as_deref() == Some(incarnation))
            .map(|v| Bytes::from(v).slice(incarnation.len()..));
        Ok((value, leased.is_some()))
    }

    /// Stores `payload` if the namespace is in the incarnation `read` saw and no invalidation
    /// moved the fences since, and releases the lease if this load held it. A `read` older than
    /// [`MAX_FILL_AGE`] is not sent (a fence bumped since may have expired). True if stored.
    pub async fn fill(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        read: &L2Read,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        if read.at.elapsed() > MAX_FILL_AGE {
            self.release(key, &read.lease).await;
            return Ok(false);
        }
        let mut conn = self.conn()?;
        let mut inv = self.scripts.fill.prepare_invoke();
        self.value_keys(&mut inv, key, tags);
        let shard = self.keys.shard_of(key.as_str());
        for t in tags {
            inv.key(self.keys.tag_members(&t.name(), shard));
        }
        let token = match &read.lease {
            Lease::Held(t) => t.as_str(),
            _ => "",
        };
        let candidate = new_incarnation();
        inv.arg(payload)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(token)
            .arg(&read.incarnation[..])
            .arg(&candidate[..]);
        for tok in &read.tokens {
            inv.arg(*tok);
        }
        let out: redis::Value = self.run(RedisOp::Fill, inv.invoke_async(&mut conn)).await?;
        Ok(match out {
            redis::Value::Int(1) => true,
            // Refused, and the server had changed: the script rotated the incarnation.
            redis::Value::BulkString(reason) => {
                self.incarnation
                    .made(shard, &candidate, cause_from_script(&reason));
                false
            }
            _ => false,
        })
    }

    /// Gives a lease back without filling (the load failed), so waiters stop waiting.
    pub async fn release(&self, key: &CacheKey, lease: &Lease) {
        let Lease::Held(token) = lease else { return };
        let Ok(mut conn) = self.conn() else { return };
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(self.lease_key(key)).arg(token.as_str());
        let _: Result<i64, _> = self
            .run(RedisOp::Release, inv.invoke_async(&mut conn))
            .await;
    }

    /// Drops keys and tags (and moves their fences). On failure the deletion is queued, L2 is
    /// bypassed until it lands, and a background task keeps retrying it.
    pub async fn invalidate(
        &self,
        deletion: Deletion,
        marker: Marker,
    ) -> Result<Dropped, CacheError> {
        match self.try_invalidate(&deletion, &marker).await {
            Ok(n) => Ok(n),
            Err(e) => {
                self.owe(Owed::Delete(deletion, marker));
                Err(e)
            }
        }
    }

    fn owe(&self, owed: Owed) {
        // A std Mutex: nothing is awaited while it is held.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.push(owed);
        self.has_pending.store(true, Ordering::Release);
    }

    /// Retries owed invalidations; returns true when none is left.
    pub async fn retry_pending(&self) -> bool {
        if !self.has_pending.load(Ordering::Acquire) {
            return true;
        }
        let owed = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending)
        };
        let mut failed = Vec::new();
        for o in owed {
            let ok = match &o {
                Owed::Delete(d, m) => self.try_invalidate(d, m).await.is_ok(),
                Owed::Reset(cause) => self.try_reset(*cause).await.is_ok(),
            };
            if !ok {
                failed.push(o);
            }
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend(failed);
        let done = pending.is_empty();
        self.has_pending.store(!done, Ordering::Release);
        if done {
            tracing::info!("owed redis invalidations delivered; L2 reads resume");
        }
        done
    }

    /// How many resets this instance has seen or made; moves when L1 must be dropped.
    pub fn resets(&self) -> u64 {
        self.incarnation.resets()
    }

    /// Resets the namespace: a new incarnation, so every fill in flight is refused and every value
    /// voided, at once. If Redis cannot be reached the reset is owed: L2 is bypassed until it
    /// lands. The voided values are left to [`Remote::sweep`] (or their TTL).
    pub async fn reset_namespace(&self, cause: ResetCause) -> Result<(), CacheError> {
        if let Err(e) = self.try_reset(cause).await {
            self.owe(Owed::Reset(cause));
            return Err(e);
        }
        Ok(())
    }

    /// One health probe: connects if never connected, else checks the server over the data
    /// connection through the breaker (skipped while open; the half-open probe once the pause is over), so
    /// a Redis that fails without traffic is noticed and a recovered one is closed again.
    pub async fn probe(&self) -> bool {
        if !self.redis.is_connected() {
            let ok = self.connect().await.is_ok();
            if !ok {
                self.metrics.redis_up.set(0);
            }
            return ok;
        }
        if self.redis.breaker_state() == BreakerState::HalfOpen {
            // A probe is already out (a lookup's); let it decide.
            return false;
        }
        self.check().await.is_ok()
    }
}
