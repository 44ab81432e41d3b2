//! The change listener: `LISTEN sidecache_changes` on a connection of its own, and on every
//! notification (and every `poll` as a safety net) read the outbox from where it left off and
//! apply each committed transaction's changes through [`Invalidator::replay`].
//!
//! NOTIFY alone loses what happens while the connection is away; the outbox does not. On connect
//! and on every reconnect the listener replays the outbox from its cursor, so no change is
//! missed — unless it was away longer than the outbox keeps rows, in which case it flushes L1.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::Invalidator;
use crate::cache::{Coherence, ResetCause};
use crate::domain::TxId;
use crate::lifecycle::{Backoff, Shutdown};
use crate::metrics::Metrics;
use crate::store::outbox::{self, Cursor, OutboxChange};
use crate::store::{Store, StoreError};

/// How soon the listener tries again after a connection attempt that Postgres did not answer.
const RETRY_UNANSWERED: Duration = Duration::from_millis(20);

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Where to LISTEN (a direct connection: LISTEN does not survive transaction pooling).
    pub connect: PgConnectOptions,
    pub connect_timeout: Duration,
    /// How long a catch-up may take before the connection is presumed dead.
    pub read_timeout: Duration,
    /// Read the outbox this often even without a notification.
    pub poll: Duration,
    /// Outbox rows older than this are pruned (by every instance, every `prune_every`).
    pub retention: Duration,
    pub prune_every: Duration,
    /// New rows read per statement.
    pub batch: i64,
}

/// The listener of one instance.
pub struct Listener {
    cfg: ListenerConfig,
    invalidator: Invalidator,
    store: Store,
    coherence: Arc<Coherence>,
    metrics: Arc<Metrics>,
    /// The highest outbox id applied (for the backlog gauge).
    applied: AtomicI64,
}

impl Listener {
    pub fn new(
        cfg: ListenerConfig,
        invalidator: Invalidator,
        store: Store,
        coherence: Arc<Coherence>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Listener {
            cfg,
            invalidator,
            store,
            coherence,
            metrics,
            applied: AtomicI64::new(-1),
        })
    }

    /// The highest outbox id applied so far (`None` before the first catch-up).
    pub fn applied_id(&self) -> Option<i64> {
        Some(self.applied.load(Ordering::Relaxed)).filter(|v| *v >= 0)
    }

    /// Listens, replays and applies until shutdown; reconnects by itself.
    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut cursor: Option<Cursor> = None;
        // When the outbox was last read in full.
        let mut last_read: Option<Instant> = None;
        let mut backoff = Backoff::default();
        loop {
            if shutdown.is_stopped() {
                return;
            }
            let mut listener = match self.connect().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "change listener cannot connect; retrying");
                    // Postgres refused us (auth, too many clients): back off. It did not answer
                    // (refused, reset, timed out): try again soon, so that changes made during an
                    // outage are applied within milliseconds of its end, not after a backoff.
                    // An unanswered attempt costs no Postgres backend; one that hangs takes the
                    // connect timeout itself.
                    let waited = if matches!(e, sqlx::Error::Database(_)) {
                        backoff.wait(&mut shutdown).await
                    } else {
                        shutdown.sleep(RETRY_UNANSWERED).await
                    };
                    if !waited {
                        return;
                    }
                    continue;
                }
            };
            let mut caught_up = false;
            let outcome = self
                .serve(
                    &mut listener,
                    &mut cursor,
                    &mut shutdown,
                    &mut last_read,
                    &mut caught_up,
                )
                .await;
            self.coherence.set_listener(false);
            self.metrics.listener_up.set(0);
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "change listener lost its connection; replaying the outbox when it is back");
                }
            }
            // A session that never caught up (the outbox cannot be read, say) is not retried
            // at once: each attempt costs a Postgres backend.
            if caught_up {
                backoff.reset();
            } else if !backoff.wait(&mut shutdown).await {
                return;
            }
        }
    }

    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        // A one-connection pool per attempt: PgListener takes its connection from a pool.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.cfg.connect_timeout)
            .connect_lazy_with(self.cfg.connect.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        // We reconnect ourselves, so that every reconnect replays the outbox.
        listener.eager_reconnect(false);
        tokio::time::timeout(self.cfg.connect_timeout, listener.listen(outbox::CHANNEL))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(listener)
    }

    /// Catches up, then applies on every notification and poll. `Ok` when stopped, `Err` when
    /// the connection is lost; `caught_up` tells whether the first catch-up succeeded.
    async fn serve(
        &self,
        listener: &mut PgListener,
        cursor: &mut Option<Cursor>,
        shutdown: &mut Shutdown,
        last_read: &mut Option<Instant>,
        caught_up: &mut bool,
    ) -> Result<(), StoreError> {
        if cursor.is_none() {
            *cursor = Some(self.start(listener).await?);
        }
        self.catch_up(listener, cursor, last_read).await?;
        *caught_up = true;
        self.coherence.set_listener(true);
        self.metrics.listener_up.set(1);
        tracing::info!(
            last_id = cursor.as_ref().map_or(0, |c| c.last_id),
            "change listener connected and caught up"
        );
        let mut poll = tokio::time::interval(self.cfg.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => {
                        // One read serves every notification already waiting.
                        while listener.next_buffered().is_some() {}
                        self.catch_up(listener, cursor, last_read).await?;
                    }
                    Ok(None) => return Err(StoreError::Unavailable(Arc::new(sqlx::Error::PoolClosed))),
                    Err(e) => return Err(StoreError::Unavailable(Arc::new(e))),
                },
                _ = poll.tick() => self.catch_up(listener, cursor, last_read).await?,
                _ = shutdown.recv() => return Ok(()),
            }
        }
    }

    /// A cursor at the end of the outbox as it is now.
    async fn start(&self, listener: &mut PgListener) -> Result<Cursor, StoreError> {
        tokio::time::timeout(
            self.cfg.read_timeout,
            outbox::start(listener, &self.metrics),
        )
        .await
        .map_err(|_| StoreError::Unavailable(Arc::new(sqlx::Error::PoolTimedOut)))?
    }

    /// Reads what is new and applies it, one transaction at a time, in commit-id order, a batch
    /// at a time (each read has its own timeout, so a large backlog is worked off rather than
    /// timing out as a whole).
    ///
    /// First, if the outbox was last read longer ago than it keeps rows (the connection was
    /// away, or the process paused), changes may be gone for good and Redis may hold values
    /// they made stale: the listener takes a fresh cursor at the end of the outbox, then resets
    /// the Redis namespace (a new incarnation voids every value at once) and drops L1. Every
    /// change committed before the fresh cursor is covered by the reset, every later one is
    /// read from it. If Redis cannot be reached the reset is owed and L2 bypassed until it
    /// lands; the voided values are swept in the background.
    async fn catch_up(
        &self,
        listener: &mut PgListener,
        cursor: &mut Option<Cursor>,
        last_read: &mut Option<Instant>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        if last_read.is_some_and(|t| t.elapsed() >= self.cfg.retention) {
            *cursor = Some(self.start(listener).await?);
            let cache = self.invalidator.cache().clone();
            let redis = cache.reset(ResetCause::ListenerGap).await;
            tracing::warn!(
                redis_reset = redis.is_ok(),
                "change listener was away longer than the outbox retention; Redis namespace reset and L1 flushed"
            );
            tokio::spawn(async move {
                if let Err(e) = cache.sweep().await {
                    tracing::debug!(error = %e, "sweeping voided values failed; their TTL will");
                }
            });
        }
        let Some(cursor) = cursor.as_mut() else {
            return Ok(());
        };
        loop {
            let read = outbox::read_since(listener, cursor, self.cfg.batch, &self.metrics);
            let (changes, more) = tokio::time::timeout(self.cfg.read_timeout, read)
                .await
                .map_err(|_| StoreError::Unavailable(Arc::new(sqlx::Error::PoolTimedOut)))??;
            for group in by_transaction(&changes) {
                let txid = group[0].txid;
                if let Err(e) = self.invalidator.replay(txid, &group).await {
                    // L1 is dropped; Redis is owed and retried in the background.
                    tracing::warn!(error = %e, txid = txid.0, "redis invalidation of a database change deferred");
                }
            }
            self.applied.store(cursor.last_id, Ordering::Relaxed);
            if !more {
                break;
            }
        }
        // Counted from before the read: rows written since may be pruned a retention later.
        *last_read = Some(started);
        Ok(())
    }

    /// Prunes old outbox rows and keeps the backlog gauge current, until shutdown. Runs on
    /// the pool, so the backlog shows even while the listener's own connection is down.
    pub async fn housekeeping(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut backlog = tokio::time::interval(Duration::from_secs(1));
        let mut prune = tokio::time::interval(self.cfg.prune_every);
        backlog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = backlog.tick() => {
                    if let (Ok(newest), Some(applied)) = (self.store.outbox_newest().await, self.applied_id()) {
                        self.metrics.outbox_backlog.set((newest - applied).max(0));
                    }
                }
                _ = prune.tick() => {
                    match self.store.prune_outbox(self.cfg.retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(rows = n, "pruned the outbox"),
                        Err(e) => tracing::debug!(error = %e, "outbox pruning failed"),
                    }
                }
                _ = shutdown.recv() => return,
            }
        }
    }
}

/// Groups changes by transaction, in order of each transaction's first row. A transaction's rows
/// become visible together, so every instance's listener sees the same groups (and so agrees on
/// the marker that says a group was applied). Invalidations commute, so the order between
/// transactions does not matter.
fn by_transaction(changes: &[OutboxChange]) -> Vec<Vec<OutboxChange>> {
    let mut order: Vec<TxId> = Vec::new();
    let mut groups: HashMap<TxId, Vec<OutboxChange>> = HashMap::new();
    for c in changes {
        groups
            .entry(c.txid)
            .or_insert_with(|| {
                order.push(c.txid);
                Vec::new()
            })
            .push(c.clone());
    }
    order
        .into_iter()
        .filter_map(|t| groups.remove(&t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Change, LeadId, Op, OrgId};

    fn c(id: i64, txid: u64) -> OutboxChange {
        OutboxChange {
            id,
            txid: TxId(txid),
            change: Change::Conversation {
                id: crate::domain::ConversationId::new_random(),
                lead: LeadId::new_random(),
                org: OrgId::new_random(),
                op: Op::Insert,
            },
            origin: None,
            created_ms: 0.0,
        }
    }

    #[test]
    fn groups_follow_transactions() {
        assert!(by_transaction(&[]).is_empty());
        let v = vec![c(1, 10), c(2, 10), c(3, 11), c(4, 10)];
        let groups = by_transaction(&v);
        let txids: Vec<TxId> = groups.iter().map(|g| g[0].txid).collect();
        assert_eq!(txids, vec![TxId(10), TxId(11)], "first appearance order");
        let ids: Vec<i64> = groups[0].iter().map(|c| c.id).collect();
        assert_eq!(
            ids,
            vec![1, 2, 4],
            "a transaction's rows stay together, in id order"
        );
    }
}
