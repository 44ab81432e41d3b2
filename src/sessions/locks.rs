//! One async lock per session id, so that this instance runs the operations on one session one
//! at a time: a PATCH's read-merge-write meets other instances' writes only (the version check
//! in Redis decides those), not its own neighbours', and a write-back never races a write.
//! The map holds an entry only while someone holds or waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Slot = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(crate) struct Locks {
    /// A std Mutex: held for a lookup or an insert, never across an await.
    map: Mutex<HashMap<String, Slot>>,
}

/// Holds the lock of one id; on drop, removes the map's entry if nobody else holds or waits
/// for it (it cleans up only its own entry, as `FlightDone` does).
pub(crate) struct Held<'a> {
    locks: &'a Locks,
    id: String,
    slot: Slot,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Locks {
    pub(crate) async fn lock(&self, id: &str) -> Held<'_> {
        let slot = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_owned()).or_default().clone()
        };
        let guard = slot.clone().lock_owned().await;
        Held {
            locks: self,
            id: id.to_owned(),
            slot,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: nobody waits.
        if Arc::strong_count(&self.slot) == 2
            && map
                .get(&self.id)
                .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            map.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_holder_per_id_and_no_entry_left_behind() {
        let locks = Arc::new(Locks::default());
        let a = locks.lock("a").await;
        let other = locks.lock("b").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _held = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second holder of `a` waits");
        drop(other);
        assert_eq!(locks.len(), 1, "`b` is gone, `a` is held");
        drop(a);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }
}
