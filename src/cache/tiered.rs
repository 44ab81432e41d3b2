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
use super::keys::{CacheKey, Kind, Policies, Policy, Tag};
use super::local::{Fence, Local};
use super::remote::{Deletion, Dropped, Fill, Lease, Marker, Remote, ResetCause};
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

/// What a flight has to say so far: a stale value it found on the way (answered if the load is
/// slow or fails), then its result.
#[derive(Clone, Default)]
struct Progress {
    stale: Option<Arc<Entry>>,
    done: Option<Result<Lookup, CacheError>>,
}

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

/// Fail-safe and latency budgets of a lookup (DESIGN §5).
#[derive(Debug, Clone, Copy)]
pub struct FailSafe {
    /// With a stale value at hand, a load slower than this is not waited for: the stale value
    /// is answered and the load finishes in the background.
    pub soft_timeout: Duration,
    /// Without one, a lookup gives up after this long (503).
    pub deadline: Duration,
    /// After a failed refresh, the key is not loaded again for this long (stale answers only).
    pub throttle: Duration,
    /// Fresh L1 hits within this last fraction of their lifetime start a background refresh.
    pub refresh_ahead: f64,
}

impl Default for FailSafe {
    fn default() -> Self {
        FailSafe {
            soft_timeout: Duration::from_millis(50),
            deadline: Duration::from_secs(1),
            throttle: Duration::from_secs(1),
            refresh_ahead: 0.1,
        }
    }
}

struct Flight {
    id: u64,
    fence: Fence,
    rx: watch::Receiver<Progress>,
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
    fail_safe: FailSafe,
    /// Keys whose last refresh failed, until when they are not loaded again. A std Mutex: held
    /// for a lookup or an insert, never across an await.
    throttled: Mutex<HashMap<Box<str>, Instant>>,
    /// The Redis resets L1 has been dropped for (see [`Remote::resets`]).
    resets_seen: AtomicU64,
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
            fail_safe: FailSafe::default(),
            throttled: Mutex::new(HashMap::new()),
            resets_seen: AtomicU64::new(0),
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

    /// Uses these budgets for stale answers, deadlines and refresh-ahead.
    pub fn with_fail_safe(mut self, fail_safe: FailSafe) -> Self {
        self.fail_safe = fail_safe;
        self
    }

    pub fn coherence(&self) -> &Arc<Coherence> {
        &self.coherence
    }

    /// How long an L1 entry is kept past its freshness for fail-safe answers: not at all while a
    /// channel is down (the entry may have missed an invalidation; only its short fresh life is
    /// trusted), else the kind's `max_stale`.
    fn l1_stale(&self, policy: &Policy) -> Duration {
        if self.coherence.l1_ttl_cap().is_some() {
            Duration::ZERO
        } else {
            policy.max_stale
        }
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

    /// A fresh L1 hit for `key` that needs no refresh, if there is one (counted like any lookup).
    /// Lets callers skip work that only a miss needs, such as resolving a value's tags; anything
    /// else goes through [`Tiered::get`].
    pub async fn get_l1(&self, key: &CacheKey) -> Option<Lookup> {
        let hit = self.local.get(key).await?;
        let now = now_ms();
        if !hit.is_fresh(now) || hit.refresh_due(now, self.fail_safe.refresh_ahead) {
            return None;
        }
        self.metrics
            .lookup(key.kind(), CacheStatus::HitL1, hit.entry.negative);
        Some(Lookup {
            entry: hit.entry,
            status: CacheStatus::HitL1,
        })
    }

    /// Looks `key` up through the tiers, loading it with `load` on a miss. `tags` name the groups
    /// the value belongs to (its invalidation dependencies) and must be known before loading.
    ///
    /// Fail-safe: a value past its TTL but within its kind's `max_stale` (never one that was
    /// invalidated) is answered as `Stale` when the load fails, when it takes longer than the
    /// soft timeout (the load then finishes in the background), or while the key's refreshes are
    /// throttled after a failure. Without one, a load that outlives the deadline is an error.
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
            let entry = Arc::new(Entry::from_loaded(load().await?, Duration::ZERO));
            self.metrics
                .lookup(kind, CacheStatus::Bypass, entry.negative);
            return Ok(Lookup {
                entry,
                status: CacheStatus::Bypass,
            });
        }
        let started = Instant::now();
        let mut stale = None;
        if let Some(hit) = self.local.get(key).await {
            let now = now_ms();
            if hit.is_fresh(now) {
                if hit.refresh_due(now, self.fail_safe.refresh_ahead) {
                    self.refresh_in_background(key, tags, load);
                }
                self.metrics
                    .lookup(kind, CacheStatus::HitL1, hit.entry.negative);
                return Ok(Lookup {
                    entry: hit.entry,
                    status: CacheStatus::HitL1,
                });
            }
            stale = Some(hit.entry);
        }
        if let Some(s) = &stale {
            if self.is_throttled(key) {
                return Ok(self.serve_stale(kind, s.clone(), "throttled"));
            }
        }
        let soft_at = started + self.fail_safe.soft_timeout;
        let hard_at = started + self.fail_safe.deadline;
        let mut load = Some(load);
        loop {
            let mut rx = match self.join_or_start(key, tags, &mut load, false) {
                Ok(rx) => rx,
                // Our flight died (a panic) and the load went with it: the stale value, if any.
                Err(e) => {
                    return match stale {
                        Some(s) => Ok(self.serve_stale(kind, s, "error")),
                        None => Err(e),
                    }
                }
            };
            loop {
                let progress = rx.borrow_and_update().clone();
                if let Some(result) = progress.done {
                    return match result {
                        // Another instance holds the refresh lease of a stale value.
                        Ok(l) if l.status == CacheStatus::Stale => {
                            Ok(self.serve_stale(kind, l.entry, "busy"))
                        }
                        Ok(l) => {
                            self.metrics.lookup(kind, l.status, l.entry.negative);
                            Ok(l)
                        }
                        Err(e) => match stale.or(progress.stale) {
                            Some(s) => Ok(self.serve_stale(kind, s, "error")),
                            None => Err(e),
                        },
                    };
                }
                let candidate = stale.clone().or(progress.stale);
                let wake = if candidate.is_some() {
                    soft_at.min(hard_at)
                } else {
                    hard_at
                };
                if Instant::now() >= wake {
                    return match candidate {
                        Some(s) => Ok(self.serve_stale(kind, s, "slow")),
                        None => {
                            self.metrics.lookup_timeouts(kind).inc();
                            Err(CacheError::Deadline)
                        }
                    };
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() && rx.borrow().done.is_none() {
                            // The flight's task ended without an answer (it panicked).
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
            }
        }
    }

    /// Answers a stale value, counting why.
    fn serve_stale(&self, kind: Kind, entry: Arc<Entry>, reason: &'static str) -> Lookup {
        self.metrics
            .lookup(kind, CacheStatus::Stale, entry.negative);
        self.metrics
            .stale_served
            .with_label_values(&[kind.as_str(), reason])
            .inc();
        Lookup {
            entry,
            status: CacheStatus::Stale,
        }
    }

    fn is_throttled(&self, key: &CacheKey) -> bool {
        let mut t = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        match t.get(key.as_str()) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                t.remove(key.as_str());
                false
            }
            None => false,
        }
    }

    fn throttle(&self, key: &CacheKey) {
        let mut t = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if t.len() >= 10_000 {
            t.retain(|_, until| *until > now);
        }
        t.insert(key.as_str().into(), now + self.fail_safe.throttle);
    }

    /// Starts a refresh of a hot key nearing the end of its life, unless a load of it is already
    /// under way. Nobody waits for it.
    fn refresh_in_background<F>(self: &Arc<Self>, key: &CacheKey, tags: &[Tag], load: F)
    where
        F: FnOnce() -> LoadFuture + Send + 'static,
    {
        {
            let flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if flights.contains_key(key.as_str()) {
                return;
            }
        }
        self.metrics.refreshes_ahead(key.kind()).inc();
        let _ = self.join_or_start(key, tags, &mut Some(load), true);
    }

    fn join_or_start<F>(
        self: &Arc<Self>,
        key: &CacheKey,
        tags: &[Tag],
        load: &mut Option<F>,
        refresh: bool,
    ) -> Result<watch::Receiver<Progress>, CacheError>
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
        let (tx, rx) = watch::channel(Progress::default());
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
            let result = this.fly(&key, &tags, fence, id, load, refresh, &tx).await;
            tx.send_modify(|p| p.done = Some(result));
        });
        Ok(rx)
    }

    /// One flight: L2, else Postgres; then the fenced fills. A stale value met on the way is
    /// published on `progress` for the waiting lookups. `refresh` (a refresh-ahead) takes an L2
    /// value only if it is not itself near its end.
    #[allow(clippy::too_many_arguments)]
    async fn fly<F>(
        &self,
        key: &CacheKey,
        tags: &[Tag],
        fence: Fence,
        flight: u64,
        load: F,
        refresh: bool,
        progress: &watch::Sender<Progress>,
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
            let read = remote.read(key, tags, lease).await;
            self.sync_resets();
            match read {
                Ok(mut read) => {
                    let now = now_ms();
                    match read.value.take().and_then(Entry::decode) {
                        Some(e)
                            if e.expires_at_ms > now
                                && !(refresh
                                    && e.nearly_expired(now, self.fail_safe.refresh_ahead)) =>
                        {
                            return Ok(self.hit_l2(key, e, fence, &policy).await);
                        }
                        // Fresh but near its end, and this flight is a refresh: load it anew.
                        Some(e) if e.expires_at_ms > now => {}
                        Some(e) if e.stale_until(policy.max_stale) > now => {
                            let e = Arc::new(e);
                            progress.send_modify(|p| p.stale = Some(e.clone()));
                            // One refresh per fleet; the others answer the stale value.
                            if let Some(l) = self.lease {
                                read.lease = remote.take_lease(key, &token, l.ttl).await;
                                if read.lease == Lease::Busy {
                                    return Ok(Lookup {
                                        entry: e,
                                        status: CacheStatus::Stale,
                                    });
                                }
                            }
                        }
                        _ => {}
                    }
                    if read.lease == Lease::Busy {
                        if let Some(entry) =
                            self.wait_for_fill(remote, key, &read.incarnation).await
                        {
                            return Ok(self.hit_l2(key, entry, fence, &policy).await);
                        }
                    }
                    l2 = Some(read);
                }
                Err(e) => {
                    tracing::debug!(error = %e, key = %key, "redis read failed; loading from postgres");
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
                self.throttle(key);
                self.metrics.refresh_failures(key.kind()).inc();
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

        if let (Some(remote), Some(read)) = (remote, &l2) {
            // Redis keeps it for its stale time too, for every instance's fail-safe.
            let life = ttl.saturating_add(policy.max_stale);
            let filled = remote.fill(key, tags, read, &entry.encode(), life).await;
            self.sync_resets();
            match filled {
                Ok(fill) => self.count_fill(kind, "l2", fill == Fill::Stored),
                Err(e) => {
                    self.metrics
                        .fills
                        .with_label_values(&[kind, "l2", "error"])
                        .inc();
                    tracing::debug!(error = %e, key = %key, "redis fill failed");
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
                self.l1_stale(&policy),
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
    async fn hit_l2(&self, key: &CacheKey, entry: Entry, fence: Fence, policy: &Policy) -> Lookup {
        let entry = Arc::new(entry);
        let ttl = self.l1_ttl(entry.remaining(now_ms()), policy.l1_max_ttl);
        let stored = self
            .local
            .insert(key, entry.clone(), fence, ttl, self.l1_stale(policy))
            .await;
        self.count_fill(key.kind().as_str(), "l1", stored);
        Lookup {
            entry,
            status: CacheStatus::HitL2,
        }
    }

    /// Another load holds the key's lease: poll L2 for its fill, up to the configured wait.
    /// `None` means load it ourselves (the holder gave up, Redis failed, or we waited enough).
    async fn wait_for_fill(
        &self,
        remote: &Remote,
        key: &CacheKey,
        incarnation: &[u8],
    ) -> Option<Entry> {
        let lease = self.lease?;
        let deadline = Instant::now() + lease.wait;
        let outcome = loop {
            if Instant::now() + lease.poll > deadline {
                break "timeout";
            }
            tokio::time::sleep(lease.poll).await;
            match remote.peek(key, incarnation).await {
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

    /// Drops L1 if Redis was reset since L1 last was: entries copied from the old incarnation
    /// may be stale (a reset can mean invalidations were lost). Two atomic loads otherwise.
    fn sync_resets(&self) {
        let Some(remote) = &self.remote else { return };
        let now = remote.resets();
        if self.resets_seen.load(Ordering::Acquire) != now
            && self.resets_seen.swap(now, Ordering::AcqRel) != now
        {
            self.flush_local("redis_reset");
        }
    }

    /// Probes Redis (reconnecting it, checking the server behind the namespace, noting resets
    /// made elsewhere) and drops L1 after a reset. True when Redis answered.
    pub async fn probe_redis(&self) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let up = remote.probe().await;
        self.sync_resets();
        up
    }

    /// Resets the Redis namespace (a new incarnation: fills in flight refused, values voided)
    /// and drops L1. If Redis cannot be reached the reset is owed and L2 bypassed until it
    /// lands; L1 is dropped either way. The voided values stay until [`Tiered::sweep`] or their
    /// TTL.
    pub async fn reset(&self, cause: ResetCause) -> Result<(), CacheError> {
        let reset = match &self.remote {
            Some(remote) => {
                let out = remote.reset_namespace(cause).await;
                self.resets_seen.store(remote.resets(), Ordering::Release);
                out
            }
            None => Ok(()),
        };
        self.flush_local(match cause {
            ResetCause::Admin => "admin",
            ResetCause::ListenerGap => "listener_gap",
            _ => "redis_reset",
        });
        reset
    }

    /// Deletes the Redis values a reset voided; returns how many.
    pub async fn sweep(&self) -> Result<u64, CacheError> {
        match &self.remote {
            Some(remote) => remote.sweep().await,
            None => Ok(0),
        }
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
