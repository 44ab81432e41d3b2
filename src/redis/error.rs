//! Why a Redis call did not succeed.

/// Why a Redis call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("redis error: {0}")]
    Redis(String),
    #[error("redis operation timed out")]
    Timeout,
    /// Not connected yet, or skipped while the breaker is open.
    #[error("redis is not connected")]
    Unavailable,
    #[error("redis configuration: {0}")]
    Config(String),
}
