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

mod flight;
mod invalidate;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::coherence::Coherence;
use super::entry::{now_ms, Entry, Loaded};
use super::keys::{CacheKey, Kind, Policies, Policy, Tag};
use super::local::{Fence, Local};
use super::remote::Remote;
use super::{CacheError, LoadError};
pub use crate::labels::CacheStatus;
use crate::labels::StaleReason;
use crate::metrics::Metrics;

/// A cached (or just loaded) answer and where it came from.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub entry: Arc<Entry>,
    pub status: CacheStatus,
}

/// How a lookup may use the caches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Read through L1 and L2, fill both on a miss.
    #[default]
    ReadThrough,
    /// Go straight to Postgres and store nothing (`Cache-Control: no-cache`, or no tier on).
    Bypass,
}

/// A boxed load from Postgres.
pub type LoadFuture = Pin<Box<dyn Future<Output = Result<Loaded, LoadError>> + Send>>;

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
                return Ok(self.serve_stale(kind, s.clone(), StaleReason::Throttled));
            }
        }
        let started = Instant::now();
        let soft_at = started + self.fail_safe.soft_timeout;
        let hard_at = started + self.fail_safe.deadline;
        let mut load = Some(load);
        loop {
            let mut rx = match self.join_or_start(key, tags, &mut load, false) {
                Ok(rx) => rx,
                // Our flight died (a panic) and the load went with it: the stale value, if any.
                Err(e) => {
                    return match stale {
                        Some(s) => Ok(self.serve_stale(kind, s, StaleReason::Error)),
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
                            Ok(self.serve_stale(kind, l.entry, StaleReason::Busy))
                        }
                        Ok(l) => {
                            self.metrics.lookup(kind, l.status, l.entry.negative);
                            Ok(l)
                        }
                        Err(e) => match stale.or(progress.stale) {
                            Some(s) => Ok(self.serve_stale(kind, s, StaleReason::Error)),
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
                        Some(s) => Ok(self.serve_stale(kind, s, StaleReason::Slow)),
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
    fn serve_stale(&self, kind: Kind, entry: Arc<Entry>, reason: StaleReason) -> Lookup {
        self.metrics
            .lookup(kind, CacheStatus::Stale, entry.negative);
        self.metrics.stale(kind, reason);
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
}
