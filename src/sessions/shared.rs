//! Sessions in Redis, shared by every instance: one hash per session (`v` version, `c`
//! created, `u` updated, `e` expires — Unix ms — and `d` the data as JSON text) and an index of
//! two sorted sets (ids by name, for listing by prefix without `KEYS`; ids by expiry, to drop
//! the expired ones). Every write is one script: the version check and the write are one atomic
//! step, so `If-Match` is exact and two writers can never both win one version.
//!
//! Expiry is decided by the instances' clock, passed to every script (`now`): a session whose
//! `e` has passed reads as absent. Redis expires the key itself a minute later, as a backstop
//! that survives clock skew between instances.

use std::sync::Arc;

use futures_util::future::try_join_all;
use redis::Script;

use super::doc::Doc;
use crate::labels::RedisOp;
use crate::redis::{Keys, Redis, RedisError};

/// Redis keeps a key this long past its expiry (clock skew between instances).
const BACKSTOP_MS: i64 = 60_000;

const WRITE_LUA: &str = r#"
-- KEYS: session, ids index, expiry index
-- ARGV: id, expected version ('any'; 0 = must not exist), data, now ms, ttl ms, backstop ms
-- Returns {1, version, created, was live (1/0)} when written, {0, current version} when the
-- version differs. Versions go on from a deleted or expired session's while its key lingers,
-- so an old ETag does not match a new session of the same id.
local now = tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'v', 'c', 'e')
local old = tonumber(h[1] or '0')
local live = h[1] and tonumber(h[3]) > now
local cur, created = 0, now
if live then cur = old; created = tonumber(h[2]) end
if ARGV[2] ~= 'any' and tonumber(ARGV[2]) ~= cur then return {0, cur} end
local exp = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'v', old + 1, 'c', created, 'u', now, 'e', exp, 'd', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], exp + tonumber(ARGV[6]))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], exp, ARGV[1])
return {1, old + 1, created, live and 1 or 0}
"#;

const TOUCH_LUA: &str = r#"
-- KEYS: session, expiry index; ARGV: id, now ms, ttl ms, backstop ms
-- Returns the session {v, c, u, e, d} with its new expiry, or false if there is none.
local h = redis.call('HMGET', KEYS[1], 'v', 'c', 'u', 'e', 'd')
local now = tonumber(ARGV[2])
if not h[1] or tonumber(h[4]) <= now then return false end
local exp = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'e', exp)
redis.call('PEXPIREAT', KEYS[1], exp + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], exp, ARGV[1])
h[4] = tostring(exp)
return h
"#;

/// Shared by the delete and write-back scripts: a deleted session keeps its version (no data)
/// for a day, so a new session of its id goes on counting.
const BURY_LUA: &str = r#"
local function bury(key, ids, exps, id)
  redis.call('HSET', key, 'e', 0, 'd', '')
  redis.call('PEXPIRE', key, 86400000)
  redis.call('ZREM', ids, id)
  redis.call('ZREM', exps, id)
end
"#;

const DELETE_LUA: &str = r#"
-- KEYS: session, ids index, expiry index; ARGV: id, expected version ('any'), now ms
-- Returns {1, version} deleted, {0, 0} there was none, {-1, current} the version differs.
local h = redis.call('HMGET', KEYS[1], 'v', 'e')
local live = h[1] and tonumber(h[2]) > tonumber(ARGV[3])
if not live then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {0, 0}
end
if ARGV[2] ~= 'any' and tonumber(ARGV[2]) ~= tonumber(h[1]) then
  return {-1, tonumber(h[1])}
end
bury(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return {1, tonumber(h[1])}
"#;

const WRITE_BACK_LUA: &str = r#"
-- KEYS: session, ids index, expiry index
-- ARGV: id, mode ('put', 'delete' or 'touch'), at ms, expires ms, data, now ms, backstop ms
-- Replays one operation acknowledged from memory while Redis was away, unless Redis holds a
-- write of the session made at or after it (a put or delete made later elsewhere wins).
-- Returns 1 applied, 0 superseded (or nothing to touch), 2 expired meanwhile.
local now, at, exp = tonumber(ARGV[6]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'v', 'c', 'u', 'e')
local live = h[1] and tonumber(h[4]) > now
if ARGV[2] == 'touch' then
  if not live then return 0 end
  if exp > tonumber(h[4]) then
    redis.call('HSET', KEYS[1], 'e', exp)
    redis.call('PEXPIREAT', KEYS[1], exp + tonumber(ARGV[7]))
    redis.call('ZADD', KEYS[3], exp, ARGV[1])
  end
  return 1
end
if live and tonumber(h[3]) >= at then return 0 end
if ARGV[2] == 'delete' then
  if live then bury(KEYS[1], KEYS[2], KEYS[3], ARGV[1]) end
  return 1
end
if exp <= now then return 2 end
local created = at
if live then created = tonumber(h[2]) end
redis.call('HSET', KEYS[1], 'v', tonumber(h[1] or '0') + 1, 'c', created, 'u', at, 'e', exp, 'd', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], exp + tonumber(ARGV[7]))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], exp, ARGV[1])
return 1
"#;

const LIST_LUA: &str = r#"
-- KEYS: ids index, expiry index
-- ARGV: now ms, range min, range max, limit, prefix min, prefix max
-- Drops expired ids from the index (in batches, at most 5,000 a call), then returns
-- {count of the prefix, up to limit + 1 ids from the range}.
local now = tonumber(ARGV[1])
for _ = 1, 10 do
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 500)
  if #dead == 0 then break end
  redis.call('ZREM', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]) + 1)
table.insert(ids, 1, tostring(redis.call('ZLEXCOUNT', KEYS[1], ARGV[5], ARGV[6])))
return ids
"#;

/// What a versioned write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Written: the new version, the creation time, and whether it replaced a live session.
    Yes {
        version: u64,
        created_ms: i64,
        replaced: bool,
    },
    /// The session's version was not the one expected (0: there is none).
    Mismatch { current: u64 },
}

/// What a replay does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Replay<'a> {
    Put(&'a str),
    Delete,
    Touch,
}

/// What a replay found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replayed {
    Applied,
    Superseded,
    Expired,
}

/// One session of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub updated_ms: i64,
    pub expires_ms: i64,
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deleted {
    Yes,
    NotFound,
    Mismatch { current: u64 },
}

pub(crate) struct Shared {
    redis: Arc<Redis>,
    keys: Keys,
    write: Script,
    touch: Script,
    delete: Script,
    write_back: Script,
    list: Script,
}

/// A version expectation as the scripts take it.
fn expected(v: Option<u64>) -> String {
    v.map_or_else(|| "any".to_owned(), |v| v.to_string())
}

fn doc_of(fields: &[Option<String>]) -> Option<Doc> {
    let num = |i: usize| fields.get(i)?.as_deref()?.parse::<i64>().ok();
    Some(Doc {
        version: u64::try_from(num(0)?).ok()?,
        created_ms: num(1)?,
        updated_ms: num(2)?,
        expires_ms: num(3)?,
        data: fields.get(4)?.clone()?,
    })
}

impl Shared {
    pub(crate) fn new(redis: Arc<Redis>, keys: Keys) -> Self {
        Shared {
            redis,
            keys,
            write: Script::new(WRITE_LUA),
            touch: Script::new(TOUCH_LUA),
            delete: Script::new(&format!("{BURY_LUA}{DELETE_LUA}")),
            write_back: Script::new(&format!("{BURY_LUA}{WRITE_BACK_LUA}")),
            list: Script::new(LIST_LUA),
        }
    }

    /// True while Redis may be asked (connected, the breaker not open).
    pub(crate) fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    pub(crate) async fn get(&self, id: &str, now_ms: i64) -> Result<Option<Doc>, RedisError> {
        let mut conn = self.redis.conn()?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.session(id))
            .arg(&["v", "c", "u", "e", "d"]);
        let fields: Vec<Option<String>> = self
            .redis
            .run(RedisOp::SessionRead, cmd.query_async(&mut conn))
            .await?;
        Ok(doc_of(&fields).filter(|d| !d.expired(now_ms)))
    }

    /// Writes `data` if the session's version is `expect` (`None`: whatever it is).
    pub(crate) async fn write(
        &self,
        id: &str,
        expect: Option<u64>,
        data: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Written, RedisError> {
        let mut conn = self.redis.state_conn()?;
        let generation = conn.generation();
        let mut inv = self.write.prepare_invoke();
        let shard = self.keys.shard_of(id);
        inv.key(self.keys.session(id))
            .key(self.keys.session_ids(shard))
            .key(self.keys.session_expiries(shard))
            .arg(id)
            .arg(expected(expect))
            .arg(data)
            .arg(now_ms)
            .arg(ttl_ms)
            .arg(BACKSTOP_MS);
        let out: Vec<i64> = self
            .redis
            .run(RedisOp::SessionWrite, inv.invoke_async(&mut conn))
            .await?;
        self.redis.replicated(&mut conn, generation).await?;
        Ok(match out.as_slice() {
            [1, v, created, live] => Written::Yes {
                version: *v as u64,
                created_ms: *created,
                replaced: *live == 1,
            },
            [_, cur, ..] => Written::Mismatch {
                current: *cur as u64,
            },
            _ => return Err(RedisError::Redis("unexpected write reply".into())),
        })
    }

    pub(crate) async fn touch(
        &self,
        id: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<Option<Doc>, RedisError> {
        let mut conn = self.redis.state_conn()?;
        let generation = conn.generation();
        let mut inv = self.touch.prepare_invoke();
        inv.key(self.keys.session(id))
            .key(self.keys.session_expiries(self.keys.shard_of(id)))
            .arg(id)
            .arg(now_ms)
            .arg(ttl_ms)
            .arg(BACKSTOP_MS);
        let out: Option<Vec<Option<String>>> = self
            .redis
            .run(RedisOp::SessionWrite, inv.invoke_async(&mut conn))
            .await?;
        self.redis.replicated(&mut conn, generation).await?;
        Ok(out.as_deref().and_then(doc_of))
    }

    pub(crate) async fn delete(
        &self,
        id: &str,
        expect: Option<u64>,
        now_ms: i64,
    ) -> Result<Deleted, RedisError> {
        let mut conn = self.redis.state_conn()?;
        let generation = conn.generation();
        let mut inv = self.delete.prepare_invoke();
        let shard = self.keys.shard_of(id);
        inv.key(self.keys.session(id))
            .key(self.keys.session_ids(shard))
            .key(self.keys.session_expiries(shard))
            .arg(id)
            .arg(expected(expect))
            .arg(now_ms);
        let out: Vec<i64> = self
            .redis
            .run(RedisOp::SessionWrite, inv.invoke_async(&mut conn))
            .await?;
        self.redis.replicated(&mut conn, generation).await?;
        Ok(match out.as_slice() {
            [1, ..] => Deleted::Yes,
            [-1, cur] => Deleted::Mismatch {
                current: *cur as u64,
            },
            _ => Deleted::NotFound,
        })
    }

    /// Replays a put, delete or touch acknowledged from memory (see the script).
    pub(crate) async fn replay(
        &self,
        id: &str,
        mode: Replay<'_>,
        at_ms: i64,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<Replayed, RedisError> {
        let (name, data) = match mode {
            Replay::Put(data) => ("put", data),
            Replay::Delete => ("delete", ""),
            Replay::Touch => ("touch", ""),
        };
        let mut conn = self.redis.state_conn()?;
        let generation = conn.generation();
        let mut inv = self.write_back.prepare_invoke();
        let shard = self.keys.shard_of(id);
        inv.key(self.keys.session(id))
            .key(self.keys.session_ids(shard))
            .key(self.keys.session_expiries(shard))
            .arg(id)
            .arg(name)
            .arg(at_ms)
            .arg(expires_ms)
            .arg(data)
            .arg(now_ms)
            .arg(BACKSTOP_MS);
        let out: i64 = self
            .redis
            .run(RedisOp::SessionWrite, inv.invoke_async(&mut conn))
            .await?;
        self.redis.replicated(&mut conn, generation).await?;
        Ok(match out {
            1 => Replayed::Applied,
            2 => Replayed::Expired,
            _ => Replayed::Superseded,
        })
    }

    /// Live sessions whose id starts with `prefix`, after `after`, in id order: at most `limit`,
    /// whether there are more, and how many match the prefix in all.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: i64,
    ) -> Result<(Vec<Listed>, bool, usize), RedisError> {
        let conn = self.redis.conn()?;
        // Ids are [A-Za-z0-9._:-], all below 0x7f: `prefix` + 0x7f bounds every id it starts.
        let prefix_min = format!("[{prefix}");
        let prefix_max = format!("[{prefix}\x7f");
        let min = match after {
            Some(a) if a >= prefix => format!("({a}"),
            _ => prefix_min.clone(),
        };
        // Each shard's index gives its first `limit + 1` ids of the range; the first `limit + 1`
        // of all of them, merged, are the page.
        let shards = try_join_all((0..self.keys.shards()).map(|shard| {
            let mut conn = conn.clone();
            let mut inv = self.list.prepare_invoke();
            inv.key(self.keys.session_ids(shard))
                .key(self.keys.session_expiries(shard))
                .arg(now_ms)
                .arg(&min)
                .arg(&prefix_max)
                .arg(limit)
                .arg(&prefix_min)
                .arg(&prefix_max);
            async move {
                self.redis
                    .run(
                        RedisOp::SessionList,
                        inv.invoke_async::<Vec<String>>(&mut conn),
                    )
                    .await
            }
        }))
        .await?;
        let mut count = 0;
        let mut out = Vec::new();
        for mut ids in shards {
            if ids.is_empty() {
                return Err(RedisError::Redis("unexpected list reply".into()));
            }
            count += ids.remove(0).parse::<usize>().unwrap_or(0);
            out.extend(ids);
        }
        out.sort_unstable();
        let more = out.len() > limit;
        out.truncate(limit);
        let times: Vec<(Option<i64>, Option<i64>)> = try_join_all(out.iter().map(|id| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys.session(id)).arg(&["u", "e"]);
            async move {
                self.redis
                    .run(RedisOp::SessionList, cmd.query_async(&mut conn))
                    .await
            }
        }))
        .await?;
        let page = out
            .into_iter()
            .zip(times)
            .filter_map(|(id, t)| match t {
                (Some(updated_ms), Some(expires_ms)) if expires_ms > now_ms => Some(Listed {
                    id,
                    updated_ms,
                    expires_ms,
                }),
                _ => None,
            })
            .collect();
        Ok((page, more, count))
    }

    /// Live sessions in the index (for the gauge).
    pub(crate) async fn count(&self, now_ms: i64) -> Result<u64, RedisError> {
        let conn = self.redis.conn()?;
        let per_shard = try_join_all((0..self.keys.shards()).map(|shard| {
            let mut conn = conn.clone();
            let mut cmd = redis::cmd("ZCOUNT");
            cmd.arg(self.keys.session_expiries(shard))
                .arg(format!("({now_ms}"))
                .arg("+inf");
            async move {
                self.redis
                    .run(RedisOp::SessionList, cmd.query_async::<u64>(&mut conn))
                    .await
            }
        }))
        .await?;
        Ok(per_shard.into_iter().sum())
    }
}
