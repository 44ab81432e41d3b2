//! L2: Redis. Values live under `{namespace}:v1:{key}`. Fills are compare-and-set against fence
//! counters that every invalidation bumps (the memcache-lease idea): a fill that read Postgres
//! before a write committed carries an old fence token and is refused, wherever it runs.
//!
//! Redis keys, after the prefix:
//! - `{key}`             the encoded entry
//! - `fence:{key}`       counter bumped when the key is invalidated
//! - `tagfence:{tag}`    counter bumped when the tag is invalidated
//! - `tag:{tag}`         set of the value keys filled under the tag (dropped with it)
//!
//! The hot path holds a `ConnectionManager` (one multiplexed connection that reconnects by
//! itself): no per-request checkout or PING. The deadpool pool serves control-plane commands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
use super::keys::{CacheKey, Kind, Tag};
use super::CacheError;
use crate::domain::TxId;
use crate::metrics::Metrics;

/// How long a fence counter outlives its last bump. It only has to outlast any load that could
/// have read Postgres before the bump (a few statement timeouts); an expired fence can only make
/// a fill that read a *newer* token fail, never let an old one through, unless a load outlives it.
const FENCE_TTL: Duration = Duration::from_secs(120);

/// How long the marker that says "this transaction's invalidation reached Redis" is kept: long
/// enough for every instance's change listener to see the transaction.
const MARKER_TTL: Duration = Duration::from_secs(600);

/// Invalidations are sent in chunks of at most this many keys and tags, so one batch job that
/// touched 100,000 rows does not become one Lua call that blocks Redis.
const CHUNK: usize = 500;

const READ_LUA: &str = r#"
-- KEYS: value, lease, fences (key, kind, namespace epoch, then one per tag)
-- ARGV: lease token, lease ttl ms (0 = take no lease)
-- Returns: {value or false, lease (1 taken, 0 held by another, -1 not asked), fence tokens...}
local v = redis.call('GET', KEYS[1])
local out = {v, -1}
for i = 3, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) or '0' end
if not v and tonumber(ARGV[2]) > 0 then
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then out[2] = 1 else out[2] = 0 end
end
return out
"#;

const FILL_LUA: &str = r#"
-- KEYS: value, lease, fences (f: key, kind, namespace epoch, then one per tag), tag member sets
-- ARGV: payload, ttl ms, lease token ('' = none), fence tokens (f)
local nf = #ARGV - 3
local function cur(k) return tonumber(redis.call('GET', k) or '0') end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
for i = 1, nf do
  if cur(KEYS[2 + i]) ~= tonumber(ARGV[3 + i]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 3 + nf, #KEYS do
  local m = KEYS[i]
  redis.call('SADD', m, KEYS[1])
  if redis.call('PTTL', m) < tonumber(ARGV[2]) then redis.call('PEXPIRE', m, ARGV[2]) end
end
return 1
"#;

const INVALIDATE_LUA: &str = r#"
-- KEYS: (value, fence) per key, then (tag fence, tag members) per tag, then the marker keys
-- ARGV: number of keys, fence ttl ms, marker mode, marker ttl ms
-- Marker modes: 0 none; 1 set KEYS[#KEYS]; 2 skip if any marker exists, else drop and set the
-- last; 3 skip if any marker exists, else drop (a chunk before the last).
local nk = tonumber(ARGV[1])
local ttl = ARGV[2]
local mode = tonumber(ARGV[3])
local nm = 0
if mode == 1 then nm = 1 elseif mode >= 2 then nm = 2 end
if mode >= 2 then
  for i = #KEYS - nm + 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then return -1 end
  end
end
local dropped = 0
for i = 0, nk - 1 do
  redis.call('INCR', KEYS[2 + 2 * i])
  redis.call('PEXPIRE', KEYS[2 + 2 * i], ttl)
  dropped = dropped + redis.call('DEL', KEYS[1 + 2 * i])
end
local base = 2 * nk
local nt = (#KEYS - nm - base) / 2
for i = 0, nt - 1 do
  local tf, tm = KEYS[base + 1 + 2 * i], KEYS[base + 2 + 2 * i]
  redis.call('INCR', tf)
  redis.call('PEXPIRE', tf, ttl)
  local members = redis.call('SMEMBERS', tm)
  for _, m in ipairs(members) do
    dropped = dropped + redis.call('DEL', m)
  end
  redis.call('DEL', tm)
end
if mode == 1 or mode == 2 then redis.call('SET', KEYS[#KEYS], '1', 'PX', ARGV[4]) end
return dropped
"#;

/// Records in Redis which transactions' invalidations have landed, so that every instance's
/// change listener does not repeat the work of the write route (or of another listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// No bookkeeping (admin invalidations, owed retries of unmarked deletions).
    None,
    /// A write route's own commit: always drop, then mark the transaction as handled.
    Write(TxId),
    /// Changes read from the outbox: skip if the write route or another listener already
    /// dropped them, else drop and mark this group of rows (`group` names it, e.g. its id range).
    Replay { txid: TxId, group: String },
}

/// What an invalidation did in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Entries dropped (values and tag members).
    Entries(u64),
    /// Someone had already applied it (the marker was there).
    AlreadyApplied,
}

/// What an L2 read returned: the value, if any, and the fence tokens a later fill must match.
#[derive(Debug, Clone)]
pub struct L2Read {
    pub value: Option<Bytes>,
    pub tokens: Vec<i64>,
    pub lease: Lease,
}

/// The fill lease of a missing key (fleet-wide single flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Not asked for (the value was there, or leases are off).
    NotAsked,
    /// This load holds it, under this token; the fill releases it.
    Held(String),
    /// Another load (on this or another instance) holds it: wait for its fill.
    Busy,
}

/// The keys and tags of one invalidation, as Redis will see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deletion {
    pub keys: Vec<CacheKey>,
    pub tags: Vec<Tag>,
}

/// Connection settings for the Redis tier.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub url: String,
    pub namespace: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_size: usize,
    pub breaker: BreakerConfig,
}

/// The Redis tier.
pub struct Remote {
    prefix: String,
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    pool: deadpool_redis::Pool,
    timeout: Duration,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    breaker: Breaker,
    /// Invalidations that could not reach Redis; until they land, L2 is bypassed entirely.
    pending: Mutex<Vec<(Deletion, Marker)>>,
    has_pending: AtomicBool,
    read_script: Script,
    release_script: Script,
    fill_script: Script,
    invalidate_script: Script,
}

impl Remote {
    /// Prepares the tier without connecting; [`Remote::connect`] does that (and may keep trying).
    pub fn new(cfg: &RemoteConfig, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| CacheError::Config(format!("redis url: {e}")))?;
        let mut pool_cfg = deadpool_redis::Config::from_url(cfg.url.clone());
        pool_cfg.pool = Some(deadpool_redis::PoolConfig {
            max_size: cfg.pool_size.max(1),
            timeouts: deadpool_redis::Timeouts {
                wait: Some(cfg.connect_timeout),
                create: Some(cfg.connect_timeout),
                recycle: Some(cfg.connect_timeout),
            },
            ..Default::default()
        });
        let pool = pool_cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| CacheError::Config(format!("redis pool: {e}")))?;
        Ok(Remote {
            prefix: format!("{}:v1:", cfg.namespace),
            client,
            conn: OnceLock::new(),
            pool,
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            metrics,
            breaker: Breaker::new(cfg.breaker),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            read_script: Script::new(READ_LUA),
            // Only our own token is deleted: compare and delete in one step.
            release_script: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            ),
            fill_script: Script::new(FILL_LUA),
            invalidate_script: Script::new(INVALIDATE_LUA),
        })
    }

    /// The key prefix, `{namespace}:v1:`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Tries once to open the multiplexed connection. Later drops are healed by the manager.
    pub async fn connect(&self) -> Result<(), CacheError> {
        if self.conn.get().is_some() {
            return Ok(());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(1))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let started = Instant::now();
        let mgr = tokio::time::timeout(
            self.connect_timeout,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        .map_err(|_| CacheError::Timeout)?
        .map_err(|e| CacheError::Redis(e.to_string()))?;
        self.metrics
            .redis_duration
            .with_label_values(&["connect"])
            .observe(started.elapsed().as_secs_f64());
        let _ = self.conn.set(mgr);
        self.metrics.redis_up.set(i64::from(self.is_up()));
        Ok(())
    }

    /// True once connected and while the breaker is not open.
    pub fn is_up(&self) -> bool {
        self.conn.get().is_some() && self.breaker.state() != BreakerState::Open
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        if self.conn.get().is_none() {
            return BreakerState::Open;
        }
        self.breaker.state()
    }

    /// Logs and counts a breaker transition, once.
    fn transition(&self, t: Transition) {
        let Some((from, to)) = t else { return };
        self.metrics.redis_breaker.set(to.as_gauge());
        self.metrics
            .redis_breaker_transitions
            .with_label_values(&[to.as_str()])
            .inc();
        self.metrics.redis_up.set(i64::from(self.is_up()));
        match to {
            BreakerState::Open => tracing::warn!(
                from = from.as_str(),
                "redis circuit breaker open: lookups skip Redis (L1 and Postgres only)"
            ),
            BreakerState::HalfOpen => tracing::info!("redis circuit breaker half-open: probing"),
            BreakerState::Closed => tracing::info!("redis circuit breaker closed: L2 in use again"),
        }
    }

    /// True when reads may use L2: connected, the breaker not open, and no invalidation owed.
    pub fn usable(&self) -> bool {
        self.is_up() && !self.has_pending.load(Ordering::Acquire)
    }

    fn value_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }
    fn fence_key(&self, key: &CacheKey) -> String {
        format!("{}fence:{}", self.prefix, key.as_str())
    }
    fn tag_fence_key(&self, tag: &Tag) -> String {
        format!("{}tagfence:{}", self.prefix, tag.name())
    }
    fn tag_members_key(&self, tag: &Tag) -> String {
        format!("{}tag:{}", self.prefix, tag.name())
    }

    /// Full Redis key of a value (tests and admin tooling look at Redis directly).
    pub fn redis_key(&self, key: &CacheKey) -> String {
        self.value_key(key)
    }

    /// Runs one Redis operation through the breaker and within the operation timeout, recording
    /// count, errors and latency. While the breaker is open it fails at once, without waiting.
    async fn run<T, F>(&self, command: &'static str, fut: F) -> Result<T, CacheError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (allowed, t) = self.breaker.allow();
        self.transition(t);
        if !allowed {
            self.metrics.redis_skipped.inc();
            return Err(CacheError::Unavailable);
        }
        self.metrics.redis_ops.with_label_values(&[command]).inc();
        let started = Instant::now();
        let out = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CacheError::Redis(e.to_string())),
            Err(_) => Err(CacheError::Timeout),
        };
        self.metrics
            .redis_duration
            .with_label_values(&[command])
            .observe(started.elapsed().as_secs_f64());
        if out.is_err() {
            self.metrics
                .redis_errors
                .with_label_values(&[command])
                .inc();
        }
        self.transition(self.breaker.record(out.is_ok()));
        out
    }

    fn conn(&self) -> Result<ConnectionManager, CacheError> {
        self.conn.get().cloned().ok_or(CacheError::Unavailable)
    }

    fn kind_fence_key(&self, kind: Kind) -> String {
        format!("{}kindfence:{}", self.prefix, kind.as_str())
    }
    /// Moved by a flush of the whole namespace. Outside `{prefix}` so the flush does not delete it.
    fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix.trim_end_matches(':'))
    }

    /// The fences a value depends on, in the order the scripts and `L2Read::tokens` use: its
    /// key, its kind, the namespace epoch, then one per tag.
    fn fence_keys(&self, inv: &mut redis::ScriptInvocation<'_>, key: &CacheKey, tags: &[Tag]) {
        inv.key(self.fence_key(key))
            .key(self.kind_fence_key(key.kind()))
            .key(self.epoch_key());
        for t in tags {
            inv.key(self.tag_fence_key(t));
        }
    }

    fn lease_key(&self, key: &CacheKey) -> String {
        format!("{}lease:{}", self.prefix, key.as_str())
    }
    fn marker_key(&self, txid: TxId) -> String {
        format!("{}applied:{}", self.prefix, txid.0)
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
        let mut inv = self.read_script.prepare_invoke();
        inv.key(self.value_key(key)).key(self.lease_key(key));
        self.fence_keys(&mut inv, key, tags);
        let (token, ttl) = lease.unwrap_or(("", Duration::ZERO));
        inv.arg(token).arg(ttl.as_millis() as u64);
        let raw: Vec<redis::Value> = self.run("read", inv.invoke_async(&mut conn)).await?;
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
            tokens,
            lease,
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
            .run("lease", cmd.query_async::<Option<String>>(&mut conn))
            .await
        {
            Ok(Some(_)) => Lease::Held(token.to_owned()),
            Ok(None) => Lease::Busy,
            Err(_) => Lease::NotAsked,
        }
    }

    /// While another load holds the key's lease: the value, once it is there, and whether the
    /// lease is still held. One round trip.
    pub async fn peek(&self, key: &CacheKey) -> Result<(Option<Bytes>, bool), CacheError> {
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(self.value_key(key)).arg(self.lease_key(key));
        let raw: Vec<Option<Vec<u8>>> = self.run("mget", cmd.query_async(&mut conn)).await?;
        let mut it = raw.into_iter();
        let value = it.next().flatten().map(Bytes::from);
        let leased = it.next().flatten().is_some();
        Ok((value, leased))
    }

    /// Stores `payload` if no invalidation moved the fences since `tokens` were read, and
    /// releases the lease if this load held it. Returns false when the fill was refused.
    pub async fn fill(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        tokens: &[i64],
        lease: &Lease,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let mut conn = self.conn()?;
        let mut inv = self.fill_script.prepare_invoke();
        inv.key(self.value_key(key)).key(self.lease_key(key));
        self.fence_keys(&mut inv, key, tags);
        for t in tags {
            inv.key(self.tag_members_key(t));
        }
        let token = match lease {
            Lease::Held(t) => t.as_str(),
            _ => "",
        };
        inv.arg(payload)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(token);
        for tok in tokens {
            inv.arg(*tok);
        }
        let stored: i64 = self.run("fill", inv.invoke_async(&mut conn)).await?;
        Ok(stored == 1)
    }

    /// Gives a lease back without filling (the load failed), so waiters stop waiting.
    pub async fn release(&self, key: &CacheKey, lease: &Lease) {
        let Lease::Held(token) = lease else { return };
        let Ok(mut conn) = self.conn() else { return };
        let mut inv = self.release_script.prepare_invoke();
        inv.key(self.lease_key(key)).arg(token.as_str());
        let _: Result<i64, _> = self.run("release", inv.invoke_async(&mut conn)).await;
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
                self.owe(deletion, marker);
                Err(e)
            }
        }
    }

    fn owe(&self, deletion: Deletion, marker: Marker) {
        // A std Mutex: nothing is awaited while it is held.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.push((deletion, marker));
        self.has_pending.store(true, Ordering::Release);
    }

    async fn try_invalidate(&self, d: &Deletion, marker: &Marker) -> Result<Dropped, CacheError> {
        if d.keys.is_empty() && d.tags.is_empty() {
            return Ok(Dropped::Entries(0));
        }
        let mut conn = self.conn()?;
        // Chunks: keys first, then tags, at most CHUNK of them per call. Markers are checked in
        // every chunk and set with the last, so an instance that stops half-way leaves the rest
        // to the next one.
        let key_chunks = d.keys.chunks(CHUNK).map(|c| (c, &[][..]));
        let tag_chunks = d.tags.chunks(CHUNK).map(|c| (&[][..], c));
        let chunks: Vec<(&[CacheKey], &[Tag])> = key_chunks.chain(tag_chunks).collect();
        let last = chunks.len().saturating_sub(1);
        let mut dropped = 0;
        for (i, (keys, tags)) in chunks.into_iter().enumerate() {
            let mut inv = self.invalidate_script.prepare_invoke();
            for k in keys {
                inv.key(self.value_key(k)).key(self.fence_key(k));
            }
            for t in tags {
                inv.key(self.tag_fence_key(t)).key(self.tag_members_key(t));
            }
            let mode = match marker {
                Marker::None => 0,
                Marker::Write(txid) => {
                    if i != last {
                        0
                    } else {
                        inv.key(self.marker_key(*txid));
                        1
                    }
                }
                Marker::Replay { txid, group } => {
                    inv.key(self.marker_key(*txid))
                        .key(format!("{}:{group}", self.marker_key(*txid)));
                    if i == last {
                        2
                    } else {
                        3
                    }
                }
            };
            inv.arg(keys.len())
                .arg(FENCE_TTL.as_millis() as u64)
                .arg(mode)
                .arg(MARKER_TTL.as_millis() as u64);
            let n: i64 = self.run("invalidate", inv.invoke_async(&mut conn)).await?;
            if n < 0 {
                return Ok(Dropped::AlreadyApplied);
            }
            dropped += n as u64;
        }
        Ok(Dropped::Entries(dropped))
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
        for (d, m) in owed {
            if self.try_invalidate(&d, &m).await.is_err() {
                failed.push((d, m));
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

    /// Drops every value of `kind` (admin): moves the kind's fence first, so no fill that read
    /// Postgres before this lands, then deletes the kind's values by SCANning this namespace for
    /// its key prefix (never the whole keyspace), moving each key's fence as it goes.
    pub async fn invalidate_kind(&self, kind: Kind) -> Result<u64, CacheError> {
        let mut conn = self.conn()?;
        let mut bump = redis::pipe();
        bump.cmd("INCR")
            .arg(self.kind_fence_key(kind))
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.kind_fence_key(kind))
            .arg(FENCE_TTL.as_millis() as u64)
            .ignore();
        self.run("invalidate", bump.query_async::<()>(&mut conn))
            .await?;
        let pattern = format!("{}{}*", self.prefix, kind.key_prefix());
        let mut dropped = 0;
        for keys in self.scan(&pattern).await? {
            let keys: Vec<CacheKey> = keys
                .iter()
                .filter_map(|k| {
                    k.strip_prefix(self.prefix.as_str())
                        .and_then(CacheKey::parse)
                })
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

    /// Removes every key of this namespace (admin flush): moves the namespace epoch first (no
    /// fill that read Postgres before the flush lands), then SCANs only keys under the prefix
    /// and unlinks them, on a control-plane connection so lookups are not held up.
    pub async fn flush_namespace(&self) -> Result<u64, CacheError> {
        let mut conn = self.conn()?;
        let mut bump = redis::cmd("INCR");
        bump.arg(self.epoch_key());
        self.run("invalidate", bump.query_async::<i64>(&mut conn))
            .await?;
        let mut removed = 0u64;
        let mut pool = self
            .pool
            .get()
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))?;
        for keys in self.scan(&format!("{}*", self.prefix)).await? {
            removed += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(&mut pool)
                .await
                .map_err(|e| CacheError::Redis(e.to_string()))?;
        }
        Ok(removed)
    }

    /// Every key matching `pattern`, in SCAN batches, over a control-plane connection.
    async fn scan(&self, pattern: &str) -> Result<Vec<Vec<String>>, CacheError> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))?;
        let mut cursor: u64 = 0;
        let mut batches = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| CacheError::Redis(e.to_string()))?;
            if !keys.is_empty() {
                batches.push(keys);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(batches)
    }

    /// One health probe: connects if never connected, else PINGs over the data connection
    /// through the breaker (skipped while open; the half-open probe once the pause is over), so
    /// a Redis that fails without traffic is noticed and a recovered one is closed again.
    pub async fn probe(&self) -> bool {
        if self.conn.get().is_none() {
            let ok = self.connect().await.is_ok();
            if !ok {
                self.metrics.redis_up.set(0);
            }
            return ok;
        }
        if self.breaker.state() == BreakerState::HalfOpen {
            // A probe is already out (a lookup's); let it decide.
            return false;
        }
        let Ok(mut conn) = self.conn() else {
            return false;
        };
        self.run("ping", redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .is_ok()
    }
}
