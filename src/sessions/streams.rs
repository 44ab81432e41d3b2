//! Where events are kept: a Redis stream per session or topic (`XADD` capped at `max_len`,
//! trimmed by age, each add announced on one channel every instance listens to), or, while Redis
//! is away, a ring per stream in this instance's memory. Both answer the same read: the events
//! after a given id, and whether the stream dropped any event after that id (a gap).
//!
//! Gaps are exact: each stream has a mark, the newest id trimmed so far (set by the add that
//! trimmed it) and the newest id added; a reader who last saw an id older than the trimmed one
//! has missed at least that one. The mark outlives the stream by days, so a stream that
//! expired while idle and started over still reports the gap to a reader of its earlier life.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use redis::Script;

use super::doc::rfc3339_ms;
use crate::labels::RedisOp;
use crate::redis::{Redis, RedisError};

/// The type of the marker a deleted session's stream ends with (clients cannot post it).
pub(crate) const END: &str = "end";

/// How long a stream's trim mark outlives its last add: a subscriber resuming within it learns
/// of a gap even after the stream itself expired and started over.
const MARK_TTL_MS: u64 = 7 * 86_400_000;

/// `older(a, b)`: whether stream id `a` sorts before `b`.
const OLDER_LUA: &str = r#"
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
"#;

const ADD_LUA: &str = r#"
-- KEYS: stream, its mark (hash: `trimmed`, the newest id trimmed; `last`, the newest added)
-- ARGV: type, data, max len, retention ms, channel, mark ttl ms
-- Appends an event, trims by length and age (Redis's own max-deleted-entry-id does not count
-- trims), announces the stream; returns the event's id. A stream that expired and starts over
-- counts everything of its earlier life as trimmed.
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local id = redis.call('XADD', KEYS[1], '*', 't', ARGV[1], 'd', ARGV[2])
local mark = false
if fresh then mark = redis.call('HGET', KEYS[2], 'last') end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local gone = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess)
  mark = gone[#gone][1]
  redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[3])
end
local t = redis.call('TIME')
local oldest = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[4]))
local aged = redis.call('XREVRANGE', KEYS[1], '(' .. oldest .. '-0', '-', 'COUNT', 1)
if #aged > 0 then
  mark = aged[1][1]
  redis.call('XTRIM', KEYS[1], 'MINID', oldest)
end
if mark then redis.call('HSET', KEYS[2], 'trimmed', mark) end
redis.call('HSET', KEYS[2], 'last', id)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[5], KEYS[1])
return id
"#;

const READ_LUA: &str = r#"
-- KEYS: stream, its mark; ARGV: after ('' = from the oldest retained), count
-- Returns {gap (1/0), resume id, entries}: a gap when an event after `after` was trimmed; the
-- entries then start after the newest trimmed id (the resume id).
local after = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- Expired (or never written): a gap if anything was ever added after `after`.
  local last = redis.call('HGET', KEYS[2], 'last')
  if after ~= '' and last and older(after, last) then return {1, last, {}} end
  return {0, '', {}}
end
local trimmed = redis.call('HGET', KEYS[2], 'trimmed') or '0-0'
local start, gap = '-', 0
if after ~= '' then
  if older(after, trimmed) then
    gap = 1
    after = trimmed
  end
  start = '(' .. after
end
return {gap, after, redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])}
"#;

const TAIL_LUA: &str = r#"
-- KEYS: stream. Returns the id of the newest event ever added ('0-0' for none).
if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return '0-0'
"#;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `<ms>-<seq>`: increasing within its stream.
    pub id: String,
    pub kind: String,
    /// JSON text.
    pub data: String,
}

impl Event {
    /// When it was added (Unix ms, from its id).
    pub fn at_ms(&self) -> i64 {
        parse_id(&self.id).map_or(0, |(ms, _)| ms)
    }

    /// `{"id", "type", "data", "at"}`.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + self.kind.len() + 96);
        out.push_str("{\"id\":\"");
        out.push_str(&self.id);
        out.push_str("\",\"type\":\"");
        // Types are [A-Za-z0-9._:-]: nothing to escape.
        out.push_str(&self.kind);
        out.push_str("\",\"data\":");
        out.push_str(&self.data);
        out.push_str(",\"at\":\"");
        out.push_str(&rfc3339_ms(self.at_ms()));
        out.push_str("\"}");
        out
    }
}

/// The key of a stream's trim mark: `{ns}:state:v1:evtrim:…` beside `{ns}:state:v1:events:…`
/// (a suffix could collide with another stream's key: ids may contain `:`). Namespaces have no
/// `:`, so the first `:events:` is the stream part.
fn trim_mark(stream: &str) -> String {
    stream.replacen(":events:", ":evtrim:", 1)
}

/// A stream id as `(ms, seq)`.
pub(crate) fn parse_id(id: &str) -> Option<(i64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// What a read found.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Events after the reader's id were trimmed; `resume` is where reading went on from.
    pub gap: bool,
    pub resume: Option<String>,
    pub events: Vec<Event>,
}

pub(crate) struct RedisStreams {
    add: Script,
    read: Script,
    tail: Script,
}

type Entry = (String, Vec<String>);

fn event_of((id, fields): Entry) -> Event {
    let mut kind = String::new();
    let mut data = String::from("null");
    for pair in fields.chunks(2) {
        match pair {
            [k, v] if k == "t" => kind = v.clone(),
            [k, v] if k == "d" => data = v.clone(),
            _ => {}
        }
    }
    Event { id, kind, data }
}

impl RedisStreams {
    pub(crate) fn new() -> Self {
        RedisStreams {
            add: Script::new(ADD_LUA),
            read: Script::new(&format!("{OLDER_LUA}{READ_LUA}")),
            tail: Script::new(TAIL_LUA),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn add(
        &self,
        redis: &Redis,
        key: &str,
        kind: &str,
        data: &str,
        max_len: usize,
        retention_ms: u64,
        channel: &str,
    ) -> Result<Event, RedisError> {
        let mut conn = redis.state_conn()?;
        let generation = conn.generation();
        let mut inv = self.add.prepare_invoke();
        inv.key(key)
            .key(trim_mark(key))
            .arg(kind)
            .arg(data)
            .arg(max_len)
            .arg(retention_ms)
            .arg(channel)
            .arg(MARK_TTL_MS);
        let id: String = redis
            .run(RedisOp::StreamAdd, inv.invoke_async(&mut conn))
            .await?;
        redis.replicated(&mut conn, generation).await?;
        Ok(Event {
            id,
            kind: kind.to_owned(),
            data: data.to_owned(),
        })
    }

    pub(crate) async fn read(
        &self,
        redis: &Redis,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Batch, RedisError> {
        let mut conn = redis.conn()?;
        let mut inv = self.read.prepare_invoke();
        inv.key(key)
            .key(trim_mark(key))
            .arg(after.unwrap_or(""))
            .arg(count);
        let (gap, resume, entries): (i64, String, Vec<Entry>) = redis
            .run(RedisOp::StreamRead, inv.invoke_async(&mut conn))
            .await?;
        Ok(Batch {
            gap: gap == 1,
            resume: (gap == 1).then_some(resume),
            events: entries.into_iter().map(event_of).collect(),
        })
    }

    pub(crate) async fn tail(&self, redis: &Redis, key: &str) -> Result<String, RedisError> {
        let mut conn = redis.conn()?;
        let mut inv = self.tail.prepare_invoke();
        inv.key(key);
        redis
            .run(RedisOp::StreamRead, inv.invoke_async(&mut conn))
            .await
    }

    /// Ends a stream: the end marker, then a short life (subscribers on every instance read the
    /// marker; nothing can be added after it, the session being gone).
    pub(crate) async fn end(
        &self,
        redis: &Redis,
        key: &str,
        channel: &str,
    ) -> Result<(), RedisError> {
        self.add(redis, key, END, "null", 1_000_000, 60_000, channel)
            .await
            .map(|_| ())
    }

    /// Drops a stream (a new session of a reused id starts a new stream).
    pub(crate) async fn drop_stream(&self, redis: &Redis, key: &str) -> Result<(), RedisError> {
        let mut conn = redis.conn()?;
        let mut cmd = redis::cmd("UNLINK");
        cmd.arg(key).arg(trim_mark(key));
        redis
            .run(RedisOp::StreamAdd, cmd.query_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }
}

/// Streams this instance keeps in memory at most (while Redis is away).
const MAX_RINGS: usize = 10_000;

/// One stream in memory.
#[derive(Default)]
struct Ring {
    events: VecDeque<Event>,
    last: (i64, u64),
    /// The newest id dropped so far.
    trimmed: (i64, u64),
}

/// Streams in this instance's memory, while Redis is away.
pub(crate) struct Rings {
    max_len: usize,
    retention_ms: i64,
    /// A std Mutex: never held across an await.
    rings: Mutex<HashMap<String, Ring>>,
}

impl Rings {
    pub(crate) fn new(max_len: usize, retention_ms: i64) -> Self {
        Rings {
            max_len,
            retention_ms,
            rings: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ring>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn trim(&self, ring: &mut Ring, now_ms: i64) {
        while ring.events.len() > self.max_len
            || ring
                .events
                .front()
                .is_some_and(|e| e.at_ms() < now_ms - self.retention_ms)
        {
            if let Some(e) = ring.events.pop_front() {
                ring.trimmed = parse_id(&e.id).unwrap_or(ring.trimmed);
            }
        }
    }

    pub(crate) fn add(&self, key: &str, kind: &str, data: &str, now_ms: i64) -> Event {
        let mut rings = self.lock();
        if !rings.contains_key(key) {
            // Streams nobody added to within the retention are forgotten; past MAX_RINGS, the
            // longest idle goes too.
            let cutoff = now_ms - self.retention_ms;
            rings.retain(|_, r| r.last.0 >= cutoff);
            if rings.len() >= MAX_RINGS {
                let idle = rings
                    .iter()
                    .min_by_key(|(_, r)| r.last)
                    .map(|(k, _)| k.clone());
                if let Some(k) = idle {
                    rings.remove(&k);
                }
            }
        }
        let ring = rings.entry(key.to_owned()).or_default();
        let id = if now_ms > ring.last.0 {
            (now_ms, 0)
        } else {
            (ring.last.0, ring.last.1 + 1)
        };
        ring.last = id;
        let e = Event {
            id: format!("{}-{}", id.0, id.1),
            kind: kind.to_owned(),
            data: data.to_owned(),
        };
        ring.events.push_back(e.clone());
        self.trim(ring, now_ms);
        e
    }

    pub(crate) fn read(&self, key: &str, after: Option<&str>, count: usize, now_ms: i64) -> Batch {
        let mut rings = self.lock();
        let Some(ring) = rings.get_mut(key) else {
            let gap = after.is_some_and(|a| a != "0-0");
            return Batch {
                gap,
                resume: gap.then(|| after.unwrap_or_default().to_owned()),
                events: Vec::new(),
            };
        };
        self.trim(ring, now_ms);
        let mut from = after.and_then(parse_id);
        let gap = from.is_some_and(|f| f < ring.trimmed);
        if gap {
            from = Some(ring.trimmed);
        }
        let events = ring
            .events
            .iter()
            .filter(|e| from.is_none_or(|f| parse_id(&e.id).is_some_and(|id| id > f)))
            .take(count)
            .cloned()
            .collect();
        Batch {
            gap,
            resume: gap.then(|| format!("{}-{}", ring.trimmed.0, ring.trimmed.1)),
            events,
        }
    }

    pub(crate) fn tail(&self, key: &str) -> String {
        self.lock()
            .get(key)
            .map_or_else(|| "0-0".into(), |r| format!("{}-{}", r.last.0, r.last.1))
    }

    pub(crate) fn remove(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_its_last_events_and_reports_gaps() {
        let rings = Rings::new(3, 60_000);
        let ids: Vec<String> = (0..5)
            .map(|i| rings.add("s", "t", &i.to_string(), 1_000).id)
            .collect();
        assert_eq!(ids[0], "1000-0");
        assert_eq!(ids[4], "1000-4");
        let all = rings.read("s", None, 10, 1_000);
        assert!(!all.gap);
        assert_eq!(all.events.len(), 3, "three retained");
        let resumed = rings.read("s", Some(&ids[1]), 10, 1_000);
        assert!(
            !resumed.gap,
            "1000-1 was the newest dropped: nothing after it is missing"
        );
        assert_eq!(resumed.events.len(), 3);
        let late = rings.read("s", Some(&ids[0]), 10, 1_000);
        assert!(late.gap, "1000-1 was dropped");
        assert_eq!(late.resume.as_deref(), Some("1000-1"));
        assert_eq!(late.events.len(), 3);
        let aged = rings.read("s", Some(&ids[4]), 10, 70_000);
        assert!(!aged.gap && aged.events.is_empty());
        assert_eq!(rings.tail("s"), "1000-4");
    }

    #[test]
    fn a_trim_mark_never_names_another_stream() {
        let keys = crate::redis::Keys::new("ns");
        let mark = trim_mark(&keys.session_stream("a"));
        assert_eq!(mark, "ns:state:v1:evtrim:session:a");
        assert_ne!(mark, keys.session_stream("a:trimmed"));
        assert!(!mark.contains(":events:"));
    }

    #[test]
    fn events_render_as_the_api_shows_them() {
        let e = Event {
            id: "1500-2".into(),
            kind: "transcript".into(),
            data: r#"{"text":"hi"}"#.into(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"id":"1500-2","type":"transcript","data":{"text":"hi"},"at":"1970-01-01T00:00:01.500Z"}"#
        );
    }
}
