//! What the consistency auditor reads of Redis: a walk over the namespace's cached values, and
//! the entry a key holds, leaving leases and fences alone.

use super::Remote;
use crate::cache::{CacheError, CacheKey, Entry};
use crate::labels::RedisOp;

impl Remote {
    /// The entry Redis holds for `key` now (of the current incarnation), leaving leases alone:
    /// for the consistency auditor.
    pub async fn entry(&self, key: &CacheKey) -> Result<Option<Entry>, CacheError> {
        let read = self.read(key, &[], None).await?;
        Ok(read.value.and_then(Entry::decode))
    }

    /// One step of a walk over the namespace's cached values (SCAN from `cursor`, 0 to begin):
    /// the keys it met, and where the next step starts (0: the walk is over).
    pub async fn scan_values(&self, cursor: u64) -> Result<(u64, Vec<CacheKey>), CacheError> {
        let pattern = self.keys.all_pattern();
        let (next, keys) = self
            .redis
            .run(RedisOp::Scan, async {
                Ok(self.redis.scan_step(&pattern, cursor, 100).await)
            })
            .await??;
        let keys = keys
            .iter()
            .filter_map(|k| self.keys.strip(k))
            .filter_map(CacheKey::parse)
            .collect();
        Ok((next, keys))
    }
}
