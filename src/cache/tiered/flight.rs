//! One flight: a miss's load, shared by the requests that join it. It reads L2, else loads from
//! the source, then fills L2 (compare-and-set against Redis fences) and L1 (against local
//! generations). A stale value met on the way is published to the waiting lookups.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::{Flight, LoadFuture, Lookup, Progress, Tiered};
use crate::cache::entry::{now_ms, Entry, Loaded};
use crate::cache::keys::{CacheKey, Policy, Tag};
use crate::cache::local::Fence;
use crate::cache::remote::{Lease, Remote};
use crate::cache::{CacheError, CacheStatus};
use crate::labels::{FillOutcome, Kind, LeaseOutcome, Tier};

impl Tiered {
    pub(super) fn join_or_start<F>(
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
        let kind = key.kind();
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
                Ok(stored) => self.count_fill(kind, Tier::L2, stored),
                Err(e) => {
                    self.metrics.fill(kind, Tier::L2, FillOutcome::Error);
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
        self.count_fill(kind, Tier::L1, stored);
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
        self.count_fill(key.kind(), Tier::L1, stored);
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
                break LeaseOutcome::Timeout;
            }
            tokio::time::sleep(lease.poll).await;
            match remote.peek(key, incarnation).await {
                Ok((Some(raw), _)) => {
                    if let Some(entry) = fresh(raw) {
                        self.metrics.lease_wait(LeaseOutcome::Filled);
                        return Some(entry);
                    }
                }
                Ok((None, true)) => {}
                // The holder released its lease without a value (its load failed, or its fill
                // was fenced by an invalidation): what it read is not for us.
                Ok((None, false)) => break LeaseOutcome::Released,
                Err(_) => {
                    break LeaseOutcome::Released;
                }
            }
        };
        self.metrics.lease_wait(outcome);
        None
    }

    fn count_fill(&self, kind: Kind, tier: Tier, stored: bool) {
        let outcome = if stored {
            FillOutcome::Stored
        } else {
            FillOutcome::Fenced
        };
        self.metrics.fill(kind, tier, outcome);
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
