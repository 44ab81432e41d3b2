//! Sessions in this instance's memory: all of them while Redis is off (`REDIS_ENABLED=false`),
//! and, while Redis is down or skipped by the breaker, those written meanwhile — each marked
//! `owed` until it has been written back to Redis. Bounded: past `max` live sessions a new one
//! is refused rather than evicting one whose write was acknowledged.

use std::collections::HashMap;
use std::sync::Mutex;

use super::doc::Doc;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) doc: Doc,
    /// Written here while Redis was away: owed to Redis.
    pub(crate) owed: bool,
    /// Deleted here while Redis was away: the delete is owed (the doc keeps its time).
    pub(crate) tombstone: bool,
}

pub(crate) struct Memory {
    max: usize,
    /// A std Mutex: held for a map operation, never across an await.
    map: Mutex<HashMap<String, Entry>>,
}

/// The store is full of live sessions.
#[derive(Debug)]
pub(crate) struct Full;

impl Memory {
    pub(crate) fn new(max: usize) -> Self {
        Memory {
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live session `id` (an expired one is dropped on the way; a deleted one is absent).
    pub(crate) fn get(&self, id: &str, now_ms: i64) -> Option<Entry> {
        self.entry(id, now_ms).filter(|e| !e.tombstone)
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
            map.retain(|_, e| !e.doc.expired(now_ms));
            if map.len() >= self.max {
                return Err(Full);
            }
        }
        map.insert(id.to_owned(), entry);
        Ok(())
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Entry> {
        self.map().remove(id)
    }

    /// Removes `id` if it still holds exactly `doc` (a write-back must not drop a newer write).
    pub(crate) fn remove_if(&self, id: &str, doc: &Doc) {
        let mut map = self.map();
        if map.get(id).is_some_and(|e| &e.doc == doc) {
            map.remove(id);
        }
    }

    /// The ids of every session owed to Redis.
    pub(crate) fn owed(&self) -> Vec<String> {
        self.map()
            .iter()
            .filter(|(_, e)| e.owed)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether any session is owed to Redis.
    pub(crate) fn owes(&self) -> bool {
        self.map().values().any(|e| e.owed)
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
        Entry {
            doc: doc(expires_ms),
            owed,
            tombstone: false,
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
    }
}
