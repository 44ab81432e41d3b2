//! Settings, layered: built-in defaults < `config.toml` < environment < command-line flags.
//!
//! Environment: `DATABASE_URL`, `REDIS_URL`, `REDIS_ENABLED` (true/false/1/0), `SIDECACHE_LISTEN`,
//! `SIDECACHE_ADMIN_TOKEN`, and `SIDECACHE__SECTION__KEY` for any key (e.g.
//! `SIDECACHE__CACHE__L1_MAX_BYTES`). Everything is parsed and checked before a port is bound; a
//! bad value produces one line that names the key and where it came from. URLs are
//! [`SecretUrl`]s: their passwords never print.
//!
//! One module per section. Each parses its keys into typed values (`SocketAddr`, `Duration` under
//! the same `*_ms`/`*_secs` keys, `NonZero…`), so figment refuses a bad value with its source;
//! what spans several keys is checked by the section's `validate()`; and each section converts
//! itself into its component's config. This module owns the sources and their precedence.

mod admin;
mod audit;
mod cache;
mod coherence;
mod log;
mod postgres;
mod redis;
mod secret;
mod server;
mod state;
mod typed;
mod webhooks;

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

pub use admin::AdminSettings;
pub use audit::AuditSettings;
pub use cache::{CacheSettings, TtlSettings};
pub use coherence::CoherenceSettings;
pub use log::{LogFormat, LogSettings};
pub use postgres::PostgresSettings;
pub use redis::{RedisMode, RedisSettings};
pub use secret::{redact_url, Secret, SecretUrl};
pub use server::ServerSettings;
pub use state::{EventsSettings, LimitSettings, OnRedisDown, RateLimitSettings, SessionsSettings};
pub use webhooks::{
    ElevenLabsSettings, ProxySettings, RetellSettings, TwilioSettings, VapiSettings,
    WebhooksSettings,
};

/// A bad setting: one line naming the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        ConfigError(msg.into())
    }
}

/// A failed check of one section: the full key and what is wrong with it. Loading adds where the
/// value came from.
#[derive(Debug)]
pub(crate) struct Invalid {
    key: String,
    msg: String,
}

impl Invalid {
    pub(crate) fn new(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            msg: msg.into(),
        }
    }

    fn sourced(self, f: &Figment) -> ConfigError {
        let source = f
            .find_metadata(&self.key)
            .map(source_of)
            .unwrap_or_else(|| "built-in default".into());
        ConfigError(format!("`{}` from {source}: {}", self.key, self.msg))
    }
}

/// Every setting, after layering and checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub postgres: PostgresSettings,
    pub redis: RedisSettings,
    pub cache: CacheSettings,
    pub coherence: CoherenceSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub sessions: SessionsSettings,
    pub events: EventsSettings,
    pub rate_limits: RateLimitSettings,
    pub webhooks: WebhooksSettings,
    pub proxy: ProxySettings,
    pub audit: AuditSettings,
}

/// Values given on the command line (highest precedence). `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub redis_enabled: Option<String>,
    pub log_level: Option<String>,
}

/// A provider of a few dotted keys, named after where they came from (an env var, a flag), so
/// errors say exactly which one was wrong.
struct Named {
    name: String,
    values: Vec<(String, String)>,
}

impl Provider for Named {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (path, raw) in &self.values {
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            let parts: Vec<&str> = path.split('.').collect();
            let (last, parents) = parts.split_last().unwrap_or((&"", &[]));
            let mut dict = &mut root;
            for p in parents {
                let entry = dict
                    .entry((*p).to_owned())
                    .or_insert_with(|| Value::from(Dict::new()));
                if !matches!(entry, Value::Dict(..)) {
                    *entry = Value::from(Dict::new());
                }
                match entry {
                    Value::Dict(_, d) => dict = d,
                    _ => unreachable!("just made a dict"),
                }
            }
            dict.insert((*last).to_owned(), value);
        }
        Ok(Profile::Default.collect(root))
    }
}

const ENV_SINGLES: &[(&str, &str)] = &[
    ("DATABASE_URL", "postgres.url"),
    ("REDIS_URL", "redis.url"),
    ("REDIS_ENABLED", "redis.enabled"),
    ("SIDECACHE_LISTEN", "server.listen"),
    ("SIDECACHE_ADMIN_TOKEN", "admin.token"),
];

impl Settings {
    /// Layers the sources. `config` names the TOML file; `None` means `./config.toml` if present.
    pub fn load(
        config: Option<&Path>,
        env: &[(String, String)],
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let figment = Self::figment(config, env, flags)?;
        let settings: Settings = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        settings.validate().map_err(|e| e.sourced(&figment))?;
        Ok(settings)
    }

    /// Loads from the real process environment.
    pub fn from_process(config: Option<&Path>, flags: &Overrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load(config, &env, flags)
    }

    fn figment(
        config: Option<&Path>,
        env: &[(String, String)],
        flags: &Overrides,
    ) -> Result<Figment, ConfigError> {
        let mut f = Figment::from(Serialized::defaults(Settings::default()));
        // The defaults layer serializes URLs redacted; put the real defaults back underneath.
        let d = Settings::default();
        f = f.merge(Named {
            name: "built-in default".into(),
            values: vec![
                ("postgres.url".into(), d.postgres.url.expose().to_owned()),
                ("redis.url".into(), d.redis.url.expose().to_owned()),
            ],
        });
        match config {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist (from --config)",
                        path.display()
                    )));
                }
                f = f.merge(Toml::file_exact(path));
            }
            None => {
                let default = PathBuf::from("config.toml");
                if default.exists() {
                    f = f.merge(Toml::file_exact(default));
                }
            }
        }
        // SIDECACHE__SECTION__KEY, read from the given environment (tests pass their own).
        let nested: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with("SIDECACHE__"))
            .cloned()
            .collect();
        for (k, v) in nested {
            let path = k["SIDECACHE__".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            f = f.merge(Named {
                name: format!("environment variable {k}"),
                values: vec![(path, v)],
            });
        }
        for (var, path) in ENV_SINGLES {
            if let Some((_, v)) = env.iter().find(|(k, _)| k == var) {
                f = f.merge(Named {
                    name: format!("environment variable {var}"),
                    values: vec![(path.to_string(), v.clone())],
                });
            }
        }
        let flag_values = [
            ("--listen", "server.listen", &flags.listen),
            ("--database-url", "postgres.url", &flags.database_url),
            ("--redis-url", "redis.url", &flags.redis_url),
            ("--redis-enabled", "redis.enabled", &flags.redis_enabled),
            ("--log-level", "log.level", &flags.log_level),
        ];
        for (flag, path, value) in flag_values {
            if let Some(v) = value {
                f = f.merge(Named {
                    name: format!("command-line flag {flag}"),
                    values: vec![(path.to_string(), v.clone())],
                });
            }
        }
        Ok(f)
    }

    /// Checks that span several keys, section by section (each value alone was checked as it
    /// was parsed).
    fn validate(&self) -> Result<(), Invalid> {
        self.server.validate()?;
        self.postgres.validate()?;
        self.redis.validate()?;
        self.cache.validate()?;
        self.admin.validate()?;
        self.coherence.validate()?;
        self.sessions.validate()?;
        self.events.validate()?;
        self.rate_limits.validate()?;
        self.webhooks.validate()?;
        self.proxy.validate()?;
        self.audit.validate()?;
        self.log.validate()
    }

    /// The effective settings as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        // Every section is a table of strings, numbers and booleans (URLs and tokens serialize
        // redacted, durations as their integer keys), all of which TOML can hold.
        toml::to_string(self).expect("settings are representable as TOML")
    }
}

fn source_of(m: &Metadata) -> String {
    match &m.source {
        Some(figment::Source::File(p)) => format!("{} ({})", p.display(), m.name),
        _ => m.name.to_string(),
    }
}

/// One line: what is wrong, with which key, from which source.
fn describe(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let source = e
        .metadata
        .as_ref()
        .map(source_of)
        .unwrap_or_else(|| "configuration".into());
    if key.is_empty() {
        format!("{} (in {source})", e.kind)
    } else {
        format!("`{key}` from {source}: {}", e.kind)
    }
}

#[cfg(test)]
mod tests;
