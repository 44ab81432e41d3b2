//! `[server]`: where the HTTP API listens, how much it takes at once, and how it shuts down.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{typed, Invalid};

const DEFAULT_MAX_CONCURRENCY: NonZeroUsize = NonZeroUsize::new(1024).unwrap();

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port.
    #[serde(with = "typed::addr")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes.
    pub body_limit_bytes: usize,
    /// How long in-flight requests get to finish on shutdown (`shutdown_grace_secs`).
    #[serde(rename = "shutdown_grace_secs", with = "typed::secs")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, keep serving (with `/readyz` at 503) this long before refusing connections
    /// (`drain_delay_ms`).
    #[serde(rename = "drain_delay_ms", with = "typed::millis")]
    pub drain_delay: Duration,
    /// Requests handled at once; more are answered 503 with `Retry-After` at once.
    pub max_concurrency: NonZeroUsize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
        }
    }
}

impl ServerSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if self.body_limit_bytes < 1024 {
            return Err(Invalid::new(
                "server.body_limit_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}
