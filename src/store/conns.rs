//! Connections kept out of the sqlx pool between statements.
//!
//! sqlx's pool tests a connection with a round trip to Postgres (a Sync, answered by
//! ReadyForQuery) when it hands it out, and again, in a spawned task, when it takes it back: with
//! the statement itself, three round trips per lookup where one does the work. Here a connection
//! whose statement ran to its end goes to the longest-waiting statement, else onto a stack, and
//! the next statement uses it as it is.
//!
//! sqlx still opens, tests and closes every connection and counts it against `max_connections`.
//! A connection that may have died unseen is tested first, as sqlx would: one idle here for
//! longer than [`MAX_IDLE`], and one taken from the pool's idle ones. The oldest idle one goes
//! back to the pool once it has been idle that long (the pool's idle limit then applies), and so
//! does one out for longer than [`MAX_HELD`] while another is idle here (its lifetime limit). A
//! read that meets a lost connection all the same runs once more on one the pool tested or
//! opened, and the idle ones kept here are closed (they most likely went with it); a write is
//! always given a tested connection, as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::oneshot;

/// A connection unused for longer than this is tested before it is used again: under load
/// connections come back within milliseconds and are never tested, while one that sat through a
/// quiet second costs what it always did (one ping).
const MAX_IDLE: Duration = Duration::from_secs(1);

/// How long a connection stays out of the pool at most (unless a statement is waiting for it),
/// so that the pool's lifetime limit applies to it: one test a minute per connection.
const MAX_HELD: Duration = Duration::from_secs(60);

/// What a connection needs before a statement may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Just finished a statement here: nothing (a write still pings it).
    Fresh,
    /// Idle long enough to have died unseen: a ping.
    Stale,
    /// Tested by the pool, or new: nothing.
    Tested,
}

struct Held {
    conn: PoolConnection<Postgres>,
    taken_at: Instant,
    idle_since: Instant,
}

#[derive(Default)]
struct State {
    /// Idle connections, most recently used last.
    idle: VecDeque<Held>,
    /// Statements waiting for a connection, longest-waiting first (some may have given up).
    waiters: VecDeque<oneshot::Sender<Held>>,
}

/// The connections between statements, shared by every statement of the store.
pub(super) struct Conns {
    pool: PgPool,
    /// False where no runtime was at hand to watch for the pool's closing: connections then go
    /// straight back to the pool, as sqlx has them.
    keep: bool,
    // A std Mutex: held to push, pop or queue, never across an await.
    state: Mutex<State>,
}

impl Conns {
    pub(super) fn new(pool: PgPool) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let conns = Arc::new(Conns {
            pool,
            keep: runtime.is_some(),
            state: Mutex::new(State::default()),
        });
        if let Some(rt) = runtime {
            // `PgPool::close` waits for every connection out of the pool: hand back the ones
            // kept here as soon as it starts, and turn away the statements waiting here.
            let closed = conns.pool.close_event();
            let weak: Weak<Conns> = Arc::downgrade(&conns);
            rt.spawn(async move {
                closed.await;
                if let Some(conns) = weak.upgrade() {
                    let waiters = std::mem::take(&mut conns.lock().waiters);
                    drop(waiters);
                    conns.flush();
                }
            });
        }
        conns
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for a statement, within `timeout`. One that may have died unseen (idle
    /// for a while, or taken from the pool's idle ones untested) is pinged first, as the pool
    /// would; with `tested`, so is one that just finished a statement.
    pub(super) async fn get(
        self: &Arc<Self>,
        tested: bool,
        timeout: Duration,
    ) -> Result<Conn, sqlx::Error> {
        let started = Instant::now();
        let (mut conn, check) = match tokio::time::timeout(timeout, self.take()).await {
            Ok(taken) => taken?,
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        };
        if !(check == Check::Stale || (tested && check == Check::Fresh)) {
            return Ok(conn);
        }
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, conn.raw().ping()).await {
            Ok(Ok(())) => {
                conn.untested = false;
                Ok(conn)
            }
            _ => {
                // Likely not the only one.
                conn.discard();
                drop(conn);
                self.close_idle();
                self.from_pool().await
            }
        }
    }

    /// The most recently used idle connection; else one of the pool's (idle, or new while it
    /// is below its size); else, when every connection is out, the first one handed back.
    async fn take(self: &Arc<Self>) -> Result<(Conn, Check), sqlx::Error> {
        if !self.keep {
            return Ok((self.from_pool().await?, Check::Tested));
        }
        let rx = {
            let mut state = self.lock();
            if let Some(held) = state.idle.pop_back() {
                let check = if held.idle_since.elapsed() > MAX_IDLE {
                    Check::Stale
                } else {
                    Check::Fresh
                };
                return Ok((self.wrap(held, true), check));
            }
            // Idle in the pool for who knows how long: tested before use.
            if let Some(conn) = self.pool.try_acquire() {
                return Ok((self.fresh(conn, true), Check::Stale));
            }
            if self.pool.size() < self.pool.options().get_max_connections() {
                None
            } else {
                // Those at the front that gave up (each gives up within its timeout).
                while state.waiters.front().is_some_and(|w| w.is_closed()) {
                    state.waiters.pop_front();
                }
                let (tx, rx) = oneshot::channel();
                state.waiters.push_back(tx);
                Some(rx)
            }
        };
        let Some(rx) = rx else {
            // Below its size, the pool opens one (or, in a race, waits like any acquire).
            let conn = self.pool.acquire().await?;
            return Ok((self.fresh(conn, false), Check::Tested));
        };
        // Every connection is out, and those in use come back through `put`. The sender is
        // dropped only when the pool closes.
        match rx.await {
            Ok(held) => Ok((self.wrap(held, true), Check::Fresh)),
            Err(_) => Err(sqlx::Error::PoolClosed),
        }
    }

    /// A connection from the pool itself (tested, or new).
    pub(super) async fn from_pool(self: &Arc<Self>) -> Result<Conn, sqlx::Error> {
        let conn = self.pool.acquire().await?;
        Ok(self.fresh(conn, false))
    }

    fn fresh(self: &Arc<Self>, conn: PoolConnection<Postgres>, untested: bool) -> Conn {
        let now = Instant::now();
        let held = Held {
            conn,
            taken_at: now,
            idle_since: now,
        };
        self.wrap(held, untested)
    }

    fn wrap(self: &Arc<Self>, held: Held, untested: bool) -> Conn {
        Conn {
            held: Some(held),
            conns: Arc::clone(self),
            clean: false,
            untested,
        }
    }

    /// Takes back a connection whose statement finished: to the longest-waiting statement, else
    /// onto the stack, unless the pool is closing or it has been out long enough (and another is
    /// idle here). Hands the oldest idle one back to the pool if it has been idle too long.
    fn put(&self, held: Held) {
        let now = Instant::now();
        let mut held = Held {
            idle_since: now,
            ..held
        };
        let mut state = self.lock();
        if self.pool.is_closed() {
            drop(state);
            return; // `held` drops: sqlx closes it
        }
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(held) {
                Ok(()) => return,
                Err(back) => held = back, // that one gave up
            }
        }
        // Only while another one is idle here: a statement that comes next must find one
        // (those out of the pool come back to it only).
        if now.duration_since(held.taken_at) > MAX_HELD && !state.idle.is_empty() {
            drop(state);
            return; // back to the pool
        }
        state.idle.push_back(held);
        let stale = state
            .idle
            .front()
            .filter(|h| now.duration_since(h.idle_since) > MAX_IDLE)
            .is_some()
            .then(|| state.idle.pop_front())
            .flatten();
        drop(state);
        drop(stale);
    }

    /// Hands every idle connection kept here back to the pool.
    fn flush(&self) {
        let all = std::mem::take(&mut self.lock().idle);
        drop(all);
    }

    /// After one was found lost: closes every idle connection kept here, as the pool closes one
    /// that fails its test (they most likely went together, with a restart or a network cut;
    /// handed back, each would log a failed test at WARN). The pool opens new ones as needed.
    pub(super) fn close_idle(&self) {
        let mut all = std::mem::take(&mut self.lock().idle);
        for held in &mut all {
            held.conn.close_on_drop();
        }
        drop(all);
    }

    /// Idle connections kept here.
    pub(super) fn idle(&self) -> usize {
        self.lock().idle.len()
    }
}

impl Drop for Conns {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            // sqlx hands a dropped connection back from a spawned task, which needs a runtime;
            // without one the process is ending, and the sockets close with it.
            let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            for held in state.idle.drain(..) {
                std::mem::forget(held.conn);
            }
        }
    }
}

/// A connection for one statement. Kept for the next one if [`Conn::finish`] saw the statement
/// end without losing it; otherwise (cancelled, or the connection failed) it goes back to the
/// pool, which drains or closes it.
pub(super) struct Conn {
    held: Option<Held>,
    conns: Arc<Conns>,
    clean: bool,
    /// Came from here without a test: a lost connection is worth one more try.
    untested: bool,
}

impl Conn {
    pub(super) fn untested(&self) -> bool {
        self.untested
    }

    pub(super) fn raw(&mut self) -> &mut PgConnection {
        match self.held.as_mut() {
            Some(h) => &mut h.conn,
            // `held` is taken only in drop.
            None => unreachable!("a Conn holds its connection until dropped"),
        }
    }

    /// Records how the statement ended: the connection is kept unless it was lost, and then
    /// closed (as the pool closes one that fails its test) rather than handed back.
    pub(super) fn finish<T>(&mut self, result: &Result<T, sqlx::Error>) {
        match result {
            Err(e) if lost(e) => self.discard(),
            _ => self.clean = true,
        }
    }

    /// Closes it when dropped instead of handing it back to the pool (it may hang).
    fn discard(&mut self) {
        self.clean = false;
        if let Some(h) = self.held.as_mut() {
            h.conn.close_on_drop();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(held) = self.held.take() else { return };
        if self.clean && self.conns.keep {
            self.conns.put(held);
        }
    }
}

/// Errors after which a connection is gone, or in a state nobody can tell: it is not kept, and
/// a read is tried again on another.
pub(super) fn lost(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::WorkerCrashed => true,
        // connection exceptions; the server shutting down or ending the session
        E::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P02"),
        _ => false,
    }
}
