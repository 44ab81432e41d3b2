//! Read-through across the tiers, with coalescing and fenced fills (DESIGN §1, §4).
//!
//! A miss starts a *flight*: a spawned task that reads L2, else loads from Postgres, then fills
//! L2 (compare-and-set against Redis fences) and L1 (against local generations). Concurrent
//! misses for the key wait for that flight instead of loading again. A flight that started
//! before an invalidation of its key is not joined by requests arriving after it, so a write's
//! 2xx is never followed by a read of the value it replaced.
//!
//! Across instances, the L2 read of a missing key takes its *fill lease* (memcache leases): the
//! holder loads, the others poll L2 briefly for its fill instead of all loading Postgres.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::coherence::Coherence;
use super::entry::{now_ms, Entry, Loaded};
use super::keys::{CacheKey, Policies, Tag};
use super::local::{Fence, Local};
use super::remote::{Deletion, Dropped, L2Read, Lease, Marker, Remote};
use super::CacheError;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Where an answer came from; feeds the `x-cache` header and the metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    HitL1,
    HitL2,
    Miss,
    Stale,
    Bypass,
}

impl CacheStatus {
    /// The `x-cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::HitL1 => "HIT-L1",
            CacheStatus::HitL2 => "HIT-L2",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

/// A cached (or just loaded) answer and where it came from.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub entry: Arc<Entry>,
    pub status: CacheStatus,
}

/// How a lookup may use the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read through L1 and L2, fill both on a miss.
    ReadThrough,
    /// Go straight to Postgres and store nothing (`Cache-Control: no-cache`, or no tier on).
    Bypass,
}

/// A boxed load from Postgres.
pub type LoadFuture = Pin<Box<dyn Future<Output = Result<Loaded, StoreError>> + Send>>;

/// A test hook run after a load and before its fills; lets tests force a write in between.
pub type FillHook =
    Arc<dyn Fn(&CacheKey) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

type Outcome = Option<Result<Lookup, CacheError>>;

/// Fleet-wide single flight: how long a lease lasts, and how long others wait for its fill.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// Lifetime of a lease (bounds how long a crashed holder blocks others).
    pub ttl: Duration,
    /// How long a lookup waits for another instance's fill before loading itself.
    pub wait: Duration,
    /// How often a waiting lookup looks at L2.
    pub poll: Duration,
}

struct Flight {
    id: u64,
    fence: Fence,
    rx: watch::Receiver<Outcome>,
}

/// The tiered cache shared by every request.
pub struct Tiered {
    local: Local,
    remote: Option<Arc<Remote>>,
    policies: Policies,
    metrics: Arc<Metrics>,
    // A std Mutex: held only to look up or insert a flight, never across an await.
    flights: Mutex<HashMap<Box<str>, Flight>>,
    next_flight: AtomicU64,
    fill_hook: RwLock<Option<FillHook>>,
    coherence: Arc<Coherence>,
    lease: Option<LeaseConfig>,
    /// This instance's id: the prefix of its lease tokens.
    instance: String,
}

impl Tiered {
    pub fn new(
        local: Local,
        remote: Option<Arc<Remote>>,
        policies: Policies,
        metrics: Arc<Metrics>,
    ) -> Self {
        Tiered {
            local,
            remote,
            policies,
            metrics,
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(1),
            fill_hook: RwLock::new(None),
            coherence: Arc::new(Coherence::none()),
            lease: None,
            instance: String::new(),
        }
    }

    /// Obeys `coherence` (short L1 lifetimes while a channel is down).
    pub fn with_coherence(mut self, coherence: Arc<Coherence>) -> Self {
        self.coherence = coherence;
        self
    }

    /// Takes fill leases in Redis under `instance`'s name.
    pub fn with_leases(mut self, instance: &str, lease: LeaseConfig) -> Self {
        self.instance = instance.to_owned();
        self.lease = Some(lease);
        self
    }

    pub fn coherence(&self) -> &Arc<Coherence> {
        &self.coherence
    }

    /// How long L1 may keep an entry with `remaining` time to live.
    fn l1_ttl(&self, remaining: Duration, policy_cap: Duration) -> Duration {
        let ttl = remaining.min(policy_cap);
        match self.coherence.l1_ttl_cap() {
            Some(cap) => ttl.min(cap),
            None => ttl,
        }
    }

    pub fn local(&self) -> &Local {
        &self.local
    }

    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// True when neither tier is on, so every lookup is a bypass.
    pub fn is_pass_through(&self) -> bool {
        !self.local.enabled() && self.remote.is_none()
    }

    /// Installs (or clears) the hook run between a load and its fills. For tests.
    #[doc(hidden)]
    pub fn set_fill_hook(&self, hook: Option<FillHook>) {
        *self.fill_hook.write().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// An L1 hit for `key`, if there is one (counted like any lookup). Lets callers skip work
    /// that only a miss needs, such as resolving a value's tags.
    pub async fn get_l1(&self, key: &CacheKey) -> Option<Lookup> {
        let entry = self.local.get(key).await?;
        self.metrics
            .lookup(key.kind(), CacheStatus::HitL1, entry.negative);
        Some(Lookup {
            entry,
            status: CacheStatus::HitL1,
        })
    }

    /// Looks `key` up through the tiers, loading it with `load` on a miss. `tags` name the groups
    /// the value belongs to (its invalidation dependencies) and must be known before loading.
    pub async fn get<F>(
        self: &Arc<Self>,
        key: &CacheKey,
        tags: &[Tag],
        mode: Mode,
        load: F,
    ) -> Result<Lookup, CacheError>
    where
        F: FnOnce() -> LoadFuture + Send + 'static,
    {
        let kind = key.kind();
        if mode == Mode::Bypass || self.is_pass_through() {
            let entry = Arc::new(Entry::from_loaded(load().await?, std::time::Duration::ZERO));
            self.metrics
                .lookup(kind, CacheStatus::Bypass, entry.negative);
            return Ok(Lookup {
                entry,
                status: CacheStatus::Bypass,
            });
        }
        if let Some(entry) = self.local.get(key).await {
            self.metrics
                .lookup(kind, CacheStatus::HitL1, entry.negative);
            return Ok(Lookup {
                entry,
                status: CacheStatus::HitL1,
            });
        }
        let mut load = Some(load);
        loop {
            let mut rx = self.join_or_start(key, tags, &mut load)?;
            let outcome = match rx.wait_for(Option::is_some).await {
                Ok(v) => v.clone(),
                // The flight's task ended without an answer (it panicked): try again.
                Err(_) => continue,
            };
            if let Some(result) = outcome {
                if let Ok(l) = &result {
                    self.metrics.lookup(kind, l.status, l.entry.negative);
                }
                return result;
            }
        }
    }

    fn join_or_start<F>(
        self: &Arc<Self>,
        key: &CacheKey,
        tags: &[Tag],
        load: &mut Option<F>,
    ) -> Result<watch::Receiver<Outcome>, CacheError>
    where
        F: FnOnce() -> LoadFuture + Send + 'static,
    {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = flights.get(key.as_str()) {
            // A flight that began before an invalidation may carry the old value: only requests
            // that arrived before that invalidation may share it.
            if self.local.is_current(&f.fence) {
                self.metrics.coalesced(key.kind()).inc();
                return Ok(f.rx.clone());
            }
        }
        let Some(load) = load.take() else {
            return Err(CacheError::Abandoned);
        };
        let fence = self.local.fence(key, tags);
        let (tx, rx) = watch::channel(None);
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        flights.insert(
            key.as_str().into(),
            Flight {
                id,
                fence: fence.clone(),
                rx: rx.clone(),
            },
        );
        let this = Arc::clone(self);
        let key = key.clone();
        let tags = tags.to_vec();
        tokio::spawn(async move {
            let _done = FlightDone {
                tiered: &this,
                key: &key,
                id,
            };
            let result = this.fly(&key, &tags, fence, id, load).await;
            let _ = tx.send(Some(result));
        });
        Ok(rx)
    }

    /// One flight: L2, else Postgres; then the fenced fills.
    async fn fly<F>(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        fence: Fence,
        flight: u64,
        load: F,
    ) -> Result<Lookup, CacheError>
    where
        F: FnOnce() -> LoadFuture,
    {
        let policy = *self.policies.get(key.kind());
        let kind = key.kind().as_str();
        let remote = self.remote.as_ref().filter(|r| r.usable());
        let mut l2 = None;
        if let Some(remote) = remote {
            let token = format!("{}:{flight}", self.instance);
            let lease = self.lease.map(|l| (token.as_str(), l.ttl));
            match remote.read(key, tags, lease).await {
                Ok(read) => {
                    if let Some(entry) = read.value.clone().and_then(fresh) {
                        return Ok(self.hit_l2(key, entry, fence, policy.l1_max_ttl).await);
                    }
                    if read.lease == Lease::Busy {
                        if let Some(entry) = self.wait_for_fill(remote, key).await {
                            return Ok(self.hit_l2(key, entry, fence, policy.l1_max_ttl).await);
                        }
                    }
                    l2 = Some(read);
                }
                Err(e) => {
                    tracing::debug!(error = %e, key = %key, "redis read failed; loading from postgres");
                    remote.report_failure();
                }
            }
        }

        let started = Instant::now();
        let loaded = match load().await {
            Ok(v) => v,
            Err(e) => {
                if let (Some(remote), Some(read)) = (remote, &l2) {
                    remote.release(key, &read.lease).await;
                }
                return Err(e.into());
            }
        };
        let negative = matches!(loaded, Loaded::NotFound);
        let ttl = policy.ttl_for(negative);
        let entry = Arc::new(Entry::from_loaded(loaded, ttl));

        let hook = self
            .fill_hook
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(key).await;
        }

        if let (Some(remote), Some(L2Read { tokens, lease, .. })) = (remote, l2) {
            match remote
                .fill(key, tags, &tokens, &lease, &entry.encode(), ttl)
                .await
            {
                Ok(stored) => self.count_fill(kind, "l2", stored),
                Err(e) => {
                    self.metrics
                        .fills
                        .with_label_values(&[kind, "l2", "error"])
                        .inc();
                    tracing::debug!(error = %e, key = %key, "redis fill failed");
                    remote.report_failure();
                }
            }
        }
        let stored = self
            .local
            .insert(
                key,
                entry.clone(),
                fence,
                self.l1_ttl(ttl, policy.l1_max_ttl),
            )
            .await;
        self.count_fill(kind, "l1", stored);
        self.metrics
            .fill_duration(key.kind())
            .observe(started.elapsed().as_secs_f64());
        Ok(Lookup {
            entry,
            status: CacheStatus::Miss,
        })
    }

    /// An L2 hit: keep it in L1 (fenced) and answer it.
    async fn hit_l2(
        &self,
        key: &CacheKey,
        entry: Entry,
        fence: Fence,
        l1_max_ttl: Duration,
    ) -> Lookup {
        let entry = Arc::new(entry);
        let ttl = self.l1_ttl(entry.remaining(now_ms()), l1_max_ttl);
        let stored = self.local.insert(key, entry.clone(), fence, ttl).await;
        self.count_fill(key.kind().as_str(), "l1", stored);
        Lookup {
            entry,
            status: CacheStatus::HitL2,
        }
    }

    /// Another load holds the key's lease: poll L2 for its fill, up to the configured wait.
    /// `None` means load it ourselves (the holder gave up, Redis failed, or we waited enough).
    async fn wait_for_fill(&self, remote: &Remote, key: &CacheKey) -> Option<Entry> {
        let lease = self.lease?;
        let deadline = Instant::now() + lease.wait;
        let outcome = loop {
            if Instant::now() + lease.poll > deadline {
                break "timeout";
            }
            tokio::time::sleep(lease.poll).await;
            match remote.peek(key).await {
                Ok((Some(raw), _)) => {
                    if let Some(entry) = fresh(raw) {
                        self.metrics
                            .lease_waits
                            .with_label_values(&["filled"])
                            .inc();
                        return Some(entry);
                    }
                }
                Ok((None, true)) => {}
                // The holder released its lease without a value (its load failed, or its fill
                // was fenced by an invalidation): what it read is not for us.
                Ok((None, false)) => break "released",
                Err(_) => {
                    remote.report_failure();
                    break "released";
                }
            }
        };
        self.metrics.lease_waits.with_label_values(&[outcome]).inc();
        None
    }

    fn count_fill(&self, kind: &str, tier: &str, stored: bool) {
        let outcome = if stored { "stored" } else { "fenced" };
        self.metrics
            .fills
            .with_label_values(&[kind, tier, outcome])
            .inc();
    }

    /// Drops keys and tags from L1: their generations move at once, so no fill that began
    /// earlier can store or serve what it read.
    pub async fn invalidate_local(&self, deletion: &Deletion) {
        for k in &deletion.keys {
            self.local.invalidate_key(k).await;
        }
        for t in &deletion.tags {
            self.local.invalidate_tag(t);
        }
        self.count_invalidated("l1", deletion);
    }

    /// Drops keys and tags from Redis, with the given bookkeeping marker. A failure is owed and
    /// retried, and L2 is bypassed until it lands. `Ok(None)` when Redis is off.
    pub async fn invalidate_remote(
        &self,
        deletion: Deletion,
        marker: Marker,
    ) -> Result<Option<Dropped>, CacheError> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        let (nk, nt) = (deletion.keys.len() as u64, deletion.tags.len() as u64);
        let dropped = remote.invalidate(deletion, marker).await?;
        if dropped != Dropped::AlreadyApplied {
            let m = &self.metrics.invalidated_keys;
            m.with_label_values(&["l2", "key"]).inc_by(nk);
            m.with_label_values(&["l2", "tag"]).inc_by(nt);
        }
        Ok(Some(dropped))
    }

    /// Drops keys and tags from both tiers: Redis first, then L1.
    ///
    /// The order matters. A lookup takes its L1 fence *before* it reads Redis; were L1 dropped
    /// first, a lookup starting between the two steps would hold a current fence and still read
    /// the old value from Redis, and keep it in L1 after the write answered. Dropping L1 last
    /// makes every lookup that could have read the old Redis value carry an outdated fence.
    pub async fn invalidate(
        &self,
        deletion: Deletion,
        marker: Marker,
    ) -> Result<Option<Dropped>, CacheError> {
        let local = deletion.clone();
        let remote = self.invalidate_remote(deletion, marker).await;
        self.invalidate_local(&local).await;
        remote
    }

    /// Drops all of L1 (a message may have been lost), counting why.
    pub fn flush_local(&self, reason: &'static str) {
        self.local.flush();
        self.metrics.l1_flushes.with_label_values(&[reason]).inc();
    }

    fn count_invalidated(&self, tier: &str, d: &Deletion) {
        let m = &self.metrics.invalidated_keys;
        m.with_label_values(&[tier, "key"])
            .inc_by(d.keys.len() as u64);
        m.with_label_values(&[tier, "tag"])
            .inc_by(d.tags.len() as u64);
    }
}

/// A decoded L2 value that has not expired.
fn fresh(raw: bytes::Bytes) -> Option<Entry> {
    Entry::decode(raw).filter(|e| e.expires_at_ms > now_ms())
}

/// Removes a finished (or panicked) flight from the map, unless a newer one replaced it.
struct FlightDone<'a> {
    tiered: &'a Tiered,
    key: &'a CacheKey,
    id: u64,
}

impl Drop for FlightDone<'_> {
    fn drop(&mut self) {
        let mut flights = self
            .tiered
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if flights
            .get(self.key.as_str())
            .is_some_and(|f| f.id == self.id)
        {
            flights.remove(self.key.as_str());
        }
    }
}
