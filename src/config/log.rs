//! `[log]`: the tracing filter and the output format.

use serde::{Deserialize, Serialize};

use super::Invalid;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter (`info`, `sidecache=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info,sqlx=warn".into(),
            format: LogFormat::Text,
        }
    }
}

impl LogSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        tracing_subscriber::EnvFilter::try_new(&self.level).map_err(|_| {
            Invalid::new(
                "log.level",
                format!(
                    "{:?} is not a log filter like `info` or `sidecache=debug`",
                    self.level
                ),
            )
        })?;
        Ok(())
    }
}
