//! `[postgres]`: the primary database, and the pool settings of the store.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

use super::{redact_url, typed, ConfigError, Invalid, SecretUrl};
use crate::store::StoreConfig;

const DEFAULT_MAX_CONNECTIONS: NonZeroU32 = NonZeroU32::new(16).unwrap();

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    pub url: SecretUrl,
    pub max_connections: NonZeroU32,
    /// Connections kept open; at most `max_connections`.
    pub min_connections: u32,
    /// How long a request waits for a free connection (`acquire_timeout_ms`).
    #[serde(rename = "acquire_timeout_ms", with = "typed::nonzero_millis")]
    pub acquire_timeout: Duration,
    /// Server-side timeout of every statement (`statement_timeout_ms`).
    #[serde(rename = "statement_timeout_ms", with = "typed::nonzero_millis")]
    pub statement_timeout: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            url: SecretUrl::new("postgres://postgres@127.0.0.1:5432/sidecache"),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            min_connections: 1,
            acquire_timeout: Duration::from_millis(100),
            statement_timeout: Duration::from_millis(2000),
        }
    }
}

/// A postgres:// URL that parses; `key` names the setting it came from.
pub(super) fn check_url(key: &str, url: &SecretUrl) -> Result<(), Invalid> {
    let raw = url.expose();
    if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
        return Err(Invalid::new(key, format!("{url} is not a postgres:// URL")));
    }
    Ok(())
}

impl PostgresSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        check_url("postgres.url", &self.url)?;
        self.url.expose().parse::<PgConnectOptions>().map_err(|e| {
            Invalid::new(
                "postgres.url",
                format!("cannot be parsed ({})", redact_url(&e.to_string())),
            )
        })?;
        if self.min_connections > self.max_connections.get() {
            return Err(Invalid::new(
                "postgres.min_connections",
                "must not exceed postgres.max_connections",
            ));
        }
        // Redis fences outlive their last bump by two minutes; a load that read Postgres before a
        // write must finish well within that, or its fill could slip past an expired fence.
        let statement_too_long = self.statement_timeout > Duration::from_secs(30);
        if statement_too_long || self.acquire_timeout > Duration::from_secs(10) {
            let key = if statement_too_long {
                "postgres.statement_timeout_ms"
            } else {
                "postgres.acquire_timeout_ms"
            };
            return Err(Invalid::new(
                key,
                "must keep a load under the fences' two minutes (statement at most 30000, acquire at most 10000)",
            ));
        }
        Ok(())
    }

    /// Connection options for `url`.
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        self.url
            .expose()
            .parse()
            .map_err(|_| ConfigError::new(format!("postgres.url {} cannot be parsed", self.url)))
    }

    /// The store's pool settings; `application_name` names this instance's sessions.
    pub fn store_config(&self, application_name: &str) -> Result<StoreConfig, ConfigError> {
        Ok(StoreConfig {
            connect: self.connect_options()?,
            max_connections: self.max_connections.get(),
            min_connections: self.min_connections,
            acquire_timeout: self.acquire_timeout,
            statement_timeout: self.statement_timeout,
            application_name: application_name.to_owned(),
        })
    }
}
