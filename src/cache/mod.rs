//! The tiered read-through cache: L1 (moka, in process) → L2 (Redis) → loader (Postgres).
//!
//! One generic path serves every kind of lookup; kinds differ only in their [`Policy`].

mod coherence;
mod entry;
mod keys;
mod local;
mod remote;
mod tiered;

pub use crate::labels::BreakerState;
pub use coherence::{ChannelState, Coherence};
pub use entry::{now_ms, Entry, Ids, Loaded};
pub use keys::{fnv1a, CacheKey, Kind, Policies, Policy, Tag};
pub use local::{Fence, L1Hit, Local};
pub use remote::{
    Deletion, Dropped, L2Read, Lease, Marker, Remote, RemoteConfig, ResetCause, MAX_FILL_AGE,
};
pub use tiered::{CacheStatus, FailSafe, FillHook, LeaseConfig, LoadFuture, Lookup, Mode, Tiered};

use std::sync::Arc;

use crate::redis::RedisError;

/// Failures of the cache tiers or of the load behind them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("the load for this key was abandoned")]
    Abandoned,
    #[error("the lookup did not finish within its deadline")]
    Deadline,
}

/// Why the load behind a lookup failed. The cache knows nothing of where values come from; the
/// source maps its own errors into this (Postgres: `store`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The source could not be reached or did not answer in time: worth a retry.
    #[error("source unavailable: {0}")]
    Unavailable(Arc<str>),
    /// The source answered with an error, or its answer could not be encoded.
    #[error("{0}")]
    Failed(Arc<str>),
}
