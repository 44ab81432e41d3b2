//! The resources as stored and as answered (API.md "Resources").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConversationId, LeadId, OrgId};

/// An organization: the business whose number a caller dialled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub phone_number: String,
    pub timezone: String,
    pub greeting_template: String,
    pub settings: Value,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A lead: a person an organization talks to, identified by phone within that organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Lead {
    pub id: LeadId,
    pub organization_id: OrgId,
    pub phone_number: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub status: String,
    pub attributes: Value,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One conversation between an organization and a lead, on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Conversation {
    pub id: ConversationId,
    pub lead_id: LeadId,
    pub organization_id: OrgId,
    pub channel: String,
    pub direction: String,
    pub summary: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub version: i64,
}
