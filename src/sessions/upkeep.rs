//! Upkeep of the session store: listing (from the Redis index, or from memory), writing back
//! what was kept in memory during an outage, and the gauges of live sessions.

use super::shared::Listed;
use super::store::{page, Outcome, Page, Sessions};
use crate::labels::{SessionOp, StateStore, WriteBack};

impl Sessions {
    /// A page of live sessions whose id starts with `prefix`, after `cursor`, in id order.
    pub async fn list(&self, prefix: &str, cursor: Option<&str>, limit: usize) -> Outcome<Page> {
        let now = self.clock.now_ms();
        let out = match self.up() {
            Some(shared) => match shared.list(prefix, cursor, limit, now).await {
                Ok((sessions, more, count)) => Ok((page(sessions, more, count), StateStore::Redis)),
                Err(e) => {
                    self.fell_back(SessionOp::List, prefix, &e);
                    Ok((
                        self.list_memory(prefix, cursor, limit, now),
                        StateStore::Memory,
                    ))
                }
            },
            None => Ok((
                self.list_memory(prefix, cursor, limit, now),
                StateStore::Memory,
            )),
        };
        let out = out.map(|(mut p, store): (Page, StateStore)| {
            p.store = store;
            p
        });
        self.record(SessionOp::List, out.as_ref().map(|p| p.store));
        out
    }

    fn list_memory(&self, prefix: &str, cursor: Option<&str>, limit: usize, now: i64) -> Page {
        let (found, count) = self.memory.list(prefix, cursor, limit + 1, now);
        let more = found.len() > limit;
        let sessions = found
            .into_iter()
            .take(limit)
            .map(|(id, d)| Listed {
                id,
                updated_ms: d.updated_ms,
                expires_ms: d.expires_ms,
            })
            .collect();
        page(sessions, more, count)
    }

    /// Writes back every session owed to Redis (stops at the first Redis failure). How many
    /// were settled.
    pub async fn write_back(&self) -> usize {
        let Some(shared) = self.up() else { return 0 };
        let mut settled = 0;
        for id in self.memory.owed() {
            let _held = self.locks.lock(&id).await;
            let now = self.clock.now_ms();
            match self.memory.entry(&id, now) {
                None => {
                    self.metrics.state.write_back(WriteBack::Expired);
                    continue;
                }
                Some(e) if !e.owed => continue,
                Some(_) => {}
            }
            if self.settle(shared, &id, now).await.is_err() {
                break;
            }
            settled += 1;
        }
        settled
    }

    /// Whether sessions written here are still owed to Redis.
    pub fn owes(&self) -> bool {
        self.shared.is_some() && self.memory.owes()
    }

    /// Sets the gauges of live sessions (Redis: through the index).
    pub async fn measure(&self) {
        let now = self.clock.now_ms();
        let m = &self.metrics.state;
        m.sessions_active(StateStore::Memory)
            .set(self.memory.len(now) as i64);
        if let Some(shared) = self.up() {
            if let Ok(n) = shared.count(now).await {
                m.sessions_active(StateStore::Redis).set(n as i64);
            }
        }
    }
}
