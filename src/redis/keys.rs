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

use crate::labels::Kind;

/// The key layout of one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    incarnation: String,
    server: String,
    clock: String,
    state: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Keys {
            prefix: format!("{namespace}:v1:"),
            incarnation: format!("{namespace}:v1incarnation"),
            server: format!("{namespace}:v1server"),
            clock: format!("{namespace}:v1clock"),
            state: format!("{namespace}:state:v1:"),
        }
    }

    /// `{namespace}:v1:`, the start of every cache key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The namespace's incarnation (see `cache::remote`).
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }
    /// The server and eviction count the incarnation was last checked against.
    pub fn server(&self) -> &str {
        &self.server
    }
    /// Where fences take their numbers from.
    pub fn clock(&self) -> &str {
        &self.clock
    }
    /// `{prefix}{part}{rest}`, built to its length (every L2 read builds six keys; `format!`
    /// was a twentieth of an L2 hit).
    fn join(&self, part: &str, rest: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + part.len() + rest.len());
        key.push_str(&self.prefix);
        key.push_str(part);
        key.push_str(rest);
        key
    }
    pub fn value(&self, key: &str) -> String {
        self.join("", key)
    }
    pub fn fence(&self, key: &str) -> String {
        self.join("fence:", key)
    }
    pub fn kind_fence(&self, kind: Kind) -> String {
        self.join("kindfence:", kind.as_str())
    }
    pub fn tag_fence(&self, tag: &str) -> String {
        self.join("tagfence:", tag)
    }
    pub fn tag_members(&self, tag: &str) -> String {
        self.join("tag:", tag)
    }
    pub fn lease(&self, key: &str) -> String {
        self.join("lease:", key)
    }
    pub fn marker(&self, txid: u64) -> String {
        format!("{}applied:{txid}", self.prefix)
    }
    pub fn group_marker(&self, txid: u64, group: &str) -> String {
        format!("{}applied:{txid}:{group}", self.prefix)
    }
    /// SCAN pattern of every key of a kind's values.
    pub fn kind_pattern(&self, key_prefix: &str) -> String {
        format!("{}{key_prefix}*", self.prefix)
    }
    /// SCAN pattern of every key of the namespace.
    pub fn all_pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
    /// The key text of a full key of this namespace (`None` for another namespace's).
    pub fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.prefix.as_str())
    }
    /// `{namespace}:state:v1:`, the start of every key of the shared call state.
    pub fn state_prefix(&self) -> &str {
        &self.state
    }
    fn state_key(&self, part: &str, rest: &str) -> String {
        let mut key = String::with_capacity(self.state.len() + part.len() + rest.len());
        key.push_str(&self.state);
        key.push_str(part);
        key.push_str(rest);
        key
    }
    /// The claimed answer of a call start (`<platform>:<identity>`), for the retry window.
    pub fn call_start(&self, key: &str) -> String {
        self.state_key("callstart:", key)
    }
    pub fn session(&self, id: &str) -> String {
        self.state_key("session:", id)
    }
    /// The session index by id (a sorted set of score 0, read by lexical range).
    pub fn session_ids(&self) -> String {
        self.state_key("sessions:ids", "")
    }
    /// The session index by expiry (score: expiry in ms).
    pub fn session_expiries(&self) -> String {
        self.state_key("sessions:exp", "")
    }
    /// A session's event stream.
    pub fn session_stream(&self, id: &str) -> String {
        self.state_key("events:session:", id)
    }
    /// A topic's event stream.
    pub fn topic_stream(&self, name: &str) -> String {
        self.state_key("events:topic:", name)
    }
    /// The channel on which every instance hears that a stream moved.
    pub fn events_channel(&self) -> String {
        self.state_key("events", "")
    }
    /// A rate limit's state for one key.
    pub fn rate_limit(&self, limit: &str, key: &str) -> String {
        let mut k = self.state_key("rl:", limit);
        k.push(':');
        k.push_str(key);
        k
    }
    /// The peer bus's channel.
    pub fn bus_channel(&self) -> String {
        format!("{}bus", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout() {
        let k = Keys::new("ns");
        assert_eq!(k.value("lead:id:1"), "ns:v1:lead:id:1");
        assert_eq!(k.fence("lead:id:1"), "ns:v1:fence:lead:id:1");
        assert_eq!(k.kind_fence(Kind::Context), "ns:v1:kindfence:context");
        assert_eq!(k.tag_fence("org:2"), "ns:v1:tagfence:org:2");
        assert_eq!(k.tag_members("org:2"), "ns:v1:tag:org:2");
        assert_eq!(k.lease("lead:id:1"), "ns:v1:lease:lead:id:1");
        assert_eq!(k.group_marker(7, "1-3"), "ns:v1:applied:7:1-3");
        assert_eq!(k.bus_channel(), "ns:v1:bus");
        // Beside the prefix: a SCAN of `ns:v1:*` does not see them.
        for outside in [k.incarnation(), k.server(), k.clock()] {
            assert!(!outside.starts_with(k.prefix()), "{outside}");
        }
        assert_eq!(k.session("call:1"), "ns:state:v1:session:call:1");
        assert_eq!(k.session_stream("a"), "ns:state:v1:events:session:a");
        assert_eq!(k.topic_stream("t"), "ns:state:v1:events:topic:t");
        assert_eq!(k.rate_limit("voice", "u:1"), "ns:state:v1:rl:voice:u:1");
        // Shared state is never under the cache's prefix: a flush or reset cannot drop it.
        assert!(!k.session("x").starts_with(k.prefix()));
        assert!(!k.session_ids().starts_with(k.prefix()));
        assert_eq!(k.strip("ns:v1:context:9"), Some("context:9"));
        assert_eq!(k.strip("other:v1:context:9"), None);
    }
}
