//! Domain types: raw client input becomes these once, at the edge; inner code cannot hold an
//! invalid one.

mod change;
mod channel;
pub mod greeting;
mod ids;
mod models;
mod names;
mod phone;
pub mod rfc3339;

pub use change::{Change, Commit, Op, TxId};
pub use channel::{Channel, Direction, LeadStatus};
pub use ids::{ConversationId, LeadId, OrgId};
pub use models::{Conversation, Lead, Organization};
pub use names::{EventType, SessionId, TopicName};
pub use phone::{PhoneError, PhoneNumber, PhoneParser, Region};

/// A value that could not be parsed from client input; the message is safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);
