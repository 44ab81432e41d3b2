//! The resources as stored and as answered (API.md "Resources").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ConversationId, LeadId, OrgId};

/// An organization: the business whose number a caller dialled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    /// E.164.
    #[schema(example = "+15550100001")]
    pub phone_number: String,
    /// IANA time zone.
    #[schema(example = "America/New_York")]
    pub timezone: String,
    /// With `{first_name}`, `{org_name}` and `{time_of_day}` filled in for greetings.
    pub greeting_template: String,
    /// Free-form settings; `greeting_templates.<channel>` overrides the template per channel.
    #[schema(value_type = Object)]
    pub settings: Value,
    pub version: i64,
    #[serde(serialize_with = "super::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// A lead: a person an organization talks to, identified by phone within that organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Lead {
    pub id: LeadId,
    pub organization_id: OrgId,
    /// E.164.
    #[schema(example = "+15550200001")]
    pub phone_number: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    #[schema(value_type = super::LeadStatus)]
    pub status: String,
    #[schema(value_type = Object)]
    pub attributes: Value,
    pub version: i64,
    #[serde(serialize_with = "super::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// One conversation between an organization and a lead, on one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Conversation {
    pub id: ConversationId,
    pub lead_id: LeadId,
    pub organization_id: OrgId,
    #[schema(value_type = super::Channel)]
    pub channel: String,
    #[schema(value_type = super::Direction)]
    pub direction: String,
    pub summary: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub version: i64,
}
