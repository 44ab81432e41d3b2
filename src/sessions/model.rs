//! What the session store speaks: its settings, its errors, and its answers.

use std::time::Duration;

use super::doc::Doc;
use super::shared::Listed;
use crate::labels::{SessionOutcome, StateStore};

/// Settings of the session store.
#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub max_bytes: usize,
    pub memory_max_entries: usize,
}

/// Why a session operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no such session")]
    NotFound,
    #[error("the session is at version {current}")]
    VersionMismatch { current: u64 },
    #[error("the data is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("this instance's memory holds as many sessions as it may")]
    MemoryFull,
    #[error("{0}")]
    Invalid(String),
    #[error("the session is being written by others too often; retry")]
    Busy,
    /// A conditional write while Redis cannot be asked: only the shared store can check it.
    #[error("the shared session store is unavailable")]
    Unavailable,
}

impl SessionError {
    pub(super) fn outcome(&self) -> SessionOutcome {
        match self {
            SessionError::NotFound => SessionOutcome::NotFound,
            SessionError::VersionMismatch { .. } | SessionError::Busy => SessionOutcome::Conflict,
            SessionError::TooLarge { .. } => SessionOutcome::TooLarge,
            SessionError::Invalid(_) => SessionOutcome::Invalid,
            SessionError::MemoryFull | SessionError::Unavailable => SessionOutcome::Full,
        }
    }
}

/// A session as an operation left it, and where it lives.
#[derive(Debug, Clone)]
pub struct Answer {
    pub doc: Doc,
    pub store: StateStore,
    /// A PUT created it (rather than replacing one).
    pub created: bool,
}

/// A page of sessions.
#[derive(Debug, Clone)]
pub struct Page {
    pub sessions: Vec<Listed>,
    pub next_cursor: Option<String>,
    pub count: usize,
    pub store: StateStore,
}
