//! What a committed write changed: the input to `invalidation::keys_for`.

use super::{ConversationId, LeadId, OrgId, PhoneNumber};

/// The kind of row operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// One committed change, with the old and new values of every field that is part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Organization {
        id: OrgId,
        op: Op,
        old_phone: Option<PhoneNumber>,
        new_phone: Option<PhoneNumber>,
    },
    Lead {
        id: LeadId,
        org: OrgId,
        op: Op,
        old_phone: Option<PhoneNumber>,
        new_phone: Option<PhoneNumber>,
    },
    Conversation {
        id: ConversationId,
        lead: LeadId,
        org: OrgId,
        op: Op,
    },
}

/// A Postgres transaction id (`pg_current_xact_id()`, an xid8): the outbox records it with each
/// change, and sidecache's own writes return it, so a change can be recognised as already handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

/// A committed write: what changed, and the transaction that committed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub change: Change,
    pub txid: TxId,
}
