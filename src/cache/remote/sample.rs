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
        let prefix = self.keys.value("");
        let mut conn = self.redis.control().await?;
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(100);
        let (next, keys): (u64, Vec<String>) =
            self.run(RedisOp::Scan, cmd.query_async(&mut conn)).await?;
        let keys = keys
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter_map(CacheKey::parse)
            .collect();
        Ok((next, keys))
    }
}
