//! The writes. Each is one statement (so one transaction) that returns the new row and the
//! [`Change`] it committed, with old and new key fields (a phone change names both numbers).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use super::reads::{CONVERSATION_COLUMNS, LEAD_COLUMNS, ORG_COLUMNS};
use super::{Store, StoreError};
use crate::domain::{
    Change, Channel, Commit, Conversation, ConversationId, Direction, Lead, LeadId, LeadStatus, Op,
    OrgId, Organization, PhoneNumber, TxId,
};
use crate::labels::PgQuery;

/// Appended to every write's RETURNING: the writing transaction's id, which the outbox records
/// too, so the change stream can recognise writes this instance has already invalidated.
const TXID: &str = "pg_current_xact_id()::text::bigint AS txid";

/// The row a write returned, decoded, and its transaction id.
fn decode<T: for<'r> FromRow<'r, PgRow>>(row: &PgRow) -> Result<(T, TxId), StoreError> {
    let value = T::from_row(row).map_err(|e| StoreError::Other(e.into()))?;
    let txid: i64 = row
        .try_get("txid")
        .map_err(|e| StoreError::Other(e.into()))?;
    Ok((value, TxId(txid as u64)))
}

fn old_phone(row: &PgRow) -> Result<Option<PhoneNumber>, StoreError> {
    let old: String = row
        .try_get("old_phone_number")
        .map_err(|e| StoreError::Other(e.into()))?;
    Ok(phone(&old))
}

/// A validated organization to create.
#[derive(Debug, Clone)]
pub struct NewOrganization {
    pub name: String,
    pub phone: PhoneNumber,
    pub timezone: String,
    pub greeting_template: Option<String>,
    pub settings: Value,
}

/// Validated changes to an organization; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct OrganizationPatch {
    pub name: Option<String>,
    pub phone: Option<PhoneNumber>,
    pub timezone: Option<String>,
    pub greeting_template: Option<String>,
    pub settings: Option<Value>,
}

/// A validated lead to create.
#[derive(Debug, Clone)]
pub struct NewLead {
    pub org: OrgId,
    pub phone: PhoneNumber,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub status: LeadStatus,
    pub attributes: Value,
}

/// Validated changes to a lead; the outer `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct LeadPatch {
    pub phone: Option<PhoneNumber>,
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub status: Option<LeadStatus>,
    pub attributes: Option<Value>,
}

/// A validated conversation to record.
#[derive(Debug, Clone)]
pub struct NewConversation {
    pub channel: Channel,
    pub direction: Direction,
    pub summary: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// Validated changes to a conversation.
#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    pub summary: Option<Option<String>>,
    pub ended_at: Option<Option<DateTime<Utc>>>,
}

fn prefixed(alias: &str, columns: &str) -> String {
    columns
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

static UPDATE_ORG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH old AS (SELECT id, phone_number FROM organizations WHERE id = $1 FOR UPDATE) \
         UPDATE organizations o SET \
            name = COALESCE($2, o.name), \
            phone_number = COALESCE($3, o.phone_number), \
            timezone = COALESCE($4, o.timezone), \
            greeting_template = COALESCE($5, o.greeting_template), \
            settings = COALESCE($6, o.settings) \
         FROM old WHERE o.id = old.id AND ($7::bigint IS NULL OR o.version = $7) \
         RETURNING {}, old.phone_number AS old_phone_number, {TXID}",
        prefixed("o", ORG_COLUMNS)
    )
});

static UPDATE_LEAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH old AS (SELECT id, phone_number FROM leads WHERE id = $1 FOR UPDATE) \
         UPDATE leads l SET \
            phone_number = COALESCE($2, l.phone_number), \
            first_name = CASE WHEN $3 THEN $4 ELSE l.first_name END, \
            last_name = CASE WHEN $5 THEN $6 ELSE l.last_name END, \
            email = CASE WHEN $7 THEN $8 ELSE l.email END, \
            status = COALESCE($9, l.status), \
            attributes = COALESCE($10, l.attributes) \
         FROM old WHERE l.id = old.id AND ($11::bigint IS NULL OR l.version = $11) \
         RETURNING {}, old.phone_number AS old_phone_number, {TXID}",
        prefixed("l", LEAD_COLUMNS)
    )
});

fn phone(s: &str) -> Option<PhoneNumber> {
    Some(PhoneNumber::from_e164_unchecked(s))
}

impl Store {
    /// After an update touched no row: tells "no such row" (404) from "version moved on" (412).
    async fn miss_reason(&self, table: &'static str, id: uuid::Uuid) -> StoreError {
        let sql = match table {
            "organizations" => "SELECT version FROM organizations WHERE id = $1",
            "leads" => "SELECT version FROM leads WHERE id = $1",
            _ => "SELECT version FROM conversations WHERE id = $1",
        };
        match self
            .read(PgQuery::VersionOf, |mut c| async move {
                let out = sqlx::query_scalar::<_, i64>(sql)
                    .bind(id)
                    .fetch_optional(c.raw())
                    .await;
                (c, out)
            })
            .await
        {
            Ok(Some(current)) => StoreError::PreconditionFailed { current },
            Ok(None) => StoreError::NotFound,
            Err(e) => e,
        }
    }

    pub async fn create_org(
        &self,
        new: &NewOrganization,
    ) -> Result<(Organization, Commit), StoreError> {
        let sql = format!(
            "INSERT INTO organizations (name, phone_number, timezone, greeting_template, settings) \
             VALUES ($1, $2, $3, COALESCE($4, 'Good {{time_of_day}}, {{first_name}}! Thanks for calling {{org_name}}.'), $5) \
             RETURNING {ORG_COLUMNS}, {TXID}"
        );
        let row = self
            .write(PgQuery::CreateOrg, |mut c| async move {
                let out = sqlx::query(&sql)
                    .bind(&new.name)
                    .bind(new.phone.as_str())
                    .bind(&new.timezone)
                    .bind(&new.greeting_template)
                    .bind(&new.settings)
                    .fetch_one(c.raw())
                    .await;
                (c, out)
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    StoreError::Conflict("an organization with this phone number already exists")
                }
                e => e,
            })?;
        let (org, txid): (Organization, _) = decode(&row)?;
        let change = Change::Organization {
            id: org.id,
            op: Op::Insert,
            old_phone: None,
            new_phone: phone(&org.phone_number),
        };
        Ok((org, Commit { change, txid }))
    }

    pub async fn update_org(
        &self,
        id: OrgId,
        p: &OrganizationPatch,
        if_match: Option<i64>,
    ) -> Result<(Organization, Commit), StoreError> {
        let row = self
            .write(PgQuery::UpdateOrg, |mut c| async move {
                let out = sqlx::query(&UPDATE_ORG)
                    .bind(id)
                    .bind(&p.name)
                    .bind(p.phone.as_ref().map(PhoneNumber::as_str))
                    .bind(&p.timezone)
                    .bind(&p.greeting_template)
                    .bind(&p.settings)
                    .bind(if_match)
                    .fetch_optional(c.raw())
                    .await;
                (c, out)
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    StoreError::Conflict("an organization with this phone number already exists")
                }
                e => e,
            })?;
        let Some(row) = row else {
            return Err(self.miss_reason("organizations", id.0).await);
        };
        let (org, txid): (Organization, _) = decode(&row)?;
        let change = Change::Organization {
            id,
            op: Op::Update,
            old_phone: old_phone(&row)?,
            new_phone: phone(&org.phone_number),
        };
        Ok((org, Commit { change, txid }))
    }

    pub async fn create_lead(&self, new: &NewLead) -> Result<(Lead, Commit), StoreError> {
        let sql = format!(
            "INSERT INTO leads (organization_id, phone_number, first_name, last_name, email, status, attributes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {LEAD_COLUMNS}, {TXID}"
        );
        let row = self
            .write(PgQuery::CreateLead, |mut c| async move {
                let out = sqlx::query(&sql)
                    .bind(new.org)
                    .bind(new.phone.as_str())
                    .bind(&new.first_name)
                    .bind(&new.last_name)
                    .bind(&new.email)
                    .bind(new.status.as_str())
                    .bind(&new.attributes)
                    .fetch_one(c.raw())
                    .await;
                (c, out)
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(
                    "a lead with this phone number already exists in this organization",
                ),
                StoreError::Invalid(m) if m.contains("referenced") => {
                    StoreError::Invalid("organization_id names no organization".into())
                }
                e => e,
            })?;
        let (lead, txid): (Lead, _) = decode(&row)?;
        let change = Change::Lead {
            id: lead.id,
            org: lead.organization_id,
            op: Op::Insert,
            old_phone: None,
            new_phone: phone(&lead.phone_number),
        };
        Ok((lead, Commit { change, txid }))
    }

    pub async fn update_lead(
        &self,
        id: LeadId,
        p: &LeadPatch,
        if_match: Option<i64>,
    ) -> Result<(Lead, Commit), StoreError> {
        let row = self
            .write(PgQuery::UpdateLead, |mut c| async move {
                let out = sqlx::query(&UPDATE_LEAD)
                    .bind(id)
                    .bind(p.phone.as_ref().map(PhoneNumber::as_str))
                    .bind(p.first_name.is_some())
                    .bind(p.first_name.clone().flatten())
                    .bind(p.last_name.is_some())
                    .bind(p.last_name.clone().flatten())
                    .bind(p.email.is_some())
                    .bind(p.email.clone().flatten())
                    .bind(p.status.map(LeadStatus::as_str))
                    .bind(&p.attributes)
                    .bind(if_match)
                    .fetch_optional(c.raw())
                    .await;
                (c, out)
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(
                    "a lead with this phone number already exists in this organization",
                ),
                e => e,
            })?;
        let Some(row) = row else {
            return Err(self.miss_reason("leads", id.0).await);
        };
        let (lead, txid): (Lead, _) = decode(&row)?;
        let change = Change::Lead {
            id,
            org: lead.organization_id,
            op: Op::Update,
            old_phone: old_phone(&row)?,
            new_phone: phone(&lead.phone_number),
        };
        Ok((lead, Commit { change, txid }))
    }

    pub async fn delete_lead(&self, id: LeadId) -> Result<Commit, StoreError> {
        let row: Option<(OrgId, String, i64)> = self
            .write(PgQuery::DeleteLead, |mut c| async move {
                let out = sqlx::query_as(&format!(
                    "DELETE FROM leads WHERE id = $1 RETURNING organization_id, phone_number, {TXID}"
                ))
                .bind(id).fetch_optional(c.raw()).await;
                (c, out)
            })
            .await?;
        let (org, old, txid) = row.ok_or(StoreError::NotFound)?;
        let change = Change::Lead {
            id,
            org,
            op: Op::Delete,
            old_phone: phone(&old),
            new_phone: None,
        };
        Ok(Commit {
            change,
            txid: TxId(txid as u64),
        })
    }

    pub async fn create_conversation(
        &self,
        lead: LeadId,
        new: &NewConversation,
    ) -> Result<(Conversation, Commit), StoreError> {
        let sql = format!(
            "INSERT INTO conversations (lead_id, organization_id, channel, direction, summary, started_at, ended_at) \
             SELECT id, organization_id, $2, $3, $4, COALESCE($5, now()), $6 FROM leads WHERE id = $1 \
             RETURNING {CONVERSATION_COLUMNS}, {TXID}"
        );
        let row = self
            .write(PgQuery::CreateConversation, |mut c| async move {
                let out = sqlx::query(&sql)
                    .bind(lead)
                    .bind(new.channel.as_str())
                    .bind(new.direction.as_str())
                    .bind(&new.summary)
                    .bind(new.started_at)
                    .bind(new.ended_at)
                    .fetch_optional(c.raw())
                    .await;
                (c, out)
            })
            .await?;
        let row = row.ok_or(StoreError::NotFound)?;
        let (conv, txid): (Conversation, _) = decode(&row)?;
        let change = Change::Conversation {
            id: conv.id,
            lead: conv.lead_id,
            org: conv.organization_id,
            op: Op::Insert,
        };
        Ok((conv, Commit { change, txid }))
    }

    pub async fn update_conversation(
        &self,
        id: ConversationId,
        p: &ConversationPatch,
        if_match: Option<i64>,
    ) -> Result<(Conversation, Commit), StoreError> {
        let sql = format!(
            "UPDATE conversations SET \
                summary = CASE WHEN $2 THEN $3 ELSE summary END, \
                ended_at = CASE WHEN $4 THEN $5 ELSE ended_at END \
             WHERE id = $1 AND ($6::bigint IS NULL OR version = $6) \
             RETURNING {CONVERSATION_COLUMNS}, {TXID}"
        );
        let row = self
            .write(PgQuery::UpdateConversation, |mut c| async move {
                let out = sqlx::query(&sql)
                    .bind(id)
                    .bind(p.summary.is_some())
                    .bind(p.summary.clone().flatten())
                    .bind(p.ended_at.is_some())
                    .bind(p.ended_at.flatten())
                    .bind(if_match)
                    .fetch_optional(c.raw())
                    .await;
                (c, out)
            })
            .await?;
        let Some(row) = row else {
            return Err(self.miss_reason("conversations", id.0).await);
        };
        let (conv, txid): (Conversation, _) = decode(&row)?;
        let change = Change::Conversation {
            id,
            lead: conv.lead_id,
            org: conv.organization_id,
            op: Op::Update,
        };
        Ok((conv, Commit { change, txid }))
    }
}
