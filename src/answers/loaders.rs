//! Loads from Postgres, each encoded to JSON once, at fill time. One generic loader serves every
//! single row, which the store encodes from the row it read (its ETag is its version);
//! composite answers (context, summary, greeting, history) are encoded here, and their ETag is a
//! hash of their bytes.

use std::future::Future;

use bytes::Bytes;
use serde::Serialize;

use super::views::{dynamic_variables, greeting_text, Context, Greeting, History, Summary};
use crate::cache::{fnv1a, Ids, LoadError, LoadFuture, Loaded};
use crate::domain::{Channel, LeadId, Organization};
use crate::store::{JsonRow, Store, StoreError};

fn encode<T: Serialize>(v: &T) -> Result<Bytes, LoadError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| LoadError::Failed(format!("could not encode a response: {e}").into()))
}

/// A composite answer: its ETag is a hash of its bytes.
fn found_hashed<T: Serialize>(v: &T, ids: Ids) -> Result<Loaded, LoadError> {
    let body = encode(v)?;
    let etag = format!("\"h{:016x}\"", fnv1a(&body));
    Ok(Loaded::Found { body, etag, ids })
}

/// Loads one row, already encoded by the store (`None`: cached as "not found"); its ETag is its
/// version.
pub(super) fn row<F>(query: F) -> LoadFuture
where
    F: Future<Output = Result<Option<JsonRow>, StoreError>> + Send + 'static,
{
    Box::pin(async move {
        match query.await? {
            Some(row) => Ok(Loaded::Found {
                etag: format!("\"{}\"", row.version),
                ids: Ids {
                    org: Some(row.org),
                    lead: row.lead,
                },
                body: row.body,
            }),
            None => Ok(Loaded::NotFound),
        }
    })
}

pub(super) fn context(store: Store, id: LeadId) -> LoadFuture {
    Box::pin(async move {
        let Some(lo) = store.lead_with_org(id).await? else {
            return Ok(Loaded::NotFound);
        };
        let recent = store.recent_conversations(id, 5, 0).await?;
        let stats = store.conversation_stats(id).await?;
        let summary = stats.summary();
        let ids = Ids {
            org: Some(lo.org.id),
            lead: Some(lo.lead.id),
        };
        let ctx = Context {
            dynamic_variables: dynamic_variables(
                &lo.lead,
                &lo.org,
                summary.as_deref(),
                stats.count,
            ),
            lead: lo.lead,
            organization: lo.org,
            summary,
            conversation_count: stats.count,
            last_contact_at: stats.last_contact_at,
            recent_conversations: recent,
        };
        found_hashed(&ctx, ids)
    })
}

pub(super) fn summary(store: Store, id: LeadId) -> LoadFuture {
    Box::pin(async move {
        if !store.lead_exists(id).await? {
            return Ok(Loaded::NotFound);
        }
        let stats = store.conversation_stats(id).await?;
        let ids = Ids {
            org: None,
            lead: Some(id),
        };
        found_hashed(
            &Summary {
                lead_id: id,
                summary: stats.summary(),
                conversation_count: stats.count,
                last_contact_at: stats.last_contact_at,
            },
            ids,
        )
    })
}

pub(super) fn greeting(store: Store, id: LeadId, channel: Channel) -> LoadFuture {
    Box::pin(async move {
        let Some(lo) = store.lead_with_org(id).await? else {
            return Ok(Loaded::NotFound);
        };
        let text = greeting_text(&lo.org, lo.lead.first_name.as_deref(), channel);
        found_hashed(
            &Greeting {
                lead_id: Some(id),
                channel,
                greeting: &text,
            },
            Ids {
                org: Some(lo.org.id),
                lead: Some(id),
            },
        )
    })
}

pub(super) fn history(store: Store, id: LeadId, limit: u32, offset: u32) -> LoadFuture {
    Box::pin(async move {
        let conversations = store
            .recent_conversations(id, i64::from(limit), i64::from(offset))
            .await?;
        if conversations.is_empty() && !store.lead_exists(id).await? {
            return Ok(Loaded::NotFound);
        }
        let ids = Ids {
            org: None,
            lead: Some(id),
        };
        found_hashed(
            &History {
                lead_id: id,
                limit,
                offset,
                conversations,
            },
            ids,
        )
    })
}

/// The greeting for a caller who is not a lead, for the organization of a cached answer.
pub(super) fn unknown_caller_greeting(
    org_json: &[u8],
    channel: Channel,
) -> Result<Bytes, LoadError> {
    let org: Organization = serde_json::from_slice(org_json)
        .map_err(|e| LoadError::Failed(format!("cached organization: {e}").into()))?;
    let text = greeting_text(&org, None, channel);
    encode(&Greeting {
        lead_id: None,
        channel,
        greeting: &text,
    })
}
