//! One report of this instance's state — its phase, its dependencies and its invalidation
//! channels — gathered in one place and read by `/readyz` and `/admin/stats` alike.

use axum::http::StatusCode;

use super::AppState;
use crate::labels::ChannelState;
use crate::lifecycle::Phase;

pub(super) struct Report {
    pub(super) phase: Phase,
    pub(super) postgres_up: bool,
    pub(super) pool_size: u32,
    pub(super) pool_idle: usize,
    pub(super) redis_enabled: bool,
    pub(super) redis_connected: bool,
    /// Why the last attempt to connect to Redis failed, while it is not connected.
    pub(super) redis_error: Option<String>,
    pub(super) breaker: &'static str,
    /// Invalidations (or a reset) owed to Redis: L2 is bypassed until they land.
    pub(super) owed: bool,
    pub(super) l1_enabled: bool,
    /// While a channel is down, how long new L1 entries may live.
    pub(super) l1_ttl_cap_secs: Option<u64>,
    pub(super) listener: ChannelState,
    pub(super) applied_id: Option<i64>,
    pub(super) bus: ChannelState,
}

impl Report {
    pub(super) fn gather(state: &AppState) -> Self {
        let pool = state.store.pool();
        let remote = state.cache.remote();
        let coherence = state.cache.coherence();
        Report {
            phase: state.health.phase(),
            postgres_up: state.health.postgres_up(),
            pool_size: pool.size(),
            pool_idle: state.store.idle_connections(),
            redis_enabled: state.redis_enabled,
            redis_connected: remote.is_some_and(|r| r.is_up()),
            redis_error: remote.and_then(|r| r.redis().connect_error()),
            breaker: remote.map_or("disabled", |r| r.breaker_state().as_str()),
            owed: remote.is_some_and(|r| r.is_up() && r.owes()),
            l1_enabled: state.cache.local().enabled(),
            l1_ttl_cap_secs: coherence.l1_ttl_cap().map(|d| d.as_secs()),
            listener: coherence.listener(),
            applied_id: state.listener.as_ref().and_then(|l| l.applied_id()),
            bus: coherence.bus(),
        }
    }

    /// Answers still flow, but a dependency or a channel is down.
    pub(super) fn degraded(&self) -> bool {
        !self.postgres_up
            || (self.redis_enabled && !self.redis_connected)
            || self.listener == ChannelState::Down
            || self.bus == ChannelState::Down
    }

    /// `/readyz`'s status code and word.
    pub(super) fn readiness(&self) -> (StatusCode, &'static str) {
        match self.phase {
            Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
            Phase::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
            Phase::Ready if self.degraded() => (StatusCode::OK, "degraded"),
            Phase::Ready => (StatusCode::OK, "ready"),
        }
    }
}
