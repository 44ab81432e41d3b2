//! Sessions in this instance's memory: all of them while Redis is off (`REDIS_ENABLED=false`),
//! and, while Redis is down or skipped by the breaker, those written meanwhile — each with the
//! operations it owes Redis, replayed there in order when Redis answers again. Bounded: past
//! `max` live sessions a new one is refused rather than evicting one whose write was
//! acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::doc::Doc;

/// Owed operations past this many are folded into one `Put` of the session as it is.
const MAX_OWED: usize = 32;

/// An operation acknowledged from memory, owed to Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Op {
    /// When it was made (ms): a write in Redis later than this one wins over a put or delete.
    pub(crate) at_ms: i64,
    /// The expiry it gave the session.
    pub(crate) expires_ms: i64,
    pub(crate) kind: OpKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OpKind {
    /// The whole data, as JSON text.
    Put(String),
    /// A merge patch: merged into whatever Redis holds, so it never drops another's fields.
    Patch(Map<String, Value>),
    Delete,
    Touch,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) doc: Doc,
    /// Deleted here while Redis was away (the doc keeps its version and time).
    pub(crate) tombstone: bool,
    /// What it owes Redis, oldest first (empty: owes nothing).
    pub(crate) owed: Vec<Op>,
}

impl Entry {
    /// Adds an owed operation, folding the log into one put (or delete) past [`MAX_OWED`].
    pub(crate) fn owe(&mut self, op: Op) {
        self.owed.push(op);
        if self.owed.len() > MAX_OWED {
            let at_ms = self.owed.last().map_or(self.doc.updated_ms, |o| o.at_ms);
            let kind = if self.tombstone {
                OpKind::Delete
            } else {
                OpKind::Put(self.doc.data.clone())
            };
            self.owed = vec![Op {
                at_ms,
                expires_ms: self.doc.expires_ms,
                kind,
            }];
        }
    }
}

pub(crate) struct Memory {
    max: usize,
    /// A std Mutex: held for a map operation, never across an await.
    map: Mutex<HashMap<String, Entry>>,
    /// No entry expires before this (Unix ms; written under the map's lock): a full store is
    /// swept for expired entries only once one can have expired, not on every refused put.
    earliest_expiry_ms: AtomicI64,
}

/// The store is full of live sessions.
#[derive(Debug)]
pub(crate) struct Full;

impl Memory {
    pub(crate) fn new(max: usize) -> Self {
        Memory {
            max,
            map: Mutex::new(HashMap::new()),
            earliest_expiry_ms: AtomicI64::new(i64::MAX),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session `id` (an expired one is dropped on the way; a deleted one is absent).
    pub(crate) fn get(&self, id: &str, now_ms: i64) -> Option<Entry> {
        self.entry(id, now_ms).filter(|e| !e.tombstone)
    }

    /// Whether anything is held for `id` (live, expired or a tombstone).
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.map().contains_key(id)
    }

    /// The entry of `id`, a tombstone included (an expired one is dropped on the way).
    pub(crate) fn entry(&self, id: &str, now_ms: i64) -> Option<Entry> {
        let mut map = self.map();
        match map.get(id) {
            Some(e) if e.doc.expired(now_ms) => {
                map.remove(id);
                None
            }
            other => other.cloned(),
        }
    }

    /// Stores `doc` under `id`; refused when `id` is new and the store holds `max` live ones.
    pub(crate) fn put(&self, id: &str, entry: Entry, now_ms: i64) -> Result<(), Full> {
        let mut map = self.map();
        if !map.contains_key(id) && map.len() >= self.max {
            if now_ms < self.earliest_expiry_ms.load(Ordering::Relaxed) {
                return Err(Full);
            }
            map.retain(|_, e| !e.doc.expired(now_ms));
            let earliest = map.values().map(|e| e.doc.expires_ms).min();
            self.earliest_expiry_ms
                .store(earliest.unwrap_or(i64::MAX), Ordering::Relaxed);
            if map.len() >= self.max {
                return Err(Full);
            }
        }
        self.earliest_expiry_ms
            .fetch_min(entry.doc.expires_ms, Ordering::Relaxed);
        map.insert(id.to_owned(), entry);
        Ok(())
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Entry> {
        self.map().remove(id)
    }

    /// Drops the first `done` owed operations of `id` (they reached Redis).
    pub(crate) fn settled(&self, id: &str, done: usize) {
        let mut map = self.map();
        if let Some(e) = map.get_mut(id) {
            e.owed.drain(..done.min(e.owed.len()));
        }
    }

    /// The ids of every session that owes Redis something.
    pub(crate) fn owed(&self) -> Vec<String> {
        self.map()
            .iter()
            .filter(|(_, e)| !e.owed.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether any session owes Redis something.
    pub(crate) fn owes(&self) -> bool {
        self.map().values().any(|e| !e.owed.is_empty())
    }

    /// Live sessions whose id starts with `prefix` and sorts after `after`, in id order, at
    /// most `limit`; and how many match the prefix in all.
    pub(crate) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: i64,
    ) -> (Vec<(String, Doc)>, usize) {
        let mut map = self.map();
        map.retain(|_, e| !e.doc.expired(now_ms));
        let mut matching: Vec<(&String, &Entry)> = map
            .iter()
            .filter(|(id, e)| id.starts_with(prefix) && !e.tombstone)
            .collect();
        let count = matching.len();
        matching.sort_by(|a, b| a.0.cmp(b.0));
        let page = matching
            .into_iter()
            .filter(|(id, _)| after.is_none_or(|a| id.as_str() > a))
            .take(limit)
            .map(|(id, e)| (id.clone(), e.doc.clone()))
            .collect();
        (page, count)
    }

    /// Live sessions held.
    pub(crate) fn len(&self, now_ms: i64) -> usize {
        let mut map = self.map();
        map.retain(|_, e| !e.doc.expired(now_ms));
        map.values().filter(|e| !e.tombstone).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(expires_ms: i64) -> Doc {
        Doc {
            version: 1,
            created_ms: 0,
            updated_ms: 0,
            expires_ms,
            data: "{}".into(),
        }
    }

    fn live(expires_ms: i64, owed: bool) -> Entry {
        let op = Op {
            at_ms: 0,
            expires_ms,
            kind: OpKind::Touch,
        };
        Entry {
            doc: doc(expires_ms),
            tombstone: false,
            owed: if owed { vec![op] } else { Vec::new() },
        }
    }

    #[test]
    fn bounded_without_evicting_a_live_session() {
        let m = Memory::new(2);
        m.put("a", live(100, false), 0).unwrap();
        m.put("b", live(50, false), 0).unwrap();
        assert!(
            m.put("c", live(100, false), 10).is_err(),
            "full of live ones"
        );
        m.put("a", live(200, false), 10)
            .expect("replacing one is fine");
        assert!(
            m.put("c", live(100, false), 49).is_err(),
            "`b` lives until 50"
        );
        m.put("c", live(100, false), 60).expect("`b` expired at 50");
        assert!(m.get("b", 60).is_none());
        assert_eq!(m.len(60), 2);
    }

    #[test]
    fn lists_by_prefix_in_pages() {
        let m = Memory::new(10);
        for id in ["call:2", "call:1", "web:1", "call:3"] {
            m.put(id, live(100, id != "web:1"), 0).unwrap();
        }
        let (page, count) = m.list("call:", None, 2, 0);
        assert_eq!(count, 3);
        let ids: Vec<_> = page.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["call:1", "call:2"]);
        let (page, _) = m.list("call:", Some("call:2"), 2, 0);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, "call:3");
        let mut owed = m.owed();
        owed.sort();
        assert_eq!(owed, ["call:1", "call:2", "call:3"]);
        m.settled("call:1", 1);
        assert_eq!(m.owed().len(), 2);
    }

    #[test]
    fn a_long_log_folds_into_one_put_of_the_session_as_it_is() {
        let mut e = live(100, false);
        for at_ms in 0..=MAX_OWED as i64 {
            e.owe(Op {
                at_ms,
                expires_ms: 100,
                kind: OpKind::Patch(Map::new()),
            });
        }
        assert_eq!(
            e.owed,
            [Op {
                at_ms: MAX_OWED as i64,
                expires_ms: 100,
                kind: OpKind::Put("{}".into())
            }]
        );
    }
}
