//! The change stream's table: triggers append every committed change to `sidecache_outbox` and
//! NOTIFY `sidecache_changes`; the listener reads it here. Reads run on the listener's own
//! connection (so a replay happens exactly when that connection comes back); pruning and the
//! backlog figure use the pool.
//!
//! Ids are assigned at insert, not at commit, so a reader that only asked for `id > last` could
//! skip a row whose transaction committed late. A [`Cursor`] therefore also keeps the xmin of the
//! snapshot it read under: every row not visible then belongs to a transaction with
//! `txid >= xmin`, and the next read asks for those again (`id <= last AND txid >= xmin`),
//! skipping the ones it has already applied.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use uuid::Uuid;

use super::{Store, StoreError};
use crate::domain::{Change, ConversationId, LeadId, Op, OrgId, PhoneNumber, TxId};
use crate::labels::PgQuery;
use crate::metrics::Metrics;

/// The NOTIFY channel the triggers signal.
pub const CHANNEL: &str = "sidecache_changes";

const COLUMNS: &str = "o.id, o.txid::text::bigint AS txid, o.table_name, o.op, o.row_id, \
    o.organization_id, o.lead_id, o.old_phone, o.new_phone, o.origin, \
    (extract(epoch FROM o.created_at) * 1000)::float8 AS created_ms";

/// One outbox row, joined with the reading snapshot's xmin (which is there even without rows).
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    snapshot_xmin: i64,
    id: Option<i64>,
    txid: Option<i64>,
    table_name: Option<String>,
    op: Option<String>,
    row_id: Option<Uuid>,
    organization_id: Option<Uuid>,
    lead_id: Option<Uuid>,
    old_phone: Option<String>,
    new_phone: Option<String>,
    origin: Option<String>,
    created_ms: Option<f64>,
}

/// A committed change read from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxChange {
    pub id: i64,
    pub txid: TxId,
    pub change: Change,
    /// The writing session's `application_name` (`sidecache/<instance>` for sidecache's own).
    pub origin: Option<String>,
    /// When the row was written (Unix ms, Postgres clock), for the lag histogram.
    pub created_ms: f64,
}

/// Where the listener is in the outbox.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// Every visible row up to here has been read.
    pub last_id: i64,
    /// Rows of transactions from this one on may have committed after they were read past.
    pub xmin: i64,
    /// Rows read at or below `last_id` whose transaction is `>= xmin`: read again, not applied
    /// again. Maps id to txid.
    seen: HashMap<i64, i64>,
}

fn phone(s: Option<String>) -> Option<PhoneNumber> {
    s.map(|p| PhoneNumber::from_e164_unchecked(&p))
}

impl Row {
    /// The change this row records; `None` for a row sidecache does not understand (written by a
    /// newer version), which is skipped with a warning.
    fn into_change(self) -> Option<OutboxChange> {
        let id = self.id?;
        let op = match self.op.as_deref()? {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            _ => return None,
        };
        let row_id = self.row_id?;
        let change = match self.table_name.as_deref()? {
            "organizations" => Change::Organization {
                id: OrgId(row_id),
                op,
                old_phone: phone(self.old_phone),
                new_phone: phone(self.new_phone),
            },
            "leads" => Change::Lead {
                id: LeadId(row_id),
                org: OrgId(self.organization_id?),
                op,
                old_phone: phone(self.old_phone),
                new_phone: phone(self.new_phone),
            },
            "conversations" => Change::Conversation {
                id: ConversationId(row_id),
                lead: LeadId(self.lead_id?),
                org: OrgId(self.organization_id?),
                op,
            },
            _ => return None,
        };
        Some(OutboxChange {
            id,
            txid: TxId(self.txid? as u64),
            change,
            origin: self.origin,
            created_ms: self.created_ms.unwrap_or(0.0),
        })
    }
}

/// Timing and counting for statements run on the listener's connection.
async fn timed<T>(
    metrics: &Metrics,
    query: PgQuery,
    fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let out = fut.await;
    metrics.pg_query(query, started.elapsed().as_secs_f64(), out.is_ok());
    out.map_err(StoreError::classify)
}

/// A cursor at the end of the outbox as it is now.
pub async fn start(conn: &mut PgListener, metrics: &Metrics) -> Result<Cursor, StoreError> {
    let (last_id, xmin): (i64, i64) = timed(
        metrics,
        PgQuery::OutboxRead,
        sqlx::query_as(
            "SELECT COALESCE((SELECT max(id) FROM sidecache_outbox), 0), \
                    pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(&mut *conn),
    )
    .await?;
    Ok(Cursor {
        last_id,
        xmin,
        seen: HashMap::new(),
    })
}

/// Reads changes committed since the cursor, in id order, and advances it: the rows of late
/// commits it may have read past, and at most `batch` new rows. Rows already returned by an
/// earlier call are not returned again. Returns the changes and whether more new rows may be
/// waiting (call again). The cursor moves only if every statement succeeded (and the future was
/// not dropped): a read that fails half-way returns nothing and leaves the cursor where it was,
/// so the rows it had seen are read again.
pub async fn read_since(
    conn: &mut PgListener,
    cursor: &mut Cursor,
    batch: i64,
    metrics: &Metrics,
) -> Result<(Vec<OutboxChange>, bool), StoreError> {
    let mut next = cursor.clone();
    let out = read_into(conn, &mut next, batch, metrics).await?;
    *cursor = next;
    Ok(out)
}

async fn read_into(
    conn: &mut PgListener,
    cursor: &mut Cursor,
    batch: i64,
    metrics: &Metrics,
) -> Result<(Vec<OutboxChange>, bool), StoreError> {
    let recheck = format!(
        "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS snapshot_xmin) \
         SELECT s.snapshot_xmin, {COLUMNS} FROM s LEFT JOIN sidecache_outbox o \
           ON o.id <= $1 AND o.txid >= $2::bigint::text::xid8 ORDER BY o.id"
    );
    let fresh = format!(
        "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS snapshot_xmin) \
         SELECT s.snapshot_xmin, r.* FROM s LEFT JOIN LATERAL \
           (SELECT {COLUMNS} FROM sidecache_outbox o WHERE o.id > $1 ORDER BY o.id LIMIT $2) r ON true \
         ORDER BY r.id"
    );
    let mut out = Vec::new();
    let mut xmin = i64::MAX;
    let rows: Vec<Row> = timed(
        metrics,
        PgQuery::OutboxRead,
        sqlx::query_as(&recheck)
            .bind(cursor.last_id)
            .bind(cursor.xmin)
            .fetch_all(&mut *conn),
    )
    .await?;
    for row in rows {
        xmin = xmin.min(row.snapshot_xmin);
        if let (Some(id), Some(txid)) = (row.id, row.txid) {
            if cursor.seen.insert(id, txid).is_none() {
                out.extend(checked(row));
            }
        }
    }
    let rows: Vec<Row> = timed(
        metrics,
        PgQuery::OutboxRead,
        sqlx::query_as(&fresh)
            .bind(cursor.last_id)
            .bind(batch)
            .fetch_all(&mut *conn),
    )
    .await?;
    let mut n = 0;
    for row in rows {
        xmin = xmin.min(row.snapshot_xmin);
        if let (Some(id), Some(txid)) = (row.id, row.txid) {
            n += 1;
            cursor.last_id = cursor.last_id.max(id);
            cursor.seen.insert(id, txid);
            out.extend(checked(row));
        }
    }
    if xmin != i64::MAX {
        cursor.xmin = xmin;
    }
    // Rows of transactions older than the horizon are never asked for again.
    let horizon = cursor.xmin;
    cursor.seen.retain(|_, txid| *txid >= horizon);
    Ok((out, n >= batch))
}

fn checked(row: Row) -> Option<OutboxChange> {
    let id = row.id;
    let change = row.into_change();
    if change.is_none() {
        tracing::warn!(
            ?id,
            "skipping an outbox row this version does not understand"
        );
    }
    change
}

impl Store {
    /// The newest committed outbox id (0 when empty), for the backlog gauge.
    pub async fn outbox_newest(&self) -> Result<i64, StoreError> {
        self.read(PgQuery::OutboxNewest, |mut c| async move {
            let out = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM sidecache_outbox")
                .fetch_one(c.raw())
                .await;
            (c, out)
        })
        .await
    }

    /// Deletes outbox rows older than `retention`; returns how many.
    pub async fn prune_outbox(&self, retention: Duration) -> Result<u64, StoreError> {
        // Deleting what is past retention twice deletes nothing more: safe to retry.
        self.read(PgQuery::OutboxPrune, |mut c| async move {
            let out = sqlx::query(
                "DELETE FROM sidecache_outbox \
                 WHERE created_at < clock_timestamp() - make_interval(secs => $1)",
            )
            .bind(retention.as_secs_f64())
            .execute(c.raw())
            .await;
            (c, out)
        })
        .await
        .map(|r| r.rows_affected())
    }
}
