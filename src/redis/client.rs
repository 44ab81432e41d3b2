//! One Redis server as every part of sidecache uses it: a multiplexed connection of the shared
//! [`Conn`] type, a small pool for control-plane commands (SCAN, UNLINK), and the guarded call
//! — every operation within its timeout, through the circuit breaker, counted and timed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::breaker::{Breaker, BreakerConfig, Transition};
use crate::labels::{BreakerState, RedisOp};
use crate::metrics::Metrics;

/// Why a Redis call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("redis error: {0}")]
    Redis(String),
    #[error("redis operation timed out")]
    Timeout,
    /// Not connected yet, or skipped while the breaker is open.
    #[error("redis is not connected")]
    Unavailable,
    #[error("redis configuration: {0}")]
    Config(String),
}

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// The CA (PEM) a `rediss://` server's certificate must chain to; the system's roots when
    /// `None`.
    pub tls_ca: Option<Vec<u8>>,
    /// Budget of one operation on the request path.
    pub timeout: Duration,
    /// Budget of (re)connecting.
    pub connect_timeout: Duration,
    /// Connections in the control-plane pool.
    pub pool_size: usize,
    pub breaker: BreakerConfig,
}

/// A connection to Redis: one multiplexed connection that reconnects by itself. An enum so that
/// the Cluster and Sentinel connections join as variants and every user stays the same.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
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
        // The pool connects as the client does (its TLS roots included).
        let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())
            .map_err(|e| RedisError::Config(format!("redis pool: {e}")))?;
        let pool = deadpool_redis::Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|e| RedisError::Config(format!("redis pool: {e}")))?;
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
        })
    }

    /// Opens a new connection that reconnects by itself, with these budgets.
    pub async fn open(&self, response_timeout: Duration) -> Result<Conn, RedisError> {
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
        let connect = self.client.get_async_pubsub();
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(RedisError::Redis(e.to_string())),
            Err(_) => Err(RedisError::Timeout),
        }
    }

    /// A control-plane connection from the pool (SCAN, UNLINK: off the request path).
    pub async fn control(&self) -> Result<deadpool_redis::Connection, RedisError> {
        self.pool
            .get()
            .await
            .map_err(|e| RedisError::Redis(e.to_string()))
    }

    /// Operations that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }

    /// Completes after an operation failed.
    pub async fn failed(&self) {
        self.failed.notified().await;
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
        self.transition(self.breaker.record(out.is_ok()));
        out
    }

    /// Every key matching `pattern`, in SCAN batches, over a control-plane connection.
    pub async fn scan(&self, pattern: &str) -> Result<Vec<Vec<String>>, RedisError> {
        let mut conn = self.control().await?;
        let mut cursor: u64 = 0;
        let mut batches = Vec::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| RedisError::Redis(e.to_string()))?;
            if !keys.is_empty() {
                batches.push(keys);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(batches)
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
