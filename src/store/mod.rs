//! Postgres: the queries behind every lookup and the writes, each of which returns the
//! [`Change`](crate::domain::Change) it committed. Every statement is timed and counted by name.

mod conns;
mod json;
pub mod outbox;
mod reads;
mod writes;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use conns::{Conn, Conns};

pub use json::JsonRow;
pub use reads::{ConversationStats, LeadWithOrg};
pub use writes::{
    ConversationPatch, LeadPatch, NewConversation, NewLead, NewOrganization, OrganizationPatch,
};

use crate::cache::LoadError;
use crate::labels::PgQuery;
use crate::metrics::Metrics;

/// Failures of the store, classified for the HTTP layer. Cloneable so one failed load can be
/// handed to every request that was waiting for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("the row is at version {current}")]
    PreconditionFailed { current: i64 },
    #[error("{0}")]
    Invalid(String),
    #[error("database unavailable: {0}")]
    Unavailable(Arc<sqlx::Error>),
    #[error("database error: {0}")]
    Other(Arc<sqlx::Error>),
    #[error("could not encode a response: {0}")]
    Encode(String),
}

impl StoreError {
    fn classify(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => {
                StoreError::Unavailable(Arc::new(e))
            }
            E::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                match code.as_str() {
                    "23505" => {
                        StoreError::Conflict("a row with the same unique value already exists")
                    }
                    "23503" => StoreError::Invalid("a referenced row does not exist".into()),
                    "23514" | "23502" => StoreError::Invalid(format!(
                        "the value breaks a rule of the data model ({})",
                        db.constraint().unwrap_or("check")
                    )),
                    c if c.starts_with("22") => {
                        StoreError::Invalid("a value is out of range or malformed".into())
                    }
                    // connection exceptions, shutdown, statement timeout, too many connections
                    c if c.starts_with("08") || c.starts_with("57") || c == "53300" => {
                        StoreError::Unavailable(Arc::new(e))
                    }
                    _ => StoreError::Other(Arc::new(e)),
                }
            }
            _ => StoreError::Other(Arc::new(e)),
        }
    }

    /// True when the primary database could not be reached or did not answer in time.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<StoreError> for LoadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => LoadError::Unavailable(e.to_string().into()),
            other => LoadError::Failed(other.to_string().into()),
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub connect: PgConnectOptions,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    /// `application_name` of the pool's sessions; the outbox records it as a change's origin.
    pub application_name: String,
}

/// Access to Postgres.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Connections between statements (see [`conns`]): every statement takes one here.
    conns: Arc<Conns>,
    acquire_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Store {
    /// A lazily connecting pool: start-up does not fail if Postgres is briefly away.
    pub fn new(cfg: &StoreConfig, metrics: Arc<Metrics>) -> Self {
        let statement_timeout = cfg.statement_timeout.as_millis().to_string();
        let connect = cfg
            .connect
            .clone()
            .options([("statement_timeout", statement_timeout.as_str())])
            .application_name(&cfg.application_name);
        let pool = PgPoolOptions::new()
            .max_connections(cfg.max_connections.max(1))
            .min_connections(cfg.min_connections)
            .acquire_timeout(cfg.acquire_timeout)
            .connect_lazy_with(connect);
        Store {
            conns: Conns::new(pool.clone()),
            pool,
            acquire_timeout: cfg.acquire_timeout,
            metrics,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Open connections not in use: the pool's idle ones and those kept between statements.
    pub fn idle_connections(&self) -> usize {
        self.pool.num_idle() + self.conns.idle()
    }

    /// Runs a statement that may safely run twice (a read), timed as `query`, on a connection
    /// taken as it is. If that connection turns out to be lost, the statement runs once more on
    /// one the pool has tested. `statement` hands the connection back with its result.
    async fn read<T, F, Fut>(&self, query: PgQuery, statement: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = (Conn, Result<T, sqlx::Error>)>,
    {
        self.timed(query, async {
            let conn = self.conns.get(false, self.acquire_timeout).await?;
            let (mut conn, out) = statement(conn).await;
            conn.finish(&out);
            match out {
                Err(e) if conns::lost(&e) && conn.untested() => {
                    drop(conn);
                    // The others kept beside it are likely lost too.
                    self.conns.close_idle();
                    let conn = self.conns.from_pool().await?;
                    let (mut conn, out) = statement(conn).await;
                    conn.finish(&out);
                    out
                }
                out => out,
            }
        })
        .await
    }

    /// Runs a statement that must not run twice (a write), timed as `query`, on a connection
    /// tested first, as the pool does.
    async fn write<T, F, Fut>(&self, query: PgQuery, statement: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = (Conn, Result<T, sqlx::Error>)>,
    {
        self.timed(query, async {
            let conn = self.conns.get(true, self.acquire_timeout).await?;
            let (mut conn, out) = statement(conn).await;
            conn.finish(&out);
            out
        })
        .await
    }

    /// Runs one named statement, recording count, errors and latency. A conflict or an invalid
    /// value is the client's doing, not a database error, and is not counted as one.
    async fn timed<T, F>(&self, query: PgQuery, fut: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let m = &self.metrics;
        let started = Instant::now();
        let out = fut.await;
        let seconds = started.elapsed().as_secs_f64();
        match out {
            Ok(v) => {
                m.pg_query(query, seconds, true);
                Ok(v)
            }
            Err(e) => {
                if matches!(e, sqlx::Error::PoolTimedOut) {
                    m.pg_pool_timeouts.inc();
                }
                let err = StoreError::classify(e);
                let clients = matches!(err, StoreError::Conflict(_) | StoreError::Invalid(_));
                m.pg_query(query, seconds, clients);
                Err(err)
            }
        }
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(PgQuery::Ping, |mut c| async move {
            let out = sqlx::query("SELECT 1").execute(c.raw()).await;
            (c, out)
        })
        .await
        .map(|_| ())
    }
}
