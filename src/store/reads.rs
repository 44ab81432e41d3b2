//! The queries behind the lookups.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError};
use crate::domain::{Conversation, Lead, LeadId, Organization};
use crate::labels::PgQuery;

pub(super) const ORG_COLUMNS: &str =
    "id, name, phone_number, timezone, greeting_template, settings, version, created_at, updated_at";
pub(super) const LEAD_COLUMNS: &str = "id, organization_id, phone_number, first_name, last_name, email, status, attributes, version, created_at, updated_at";
pub(super) const CONVERSATION_COLUMNS: &str =
    "id, lead_id, organization_id, channel, direction, summary, started_at, ended_at, version";

/// A lead and its organization, read in one statement.
#[derive(Debug, Clone)]
pub struct LeadWithOrg {
    pub lead: Lead,
    pub org: Organization,
}

/// Aggregates over a lead's conversations.
#[derive(Debug, Clone, Default)]
pub struct ConversationStats {
    pub count: i64,
    pub last_contact_at: Option<DateTime<Utc>>,
    /// Summaries of the latest conversations that have one, newest first (at most 3).
    pub latest_summaries: Vec<String>,
}

impl ConversationStats {
    /// The summaries joined newest first, or `None` when there are none.
    pub fn summary(&self) -> Option<String> {
        (!self.latest_summaries.is_empty()).then(|| self.latest_summaries.join("\n"))
    }
}

const STATS_SQL: &str = "SELECT count(*) AS conversation_count, \
       max(coalesce(ended_at, started_at)) AS last_contact_at, \
       coalesce((SELECT array_agg(s.summary ORDER BY s.started_at DESC, s.id) FROM \
           (SELECT summary, started_at, id FROM conversations \
             WHERE lead_id = $1 AND summary IS NOT NULL AND summary <> '' \
             ORDER BY started_at DESC, id LIMIT 3) s), '{}') AS latest_summaries \
  FROM conversations WHERE lead_id = $1";

/// Built once (the text is also the key of each connection's statement cache).
static CONVERSATIONS_PAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE lead_id = $1 \
         ORDER BY started_at DESC, id LIMIT $2 OFFSET $3"
    )
});

impl Store {
    /// A lead with its organization (greeting, context).
    pub async fn lead_with_org(&self, id: LeadId) -> Result<Option<LeadWithOrg>, StoreError> {
        let sql = "SELECT l.id, l.organization_id, l.phone_number, l.first_name, l.last_name, l.email, \
                          l.status, l.attributes, l.version, l.created_at, l.updated_at, \
                          o.name AS o_name, o.phone_number AS o_phone_number, o.timezone AS o_timezone, \
                          o.greeting_template AS o_greeting_template, o.settings AS o_settings, \
                          o.version AS o_version, o.created_at AS o_created_at, o.updated_at AS o_updated_at \
                     FROM leads l JOIN organizations o ON o.id = l.organization_id WHERE l.id = $1";
        let row = self
            .read(PgQuery::LeadWithOrg, |mut c| async move {
                let out = sqlx::query(sql).bind(id).fetch_optional(c.raw()).await;
                (c, out)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let decode = |row: &sqlx::postgres::PgRow| -> Result<LeadWithOrg, sqlx::Error> {
            let lead = <Lead as sqlx::FromRow<_>>::from_row(row)?;
            let org = Organization {
                id: lead.organization_id,
                name: row.try_get("o_name")?,
                phone_number: row.try_get("o_phone_number")?,
                timezone: row.try_get("o_timezone")?,
                greeting_template: row.try_get("o_greeting_template")?,
                settings: row.try_get("o_settings")?,
                version: row.try_get("o_version")?,
                created_at: row.try_get("o_created_at")?,
                updated_at: row.try_get("o_updated_at")?,
            };
            Ok(LeadWithOrg { lead, org })
        };
        decode(&row)
            .map(Some)
            .map_err(|e| StoreError::Other(std::sync::Arc::new(e)))
    }

    /// The newest conversations of a lead.
    pub async fn recent_conversations(
        &self,
        lead: LeadId,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Conversation>, StoreError> {
        self.read(PgQuery::ConversationsPage, |mut c| async move {
            let out = sqlx::query_as(&CONVERSATIONS_PAGE)
                .bind(lead)
                .bind(limit)
                .bind(offset)
                .fetch_all(c.raw())
                .await;
            (c, out)
        })
        .await
    }

    /// Count, last contact and latest summaries of a lead's conversations.
    pub async fn conversation_stats(&self, lead: LeadId) -> Result<ConversationStats, StoreError> {
        let row = self
            .read(PgQuery::ConversationStats, |mut c| async move {
                let out = sqlx::query(STATS_SQL).bind(lead).fetch_one(c.raw()).await;
                (c, out)
            })
            .await?;
        let get = |row: &sqlx::postgres::PgRow| -> Result<ConversationStats, sqlx::Error> {
            Ok(ConversationStats {
                count: row.try_get("conversation_count")?,
                last_contact_at: row.try_get("last_contact_at")?,
                latest_summaries: row.try_get("latest_summaries")?,
            })
        };
        get(&row).map_err(|e| StoreError::Other(std::sync::Arc::new(e)))
    }

    /// Whether a lead exists (history of an unknown lead is a 404, not an empty page).
    pub async fn lead_exists(&self, lead: LeadId) -> Result<bool, StoreError> {
        self.read(PgQuery::LeadExists, |mut c| async move {
            let out = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM leads WHERE id = $1)")
                .bind(lead)
                .fetch_one(c.raw())
                .await;
            (c, out)
        })
        .await
    }
}
