//! Where everything lives in Redis. Every key starts with the namespace and schema version; the
//! cache's keys are `{namespace}:v1:{...}` (a SCAN of the namespace sees only them), and three
//! namespace-wide keys sit beside that prefix so a SCAN-and-delete never touches them.
//!
//! | key | what |
//! |---|---|
//! | `{ns}:v1:{key}` | a cached value, prefixed with the incarnation it was filled under |
//! | `{ns}:v1:fence:{key}` | the key's fence (bumped on invalidation) |
//! | `{ns}:v1:kindfence:{kind}` | a whole kind's fence (admin) |
//! | `{ns}:v1:tagfence:{tag}`, `{ns}:v1:tag:{tag}` | a tag's fence, and the values filled under it |
//! | `{ns}:v1:lease:{key}` | the key's fill lease |
//! | `{ns}:v1:applied:{txid}[:{group}]` | a transaction's invalidation has landed |
//! | `{ns}:v1incarnation`, `{ns}:v1server`, `{ns}:v1clock` | the namespace's incarnation, the server it was checked on, the fence clock |
//! | `{ns}:v1:bus` | the peer bus channel |
//! | `{ns}:state:v1:session:{id}` | a session (hash: version, times, data) |
//! | `{ns}:state:v1:sessions:ids`, `…:sessions:exp` | the session index: ids by name, and by expiry |
//! | `{ns}:state:v1:events:session:{id}`, `…:events:topic:{name}` | event streams |
//! | `{ns}:state:v1:evtrim:session:{id}`, `…:evtrim:topic:{name}` | a stream's trim mark (newest id trimmed) |
//! | `{ns}:state:v1:events` | the channel that tells every instance a stream moved |
//! | `{ns}:state:v1:rl:{limit}:{key}` | a rate limit's theoretical arrival time |
//!
//! Shared call state lives under `{ns}:state:v1:`, beside the cache's prefix and not under it:
//! a cache flush or a namespace reset (SCAN of `{ns}:v1:*`) must never drop a session.
//!
//! Keys are built from key text (`lead:id:…`), kind labels and tag names, so this module does
//! not depend on the cache's types.
//!
//! **On a Redis Cluster** a Lua script may only touch keys of one hash slot, and the cache's
//! scripts touch a value together with its lease, its key fence, the kind and tag fences, the
//! incarnation and the fence clock. So in cluster mode the namespace is cut into [`SHARDS`]
//! *shards*, each a hash tag `{sI.J}` placed right after the prefix (`{ns}:v1:{s3.41}:lead:id:1`,
//! `{ns}:v1incarnation{s3.41}`, `{ns}:state:v1:{s3.41}:session:{id}`): a key's shard is a hash
//! of its text (a session's, of its id; a stream's, of its name), and every key a script touches
//! is in the script's shard. What is namespace-wide on one node (the incarnation, the server
//! record, the fence clock, the kind and tag fences, the markers, the session index) exists once
//! per shard; see `cache::remote::shards` for why replicated fences stay exact. The shard tags
//! are chosen so the shards' slots sit at the centres of equal slices of the 16,384 slots: a
//! cluster whose masters hold equal contiguous ranges (what `redis-cli --cluster create` makes)
//! gets the same number of shards on each master, for 2, 3, 4 or 6 masters. On one server (and
//! under Sentinel) there is one shard and no tag: the layout is the one in the table.

use crate::labels::Kind;

/// Shards of a namespace on a Redis Cluster (one on a single server).
pub const SHARDS: usize = 12;

/// The key layout of one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// Per shard: `{tag}:`, or one empty string when not sharded.
    tags: Vec<String>,
    namespace: String,
    state: String,
}

impl Keys {
    /// The layout on one server: one shard, no hash tags.
    pub fn new(namespace: &str) -> Self {
        Keys {
            prefix: format!("{namespace}:v1:"),
            tags: vec![String::new()],
            namespace: namespace.to_owned(),
            state: format!("{namespace}:state:v1:"),
        }
    }

    /// The layout on a Redis Cluster: [`SHARDS`] shards, each under its own hash tag.
    pub fn sharded(namespace: &str) -> Self {
        Keys {
            tags: (0..SHARDS)
                .map(|i| format!("{{{}}}:", shard_tag(i, SHARDS)))
                .collect(),
            ..Keys::new(namespace)
        }
    }

    /// How many shards (1 unless on a Cluster).
    pub fn shards(&self) -> usize {
        self.tags.len()
    }

    /// True when keys carry hash tags (cluster mode).
    pub fn is_sharded(&self) -> bool {
        self.tags.len() > 1
    }

    /// The shard a key text (or session id, or stream name) lives in.
    pub fn shard_of(&self, text: &str) -> usize {
        if self.tags.len() == 1 {
            return 0;
        }
        (fnv1a(text.as_bytes()) % self.tags.len() as u64) as usize
    }

    /// `{namespace}:v1:`, the start of every cache key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{namespace}:v1{what}` plus the shard's tag (beside the prefix: a SCAN of it misses them).
    fn beside(&self, what: &str, shard: usize) -> String {
        let tag = self.tags[shard].trim_end_matches(':');
        format!("{}:v1{what}{tag}", self.namespace)
    }
    /// The namespace's incarnation in a shard (see `cache::remote`).
    pub fn incarnation(&self, shard: usize) -> String {
        self.beside("incarnation", shard)
    }
    /// The server and eviction count a shard's incarnation was last checked against.
    pub fn server(&self, shard: usize) -> String {
        self.beside("server", shard)
    }
    /// Where a shard's fences take their numbers from.
    pub fn clock(&self, shard: usize) -> String {
        self.beside("clock", shard)
    }
    /// `{prefix}{shard tag}{part}{rest}`, built to its length (every L2 read builds six keys;
    /// `format!` was a twentieth of an L2 hit).
    fn join(&self, shard: usize, part: &str, rest: &str) -> String {
        let tag = &self.tags[shard];
        let mut key =
            String::with_capacity(self.prefix.len() + tag.len() + part.len() + rest.len());
        key.push_str(&self.prefix);
        key.push_str(tag);
        key.push_str(part);
        key.push_str(rest);
        key
    }
    pub fn value(&self, key: &str) -> String {
        self.join(self.shard_of(key), "", key)
    }
    pub fn fence(&self, key: &str) -> String {
        self.join(self.shard_of(key), "fence:", key)
    }
    pub fn lease(&self, key: &str) -> String {
        self.join(self.shard_of(key), "lease:", key)
    }
    pub fn kind_fence(&self, kind: Kind, shard: usize) -> String {
        self.join(shard, "kindfence:", kind.as_str())
    }
    pub fn tag_fence(&self, tag: &str, shard: usize) -> String {
        self.join(shard, "tagfence:", tag)
    }
    pub fn tag_members(&self, tag: &str, shard: usize) -> String {
        self.join(shard, "tag:", tag)
    }
    pub fn marker(&self, txid: u64, shard: usize) -> String {
        self.join(shard, "applied:", &txid.to_string())
    }
    pub fn group_marker(&self, txid: u64, group: &str, shard: usize) -> String {
        self.join(shard, "applied:", &format!("{txid}:{group}"))
    }
    /// SCAN pattern of every key of a kind's values (in every shard).
    pub fn kind_pattern(&self, key_prefix: &str) -> String {
        if self.is_sharded() {
            format!("{}{{s*}}:{key_prefix}*", self.prefix)
        } else {
            format!("{}{key_prefix}*", self.prefix)
        }
    }
    /// SCAN pattern of every key of the namespace.
    pub fn all_pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
    /// The key text of a full key of this namespace (`None` for another namespace's).
    pub fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        let rest = full.strip_prefix(self.prefix.as_str())?;
        if !self.is_sharded() {
            return Some(rest);
        }
        let (tag, text) = rest.strip_prefix('{')?.split_once("}:")?;
        tag.starts_with('s').then_some(text)
    }
    /// `{namespace}:state:v1:`, the start of every key of the shared call state.
    pub fn state_prefix(&self) -> &str {
        &self.state
    }
    fn state_key(&self, shard: usize, part: &str, rest: &str) -> String {
        let tag = &self.tags[shard];
        let mut key = String::with_capacity(self.state.len() + tag.len() + part.len() + rest.len());
        key.push_str(&self.state);
        key.push_str(tag);
        key.push_str(part);
        key.push_str(rest);
        key
    }
    /// The claimed answer of a call start (`<platform>:<identity>`), for the retry window.
    pub fn call_start(&self, key: &str) -> String {
        format!("{}callstart:{key}", self.state)
    }
    pub fn session(&self, id: &str) -> String {
        self.state_key(self.shard_of(id), "session:", id)
    }
    /// A shard's session index by id (a sorted set of score 0, read by lexical range).
    pub fn session_ids(&self, shard: usize) -> String {
        self.state_key(shard, "sessions:ids", "")
    }
    /// A shard's session index by expiry (score: expiry in ms).
    pub fn session_expiries(&self, shard: usize) -> String {
        self.state_key(shard, "sessions:exp", "")
    }
    /// A session's event stream.
    pub fn session_stream(&self, id: &str) -> String {
        self.state_key(self.shard_of(id), "events:session:", id)
    }
    /// A topic's event stream.
    pub fn topic_stream(&self, name: &str) -> String {
        self.state_key(self.shard_of(name), "events:topic:", name)
    }
    /// The channel on which every instance hears that a stream moved.
    pub fn events_channel(&self) -> String {
        format!("{}events", self.state)
    }
    /// A rate limit's state for one key (one key per script: no shard needed).
    pub fn rate_limit(&self, limit: &str, key: &str) -> String {
        let mut k = String::with_capacity(self.state.len() + 4 + limit.len() + key.len());
        k.push_str(&self.state);
        k.push_str("rl:");
        k.push_str(limit);
        k.push(':');
        k.push_str(key);
        k
    }
    /// The peer bus's channel.
    pub fn bus_channel(&self) -> String {
        format!("{}bus", self.prefix)
    }
}

/// FNV-1a: stable across instances and versions (a key's shard must be the same everywhere).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of its hash tag, or of the whole key).
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % 16384
}

/// The hash tag of shard `i` of `n`: `s{i}.{j}` with the first `j` whose slot falls in the
/// middle half of the `i`-th of `n` equal slices of the slot space.
fn shard_tag(i: usize, n: usize) -> String {
    let width = 16384 / n as u32;
    let lo = i as u32 * width + width / 4;
    let hi = lo + width / 2;
    (0u32..)
        .map(|j| format!("s{i}.{j}"))
        .find(|t| (lo..hi).contains(&u32::from(slot(t))))
        .expect("some suffix lands in any slice")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout() {
        let k = Keys::new("ns");
        assert_eq!(k.value("lead:id:1"), "ns:v1:lead:id:1");
        assert_eq!(k.fence("lead:id:1"), "ns:v1:fence:lead:id:1");
        assert_eq!(k.kind_fence(Kind::Context, 0), "ns:v1:kindfence:context");
        assert_eq!(k.tag_fence("org:2", 0), "ns:v1:tagfence:org:2");
        assert_eq!(k.tag_members("org:2", 0), "ns:v1:tag:org:2");
        assert_eq!(k.lease("lead:id:1"), "ns:v1:lease:lead:id:1");
        assert_eq!(k.group_marker(7, "1-3", 0), "ns:v1:applied:7:1-3");
        assert_eq!(k.marker(7, 0), "ns:v1:applied:7");
        assert_eq!(k.bus_channel(), "ns:v1:bus");
        assert_eq!(k.incarnation(0), "ns:v1incarnation");
        assert_eq!(k.kind_pattern("lead:"), "ns:v1:lead:*");
        // Beside the prefix: a SCAN of `ns:v1:*` does not see them.
        for outside in [k.incarnation(0), k.server(0), k.clock(0)] {
            assert!(!outside.starts_with(k.prefix()), "{outside}");
        }
        assert_eq!(k.session("call:1"), "ns:state:v1:session:call:1");
        assert_eq!(k.session_ids(0), "ns:state:v1:sessions:ids");
        assert_eq!(k.session_stream("a"), "ns:state:v1:events:session:a");
        assert_eq!(k.topic_stream("t"), "ns:state:v1:events:topic:t");
        assert_eq!(k.events_channel(), "ns:state:v1:events");
        assert_eq!(k.rate_limit("voice", "u:1"), "ns:state:v1:rl:voice:u:1");
        // Shared state is never under the cache's prefix: a flush or reset cannot drop it.
        assert!(!k.session("x").starts_with(k.prefix()));
        assert!(!k.session_ids(0).starts_with(k.prefix()));
        assert_eq!(k.strip("ns:v1:context:9"), Some("context:9"));
        assert_eq!(k.strip("other:v1:context:9"), None);
    }

    #[test]
    fn the_slot_is_redis_s() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("a{}b"), slot("a{}b"));
        assert_eq!(slot("123456789"), 12739);
    }

    #[test]
    fn on_a_cluster_every_script_s_keys_share_a_slot() {
        let k = Keys::sharded("ns");
        assert_eq!(k.shards(), SHARDS);
        for key in ["lead:id:1", "context:9", "org:id:3", "x{y}z"] {
            let s = k.shard_of(key);
            let one = slot(&k.value(key));
            for other in [
                k.fence(key),
                k.lease(key),
                k.incarnation(s),
                k.server(s),
                k.clock(s),
                k.kind_fence(Kind::Context, s),
                k.tag_fence("org:2", s),
                k.tag_members("org:2", s),
                k.marker(7, s),
                k.group_marker(7, "g", s),
            ] {
                assert_eq!(slot(&other), one, "{other} vs {}", k.value(key));
            }
            assert_eq!(k.strip(&k.value(key)), Some(key));
            assert!(!k.incarnation(s).starts_with(k.prefix()));
        }
        for id in ["call:1", "a{b}", ""] {
            let s = k.shard_of(id);
            let one = slot(&k.session(id));
            assert_eq!(slot(&k.session_ids(s)), one);
            assert_eq!(slot(&k.session_expiries(s)), one);
            let stream = k.session_stream(id);
            assert_eq!(
                slot(&stream.replacen(":events:", ":evtrim:", 1)),
                slot(&stream)
            );
        }
        assert_eq!(
            k.strip("ns:v1:{s1.5}:fence:lead:id:1"),
            Some("fence:lead:id:1")
        );
        assert_eq!(k.strip("ns:v1:lead:id:1"), None);
    }

    #[test]
    fn shards_spread_evenly_over_equal_slot_ranges() {
        let k = Keys::sharded("ns");
        for masters in [2u32, 3, 4, 6] {
            let mut per = vec![0; masters as usize];
            for s in 0..k.shards() {
                let slot = u32::from(slot(&k.incarnation(s)));
                per[(slot * masters / 16384) as usize] += 1;
            }
            assert!(
                per.iter().all(|n| *n == SHARDS / masters as usize),
                "{per:?}"
            );
        }
        // And keys spread evenly over the shards.
        let mut per = [0u32; SHARDS];
        for i in 0..12_000 {
            per[k.shard_of(&format!("lead:id:{i}"))] += 1;
        }
        assert!(per.iter().all(|n| (850..1150).contains(n)), "{per:?}");
    }
}
