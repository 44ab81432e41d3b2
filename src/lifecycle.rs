//! The process's lifecycle, as every task sees it: the [`Shutdown`] handle background tasks take
//! (as in mini-redis `shutdown.rs`), the OS signals that start it, the [`Phase`] and [`Health`]
//! facts `/readyz` reports, and the [`Backoff`] of reconnecting tasks. A leaf: it depends on
//! nothing else in the crate.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Tells a task that the process is stopping. Cheap to clone; every background task holds one.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Sets every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

impl Shutdown {
    /// A stop trigger and a handle that hears it.
    pub fn new() -> (Stop, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Stop(tx), Shutdown(rx))
    }

    /// True once the stop was given.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the stop is given (or its trigger is gone).
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    /// Sleeps for `delay`; false if the stop was given meanwhile.
    pub async fn sleep(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.recv() => false,
        }
    }
}

impl Stop {
    /// Gives the stop to every handle.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }

    /// Another handle hearing this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Lifecycle phase, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

impl Phase {
    /// `starting`, `ready` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

/// Liveness facts shared between the probes and `/readyz`.
#[derive(Debug)]
pub struct Health {
    phase: AtomicU8,
    postgres_up: AtomicBool,
    /// Woken when draining starts (long-lived answers such as the stats stream end then).
    draining: tokio::sync::Notify,
    started: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            phase: AtomicU8::new(Phase::Starting as u8),
            postgres_up: AtomicBool::new(false),
            draining: tokio::sync::Notify::new(),
            started: Instant::now(),
        }
    }
}

impl Health {
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            1 => Phase::Ready,
            2 => Phase::Draining,
            _ => Phase::Starting,
        }
    }
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
        if p == Phase::Draining {
            self.draining.notify_waiters();
        }
    }
    /// Completes when draining starts (check [`Health::phase`] too: a start between the check
    /// and the wait is not seen here).
    pub async fn draining(&self) {
        self.draining.notified().await;
    }
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
    pub fn postgres_up(&self) -> bool {
        self.postgres_up.load(Ordering::Relaxed)
    }
    pub fn set_postgres_up(&self, up: bool) {
        self.postgres_up.store(up, Ordering::Relaxed);
    }
}

/// The delay between reconnect attempts of a task (the listener, the bus): 100 ms, doubling to
/// 2 s, back to 100 ms after a success.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Self::FIRST)
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    /// Sleeps for the current delay and doubles it; false if the stop was given meanwhile.
    pub async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        shutdown.sleep(delay).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_handle_hears_the_stop() {
        let (stop, mut a) = Shutdown::new();
        let mut b = a.clone();
        let mut c = stop.subscribe();
        assert!(!a.is_stopped());
        stop.stop();
        a.recv().await;
        b.recv().await;
        c.recv().await;
        assert!(b.is_stopped());
        assert!(
            !b.sleep(Duration::from_secs(60)).await,
            "a stopped sleep ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_its_ceiling_and_resets() {
        let (_stop, mut shutdown) = Shutdown::new();
        let mut b = Backoff::default();
        let started = tokio::time::Instant::now();
        for _ in 0..6 {
            assert!(b.wait(&mut shutdown).await);
        }
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2.0
        assert_eq!(started.elapsed(), Duration::from_millis(5100));
        b.reset();
        let t = tokio::time::Instant::now();
        b.wait(&mut shutdown).await;
        assert_eq!(t.elapsed(), Duration::from_millis(100));
    }
}
