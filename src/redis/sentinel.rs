//! Redis behind Sentinel: which server is the master now, and connections that follow it.
//!
//! [`Master`] asks the sentinels (`SENTINEL GET-MASTER-ADDR-BY-NAME`, each in turn until one
//! answers) where the master is, checks with `ROLE` that the server agrees, and publishes a
//! client for it on a watch channel. It asks again every second, and at once when an operation
//! fails in a way a failover causes: the connection dropped or refused, or `READONLY` (the
//! server was demoted to a replica — such a connection is dropped, never retried against the
//! same server). Each [`Follow`] connection swaps to the published master before its next
//! operation. A change of master counts as a failure of the [`super::Redis`] it belongs to, so
//! the cache re-checks the server before it uses L2 again: a promoted replica may lack the last
//! fence bumps, and the server check treats a new server as a loss of fence state (a new
//! namespace incarnation).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult,
};
use tokio::sync::{watch, Notify};

use super::error::RedisError;

/// Where the sentinels are and what they call the master.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// The sentinels' URLs (with their own credentials).
    pub urls: Vec<String>,
    /// The monitored master's name.
    pub master: String,
    /// Replicas that must have a session, event or rate-limit write before it is acknowledged
    /// (`WAIT`), so a failover cannot lose it; 0 = none.
    pub wait_replicas: u32,
}

/// The current master, as the sentinels say.
pub(super) struct Master {
    sentinels: Vec<Client>,
    name: String,
    /// The master's credentials, database and TLS (from `redis.url`); the address is replaced.
    node: ConnectionInfo,
    timeout: Duration,
    current: watch::Sender<Option<(String, u16, Client)>>,
    /// Changes of master seen (counted as failures of the Redis it serves).
    pub(super) switches: AtomicU64,
    pub(super) switched: Notify,
    poked: Notify,
    refreshing: AtomicBool,
}

impl Master {
    pub(super) fn new(
        cfg: &SentinelConfig,
        node: ConnectionInfo,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let sentinels = cfg
            .urls
            .iter()
            .map(|u| Client::open(u.as_str()))
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| RedisError::Config(format!("sentinel url: {e}")))?;
        Ok(Master {
            sentinels,
            name: cfg.master.clone(),
            node,
            timeout,
            current: watch::channel(None).0,
            switches: AtomicU64::new(0),
            switched: Notify::new(),
            poked: Notify::new(),
            refreshing: AtomicBool::new(false),
        })
    }

    /// The master's client, once one was found.
    pub(super) fn client(&self) -> Option<Client> {
        self.current().map(|(_, _, c)| c)
    }

    /// The master's address and client, once one was found.
    pub(super) fn current(&self) -> Option<(String, u16, Client)> {
        self.current.borrow().clone()
    }

    /// Whether the sentinels (asked now) still name `at` the master: a write that no replica
    /// confirmed stands if its server is still the master, and is lost if it was demoted.
    pub(super) async fn still_master(&self, at: &(String, u16)) -> bool {
        let named = self.find().await;
        self.poke();
        matches!(named, Ok((h, p)) if h == at.0 && p == at.1)
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Option<(String, u16, Client)>> {
        self.current.subscribe()
    }

    /// Asks for a refresh now (an operation failed as a failover makes them fail).
    pub(super) fn poke(&self) {
        self.poked.notify_one();
    }

    /// Asks the sentinels where the master is and, if it moved, publishes it (true).
    pub(super) async fn refresh(&self) -> Result<bool, RedisError> {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        /// Clears the flag however the refresh ends (an error, or a caller's timeout).
        struct Clear<'a>(&'a AtomicBool);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _clear = Clear(&self.refreshing);
        let (host, port) = self.find().await?;
        let same = matches!(&*self.current.borrow(), Some((h, p, _)) if *h == host && *p == port);
        if same {
            return Ok(false);
        }
        let client = self.client_for(&host, port)?;
        // The server must agree that it is the master (a sentinel may not have noticed yet).
        let role = tokio::time::timeout(self.timeout, async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("ROLE")
                .query_async::<Vec<redis::Value>>(&mut c)
                .await
        })
        .await
        .map_err(|_| RedisError::Timeout)?
        .map_err(|e| RedisError::Redis(e.to_string()))?;
        let is_master = matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
            || matches!(role.first(), Some(redis::Value::SimpleString(r)) if r == "master");
        if !is_master {
            return Err(RedisError::Redis(format!(
                "{host}:{port} is not a master yet"
            )));
        }
        let had = self.current.borrow().is_some();
        tracing::warn!(master = %format!("{host}:{port}"), name = %self.name, "redis master (from sentinel)");
        self.current.send_replace(Some((host, port, client)));
        if had {
            self.switches.fetch_add(1, Ordering::AcqRel);
            self.switched.notify_waiters();
        }
        Ok(true)
    }

    /// The master's address from the first sentinel that answers.
    async fn find(&self) -> Result<(String, u16), RedisError> {
        let mut last = RedisError::Unavailable;
        for s in &self.sentinels {
            let asked = tokio::time::timeout(self.timeout, async {
                let mut c = s.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.name)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            })
            .await;
            match asked {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => {
                    last = RedisError::Config(format!(
                        "no sentinel knows a master named {}",
                        self.name
                    ))
                }
                Ok(Err(e)) => last = RedisError::Redis(format!("sentinel: {e}")),
                Err(_) => last = RedisError::Timeout,
            }
        }
        Err(last)
    }

    /// A client for the master at `host:port`, with `redis.url`'s credentials and TLS.
    fn client_for(&self, host: &str, port: u16) -> Result<Client, RedisError> {
        let addr = match self.node.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let info = self.node.clone().set_addr(addr);
        Client::open(
            info.into_connection_info()
                .map_err(|e| RedisError::Config(e.to_string()))?,
        )
        .map_err(|e| RedisError::Config(e.to_string()))
    }

    /// Refreshes every second, and at once when poked, while the Redis it serves lives.
    pub(super) async fn watch(me: Weak<Master>) {
        loop {
            let Some(m) = me.upgrade() else { return };
            if let Err(e) = m.refresh().await {
                tracing::debug!(error = %e, "sentinel refresh failed");
            }
            // At most ten refreshes a second, however many operations fail meanwhile.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let poked = async { m.poked.notified().await };
            let _ = tokio::time::timeout(Duration::from_millis(900), poked).await;
        }
    }
}

/// Whether an error is one a failover causes: then the master is asked for again.
fn follows_failover(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.to_string().contains("READONLY")
}

/// A connection in use: to which server, and its generation.
type Current = (MultiplexedConnection, (String, u16), u64);

/// A connection that follows the master: one multiplexed connection to the current master,
/// replaced when the master changes or the connection fails. It never reconnects behind its
/// own back (no `ConnectionManager`): every new TCP connection is a new generation, so a write
/// and the `WAIT` after it are known to have shared one.
pub struct Follow {
    master: Arc<Master>,
    cfg: AsyncConnectionConfig,
    seen: Mutex<watch::Receiver<Option<(String, u16, Client)>>>,
    /// The connection, the server it goes to, and its generation.
    conn: RwLock<Option<Current>>,
    /// Connections made so far.
    made: AtomicU64,
    db: i64,
}

impl Follow {
    pub(super) fn new(master: Arc<Master>, connect: Duration, response: Duration) -> Self {
        let db = master.node.redis_settings().db();
        let seen = Mutex::new(master.subscribe());
        Follow {
            master,
            cfg: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect))
                .set_response_timeout(Some(response)),
            seen,
            conn: RwLock::new(None),
            made: AtomicU64::new(0),
            db,
        }
    }

    /// The connection to the current master (a new one after a change of master or a failure).
    async fn current(&self) -> RedisResult<MultiplexedConnection> {
        let moved = {
            let mut seen = self.seen.lock().expect("not poisoned");
            let moved = seen.has_changed().unwrap_or(false);
            if moved {
                seen.borrow_and_update();
            }
            moved
        };
        if moved {
            // Whatever happens next, the old server's connection is not used again.
            *self.conn.write().expect("not poisoned") = None;
        } else if let Some((c, _, _)) = self.conn.read().expect("not poisoned").as_ref() {
            return Ok(c.clone());
        }
        let Some((host, port, client)) = self.master.current() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no master known yet",
            )));
        };
        let c = client
            .get_multiplexed_async_connection_with_config(&self.cfg)
            .await?;
        let generation = self.made.fetch_add(1, Ordering::AcqRel) + 1;
        *self.conn.write().expect("not poisoned") = Some((c.clone(), (host, port), generation));
        Ok(c)
    }

    /// The generation of the connection in use and the server it goes to.
    pub(super) fn server(&self) -> Option<((String, u16), u64)> {
        self.conn
            .read()
            .expect("not poisoned")
            .as_ref()
            .map(|(_, at, g)| (at.clone(), *g))
    }

    pub(super) fn db(&self) -> i64 {
        self.db
    }

    pub(super) async fn command(&self, cmd: &redis::Cmd) -> RedisResult<redis::Value> {
        let mut c = self.current().await?;
        let out = c.req_packed_command(cmd).await;
        self.after(&out);
        out
    }

    pub(super) async fn pipeline(
        &self,
        cmd: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<redis::Value>> {
        let mut c = self.current().await?;
        let out = c.req_packed_commands(cmd, offset, count).await;
        self.after(&out);
        out
    }

    /// A failure a failover causes drops this connection and asks where the master is.
    fn after<T>(&self, out: &RedisResult<T>) {
        if let Err(e) = out {
            if follows_failover(e) {
                *self.conn.write().expect("not poisoned") = None;
                self.master.poke();
            }
        }
    }
}
