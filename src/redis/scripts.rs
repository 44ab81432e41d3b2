//! The Lua scripts behind the cache tier: each is one atomic server-side step (read with fence
//! tokens and a lease, fenced fill, invalidation with markers, server check, sweep). Their
//! contracts are written at the top of each; `cache::remote` explains why they are what they
//! are. Modes are passed by name, not number.

use redis::Script;

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

/// Functions the read, fill and check scripts share, prepended to those that call them (a
/// script defines its functions on every call, so each gets only what it uses).
///
/// `server_now()`: the server's `run_id` and `evicted_keys` as one string, or false if `INFO`
/// cannot be read or lacks them (an ACL may deny it; then nothing is compared).
const SERVER_NOW_LUA: &str = r#"
local function server_now()
  local server = redis.pcall('INFO', 'server')
  local stats = redis.pcall('INFO', 'stats')
  if type(server) ~= 'string' or type(stats) ~= 'string' then return false end
  local rid = string.match(server, 'run_id:(%x+)')
  local ev = string.match(stats, 'evicted_keys:(%d+)')
  if not rid or not ev then return false end
  return rid .. ' ' .. ev
end
"#;

/// `create(inc, rec, candidate)`: makes `candidate` the incarnation of a namespace that has none,
/// recording the server it was made on. Returns it. Needs [`SERVER_NOW_LUA`].
const CREATE_LUA: &str = r#"
local function create(inc_key, rec_key, candidate)
  redis.call('SET', inc_key, candidate)
  local now = server_now()
  if now then redis.call('SET', rec_key, now) end
  return candidate
end
"#;

/// `server_check(inc, rec, candidate)`: compares the server with the one the namespace last
/// recorded and rotates the incarnation on any difference. Returns the reason of a rotation (or
/// false), and whether `INFO` could be read. Needs [`SERVER_NOW_LUA`].
const SERVER_CHECK_LUA: &str = r#"
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
-- Marker modes (see MarkerMode): 'none'; 'mark' sets KEYS[#KEYS]; 'skip_or_mark' skips if any
-- of the two marker keys exists, else drops and sets the last; 'skip' skips if any exists, else
-- drops (a chunk before the last).
-- A fence takes the clock's next value, never its own + 1: a fence that expired and is bumped
-- again must not repeat a number a load may hold as its token.
local nk = tonumber(ARGV[1])
local ttl = ARGV[2]
local mode = ARGV[3]
local nm = 0
if mode == 'mark' then nm = 1 elseif mode == 'skip_or_mark' or mode == 'skip' then nm = 2 end
if nm == 2 then
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
if mode == 'mark' or mode == 'skip_or_mark' then redis.call('SET', KEYS[#KEYS], '1', 'PX', ARGV[4]) end
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

/// Releases a lease only if this load still holds it: compare and delete in one step.
const RELEASE_LUA: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// What an invalidation does with the markers that say a transaction's invalidation has landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerMode {
    /// No bookkeeping.
    None,
    /// Drop, then set the marker (a write route's own commit, on its last chunk).
    Mark,
    /// Skip if someone already applied it, else drop and set the group's marker (a replay's
    /// last chunk).
    SkipOrMark,
    /// Skip if someone already applied it, else drop (a replay's chunk before the last).
    Skip,
}

impl MarkerMode {
    /// How the invalidation script names it.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkerMode::None => "none",
            MarkerMode::Mark => "mark",
            MarkerMode::SkipOrMark => "skip_or_mark",
            MarkerMode::Skip => "skip",
        }
    }
}

/// Every script, loaded once (redis-rs sends EVALSHA, and the source when Redis lacks it).
pub struct Scripts {
    pub read: Script,
    pub fill: Script,
    pub check: Script,
    pub release: Script,
    pub invalidate: Script,
    pub bump: Script,
    pub sweep: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            read: Script::new(&format!("{SERVER_NOW_LUA}{CREATE_LUA}{READ_LUA}")),
            fill: Script::new(&format!("{SERVER_NOW_LUA}{SERVER_CHECK_LUA}{FILL_LUA}")),
            check: Script::new(&format!(
                "{SERVER_NOW_LUA}{CREATE_LUA}{SERVER_CHECK_LUA}{CHECK_LUA}"
            )),
            release: Script::new(RELEASE_LUA),
            invalidate: Script::new(INVALIDATE_LUA),
            bump: Script::new(BUMP_LUA),
            sweep: Script::new(SWEEP_LUA),
        }
    }
}
