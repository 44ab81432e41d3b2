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
//! # Losing state
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
//! - fence expiry: fences outlive their last bump by [`FENCE_TTL`]; a fill whose tokens are older
//!   than [`MAX_FILL_AGE`] (half of that) is not sent;
//! - an admin flush, or a change listener that was away longer than the outbox keeps rows.
//!
//! An instance that sees a new incarnation drops its L1 (entries copied from the old one may be
//! stale), on a read or on its probe.
//!
//! The hot path holds a `ConnectionManager` (one multiplexed connection that reconnects by
//! itself): no per-request checkout or PING. The deadpool pool serves control-plane commands.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
use super::keys::{fnv1a, CacheKey, Kind, Tag};
use super::CacheError;
use crate::domain::TxId;
use crate::metrics::Metrics;

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

const READ_LUA: &str = r#"
-- KEYS: value, lease, incarnation, server record, fences (key, kind, then one per tag)
-- ARGV: lease token, lease ttl ms (0 = take no lease), a new incarnation if there is none
-- Returns: {value or false, lease (1 taken, 0 held by another, -1 not asked), incarnation,
--           fence tokens...}
local inc = redis.call('GET', KEYS[3])
if not inc then inc = create(KEYS[3], KEYS[4], ARGV[3]) end
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #inc) ~= inc then v = false end
local out = {v, -1, inc}
for i = 5, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) or '0' end
if not v and tonumber(ARGV[2]) > 0 then
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then out[2] = 1 else out[2] = 0 end
end
return out
"#;

/// Functions the read, fill and check scripts share (prepended to them).
/// - `server_now()`: the server's `run_id` and `evicted_keys` as one string, or false if `INFO`
///   cannot be read or lacks them (an ACL may deny it; then nothing is compared).
/// - `create(inc, rec, candidate)`: makes `candidate` the incarnation of a namespace that has none,
///   recording the server it was made on. Returns it.
/// - `server_check(inc, rec, candidate)`: compares the server with the one the namespace last
///   recorded and rotates the incarnation on any difference. Returns the reason of a rotation (or
///   false), and whether `INFO` could be read.
const SERVER_LUA: &str = r#"
local function server_now()
  local server = redis.pcall('INFO', 'server')
  local stats = redis.pcall('INFO', 'stats')
  if type(server) ~= 'string' or type(stats) ~= 'string' then return false end
  local rid = string.match(server, 'run_id:(%x+)')
  local ev = string.match(stats, 'evicted_keys:(%d+)')
  if not rid or not ev then return false end
  return rid .. ' ' .. ev
end
local function create(inc_key, rec_key, candidate)
  redis.call('SET', inc_key, candidate)
  local now = server_now()
  if now then redis.call('SET', rec_key, now) end
  return candidate
end
local function server_check(inc_key, rec_key, candidate)
  local now = server_now()
  if not now then return false, false end
  local rec = redis.call('GET', rec_key)
  local cause = false
  if not rec then
    -- A namespace without an incarnation has nothing to protect (no token or value matches); one
    -- with an incarnation but no record lost the record (evicted, or the namespace was written
    -- by an older version): it may have lost fences too.
    if redis.call('EXISTS', inc_key) == 1 then cause = 'state_lost' end
  elseif rec ~= now then
    local rid0, ev0 = string.match(rec, '^(%S+) (%d+)$')
    local rid, ev = string.match(now, '^(%S+) (%d+)$')
    -- evicted_keys moves only up, unless CONFIG RESETSTAT: any change may hide an eviction.
    if rid0 ~= rid then cause = 'server_changed'
    elseif ev0 ~= ev then cause = 'evictions' end
  else
    return false, true
  end
  if cause then redis.call('SET', inc_key, candidate) end
  redis.call('SET', rec_key, now)
  return cause, true
end
"#;

const FILL_LUA: &str = r#"
-- KEYS: value, lease, incarnation, server record, fences (f: key, kind, then one per tag),
--       tag member sets
-- ARGV: payload, ttl ms, lease token ('' = none), incarnation, a new incarnation, fence tokens (f)
-- Returns: 1 stored, 0 fenced, or the reason the incarnation was rotated (not stored)
local nf = #ARGV - 5
local function cur(k) return tonumber(redis.call('GET', k) or '0') end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
local rotated = server_check(KEYS[3], KEYS[4], ARGV[5])
if rotated then return rotated end
if redis.call('GET', KEYS[3]) ~= ARGV[4] then return 0 end
for i = 1, nf do
  if cur(KEYS[4 + i]) ~= tonumber(ARGV[5 + i]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[4] .. ARGV[1], 'PX', ARGV[2])
for i = 5 + nf, #KEYS do
  local m = KEYS[i]
  redis.call('SADD', m, KEYS[1])
  if redis.call('PTTL', m) < tonumber(ARGV[2]) then redis.call('PEXPIRE', m, ARGV[2]) end
end
return 1
"#;

const CHECK_LUA: &str = r#"
-- KEYS: incarnation, server record
-- ARGV: a new incarnation (used if the server changed or there is none)
-- Returns: {incarnation, reason it was rotated or '', 1 if INFO could be read else 0}
local rotated, checked = server_check(KEYS[1], KEYS[2], ARGV[1])
local inc = redis.call('GET', KEYS[1])
if not inc then inc = create(KEYS[1], KEYS[2], ARGV[1]) end
return {inc, rotated or '', checked and 1 or 0}
"#;

const INVALIDATE_LUA: &str = r#"
-- KEYS: the fence clock, (value, fence) per key, then (tag fence, tag members) per tag, then the
--       marker keys
-- ARGV: number of keys, fence ttl ms, marker mode, marker ttl ms
-- Marker modes: 0 none; 1 set KEYS[#KEYS]; 2 skip if any marker exists, else drop and set the
-- last; 3 skip if any marker exists, else drop (a chunk before the last).
-- A fence takes the clock's next value, never its own + 1: a fence that expired and is bumped
-- again must not repeat a number a load may hold as its token.
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
local function bump(f) redis.call('SET', f, redis.call('INCR', KEYS[1]), 'PX', ttl) end
local dropped = 0
for i = 0, nk - 1 do
  bump(KEYS[3 + 2 * i])
  dropped = dropped + redis.call('DEL', KEYS[2 + 2 * i])
end
local base = 1 + 2 * nk
local nt = (#KEYS - nm - base) / 2
for i = 0, nt - 1 do
  local tf, tm = KEYS[base + 1 + 2 * i], KEYS[base + 2 + 2 * i]
  bump(tf)
  local members = redis.call('SMEMBERS', tm)
  for _, m in ipairs(members) do
    dropped = dropped + redis.call('DEL', m)
  end
  redis.call('DEL', tm)
end
if mode == 1 or mode == 2 then redis.call('SET', KEYS[#KEYS], '1', 'PX', ARGV[4]) end
return dropped
"#;

/// Moves fences on their own (a whole kind, admin): KEYS: the fence clock, fences; ARGV: ttl ms.
const BUMP_LUA: &str = r#"
for i = 2, #KEYS do redis.call('SET', KEYS[i], redis.call('INCR', KEYS[1]), 'PX', ARGV[1]) end
return #KEYS - 1
"#;

/// Deletes the values among KEYS[2..] that were not filled under the current incarnation
/// (KEYS[1]); fences, tag sets and leases are never passed here. Returns how many went.
const SWEEP_LUA: &str = r#"
local inc = redis.call('GET', KEYS[1])
if not inc then return 0 end
local n = 0
for i = 2, #KEYS do
  if redis.call('GETRANGE', KEYS[i], 0, #inc - 1) ~= inc then
    n = n + redis.call('UNLINK', KEYS[i])
  end
end
return n
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

/// What an L2 read returned: the value, if any, and the tokens a later fill must match (the
/// incarnation and the fence counters).
#[derive(Debug, Clone)]
pub struct L2Read {
    pub value: Option<Bytes>,
    pub incarnation: Bytes,
    pub tokens: Vec<i64>,
    pub lease: Lease,
    /// When the read was sent: a fill older than [`MAX_FILL_AGE`] is not sent.
    pub at: Instant,
}

/// What became of a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    Stored,
    /// Refused: an invalidation moved a fence, or the incarnation is not the one read.
    Fenced,
    /// Refused, and the fill found the server changed and reset the namespace (the cause).
    Reset(ResetCause),
}

/// Why the namespace got a new incarnation (the `cause` label of `sidecache_redis_resets_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// `POST /admin/flush`.
    Admin,
    /// The change listener was away longer than the outbox keeps rows.
    ListenerGap,
    /// Redis had lost the namespace's state (restart without persistence, `FLUSHALL`).
    StateLost,
    /// Another server answers now, or the same one restarted (from a snapshot, or a failover).
    ServerChanged,
    /// Redis evicted keys since the last check; a fence may have been one of them.
    Evictions,
    /// Another instance (or a loss nobody announced) changed it; seen on a read or probe.
    Observed,
}

impl ResetCause {
    pub const ALL: [ResetCause; 6] = [
        ResetCause::Admin,
        ResetCause::ListenerGap,
        ResetCause::StateLost,
        ResetCause::ServerChanged,
        ResetCause::Evictions,
        ResetCause::Observed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResetCause::Admin => "admin",
            ResetCause::ListenerGap => "listener_gap",
            ResetCause::StateLost => "state_lost",
            ResetCause::ServerChanged => "server_changed",
            ResetCause::Evictions => "evictions",
            ResetCause::Observed => "observed",
        }
    }

    /// The reason a Lua script returned.
    fn from_script(s: &[u8]) -> Self {
        match s {
            b"server_changed" => ResetCause::ServerChanged,
            b"evictions" => ResetCause::Evictions,
            _ => ResetCause::StateLost,
        }
    }
}

/// Work that could not reach Redis and is retried until it does; L2 is bypassed meanwhile.
#[derive(Debug, Clone)]
enum Owed {
    Delete(Deletion, Marker),
    Reset(ResetCause),
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
    incarnation_key: String,
    server_key: String,
    /// Where fences take their values from (never repeating within an incarnation).
    clock_key: String,
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    pool: deadpool_redis::Pool,
    timeout: Duration,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    breaker: Breaker,
    /// Invalidations and resets that could not reach Redis; until they land, L2 is bypassed.
    pending: Mutex<Vec<Owed>>,
    has_pending: AtomicBool,
    /// A hash of the incarnation this instance last saw (0: none yet).
    incarnation: AtomicU64,
    /// How many times this instance saw or made a new incarnation; the cache drops L1 when it
    /// moves.
    resets: AtomicU64,
    /// Whether the last check could read `INFO` (an ACL may deny it); warned about once.
    server_checks: AtomicBool,
    /// When a reset was last logged as a warning (Unix ms).
    last_warning_ms: AtomicU64,
    read_script: Script,
    release_script: Script,
    fill_script: Script,
    check_script: Script,
    invalidate_script: Script,
    bump_script: Script,
    sweep_script: Script,
    /// Failed operations so far, and how many of them a successful check of the server has
    /// covered (it started after them). L2 is read only while every failure is covered: a
    /// failure may be a restart, and values restored from an older snapshot must not be read
    /// before the check has seen the new server and reset the namespace.
    failures: AtomicU64,
    checked_through: AtomicU64,
    /// Wakes the probe at once after a failure, so the check does not wait for its tick.
    wake: tokio::sync::Notify,
    /// Holds every check back (tests: forces reads between a reconnect and its check).
    checks_held: AtomicBool,
}

/// A new random incarnation token: 16 hex digits.
fn new_incarnation() -> [u8; 16] {
    let mut out = [0u8; 16];
    let v: u64 = rand::random();
    for (i, b) in out.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
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
            incarnation_key: format!("{}:v1incarnation", cfg.namespace),
            server_key: format!("{}:v1server", cfg.namespace),
            clock_key: format!("{}:v1clock", cfg.namespace),
            client,
            conn: OnceLock::new(),
            pool,
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            metrics,
            breaker: Breaker::new(cfg.breaker),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            incarnation: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            server_checks: AtomicBool::new(true),
            last_warning_ms: AtomicU64::new(0),
            read_script: Script::new(&format!("{SERVER_LUA}{READ_LUA}")),
            // Only our own token is deleted: compare and delete in one step.
            release_script: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            ),
            fill_script: Script::new(&format!("{SERVER_LUA}{FILL_LUA}")),
            check_script: Script::new(&format!("{SERVER_LUA}{CHECK_LUA}")),
            invalidate_script: Script::new(INVALIDATE_LUA),
            bump_script: Script::new(BUMP_LUA),
            sweep_script: Script::new(SWEEP_LUA),
            failures: AtomicU64::new(0),
            // Not checked yet: nothing is read from L2 before the first check.
            checked_through: AtomicU64::new(u64::MAX),
            wake: tokio::sync::Notify::new(),
            checks_held: AtomicBool::new(false),
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
        // L2 is read only after a check of the server (see `usable`).
        self.check().await
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

    /// True when reads may use L2: connected, the breaker not open, the server checked since
    /// the last failure, and no invalidation owed.
    pub fn usable(&self) -> bool {
        self.is_up()
            && self.checked_through.load(Ordering::Acquire) == self.failures.load(Ordering::Acquire)
            && !self.has_pending.load(Ordering::Acquire)
    }

    /// Holds back (or lets go) every check of the server. For tests.
    #[doc(hidden)]
    pub fn hold_checks(&self, held: bool) {
        self.checks_held.store(held, Ordering::Release);
        if !held {
            self.wake.notify_one();
        }
    }

    /// Completes when an operation failed and the server should be checked again.
    pub async fn check_wanted(&self) {
        self.wake.notified().await;
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
            self.failures.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_one();
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
    /// The namespace's incarnation. Outside `{prefix}` so a flush's SCAN does not delete it.
    fn incarnation_key(&self) -> &str {
        &self.incarnation_key
    }
    /// The server (and its eviction count) the incarnation was last checked against.
    fn server_key(&self) -> &str {
        &self.server_key
    }

    /// The fences a value depends on, in the order the scripts and `L2Read::tokens` use: its
    /// key, its kind, then one per tag.
    fn fence_keys(&self, inv: &mut redis::ScriptInvocation<'_>, key: &CacheKey, tags: &[Tag]) {
        inv.key(self.fence_key(key))
            .key(self.kind_fence_key(key.kind()));
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
        let at = Instant::now();
        let mut inv = self.read_script.prepare_invoke();
        inv.key(self.value_key(key))
            .key(self.lease_key(key))
            .key(self.incarnation_key())
            .key(self.server_key());
        self.fence_keys(&mut inv, key, tags);
        let (token, ttl) = lease.unwrap_or(("", Duration::ZERO));
        let candidate = new_incarnation();
        inv.arg(token)
            .arg(ttl.as_millis() as u64)
            .arg(&candidate[..]);
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
        let incarnation = match it.next() {
            Some(redis::Value::BulkString(b)) => Bytes::from(b),
            _ => return Err(CacheError::Redis("read: no incarnation".into())),
        };
        self.observe(&incarnation, incarnation[..] == candidate[..]);
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

    /// Notes the incarnation a read or check returned; a change from the last one seen counts as
    /// a reset (the cache drops its L1 when [`Remote::resets`] moves).
    /// `created`: this instance's own candidate became the incarnation, because there was none
    /// (Redis lost the namespace's state).
    fn observe(&self, incarnation: &[u8], created: bool) {
        let h = fnv1a(incarnation) | 1;
        let before = self.incarnation.swap(h, Ordering::AcqRel);
        if before != 0 && before != h {
            self.count_reset(if created {
                ResetCause::StateLost
            } else {
                ResetCause::Observed
            });
        }
    }

    /// Records a new incarnation this instance made itself (so it is not observed again).
    fn made(&self, incarnation: &[u8], cause: ResetCause) {
        self.incarnation
            .store(fnv1a(incarnation) | 1, Ordering::Release);
        self.count_reset(cause);
    }

    fn count_reset(&self, cause: ResetCause) {
        self.resets.fetch_add(1, Ordering::AcqRel);
        self.metrics
            .redis_resets
            .with_label_values(&[cause.as_str()])
            .inc();
        if cause == ResetCause::Observed || cause == ResetCause::Admin {
            return;
        }
        // At most one warning a minute: an evicting Redis resets on every probe.
        let now = super::now_ms();
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

    /// How many resets this instance has seen or made; moves when L1 must be dropped.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Acquire)
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
            .arg(self.incarnation_key());
        let raw: Vec<Option<Vec<u8>>> = self.run("mget", cmd.query_async(&mut conn)).await?;
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
    /// [`MAX_FILL_AGE`] is not sent (a fence bumped since may have expired).
    pub async fn fill(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        read: &L2Read,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<Fill, CacheError> {
        if read.at.elapsed() > MAX_FILL_AGE {
            self.release(key, &read.lease).await;
            return Ok(Fill::Fenced);
        }
        let mut conn = self.conn()?;
        let mut inv = self.fill_script.prepare_invoke();
        inv.key(self.value_key(key))
            .key(self.lease_key(key))
            .key(self.incarnation_key())
            .key(self.server_key());
        self.fence_keys(&mut inv, key, tags);
        for t in tags {
            inv.key(self.tag_members_key(t));
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
        let out: redis::Value = self.run("fill", inv.invoke_async(&mut conn)).await?;
        Ok(match out {
            redis::Value::Int(1) => Fill::Stored,
            redis::Value::BulkString(reason) => {
                let cause = ResetCause::from_script(&reason);
                self.made(&candidate, cause);
                Fill::Reset(cause)
            }
            _ => Fill::Fenced,
        })
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
            inv.key(&self.clock_key);
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

    /// Drops every value of `kind` (admin): moves the kind's fence first, so no fill that read
    /// Postgres before this lands, then deletes the kind's values by SCANning this namespace for
    /// its key prefix (never the whole keyspace), moving each key's fence as it goes.
    pub async fn invalidate_kind(&self, kind: Kind) -> Result<u64, CacheError> {
        let mut conn = self.conn()?;
        let mut bump = self.bump_script.prepare_invoke();
        bump.key(&self.clock_key)
            .key(self.kind_fence_key(kind))
            .arg(FENCE_TTL.as_millis() as u64);
        self.run("invalidate", bump.invoke_async::<i64>(&mut conn))
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

    /// Deletes the values not filled under the current incarnation, SCANning only this
    /// namespace on a control-plane connection so lookups are not held up. Fences, tag sets,
    /// leases and markers are left alone: a fence moved after the reset must stay, or a fill
    /// that read before it could land. Returns how many values went.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        let mut removed = 0u64;
        let mut pool = self
            .pool
            .get()
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))?;
        for keys in self.scan(&format!("{}*", self.prefix)).await? {
            let values: Vec<&String> = keys
                .iter()
                .filter(|k| {
                    k.strip_prefix(self.prefix.as_str())
                        .and_then(CacheKey::parse)
                        .is_some()
                })
                .collect();
            if values.is_empty() {
                continue;
            }
            let mut inv = self.sweep_script.prepare_invoke();
            inv.key(self.incarnation_key());
            for k in values {
                inv.key(k.as_str());
            }
            removed += inv
                .invoke_async::<u64>(&mut pool)
                .await
                .map_err(|e| CacheError::Redis(e.to_string()))?;
        }
        Ok(removed)
    }

    /// Moves the namespace to a new incarnation.
    async fn try_reset(&self, cause: ResetCause) -> Result<(), CacheError> {
        let mut conn = self.conn()?;
        let candidate = new_incarnation();
        let mut set = redis::cmd("SET");
        set.arg(self.incarnation_key()).arg(&candidate[..]);
        self.run("reset", set.query_async::<()>(&mut conn)).await?;
        self.made(&candidate, cause);
        Ok(())
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
        self.check().await.is_ok()
    }

    /// Checks the server behind the namespace (resetting it if the server changed or evicted
    /// keys) and notes its incarnation, so an instance serving only L1 hits still learns of a
    /// reset within one probe.
    async fn check(&self) -> Result<(), CacheError> {
        if self.checks_held.load(Ordering::Acquire) {
            return Err(CacheError::Unavailable);
        }
        let mut conn = self.conn()?;
        let failures = self.failures.load(Ordering::Acquire);
        let candidate = new_incarnation();
        let mut inv = self.check_script.prepare_invoke();
        inv.key(self.incarnation_key())
            .key(self.server_key())
            .arg(&candidate[..]);
        let (incarnation, reset, checked): (Vec<u8>, Vec<u8>, i64) =
            self.run("check", inv.invoke_async(&mut conn)).await?;
        if !reset.is_empty() {
            self.made(&candidate, ResetCause::from_script(&reset));
        } else {
            self.observe(&incarnation, incarnation[..] == candidate[..]);
        }
        if self.server_checks.swap(checked == 1, Ordering::Relaxed) && checked != 1 {
            tracing::warn!(
                "redis denies INFO to this user: a restart from a snapshot, a failover or an \
                 eviction cannot be detected, and could let a stale fill through"
            );
        }
        self.checked_through.store(failures, Ordering::Release);
        Ok(())
    }
}
