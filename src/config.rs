//! Settings, layered: built-in defaults < `config.toml` < environment < command-line flags.
//!
//! Environment: `DATABASE_URL`, `REDIS_URL`, `REDIS_ENABLED` (true/false/1/0), `SIDECACHE_LISTEN`,
//! and `SIDECACHE__SECTION__KEY` for any key (e.g. `SIDECACHE__CACHE__L1_MAX_BYTES`).
//! Everything is parsed and checked before a port is bound; a bad value produces one line that
//! names the key and where it came from. URLs are [`SecretUrl`]s: their passwords never print.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cache::{Kind, Policies, Policy};
use crate::domain::Region;

/// A bad setting: one line naming the key and its source.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// A URL that may carry a password; `Display`/`Debug`/`Serialize` show it redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(s: impl Into<String>) -> Self {
        SecretUrl(s.into())
    }
    /// The real URL, for connecting. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// Replaces the password (or a lone user-info token) of a URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let masked = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        // `redis://token@host`: a bare token is a password too.
        None if url.starts_with("redis") => "***".to_owned(),
        None => userinfo.to_owned(),
    };
    format!("{}{}@{}", &url[..scheme_end + 3], masked, &rest[at + 1..])
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}
impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Only the defaults layer and `check-config` serialize settings; neither may leak secrets.
        s.serialize_str(&self.redacted())
    }
}

/// A secret that is not a URL (the admin token): shown as `***` when set, never in clear.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The real value, for comparing. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() { "\"***\"" } else { "\"\"" })
    }
}
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.is_set() { "***" } else { "" })
    }
}

/// Accepts `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case), as env vars are written.
fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean (true/false/1/0)")
        }
        fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
            self.visit_i64(v.min(2) as i64)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: String,
    /// Largest accepted request body in bytes.
    pub body_limit_bytes: usize,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// After SIGTERM, keep serving (with `/readyz` at 503) this long before refusing connections.
    pub drain_delay_ms: u64,
    /// Requests handled at once; more are answered 503 with `Retry-After` at once.
    pub max_concurrency: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            body_limit_bytes: 64 * 1024,
            shutdown_grace_secs: 10,
            drain_delay_ms: 0,
            max_concurrency: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    pub url: SecretUrl,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            url: SecretUrl::new("postgres://postgres@127.0.0.1:5432/sidecache"),
            max_connections: 16,
            min_connections: 1,
            acquire_timeout_ms: 100,
            statement_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    #[serde(deserialize_with = "flexible_bool")]
    pub enabled: bool,
    pub url: SecretUrl,
    pub namespace: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub pool_size: usize,
    pub breaker_failures: u32,
    pub breaker_failure_rate: f64,
    pub breaker_min_requests: u32,
    pub breaker_window_secs: u64,
    pub breaker_open_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            enabled: true,
            url: SecretUrl::new("redis://127.0.0.1:6379"),
            namespace: "sidecache".into(),
            timeout_ms: 25,
            connect_timeout_ms: 500,
            pool_size: 4,
            breaker_failures: 5,
            breaker_failure_rate: 0.5,
            breaker_min_requests: 20,
            breaker_window_secs: 10,
            breaker_open_ms: 1000,
        }
    }
}

impl RedisSettings {
    pub fn breaker(&self) -> crate::cache::BreakerConfig {
        crate::cache::BreakerConfig {
            consecutive_failures: self.breaker_failures,
            failure_rate: self.breaker_failure_rate,
            min_requests: self.breaker_min_requests,
            window: Duration::from_secs(self.breaker_window_secs),
            open_for: Duration::from_millis(self.breaker_open_ms),
        }
    }
}

/// Seconds per kind of data: time to live of a found value (`cache.ttl`), or how long past it a
/// value may still be served when Postgres cannot be reached (`cache.max_stale`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlSettings {
    pub lead_phone: u64,
    pub lead_id: u64,
    pub org_phone: u64,
    pub org_id: u64,
    pub context: u64,
    pub summary: u64,
    pub greeting: u64,
    pub history: u64,
}

impl Default for TtlSettings {
    fn default() -> Self {
        TtlSettings {
            lead_phone: 900,
            lead_id: 900,
            org_phone: 1800,
            org_id: 1800,
            context: 600,
            summary: 1200,
            greeting: 300,
            history: 600,
        }
    }
}

impl TtlSettings {
    /// The same value for every kind.
    pub fn uniform(secs: u64) -> Self {
        TtlSettings {
            lead_phone: secs,
            lead_id: secs,
            org_phone: secs,
            org_id: secs,
            context: secs,
            summary: secs,
            greeting: secs,
            history: secs,
        }
    }

    fn get(&self, kind: Kind) -> u64 {
        match kind {
            Kind::LeadByPhone => self.lead_phone,
            Kind::LeadById => self.lead_id,
            Kind::OrgByPhone => self.org_phone,
            Kind::OrgById => self.org_id,
            Kind::Context => self.context,
            Kind::Summary => self.summary,
            Kind::Greeting => self.greeting,
            Kind::History => self.history,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    #[serde(deserialize_with = "flexible_bool")]
    pub l1_enabled: bool,
    pub l1_max_bytes: u64,
    pub l1_max_ttl_secs: u64,
    pub negative_ttl_secs: u64,
    pub jitter: f64,
    pub default_region: String,
    pub soft_timeout_ms: u64,
    pub lookup_deadline_ms: u64,
    pub fail_safe_throttle_ms: u64,
    pub refresh_ahead: f64,
    pub ttl: TtlSettings,
    pub max_stale: TtlSettings,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            l1_enabled: true,
            l1_max_bytes: 256 * 1024 * 1024,
            l1_max_ttl_secs: 300,
            negative_ttl_secs: 60,
            jitter: 0.1,
            default_region: "US".into(),
            soft_timeout_ms: 50,
            lookup_deadline_ms: 1000,
            fail_safe_throttle_ms: 1000,
            refresh_ahead: 0.1,
            ttl: TtlSettings::default(),
            max_stale: TtlSettings::uniform(3600),
        }
    }
}

/// Keeping every instance fresh: the Postgres change listener, the peer bus, fill leases.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoherenceSettings {
    #[serde(deserialize_with = "flexible_bool")]
    pub listener: bool,
    /// Where the listener connects; empty = `postgres.url`.
    pub listener_url: SecretUrl,
    pub poll_interval_ms: u64,
    pub outbox_retention_secs: u64,
    pub outbox_prune_interval_secs: u64,
    #[serde(deserialize_with = "flexible_bool")]
    pub bus: bool,
    /// Where the bus subscribes; empty = `redis.url`.
    pub bus_url: SecretUrl,
    pub heartbeat_ms: u64,
    pub degraded_l1_ttl_secs: u64,
    pub lease_ms: u64,
    pub lease_wait_ms: u64,
    pub lease_poll_ms: u64,
}

impl Default for CoherenceSettings {
    fn default() -> Self {
        CoherenceSettings {
            listener: true,
            listener_url: SecretUrl::new(""),
            poll_interval_ms: 1000,
            outbox_retention_secs: 3600,
            outbox_prune_interval_secs: 60,
            bus: true,
            bus_url: SecretUrl::new(""),
            heartbeat_ms: 500,
            degraded_l1_ttl_secs: 5,
            lease_ms: 2000,
            lease_wait_ms: 300,
            lease_poll_ms: 5,
        }
    }
}

impl CoherenceSettings {
    /// The URL the change listener connects to.
    pub fn listener_url<'a>(&'a self, postgres: &'a PostgresSettings) -> &'a SecretUrl {
        if self.listener_url.expose().is_empty() {
            &postgres.url
        } else {
            &self.listener_url
        }
    }

    /// The URL the bus subscribes on.
    pub fn bus_url<'a>(&'a self, redis: &'a RedisSettings) -> &'a SecretUrl {
        if self.bus_url.expose().is_empty() {
            &redis.url
        } else {
            &self.bus_url
        }
    }
}

/// The operator surface under `/admin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token for `/admin`; empty = the admin routes are not mounted at all.
    pub token: Secret,
}

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
        settings.check(&figment)?;
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

    fn check(&self, f: &Figment) -> Result<(), ConfigError> {
        let fail = |key: &str, msg: String| -> ConfigError {
            let source = f
                .find_metadata(key)
                .map(source_of)
                .unwrap_or_else(|| "built-in default".into());
            ConfigError(format!("`{key}` from {source}: {msg}"))
        };
        self.server.listen.parse::<SocketAddr>().map_err(|_| {
            fail(
                "server.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            )
        })?;
        if self.server.body_limit_bytes < 1024 {
            return Err(fail(
                "server.body_limit_bytes",
                "must be at least 1024".into(),
            ));
        }
        let pg = self.postgres.url.expose();
        if !(pg.starts_with("postgres://") || pg.starts_with("postgresql://")) {
            return Err(fail(
                "postgres.url",
                format!("{} is not a postgres:// URL", self.postgres.url),
            ));
        }
        pg.parse::<sqlx::postgres::PgConnectOptions>()
            .map_err(|e| {
                fail(
                    "postgres.url",
                    format!("cannot be parsed ({})", redact_url(&e.to_string())),
                )
            })?;
        if self.postgres.max_connections == 0 {
            return Err(fail(
                "postgres.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.postgres.min_connections > self.postgres.max_connections {
            return Err(fail(
                "postgres.min_connections",
                "must not exceed postgres.max_connections".into(),
            ));
        }
        // Redis fences outlive their last bump by two minutes; a load that read Postgres before a
        // write must finish well within that, or its fill could slip past an expired fence.
        if self.postgres.statement_timeout_ms > 30_000 || self.postgres.acquire_timeout_ms > 10_000
        {
            let key = if self.postgres.statement_timeout_ms > 30_000 {
                "postgres.statement_timeout_ms"
            } else {
                "postgres.acquire_timeout_ms"
            };
            return Err(fail(
                key,
                "must keep a load under the fences' two minutes (statement at most 30000, acquire at most 10000)".into(),
            ));
        }
        for (key, v) in [
            (
                "postgres.acquire_timeout_ms",
                self.postgres.acquire_timeout_ms,
            ),
            (
                "postgres.statement_timeout_ms",
                self.postgres.statement_timeout_ms,
            ),
            ("redis.timeout_ms", self.redis.timeout_ms),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
        ] {
            if v == 0 {
                return Err(fail(key, "must be greater than 0".into()));
            }
        }
        let ru = self.redis.url.expose();
        if !(ru.starts_with("redis://")
            || ru.starts_with("rediss://")
            || ru.starts_with("redis+unix://")
            || ru.starts_with("unix://"))
        {
            return Err(fail(
                "redis.url",
                format!("{} is not a redis:// or rediss:// URL", self.redis.url),
            ));
        }
        redis::Client::open(ru)
            .map_err(|_| fail("redis.url", format!("{} cannot be parsed", self.redis.url)))?;
        let ns = &self.redis.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(fail(
                "redis.namespace",
                "must be 1-64 characters of [A-Za-z0-9-_.]".into(),
            ));
        }
        if self.redis.pool_size == 0 {
            return Err(fail("redis.pool_size", "must be at least 1".into()));
        }
        if !(0.0..=0.5).contains(&self.cache.jitter) {
            return Err(fail("cache.jitter", "must be between 0 and 0.5".into()));
        }
        self.cache
            .default_region
            .parse::<Region>()
            .map_err(|e| fail("cache.default_region", e))?;
        if self.cache.l1_max_bytes < 1024 * 1024 {
            return Err(fail(
                "cache.l1_max_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            ));
        }
        for kind in Kind::ALL {
            if self.cache.ttl.get(kind) == 0 {
                let key = format!("cache.ttl.{kind}");
                return Err(fail(&key, "must be greater than 0".into()));
            }
        }
        for (key, v) in [
            ("cache.soft_timeout_ms", self.cache.soft_timeout_ms),
            ("cache.lookup_deadline_ms", self.cache.lookup_deadline_ms),
            ("server.max_concurrency", self.server.max_concurrency as u64),
            (
                "redis.breaker_failures",
                u64::from(self.redis.breaker_failures),
            ),
            ("redis.breaker_window_secs", self.redis.breaker_window_secs),
            ("redis.breaker_open_ms", self.redis.breaker_open_ms),
        ] {
            if v == 0 {
                return Err(fail(key, "must be greater than 0".into()));
            }
        }
        if !(0.0..0.5).contains(&self.cache.refresh_ahead) {
            return Err(fail(
                "cache.refresh_ahead",
                "must be at least 0 and below 0.5".into(),
            ));
        }
        if !(self.redis.breaker_failure_rate > 0.0 && self.redis.breaker_failure_rate <= 1.0) {
            return Err(fail(
                "redis.breaker_failure_rate",
                "must be above 0 and at most 1".into(),
            ));
        }
        if self.cache.negative_ttl_secs == 0 {
            return Err(fail(
                "cache.negative_ttl_secs",
                "must be greater than 0".into(),
            ));
        }
        if self.cache.l1_max_ttl_secs == 0 {
            return Err(fail(
                "cache.l1_max_ttl_secs",
                "must be greater than 0".into(),
            ));
        }
        let token = self.admin.token.expose();
        if self.admin.token.is_set()
            && (token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(fail(
                "admin.token",
                "must be at least 16 characters, without spaces".into(),
            ));
        }
        let co = &self.coherence;
        let listen = co.listener_url.expose();
        let postgres_scheme =
            listen.starts_with("postgres://") || listen.starts_with("postgresql://");
        if !listen.is_empty() && !postgres_scheme {
            return Err(fail(
                "coherence.listener_url",
                format!("{} is not a postgres:// URL", co.listener_url),
            ));
        }
        if !listen.is_empty() && listen.parse::<sqlx::postgres::PgConnectOptions>().is_err() {
            return Err(fail(
                "coherence.listener_url",
                format!("{} cannot be parsed", co.listener_url),
            ));
        }
        let bus = co.bus_url.expose();
        if !bus.is_empty() && redis::Client::open(bus).is_err() {
            return Err(fail(
                "coherence.bus_url",
                format!("{} is not a redis:// or rediss:// URL", co.bus_url),
            ));
        }
        for (key, v) in [
            ("coherence.poll_interval_ms", co.poll_interval_ms),
            ("coherence.outbox_retention_secs", co.outbox_retention_secs),
            (
                "coherence.outbox_prune_interval_secs",
                co.outbox_prune_interval_secs,
            ),
            ("coherence.heartbeat_ms", co.heartbeat_ms),
            ("coherence.degraded_l1_ttl_secs", co.degraded_l1_ttl_secs),
            ("coherence.lease_poll_ms", co.lease_poll_ms),
        ] {
            if v == 0 {
                return Err(fail(key, "must be greater than 0".into()));
            }
        }
        if co.outbox_retention_secs * 1000 < 10 * co.poll_interval_ms {
            return Err(fail(
                "coherence.outbox_retention_secs",
                "must cover at least ten listener polls (coherence.poll_interval_ms)".into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|_| {
            fail(
                "log.level",
                format!(
                    "{:?} is not a log filter like `info` or `sidecache=debug`",
                    self.log.level
                ),
            )
        })?;
        Ok(())
    }

    /// The listen address (checked at load).
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The region for numbers written without a country code (checked at load).
    pub fn region(&self) -> Region {
        self.cache.default_region.parse().unwrap_or_default()
    }

    /// Cache policies per kind.
    pub fn policies(&self) -> Policies {
        let c = &self.cache;
        Policies::new(|kind| Policy {
            ttl: Duration::from_secs(c.ttl.get(kind)),
            negative_ttl: Duration::from_secs(c.negative_ttl_secs),
            l1_max_ttl: Duration::from_secs(c.l1_max_ttl_secs),
            jitter: c.jitter,
            max_stale: Duration::from_secs(c.max_stale.get(kind)),
        })
    }

    /// Stale answers, deadlines and refresh-ahead.
    pub fn fail_safe(&self) -> crate::cache::FailSafe {
        let c = &self.cache;
        crate::cache::FailSafe {
            soft_timeout: Duration::from_millis(c.soft_timeout_ms),
            deadline: Duration::from_millis(c.lookup_deadline_ms),
            throttle: Duration::from_millis(c.fail_safe_throttle_ms),
            refresh_ahead: c.refresh_ahead,
        }
    }

    /// Fleet-wide single flight, unless `coherence.lease_ms` is 0.
    pub fn leases(&self) -> Option<crate::cache::LeaseConfig> {
        let c = &self.coherence;
        (c.lease_ms > 0).then(|| crate::cache::LeaseConfig {
            ttl: Duration::from_millis(c.lease_ms),
            wait: Duration::from_millis(c.lease_wait_ms),
            poll: Duration::from_millis(c.lease_poll_ms),
        })
    }

    /// The effective settings as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml_string(self)
    }
}

fn toml_string(s: &Settings) -> String {
    // serde_json keeps the structure; render it as TOML-like sections by hand to avoid a
    // dependency on a TOML serializer.
    let v = serde_json::to_value(s).unwrap_or_default();
    let mut out = String::new();
    render_section(&mut out, "", &v);
    out
}

fn render_section(out: &mut String, prefix: &str, v: &serde_json::Value) {
    let Some(obj) = v.as_object() else { return };
    let mut tables = Vec::new();
    for (k, val) in obj {
        if val.is_object() {
            tables.push((k, val));
        } else {
            out.push_str(&format!("{k} = {val}\n"));
        }
    }
    for (k, val) in tables {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push_str(&format!("\n[{name}]\n"));
        render_section(out, &name, val);
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write_toml(body: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let p = dir.0.join("config.toml");
        std::fs::write(&p, body).unwrap();
        (dir, p)
    }

    mod tempdir {
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                let p =
                    std::env::temp_dir().join(format!("sidecache-cfg-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn defaults_are_valid() {
        let (_d, p) = write_toml("");
        let s = Settings::load(Some(&p), &[], &Overrides::default()).unwrap();
        assert!(s.redis.enabled);
        assert_eq!(s.cache.ttl.lead_phone, 900);
        assert_eq!(
            s.postgres.url.expose(),
            "postgres://postgres@127.0.0.1:5432/sidecache"
        );
    }

    #[test]
    fn precedence_file_then_env_then_flags() {
        let (_d, p) = write_toml("[server]\nlisten = \"127.0.0.1:1111\"\n[redis]\nnamespace = \"fromfile\"\ntimeout_ms = 7\n");
        let s = Settings::load(Some(&p), &[], &Overrides::default()).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:1111");
        let e = env(&[
            ("SIDECACHE_LISTEN", "127.0.0.1:2222"),
            ("SIDECACHE__REDIS__NAMESPACE", "fromenv"),
        ]);
        let s = Settings::load(Some(&p), &e, &Overrides::default()).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:2222");
        assert_eq!(s.redis.namespace, "fromenv");
        assert_eq!(
            s.redis.timeout_ms, 7,
            "untouched keys keep the file's value"
        );
        let flags = Overrides {
            listen: Some("127.0.0.1:3333".into()),
            ..Default::default()
        };
        let s = Settings::load(Some(&p), &e, &flags).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:3333");
    }

    #[test]
    fn redis_enabled_accepts_the_usual_spellings() {
        let (_d, p) = write_toml("");
        for (v, want) in [
            ("true", true),
            ("false", false),
            ("1", true),
            ("0", false),
            ("FALSE", false),
            ("no", false),
        ] {
            let s = Settings::load(
                Some(&p),
                &env(&[("REDIS_ENABLED", v)]),
                &Overrides::default(),
            )
            .unwrap();
            assert_eq!(s.redis.enabled, want, "{v}");
        }
        let err = Settings::load(
            Some(&p),
            &env(&[("REDIS_ENABLED", "maybe")]),
            &Overrides::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("redis.enabled") && msg.contains("REDIS_ENABLED"),
            "{msg}"
        );
    }

    #[test]
    fn errors_name_key_and_source() {
        let (_d, p) = write_toml("[cache]\njitter = 3.0\n");
        let msg = Settings::load(Some(&p), &[], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("cache.jitter") && msg.contains("config.toml"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));

        let (_d, p) = write_toml("[server]\nlisten = 5\n");
        let msg = Settings::load(Some(&p), &[], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("server.listen") && msg.contains("config.toml"),
            "{msg}"
        );

        let (_d, p) = write_toml("[server]\nlistn = \"x\"\n");
        let msg = Settings::load(Some(&p), &[], &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("listn"), "{msg}");

        let (_d, p) = write_toml("");
        let msg = Settings::load(
            Some(&p),
            &env(&[("SIDECACHE__REDIS__TIMEOUT_MS", "soon")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("redis.timeout_ms") && msg.contains("SIDECACHE__REDIS__TIMEOUT_MS"),
            "{msg}"
        );

        let flags = Overrides {
            listen: Some("nowhere".into()),
            ..Default::default()
        };
        let msg = Settings::load(Some(&p), &[], &flags)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("server.listen") && msg.contains("--listen"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let url = SecretUrl::new("redis://:hunter2@cache:6379/0");
        assert_eq!(url.to_string(), "redis://:***@cache:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(
            redact_url("postgres://app:s3cret@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(
            redact_url("rediss://tok@host:6380"),
            "rediss://***@host:6380"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        let (_d, p) = write_toml("");
        let e = env(&[
            ("REDIS_URL", "redis://:hunter2@127.0.0.1:6379"),
            ("DATABASE_URL", "postgres://u:pw@127.0.0.1/db"),
        ]);
        let s = Settings::load(Some(&p), &e, &Overrides::default()).unwrap();
        assert_eq!(s.redis.url.expose(), "redis://:hunter2@127.0.0.1:6379");
        let shown = s.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains(":pw@"),
            "{shown}"
        );
    }
}
