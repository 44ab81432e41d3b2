//! The L2 tier's vocabulary: what a read returns, what a fill did, leases, deletions and the
//! bookkeeping markers of invalidations.

use std::time::Instant;

use bytes::Bytes;

use crate::cache::keys::{CacheKey, Tag};
use crate::domain::TxId;
use crate::labels::ResetCause;
use crate::redis::RedisConfig;

/// Records in Redis which transactions' invalidations have landed, so that every instance's
/// change listener does not repeat the work of the write route (or of another listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// No bookkeeping (admin invalidations, owed retries of unmarked deletions).
    None,
    /// A write route's own commit: always drop, then mark the transaction as handled.
    Write(TxId),
    /// Changes read from the outbox: skip if the write route or another listener already
    /// dropped them, else drop and mark this group of rows (`group` names it, e.g. its id range).
    Replay { txid: TxId, group: String },
}

/// What an invalidation did in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Entries dropped (values and tag members).
    Entries(u64),
    /// Someone had already applied it (the marker was there).
    AlreadyApplied,
}

/// What an L2 read returned: the value, if any, and the tokens a later fill must match (the
/// incarnation and the fence counters).
#[derive(Debug, Clone)]
pub struct L2Read {
    pub value: Option<Bytes>,
    pub incarnation: Bytes,
    pub tokens: Vec<i64>,
    pub lease: Lease,
    /// When the read was sent: a fill older than [`MAX_FILL_AGE`] is not sent.
    pub at: Instant,
}

/// Work that could not reach Redis and is retried until it does; L2 is bypassed meanwhile.
#[derive(Debug, Clone)]
pub(super) enum Owed {
    Delete(Deletion, Marker),
    Reset(ResetCause),
}

/// The fill lease of a missing key (fleet-wide single flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Not asked for (the value was there, or leases are off).
    NotAsked,
    /// This load holds it, under this token; the fill releases it.
    Held(String),
    /// Another load (on this or another instance) holds it: wait for its fill.
    Busy,
}

/// The keys and tags of one invalidation, as Redis will see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deletion {
    pub keys: Vec<CacheKey>,
    pub tags: Vec<Tag>,
}

/// Connection settings for the Redis tier.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub redis: RedisConfig,
    pub namespace: String,
}
