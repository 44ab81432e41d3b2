//! The tiered read-through cache: L1 (moka, in process) → L2 (Redis) → loader (Postgres).
//!
//! One generic path serves every kind of lookup; kinds differ only in their [`Policy`].

mod breaker;
mod coherence;
mod entry;
mod keys;
mod local;
mod remote;
mod tiered;

pub use breaker::{Breaker, BreakerConfig, BreakerState, Transition};
pub use coherence::{ChannelState, Coherence};
pub use entry::{now_ms, Entry, Loaded};
pub use keys::{fnv1a, CacheKey, Kind, Policies, Policy, Tag};
pub use local::{Fence, L1Hit, Local};
pub use remote::{
    Deletion, Dropped, Fill, L2Read, Lease, Marker, Remote, RemoteConfig, ResetCause, MAX_FILL_AGE,
};
pub use tiered::{CacheStatus, FailSafe, FillHook, LeaseConfig, LoadFuture, Lookup, Mode, Tiered};

use crate::store::StoreError;

/// Failures of the cache tiers or of the load behind them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("redis error: {0}")]
    Redis(String),
    #[error("redis operation timed out")]
    Timeout,
    #[error("redis is not connected")]
    Unavailable,
    #[error("cache configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Load(#[from] StoreError),
    #[error("the load for this key was abandoned")]
    Abandoned,
    #[error("the lookup did not finish within its deadline")]
    Deadline,
}
