//! One Redis server as every part of sidecache uses it: a multiplexed connection of the shared
//! [`Conn`] type, a small pool for control-plane commands (SCAN, UNLINK), and the guarded call
//! — every operation within its timeout, through the circuit breaker, counted and timed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::breaker::{Breaker, BreakerConfig, Transition};
pub use super::error::RedisError;
use super::sentinel::{Follow, Master, SentinelConfig};
use crate::labels::{BreakerState, RedisOp};
use crate::metrics::Metrics;

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// The CA (PEM) a `rediss://` server's certificate must chain to; the system's roots when
    /// `None`.
    pub tls_ca: Option<Vec<u8>>,
    /// Sentinel mode: the master is the one these sentinels name (`url` gives its credentials).
    pub sentinel: Option<SentinelConfig>,
    /// Cluster mode: the seed nodes (with credentials); `url` is not used.
    pub cluster: Option<Vec<String>>,
    /// Budget of one operation on the request path.
    pub timeout: Duration,
    /// Budget of (re)connecting.
    pub connect_timeout: Duration,
    /// Connections in the control-plane pool.
    pub pool_size: usize,
    pub breaker: BreakerConfig,
}

/// A connection to Redis: one multiplexed connection that reconnects by itself (to the server
/// `redis.url` names, or to whichever server the sentinels name master), or redis-rs's cluster
/// connection (one per master, commands routed by slot, following MOVED and failovers). An enum
/// so that every user stays the same whatever the mode.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Sentinel(Arc<Follow>),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Which underlying connection operations go over now: a write and the `WAIT` after it
    /// must share one (see [`Redis::replicated`]).
    pub fn generation(&self) -> u64 {
        self.server().map_or(0, |(_, g)| g)
    }

    /// The server a Sentinel connection goes to now, with its generation.
    fn server(&self) -> Option<((String, u16), u64)> {
        match self {
            Conn::Standalone(_) | Conn::Cluster(_) => None,
            Conn::Sentinel(f) => f.server(),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Sentinel(f) => Box::pin(f.command(cmd)),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Sentinel(f) => Box::pin(f.pipeline(cmd, offset, count)),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Sentinel(f) => f.db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One Redis server with its guarded calls.
pub struct Redis {
    client: redis::Client,
    conn: OnceLock<Conn>,
    pool: deadpool_redis::Pool,
    timeout: Duration,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    breaker: Breaker,
    /// Operations that failed so far (a failure may be a restart: users that must know check).
    failures: AtomicU64,
    /// Woken after a failure.
    failed: tokio::sync::Notify,
    /// Why the last attempt to connect failed (a certificate refused, a password wrong), until
    /// one succeeds: for `/readyz`.
    connect_error: std::sync::Mutex<Option<String>>,
    /// Sentinel mode: the current master, and the control pool of the master it was made for.
    master: Option<Arc<Master>>,
    watching: std::sync::atomic::AtomicBool,
    master_pool: std::sync::Mutex<Option<(String, deadpool_redis::Pool)>>,
    pool_cfg: (usize, Duration),
    /// Sentinel mode: replicas a state write must reach before it is acknowledged.
    wait_replicas: u32,
    /// Sentinel mode: the state writes' own connection.
    state: OnceLock<Conn>,
    /// Cluster mode: the seed nodes, as a cluster client and one by one (for subscribers).
    cluster: Option<(redis::cluster::ClusterClient, Vec<redis::Client>)>,
}

impl Redis {
    /// Prepares the connections without opening them; [`Redis::connect`] does that.
    pub fn new(cfg: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, RedisError> {
        let client = match &cfg.tls_ca {
            None => redis::Client::open(cfg.url.as_str()),
            Some(ca) => redis::Client::build_with_tls(
                cfg.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
        }
        .map_err(|e| RedisError::Config(format!("redis url: {e}")))?;
        let pool_cfg = (cfg.pool_size.max(1), cfg.connect_timeout);
        let pool = pool_for(&client, pool_cfg)?;
        let master = match &cfg.sentinel {
            Some(s) => Some(Arc::new(Master::new(
                s,
                client.get_connection_info().clone(),
                cfg.connect_timeout,
            )?)),
            None => None,
        };
        Ok(Redis {
            client,
            conn: OnceLock::new(),
            pool,
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
            metrics,
            breaker: Breaker::new(cfg.breaker),
            failures: AtomicU64::new(0),
            failed: tokio::sync::Notify::new(),
            connect_error: std::sync::Mutex::new(None),
            master,
            watching: std::sync::atomic::AtomicBool::new(false),
            master_pool: std::sync::Mutex::new(None),
            pool_cfg,
            wait_replicas: cfg.sentinel.as_ref().map_or(0, |s| s.wait_replicas),
            state: OnceLock::new(),
            cluster: match &cfg.cluster {
                Some(urls) => Some(super::cluster::client(
                    urls,
                    cfg.tls_ca.as_ref(),
                    (cfg.connect_timeout, cfg.timeout),
                )?),
                None => None,
            },
        })
    }

    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Opens a new connection that reconnects by itself, with these budgets.
    pub async fn open(&self, response_timeout: Duration) -> Result<Conn, RedisError> {
        if let Some(master) = &self.master {
            return self.follow(master, response_timeout).await;
        }
        if let Some((cluster, _)) = &self.cluster {
            let mut conn =
                tokio::time::timeout(self.connect_timeout, cluster.get_async_connection())
                    .await
                    .map_err(|_| RedisError::Timeout)?
                    .map_err(|e| RedisError::Redis(e.to_string()))?;
            // A cluster that answers but has slots nobody serves is not up.
            let state: String = tokio::time::timeout(
                self.connect_timeout,
                redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn),
            )
            .await
            .map_err(|_| RedisError::Timeout)?
            .map_err(|e| RedisError::Redis(e.to_string()))?;
            if !state.contains("cluster_state:ok") {
                return Err(RedisError::Redis(
                    "the cluster is not ok (cluster_state)".into(),
                ));
            }
            return Ok(Conn::Cluster(conn));
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(response_timeout.max(Duration::from_millis(1))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mgr = tokio::time::timeout(
            self.connect_timeout,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        .map_err(|_| RedisError::Timeout)?
        .map_err(|e| RedisError::Redis(e.to_string()))?;
        Ok(Conn::Standalone(mgr))
    }

    /// A connection that follows the Sentinel master, checked with a PING; starts watching the
    /// sentinels the first time.
    async fn follow(
        &self,
        master: &Arc<Master>,
        response_timeout: Duration,
    ) -> Result<Conn, RedisError> {
        if !self.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(Master::watch(Arc::downgrade(master)));
        }
        if master.client().is_none() {
            master.refresh().await?;
        }
        let conn = Conn::Sentinel(Arc::new(Follow::new(
            master.clone(),
            self.connect_timeout,
            response_timeout.max(Duration::from_millis(1)),
        )));
        let mut ping = conn.clone();
        tokio::time::timeout(
            self.connect_timeout,
            redis::cmd("PING").query_async::<()>(&mut ping),
        )
        .await
        .map_err(|_| RedisError::Timeout)?
        .map_err(|e| RedisError::Redis(e.to_string()))?;
        Ok(conn)
    }

    /// Tries once to open the shared connection. Later drops are healed by the connection.
    pub async fn connect(&self) -> Result<(), RedisError> {
        if self.conn.get().is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let conn = match self.open(self.timeout).await {
            Ok(c) => c,
            Err(e) => {
                *self.connect_error.lock().expect("not poisoned") = Some(e.to_string());
                return Err(e);
            }
        };
        *self.connect_error.lock().expect("not poisoned") = None;
        if self.master.is_some() && self.wait_replicas > 0 {
            let _ = self.state.set(self.open(self.timeout).await?);
        }
        self.metrics
            .redis_connected(started.elapsed().as_secs_f64());
        let _ = self.conn.set(conn);
        self.metrics.redis_up.set(i64::from(self.is_up()));
        Ok(())
    }

    /// Why the last attempt to connect failed, while not connected.
    pub fn connect_error(&self) -> Option<String> {
        self.connect_error.lock().expect("not poisoned").clone()
    }

    /// True once the shared connection was opened.
    pub fn is_connected(&self) -> bool {
        self.conn.get().is_some()
    }

    /// True once connected and while the breaker is not open.
    pub fn is_up(&self) -> bool {
        self.is_connected() && self.breaker.state() != BreakerState::Open
    }

    /// The circuit breaker's state (open while never connected).
    pub fn breaker_state(&self) -> BreakerState {
        if self.is_connected() {
            self.breaker.state()
        } else {
            BreakerState::Open
        }
    }

    /// The shared connection.
    pub fn conn(&self) -> Result<Conn, RedisError> {
        self.conn.get().cloned().ok_or(RedisError::Unavailable)
    }

    /// A subscriber connection (pub/sub needs one of its own).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisError> {
        if let Some((_, nodes)) = &self.cluster {
            // A PUBLISH reaches every node of a cluster: any one that answers will do.
            let mut last = RedisError::Unavailable;
            for node in nodes {
                match tokio::time::timeout(self.connect_timeout, node.get_async_pubsub()).await {
                    Ok(Ok(p)) => return Ok(p),
                    Ok(Err(e)) => last = RedisError::Redis(e.to_string()),
                    Err(_) => last = RedisError::Timeout,
                }
            }
            return Err(last);
        }
        let client = match &self.master {
            Some(m) => m.client().ok_or(RedisError::Unavailable)?,
            None => self.client.clone(),
        };
        let connect = client.get_async_pubsub();
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(RedisError::Redis(e.to_string())),
            Err(_) => Err(RedisError::Timeout),
        }
    }

    /// A control-plane connection from the pool (SCAN, UNLINK: off the request path).
    pub async fn control(&self) -> Result<deadpool_redis::Connection, RedisError> {
        let pool = match &self.master {
            None => self.pool.clone(),
            Some(m) => {
                let client = m.client().ok_or(RedisError::Unavailable)?;
                let at = format!("{:?}", client.get_connection_info().addr());
                let mut kept = self.master_pool.lock().expect("not poisoned");
                match &*kept {
                    Some((k, p)) if *k == at => p.clone(),
                    _ => {
                        let p = pool_for(&client, self.pool_cfg)?;
                        *kept = Some((at, p.clone()));
                        p
                    }
                }
            }
        };
        pool.get()
            .await
            .map_err(|e| RedisError::Redis(e.to_string()))
    }

    /// Operations that failed so far, and changes of the Sentinel master (each a possible loss
    /// of state, like a failure).
    pub fn failures(&self) -> u64 {
        let switches = self
            .master
            .as_ref()
            .map_or(0, |m| m.switches.load(Ordering::Acquire));
        self.failures.load(Ordering::Acquire) + switches
    }

    /// After a state write (session, event, rate limit) on `conn` (`generation` taken before
    /// it): in Sentinel mode, asks for `wait_replicas` replicas (`WAIT`, bounded well inside the
    /// operation budget, on the state connection so the cache's commands never queue behind it).
    /// A write no replica confirmed stands if the server it went to is still the master the
    /// sentinels name (a replica lagging or rejoining); if that server was demoted, the write
    /// will be discarded when it resyncs, so it is an error: the caller keeps it in memory and
    /// writes it back to the new master.
    pub async fn replicated(&self, conn: &mut Conn, generation: u64) -> Result<(), RedisError> {
        let want = self.wait_replicas;
        let Some(master) = &self.master else {
            return Ok(());
        };
        if want == 0 {
            return Ok(());
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(want)
            .arg((self.timeout.as_millis() / 2).max(1) as u64);
        let got: u32 = self
            .run(RedisOp::Replicate, cmd.query_async(conn))
            .await
            .unwrap_or(0);
        let server = conn.server().filter(|(_, g)| *g == generation);
        if got >= want && server.is_some() {
            return Ok(());
        }
        match server {
            Some((at, _)) if master.still_master(&at).await => Ok(()),
            _ => Err(RedisError::Redis(
                "the write went to a server that is no longer the master".into(),
            )),
        }
    }

    /// The connection for session, event and rate-limit writes: in Sentinel mode one of its own
    /// (a `WAIT` after each write holds the connection until replicas answer), else the shared
    /// one.
    pub fn state_conn(&self) -> Result<Conn, RedisError> {
        match (&self.master, self.state.get()) {
            (Some(_), Some(c)) => Ok(c.clone()),
            _ => self.conn(),
        }
    }

    /// Completes after an operation failed or the master changed.
    pub async fn failed(&self) {
        match &self.master {
            None => self.failed.notified().await,
            Some(m) => tokio::select! {
                _ = self.failed.notified() => {}
                _ = m.switched.notified() => {}
            },
        }
    }

    /// Wakes whoever waits in [`Redis::failed`].
    pub fn wake(&self) {
        self.failed.notify_one();
    }

    /// Runs one Redis operation through the breaker and within the operation timeout, recording
    /// count, errors and latency. While the breaker is open it fails at once, without waiting.
    pub async fn run<T, F>(&self, op: RedisOp, fut: F) -> Result<T, RedisError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (allowed, t) = self.breaker.allow();
        self.transition(t);
        if !allowed {
            self.metrics.redis_skipped.inc();
            return Err(RedisError::Unavailable);
        }
        // Dropped before an outcome (a caller gave up on it): the breaker must not wait for it.
        let mut pending = Abandoned(Some(&self.breaker));
        let started = Instant::now();
        let out = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisError::Redis(e.to_string())),
            Err(_) => Err(RedisError::Timeout),
        };
        self.metrics
            .redis_op(op, started.elapsed().as_secs_f64(), out.is_ok());
        if out.is_err() {
            self.failures.fetch_add(1, Ordering::AcqRel);
            self.failed.notify_one();
        }
        pending.0 = None;
        self.transition(self.breaker.record(out.is_ok()));
        out
    }

    /// Every key matching `pattern`, in SCAN batches (on every master of a cluster).
    pub async fn scan(&self, pattern: &str) -> Result<Vec<Vec<String>>, RedisError> {
        let mut cursor: u64 = 0;
        let mut batches = Vec::new();
        loop {
            let (next, keys) = self.scan_step(pattern, cursor, 1000).await?;
            if !keys.is_empty() {
                batches.push(keys);
            }
            if next == 0 {
                return Ok(batches);
            }
            cursor = next;
        }
    }

    /// One SCAN step from `cursor` (0 to begin; the next one, 0 when done). On a cluster the
    /// walk goes master by master: the top 16 bits of the cursor say which (in address order).
    pub async fn scan_step(
        &self,
        pattern: &str,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), RedisError> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor & super::cluster::NODE_CURSOR)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        if self.cluster.is_none() {
            let mut conn = self.control().await?;
            return cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| RedisError::Redis(e.to_string()));
        }
        let Conn::Cluster(mut conn) = self.conn()? else {
            return Err(RedisError::Unavailable);
        };
        super::cluster::scan_step(&mut conn, cmd, cursor).await
    }

    /// Logs and counts a breaker transition, once.
    fn transition(&self, t: Transition) {
        let Some((from, to)) = t else { return };
        self.metrics.redis_breaker.set(to.as_gauge());
        self.metrics.breaker_transition(to);
        self.metrics.redis_up.set(i64::from(self.is_up()));
        match to {
            BreakerState::Open => tracing::warn!(
                from = from.as_str(),
                "redis circuit breaker open: lookups skip Redis (L1 and Postgres only)"
            ),
            BreakerState::HalfOpen => tracing::info!("redis circuit breaker half-open: probing"),
            BreakerState::Closed => tracing::info!("redis circuit breaker closed: L2 in use again"),
        }
    }
}

/// Tells the breaker, when dropped, that a call it let through will have no outcome.
struct Abandoned<'a>(Option<&'a Breaker>);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.abandon();
        }
    }
}

/// A control-plane pool connecting as `client` does (its TLS roots included).
fn pool_for(
    client: &redis::Client,
    (size, timeout): (usize, Duration),
) -> Result<deadpool_redis::Pool, RedisError> {
    let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
        .map_err(|e| RedisError::Config(format!("redis pool: {e}")))?;
    deadpool_redis::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| RedisError::Config(format!("redis pool: {e}")))
}
