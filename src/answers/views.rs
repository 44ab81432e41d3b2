//! The read models a lookup answers (their JSON is what the cache holds) and what is derived
//! from a lead and its organization: the dynamic variables a voice agent fills its prompt with,
//! and the greeting.

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use crate::domain::{greeting, Channel, Conversation, Lead, LeadId, Organization};

/// Everything a voice agent needs to start a call with this lead.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Context {
    pub lead: Lead,
    pub organization: Organization,
    pub summary: Option<String>,
    pub conversation_count: i64,
    pub last_contact_at: Option<chrono::DateTime<Utc>>,
    /// The five most recent, newest first.
    pub recent_conversations: Vec<Conversation>,
    /// Ready to hand to a voice agent: the lead's attributes, then first_name, last_name,
    /// full_name, email, phone_number, lead_status, org_name, org_timezone, conversation_count
    /// and summary, all as strings.
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub dynamic_variables: serde_json::Map<String, Value>,
}

/// The latest conversation summaries of a lead.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub lead_id: LeadId,
    pub summary: Option<String>,
    pub conversation_count: i64,
    pub last_contact_at: Option<chrono::DateTime<Utc>>,
}

/// The organization's greeting for a caller.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Greeting<'a> {
    /// Null for an unknown caller (in call initiation).
    pub lead_id: Option<LeadId>,
    pub channel: Channel,
    pub greeting: &'a str,
}

/// A page of a lead's conversations, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct History {
    pub lead_id: LeadId,
    pub limit: u32,
    pub offset: u32,
    pub conversations: Vec<Conversation>,
}

/// The variables a voice agent's prompt is filled with, all strings: the lead's attributes
/// first, then the built-in names (which win over a same-named attribute).
pub fn dynamic_variables(
    lead: &Lead,
    org: &Organization,
    summary: Option<&str>,
    count: i64,
) -> serde_json::Map<String, Value> {
    let mut vars = serde_json::Map::new();
    if let Value::Object(attrs) = &lead.attributes {
        for (k, v) in attrs {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            vars.insert(k.clone(), Value::String(s));
        }
    }
    let first = lead
        .first_name
        .clone()
        .unwrap_or_else(|| greeting::UNKNOWN_FIRST_NAME.to_owned());
    let full = [lead.first_name.as_deref(), lead.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    let mut put = |k: &str, v: String| {
        vars.insert(k.to_owned(), Value::String(v));
    };
    put("first_name", first);
    put("last_name", lead.last_name.clone().unwrap_or_default());
    put("full_name", full);
    put("email", lead.email.clone().unwrap_or_default());
    put("phone_number", lead.phone_number.clone());
    put("lead_status", lead.status.clone());
    put("org_name", org.name.clone());
    put("org_timezone", org.timezone.clone());
    put("conversation_count", count.to_string());
    put("summary", summary.unwrap_or_default().to_owned());
    vars
}

/// The template for a channel: `settings.greeting_templates.<channel>` if the organization set
/// one, else its `greeting_template`.
fn template_for(org: &Organization, channel: Channel) -> &str {
    org.settings
        .get("greeting_templates")
        .and_then(|t| t.get(channel.as_str()))
        .and_then(Value::as_str)
        .unwrap_or(&org.greeting_template)
}

/// The greeting for a caller (`first_name` is `None` for an unknown one), rendered now in the
/// organization's time zone.
pub fn greeting_text(org: &Organization, first_name: Option<&str>, channel: Channel) -> String {
    greeting::render(
        template_for(org, channel),
        first_name,
        &org.name,
        greeting::zone(&org.timezone),
        Utc::now(),
    )
}
