//! The consistency auditor: does a cached answer disagree with Postgres?
//!
//! A background task takes `audit.samples_per_sec` cached entries a second, alternating L1
//! (entries picked at random) and Redis (a SCAN walk over the namespace, one step per sample),
//! reloads each from Postgres exactly as a fill would, and compares the ETags (a row's version,
//! or a hash of a composite answer's bytes). A disagreement is not yet a finding: a change whose
//! invalidation is on its way looks the same. After `audit.window_ms` the entry is read again
//! from the same tier; if the tier still holds those very bytes and Postgres still disagrees
//! with them, the entry is stale — counted (`sidecache_audit_stale_total{kind,tier}`), logged
//! with its key, dropped from both tiers here and (over the bus) from every peer's L1, and
//! kept among the last findings for `/admin/stats`.
//! Greetings are not checked: they are rendered for the time of day, so a correct one differs
//! from a fresh rendering whenever the hour turns (their TTL bounds them instead).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::Serialize;

use crate::answers::Answers;
use crate::cache::{CacheKey, Deletion, Entry, Kind, Loaded, Tiered};
use crate::invalidation::Invalidator;
use crate::lifecycle::Shutdown;
use crate::metrics::{Metrics, AUDIT_TIERS};

/// Findings kept for `/admin/stats`.
const FINDINGS_KEPT: usize = 20;

/// A stale entry the auditor found (and dropped).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub key: String,
    pub kind: &'static str,
    pub tier: &'static str,
    /// The ETag the tier held, and what Postgres holds (`null`: the row is gone).
    pub cached_etag: String,
    pub postgres_etag: Option<String>,
    /// When it was found (Unix ms).
    pub found_at_ms: u64,
}

pub struct Auditor {
    answers: Answers,
    cache: Arc<Tiered>,
    /// Drops a stale entry from both tiers here and, over the bus, from every peer's L1.
    invalidator: Invalidator,
    metrics: Arc<Metrics>,
    /// Between two samples.
    every: Duration,
    window: Duration,
    findings: Mutex<VecDeque<Finding>>,
    /// Checks under way (a disagreement waits out its window): bounded, so the auditor never
    /// competes with requests for more than a few Postgres connections.
    checks: Arc<tokio::sync::Semaphore>,
}

/// Checks under way at most.
const CHECKS_AT_ONCE: usize = 4;

/// Where an entry was sampled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tier {
    L1,
    L2,
}

impl Tier {
    fn index(self) -> usize {
        match self {
            Tier::L1 => 0,
            Tier::L2 => 1,
        }
    }
}

/// What Postgres holds for a key, as the auditor compares it.
enum Fresh {
    Found(String),
    NotFound,
}

impl Fresh {
    fn agrees(&self, cached: &Entry) -> bool {
        match self {
            Fresh::Found(etag) => !cached.negative && cached.etag[..] == *etag.as_bytes(),
            Fresh::NotFound => cached.negative,
        }
    }

    fn etag(&self) -> Option<String> {
        match self {
            Fresh::Found(e) => Some(e.clone()),
            Fresh::NotFound => None,
        }
    }
}

impl Auditor {
    pub fn new(
        answers: Answers,
        invalidator: Invalidator,
        metrics: Arc<Metrics>,
        every: Duration,
        window: Duration,
    ) -> Self {
        Auditor {
            answers,
            cache: invalidator.cache().clone(),
            invalidator,
            metrics,
            every,
            window,
            findings: Mutex::new(VecDeque::new()),
            checks: Arc::new(tokio::sync::Semaphore::new(CHECKS_AT_ONCE)),
        }
    }

    /// The last findings, newest first.
    pub fn findings(&self) -> Vec<Finding> {
        self.findings
            .lock()
            .expect("not poisoned")
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    /// Samples until shutdown. Each check runs in a task of its own, so a
    /// disagreement waiting out its window does not hold up the next samples.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cursor = 0u64;
        let mut tier = Tier::L1;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => break,
            }
            // Every check slot busy: this sample is skipped.
            let Ok(slot) = self.checks.clone().try_acquire_owned() else {
                continue;
            };
            let sample = match tier {
                Tier::L1 => self.sample_l1(),
                Tier::L2 => self.sample_l2(&mut cursor).await,
            };
            if let Some((key, entry)) = sample {
                let me = self.clone();
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = me.check(tier, key, entry) => {}
                        _ = stop.recv() => {}
                    }
                    drop(slot);
                });
            }
            tier = match tier {
                Tier::L1 if self.cache.remote().is_some() => Tier::L2,
                _ => Tier::L1,
            };
        }
    }

    fn sample_l1(&self) -> Option<(CacheKey, Arc<Entry>)> {
        let (text, entry) = self
            .cache
            .local()
            .sample(|n| rand::rng().random_range(0..n))?;
        Some((CacheKey::parse(&text)?, entry))
    }

    /// One step of the walk over Redis (a few keys), and one of them with its entry.
    async fn sample_l2(&self, cursor: &mut u64) -> Option<(CacheKey, Arc<Entry>)> {
        let remote = self.cache.remote()?;
        let (next, keys) = remote.scan_values(*cursor).await.ok()?;
        *cursor = next;
        let mut keys: Vec<CacheKey> = keys
            .into_iter()
            .filter(|k| k.kind() != Kind::Greeting)
            .collect();
        if keys.is_empty() {
            return None;
        }
        let key = keys.swap_remove(rand::rng().random_range(0..keys.len()));
        let entry = remote.entry(&key).await.ok()??;
        Some((key, Arc::new(entry)))
    }

    /// The entry `tier` holds for `key` now.
    async fn read(&self, tier: Tier, key: &CacheKey) -> Option<Arc<Entry>> {
        match tier {
            Tier::L1 => self.cache.local().get(key).await.map(|h| h.entry),
            Tier::L2 => {
                let remote = self.cache.remote()?;
                remote.entry(key).await.ok()?.map(Arc::new)
            }
        }
    }

    async fn fresh(&self, key: &CacheKey) -> Option<Fresh> {
        match self.answers.reload(key)?.await {
            Ok(Loaded::Found { etag, .. }) => Some(Fresh::Found(etag)),
            Ok(Loaded::NotFound) => Some(Fresh::NotFound),
            // Postgres away: nothing to compare with.
            Err(_) => None,
        }
    }

    /// Compares one sampled entry with Postgres; a disagreement that outlives the window is a
    /// finding.
    async fn check(&self, tier: Tier, key: CacheKey, cached: Arc<Entry>) {
        if key.kind() == Kind::Greeting {
            return;
        }
        let Some(fresh) = self.fresh(&key).await else {
            return;
        };
        self.metrics.audit.checked.inc();
        if fresh.agrees(&cached) {
            return;
        }
        tokio::time::sleep(self.window).await;
        // Changed or dropped meanwhile: the change arrived; it was in flight, not stale.
        match self.read(tier, &key).await {
            Some(now) if now.etag == cached.etag && now.negative == cached.negative => {}
            _ => return,
        }
        let Some(fresh) = self.fresh(&key).await else {
            return;
        };
        if fresh.agrees(&cached) {
            return;
        }
        self.found(tier, &key, &cached, &fresh).await;
    }

    async fn found(&self, tier: Tier, key: &CacheKey, cached: &Entry, fresh: &Fresh) {
        let tier_label = AUDIT_TIERS[tier.index()];
        self.metrics.audit.stale(key.kind(), tier.index());
        let finding = Finding {
            key: key.as_str().to_owned(),
            kind: key.kind().as_str(),
            tier: tier_label,
            cached_etag: String::from_utf8_lossy(&cached.etag).into_owned(),
            postgres_etag: fresh.etag(),
            found_at_ms: crate::cache::now_ms(),
        };
        tracing::error!(
            key = %finding.key,
            tier = tier_label,
            cached_etag = %finding.cached_etag,
            postgres_etag = finding.postgres_etag.as_deref().unwrap_or("none (row gone)"),
            "stale cache entry found by the auditor: dropped"
        );
        let deletion = Deletion {
            keys: vec![key.clone()],
            tags: Vec::new(),
        };
        if let Err(e) = self.invalidator.admin(deletion).await {
            tracing::warn!(key = %finding.key, error = %e, "the stale entry could not be dropped from Redis");
        }
        let mut findings = self.findings.lock().expect("not poisoned");
        if findings.len() == FINDINGS_KEPT {
            findings.pop_front();
        }
        findings.push_back(finding);
    }
}
