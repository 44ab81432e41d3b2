//! A circuit breaker for Redis: closed → open after consecutive failures or a failure rate over
//! a window → half-open after a pause, where one probe decides between closed and open again.
//! While it is open, callers skip Redis at once instead of each waiting for a timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// ...or when at least `min_requests` in the current window failed at this rate.
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window: Duration,
    /// How long to stay open before letting a probe through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(1),
        }
    }
}

use crate::labels::BreakerState;

/// The gauge value of a state (0, 1, 2).
impl BreakerState {
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive: u32,
    window_start: Instant,
    requests: u32,
    failures: u32,
    opened_at: Instant,
    probe_in_flight: bool,
}

/// The breaker. A std Mutex: it is held for a few comparisons, never across an await.
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

/// A state change, for the caller to log and count (once per transition).
pub type Transition = Option<(BreakerState, BreakerState)>;

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        let now = Instant::now();
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive: 0,
                window_start: now,
                requests: 0,
                failures: 0,
                opened_at: now,
                probe_in_flight: false,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go to Redis now? Closed: yes. Open: no, until `open_for` has passed; then the
    /// breaker is half-open and exactly one call (the probe) is let through.
    pub fn allow(&self) -> (bool, Transition) {
        let mut s = self.lock();
        match s.state {
            BreakerState::Closed => (true, None),
            BreakerState::Open if s.opened_at.elapsed() >= self.cfg.open_for => {
                s.state = BreakerState::HalfOpen;
                s.probe_in_flight = true;
                (true, Some((BreakerState::Open, BreakerState::HalfOpen)))
            }
            BreakerState::Open => (false, None),
            BreakerState::HalfOpen if !s.probe_in_flight => {
                s.probe_in_flight = true;
                (true, None)
            }
            BreakerState::HalfOpen => (false, None),
        }
    }

    /// A call that [`Breaker::allow`] let through was dropped before it had an outcome (its
    /// caller gave up on it): if it was the half-open probe, the next call may probe instead.
    /// Without this, a probe cancelled mid-flight would leave the breaker half-open for good.
    pub fn abandon(&self) {
        let mut s = self.lock();
        if s.state == BreakerState::HalfOpen {
            s.probe_in_flight = false;
        }
    }

    /// Records the outcome of a call that [`Breaker::allow`] let through.
    pub fn record(&self, ok: bool) -> Transition {
        let mut s = self.lock();
        let now = Instant::now();
        if now.duration_since(s.window_start) >= self.cfg.window {
            s.window_start = now;
            s.requests = 0;
            s.failures = 0;
        }
        s.requests += 1;
        if ok {
            s.consecutive = 0;
        } else {
            s.consecutive += 1;
            s.failures += 1;
        }
        let from = s.state;
        let to = match (from, ok) {
            (BreakerState::HalfOpen, true) => BreakerState::Closed,
            (BreakerState::HalfOpen, false) => BreakerState::Open,
            (BreakerState::Closed, false)
                if s.consecutive >= self.cfg.consecutive_failures
                    || (s.requests >= self.cfg.min_requests
                        && f64::from(s.failures)
                            >= self.cfg.failure_rate * f64::from(s.requests)) =>
            {
                BreakerState::Open
            }
            (state, _) => state,
        };
        s.probe_in_flight = false;
        if to == from {
            return None;
        }
        s.state = to;
        match to {
            BreakerState::Open => s.opened_at = now,
            BreakerState::Closed => {
                s.consecutive = 0;
                s.window_start = now;
                s.requests = 0;
                s.failures = 0;
            }
            BreakerState::HalfOpen => {}
        }
        Some((from, to))
    }

    /// Forces the breaker open (Redis is known to be unreachable, e.g. not connected at all).
    pub fn trip(&self) -> Transition {
        let mut s = self.lock();
        if s.state == BreakerState::Open {
            return None;
        }
        let from = s.state;
        s.state = BreakerState::Open;
        s.opened_at = Instant::now();
        s.probe_in_flight = false;
        Some((from, BreakerState::Open))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_requests: 10,
            window: Duration::from_secs(60),
            open_for: Duration::from_millis(20),
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_one_probe() {
        let b = Breaker::new(quick());
        for _ in 0..2 {
            assert!(b.allow().0);
            assert_eq!(b.record(false), None);
        }
        assert!(b.allow().0);
        assert_eq!(
            b.record(false),
            Some((BreakerState::Closed, BreakerState::Open))
        );
        assert!(!b.allow().0, "open: no calls");
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(
            b.allow(),
            (true, Some((BreakerState::Open, BreakerState::HalfOpen)))
        );
        assert!(!b.allow().0, "half-open: one probe at a time");
        assert_eq!(
            b.record(true),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
        assert!(b.allow().0);
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let b = Breaker::new(quick());
        b.trip();
        std::thread::sleep(Duration::from_millis(25));
        assert!(b.allow().0);
        assert_eq!(
            b.record(false),
            Some((BreakerState::HalfOpen, BreakerState::Open))
        );
        assert!(!b.allow().0);
    }

    #[test]
    fn opens_on_failure_rate_without_a_streak() {
        let b = Breaker::new(quick());
        for i in 0..10 {
            b.allow();
            let t = b.record(i % 2 == 0);
            if i < 9 {
                assert_eq!(t, None, "call {i}");
            } else {
                assert_eq!(t, Some((BreakerState::Closed, BreakerState::Open)));
            }
        }
    }

    #[test]
    fn a_probe_dropped_mid_flight_lets_the_next_call_probe() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 1,
            failure_rate: 1.0,
            min_requests: 100,
            window: Duration::from_secs(10),
            open_for: Duration::ZERO,
        });
        assert!(b.allow().0);
        b.record(false);
        assert!(b.allow().0, "half-open: the probe");
        assert!(!b.allow().0, "one probe at a time");
        b.abandon();
        assert!(b.allow().0, "the probe was dropped: another may go");
        b.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
