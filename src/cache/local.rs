//! L1: process memory (moka), bounded by bytes, with per-entry TTLs and generation fencing.
//!
//! Fencing without locks: a table of generation counters ("stripes") indexed by key hash and tag
//! hash. A fill records the generations it saw *before* it read L2 or Postgres; invalidating a
//! key or tag bumps its stripe; a hit whose recorded generations are no longer current is a miss.
//! So a load that raced a write can store what it read, but nobody will ever be served it.
//! Two keys sharing a stripe only cost each other a spurious miss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use super::entry::{now_ms, Entry};
use super::keys::{CacheKey, Kind, Tag};

const STRIPES: usize = 1 << 16;

/// Memory an L1 entry costs beyond its key text and its [`Entry`]: moka's node, deque and timer
/// records, the key and value allocations and the allocator's rounding. Measured with the memory
/// step of `benches/load.rs`: going from 100,000 to 1,000,000 entries added about 1,000 bytes of
/// RSS per entry while key and entry weighed about 450. Counting it makes `l1_max_bytes` bound
/// what L1 really holds.
const ENTRY_OVERHEAD: usize = 550;

/// The generations a fill observed before loading: its key, its kind, its tags, and the flush
/// epoch. Kept inline (no allocation) for up to two tags, which is every kind's case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    epoch: u64,
    slots: Slots,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slots {
    Inline([(u32, u64); 4], u8),
    Heap(Vec<(u32, u64)>),
}

impl Slots {
    fn as_slice(&self) -> &[(u32, u64)] {
        match self {
            Slots::Inline(a, n) => &a[..usize::from(*n)],
            Slots::Heap(v) => v,
        }
    }
}

/// A value held in L1: fresh until `fresh_until_ms`, then kept `stale` longer for fail-safe.
#[derive(Debug)]
pub(crate) struct L1Value {
    pub(crate) entry: Arc<Entry>,
    fence: Fence,
    stored_at_ms: u64,
    fresh_until_ms: u64,
    /// Fresh time plus stale time: how long moka keeps it.
    life: Duration,
}

/// An L1 entry found for a key (never one an invalidation has dropped).
#[derive(Debug, Clone)]
pub struct L1Hit {
    pub entry: Arc<Entry>,
    /// When it was stored in L1 and until when L1 may serve it as fresh (Unix ms).
    pub stored_at_ms: u64,
    pub fresh_until_ms: u64,
}

impl L1Hit {
    /// Still within its L1 lifetime at `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until_ms
    }

    /// Within the last `fraction` of its fresh lifetime: time to refresh it ahead.
    pub fn refresh_due(&self, now: u64, fraction: f64) -> bool {
        let life = self.fresh_until_ms.saturating_sub(self.stored_at_ms) as f64;
        fraction > 0.0 && (self.fresh_until_ms.saturating_sub(now) as f64) < life * fraction
    }
}

struct PerEntryTtl;

impl moka::Expiry<Box<str>, Arc<L1Value>> for PerEntryTtl {
    fn expire_after_create(&self, _: &Box<str>, v: &Arc<L1Value>, _: Instant) -> Option<Duration> {
        Some(v.life)
    }
    fn expire_after_update(
        &self,
        _: &Box<str>,
        v: &Arc<L1Value>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.life)
    }
}

/// Hashes L1's keys: foldhash, seeded per process, at a fraction of SipHash's cost for a
/// 40-byte key (SipHash was a fiftieth of an L1 hit); keys are built from parsed ids and numbers.
type KeyHasher = foldhash::quality::RandomState;

/// How far into L1 a sample may reach (a walk of the entries: bounded, so an audit stays cheap).
const SAMPLE_SPAN: usize = 10_000;

/// The in-process tier.
pub struct Local {
    cache: Option<Cache<Box<str>, Arc<L1Value>, KeyHasher>>,
    stripes: Box<[AtomicU64]>,
    epoch: AtomicU64,
}

impl Local {
    /// An L1 holding at most `max_bytes` (weighed by body size); `enabled = false` keeps only
    /// the fencing table so the rest of the code path is the same.
    pub fn new(enabled: bool, max_bytes: u64) -> Self {
        let cache = enabled.then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                // moka hands the key as `&K`, so the signature has to name `&Box<str>`.
                .weigher(
                    #[allow(clippy::borrowed_box)]
                    |k: &Box<str>, v: &Arc<L1Value>| {
                        (k.len() + v.entry.weight() + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32
                    },
                )
                .expire_after(PerEntryTtl)
                .build_with_hasher(KeyHasher::default())
        });
        Local {
            cache,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    fn stripe(hash: u64) -> usize {
        (hash as usize) & (STRIPES - 1)
    }

    /// Records the current generations of a key and its tags; call before reading L2/Postgres.
    pub fn fence(&self, key: &CacheKey, tags: &[Tag]) -> Fence {
        let slot = |hash: u64| {
            let s = Self::stripe(hash);
            (s as u32, self.stripes[s].load(Ordering::SeqCst))
        };
        let hashes = [key.hash64(), key.kind().hash64()]
            .into_iter()
            .chain(tags.iter().map(Tag::hash64));
        let slots = if tags.len() <= 2 {
            let mut a = [(0, 0); 4];
            for (i, h) in hashes.enumerate() {
                a[i] = slot(h);
            }
            Slots::Inline(a, 2 + tags.len() as u8)
        } else {
            Slots::Heap(hashes.map(slot).collect())
        };
        Fence {
            epoch: self.epoch.load(Ordering::SeqCst),
            slots,
        }
    }

    /// True if nothing the fence covers has been invalidated since it was taken.
    pub fn is_current(&self, fence: &Fence) -> bool {
        fence.epoch == self.epoch.load(Ordering::SeqCst)
            && fence
                .slots
                .as_slice()
                .iter()
                .all(|&(s, g)| self.stripes[s as usize].load(Ordering::SeqCst) == g)
    }

    /// The entry for `key` that no invalidation has dropped, fresh or (within its stale time)
    /// not.
    pub async fn get(&self, key: &CacheKey) -> Option<L1Hit> {
        let cache = self.cache.as_ref()?;
        let v = cache.get(key.as_str()).await?;
        if self.is_current(&v.fence) {
            Some(L1Hit {
                entry: v.entry.clone(),
                stored_at_ms: v.stored_at_ms,
                fresh_until_ms: v.fresh_until_ms,
            })
        } else {
            None
        }
    }

    /// Stores an entry loaded under `fence`, fresh for `ttl` and then kept `stale` longer. A fence
    /// that moved on means the value may predate a write: it is not stored.
    pub async fn insert(
        &self,
        key: &CacheKey,
        entry: Arc<Entry>,
        fence: Fence,
        ttl: Duration,
        stale: Duration,
    ) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        if ttl.is_zero() || !self.is_current(&fence) {
            return false;
        }
        let now = now_ms();
        let value = Arc::new(L1Value {
            entry,
            fence,
            stored_at_ms: now,
            fresh_until_ms: now.saturating_add(ttl.as_millis() as u64),
            life: ttl.saturating_add(stale),
        });
        cache.insert(key.as_str().into(), value).await;
        true
    }

    /// An entry no invalidation has dropped, with its key's text, picked by `pick` (given how
    /// many entries there are to choose from, at most [`SAMPLE_SPAN`]): for the consistency
    /// auditor. Walks the entries up to the pick.
    pub fn sample(&self, pick: impl FnOnce(usize) -> usize) -> Option<(Arc<Box<str>>, Arc<Entry>)> {
        let cache = self.cache.as_ref()?;
        let n = (cache.entry_count() as usize).min(SAMPLE_SPAN);
        if n == 0 {
            return None;
        }
        cache
            .iter()
            .take(SAMPLE_SPAN)
            .filter(|(_, v)| self.is_current(&v.fence))
            .nth(pick(n))
            .map(|(k, v)| (k, v.entry.clone()))
    }

    /// Drops a key: bumps its generation first, so a concurrent fill's value is dead on arrival.
    pub async fn invalidate_key(&self, key: &CacheKey) {
        self.stripes[Self::stripe(key.hash64())].fetch_add(1, Ordering::SeqCst);
        if let Some(cache) = &self.cache {
            cache.invalidate(key.as_str()).await;
        }
    }

    /// Drops every entry carrying the tag (lazily: they fail the fence check on read).
    pub fn invalidate_tag(&self, tag: &Tag) {
        self.stripes[Self::stripe(tag.hash64())].fetch_add(1, Ordering::SeqCst);
    }

    /// Drops every entry of a kind (lazily: they fail the fence check on read).
    pub fn invalidate_kind(&self, kind: Kind) {
        self.stripes[Self::stripe(kind.hash64())].fetch_add(1, Ordering::SeqCst);
    }

    /// Drops everything.
    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }

    /// (entries, weighted bytes), after applying moka's pending maintenance.
    pub async fn usage(&self) -> (u64, u64) {
        match &self.cache {
            Some(c) => {
                c.run_pending_tasks().await;
                (c.entry_count(), c.weighted_size())
            }
            None => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Loaded;
    use crate::domain::{LeadId, OrgId};
    use bytes::Bytes;

    fn entry(body: &'static str) -> Arc<Entry> {
        Arc::new(Entry::from_loaded(
            Loaded::Found {
                body: Bytes::from_static(body.as_bytes()),
                etag: "\"1\"".into(),
                ids: Default::default(),
            },
            Duration::from_secs(60),
        ))
    }

    fn lead() -> LeadId {
        LeadId::new_random()
    }

    #[tokio::test]
    async fn fill_then_hit() {
        let l1 = Local::new(true, 1 << 20);
        let key = CacheKey::lead_by_id(lead());
        let f = l1.fence(&key, &[]);
        assert!(
            l1.insert(&key, entry("a"), f, Duration::from_secs(5), Duration::ZERO)
                .await
        );
        assert_eq!(l1.get(&key).await.unwrap().entry.body, "a");
    }

    #[tokio::test]
    async fn a_fill_that_raced_an_invalidation_is_never_served() {
        let l1 = Local::new(true, 1 << 20);
        let key = CacheKey::lead_by_id(lead());
        let f = l1.fence(&key, &[]);
        l1.invalidate_key(&key).await; // the write lands while the load is in flight
        assert!(
            !l1.insert(
                &key,
                entry("old"),
                f.clone(),
                Duration::from_secs(5),
                Duration::ZERO
            )
            .await
        );
        assert!(l1.get(&key).await.is_none());
    }

    #[tokio::test]
    async fn invalidation_after_the_check_still_wins() {
        let l1 = Local::new(true, 1 << 20);
        let key = CacheKey::lead_by_id(lead());
        let f = l1.fence(&key, &[]);
        assert!(
            l1.insert(
                &key,
                entry("old"),
                f,
                Duration::from_secs(5),
                Duration::ZERO
            )
            .await
        );
        l1.invalidate_key(&key).await;
        assert!(l1.get(&key).await.is_none());
    }

    #[tokio::test]
    async fn tag_invalidation_drops_dependents_only() {
        let l1 = Local::new(true, 1 << 20);
        let org = OrgId::new_random();
        let (a, b) = (CacheKey::context(lead()), CacheKey::context(lead()));
        let fa = l1.fence(&a, &[Tag::Org(org)]);
        let fb = l1.fence(&b, &[Tag::Org(OrgId::new_random())]);
        l1.insert(&a, entry("a"), fa, Duration::from_secs(5), Duration::ZERO)
            .await;
        l1.insert(&b, entry("b"), fb, Duration::from_secs(5), Duration::ZERO)
            .await;
        l1.invalidate_tag(&Tag::Org(org));
        assert!(l1.get(&a).await.is_none());
        assert!(l1.get(&b).await.is_some());
    }

    #[tokio::test]
    async fn flush_drops_everything_including_in_flight_fills() {
        let l1 = Local::new(true, 1 << 20);
        let key = CacheKey::summary(lead());
        let f = l1.fence(&key, &[]);
        l1.insert(
            &key,
            entry("x"),
            f.clone(),
            Duration::from_secs(5),
            Duration::ZERO,
        )
        .await;
        l1.flush();
        assert!(l1.get(&key).await.is_none());
        assert!(
            !l1.insert(&key, entry("y"), f, Duration::from_secs(5), Duration::ZERO)
                .await
        );
    }

    #[tokio::test]
    async fn entries_outlive_their_freshness_by_the_stale_time() {
        let l1 = Local::new(true, 1 << 20);
        let key = CacheKey::lead_by_id(lead());
        let f = l1.fence(&key, &[]);
        l1.insert(
            &key,
            entry("a"),
            f,
            Duration::from_millis(20),
            Duration::from_secs(5),
        )
        .await;
        let hit = l1.get(&key).await.unwrap();
        assert!(hit.is_fresh(now_ms()));
        assert!(hit.refresh_due(hit.fresh_until_ms - 1, 0.1));
        assert!(!hit.refresh_due(hit.stored_at_ms, 0.1));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let stale = l1.get(&key).await.expect("kept past its freshness");
        assert!(!stale.is_fresh(now_ms()));
        l1.invalidate_key(&key).await;
        assert!(
            l1.get(&key).await.is_none(),
            "an invalidated entry is never served, not even stale"
        );
    }

    #[tokio::test]
    async fn disabled_l1_stores_nothing() {
        let l1 = Local::new(false, 1 << 20);
        let key = CacheKey::lead_by_id(lead());
        let f = l1.fence(&key, &[]);
        assert!(
            !l1.insert(&key, entry("a"), f, Duration::from_secs(5), Duration::ZERO)
                .await
        );
        assert!(l1.get(&key).await.is_none());
    }
}
