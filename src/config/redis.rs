//! `[redis]`: the second cache tier — where it is, its budgets and its circuit breaker.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{typed, Invalid, SecretUrl};
use crate::cache::RemoteConfig;
use crate::redis::{BreakerConfig, RedisConfig, SentinelConfig};

const DEFAULT_POOL_SIZE: NonZeroUsize = NonZeroUsize::new(4).unwrap();
const DEFAULT_BREAKER_FAILURES: NonZeroU32 = NonZeroU32::new(5).unwrap();

/// How sidecache finds its Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    Standalone,
    Sentinel,
    Cluster,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    #[serde(deserialize_with = "typed::flexible_bool")]
    pub enabled: bool,
    /// `standalone` (`url` names the server), `sentinel` (the sentinels name the master;
    /// `url` gives the master's credentials, database and TLS) or `cluster` (a Redis Cluster
    /// reached through `cluster_urls`; `url` is not used).
    pub mode: RedisMode,
    pub url: SecretUrl,
    /// Sentinel mode: the sentinels, each `redis://[user:password@]host:port` with the
    /// sentinels' own credentials.
    pub sentinel_urls: Vec<SecretUrl>,
    /// Cluster mode: seed nodes of the cluster, each `redis://[user:password@]host:port` (or
    /// `rediss://`); the credentials and TLS of the first are used for every node.
    pub cluster_urls: Vec<SecretUrl>,
    /// Sentinel mode: the name the sentinels monitor the master under.
    pub sentinel_master: String,
    /// Sentinel mode: replicas that must hold a session, event or rate-limit write before it is
    /// acknowledged (`WAIT`, within `timeout_ms`); else the write is kept in memory and written
    /// back. 0 = acknowledge on the master alone (a failover may lose the last writes).
    pub sentinel_wait_replicas: u32,
    /// The CA (PEM) that a `rediss://` server's certificate must chain to, instead of the
    /// system's roots (`tls_ca_file`).
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every key (`{namespace}:v1:`).
    pub namespace: String,
    /// Budget of one operation on the request path (`timeout_ms`).
    #[serde(rename = "timeout_ms", with = "typed::nonzero_millis")]
    pub timeout: Duration,
    /// Budget for (re)connecting and for probes (`connect_timeout_ms`).
    #[serde(rename = "connect_timeout_ms", with = "typed::nonzero_millis")]
    pub connect_timeout: Duration,
    pub pool_size: NonZeroUsize,
    /// Open the breaker after this many failures in a row.
    pub breaker_failures: NonZeroU32,
    /// ...or when at least `breaker_min_requests` in a window failed at this rate.
    pub breaker_failure_rate: f64,
    pub breaker_min_requests: u32,
    /// `breaker_window_secs`.
    #[serde(rename = "breaker_window_secs", with = "typed::nonzero_secs")]
    pub breaker_window: Duration,
    /// How long the breaker stays open before one probe (`breaker_open_ms`).
    #[serde(rename = "breaker_open_ms", with = "typed::nonzero_millis")]
    pub breaker_open: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            enabled: true,
            mode: RedisMode::Standalone,
            url: SecretUrl::new("redis://127.0.0.1:6379"),
            sentinel_urls: Vec::new(),
            cluster_urls: Vec::new(),
            sentinel_master: "mymaster".into(),
            sentinel_wait_replicas: 1,
            tls_ca_file: None,
            namespace: "sidecache".into(),
            timeout: Duration::from_millis(25),
            connect_timeout: Duration::from_millis(500),
            pool_size: DEFAULT_POOL_SIZE,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_failure_rate: 0.5,
            breaker_min_requests: 20,
            breaker_window: Duration::from_secs(10),
            breaker_open: Duration::from_millis(1000),
        }
    }
}

impl RedisSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let url = self.url.expose();
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            return Err(Invalid::new(
                "redis.url",
                format!("{} is not a redis:// or rediss:// URL", self.url),
            ));
        }
        ::redis::Client::open(url)
            .map_err(|_| Invalid::new("redis.url", format!("{} cannot be parsed", self.url)))?;
        if self.mode == RedisMode::Sentinel {
            if self.sentinel_urls.is_empty() {
                return Err(Invalid::new(
                    "redis.sentinel_urls",
                    "sentinel mode needs at least one sentinel",
                ));
            }
            for u in &self.sentinel_urls {
                let ok = u.expose().starts_with("redis://") || u.expose().starts_with("rediss://");
                if !ok || ::redis::Client::open(u.expose()).is_err() {
                    return Err(Invalid::new(
                        "redis.sentinel_urls",
                        format!("{u} is not a redis:// or rediss:// URL"),
                    ));
                }
            }
            if self.sentinel_master.trim().is_empty() {
                return Err(Invalid::new("redis.sentinel_master", "must not be empty"));
            }
        }
        if self.mode == RedisMode::Cluster {
            if self.cluster_urls.is_empty() {
                return Err(Invalid::new(
                    "redis.cluster_urls",
                    "cluster mode needs at least one node",
                ));
            }
            let tls = self.cluster_urls[0].expose().starts_with("rediss://");
            for u in &self.cluster_urls {
                let e = u.expose();
                let ok = e.starts_with("redis://") || e.starts_with("rediss://");
                if !ok || ::redis::Client::open(e).is_err() {
                    return Err(Invalid::new(
                        "redis.cluster_urls",
                        format!("{u} is not a redis:// or rediss:// URL"),
                    ));
                }
                if e.starts_with("rediss://") != tls {
                    return Err(Invalid::new(
                        "redis.cluster_urls",
                        "mixes redis:// and rediss:// nodes",
                    ));
                }
            }
        }
        let tls_url = match self.mode {
            RedisMode::Cluster => self.cluster_urls[0].expose(),
            _ => url,
        };
        if let Some(path) = &self.tls_ca_file {
            if !tls_url.starts_with("rediss://") {
                return Err(Invalid::new(
                    "redis.tls_ca_file",
                    "is for TLS: redis.url (redis.cluster_urls) must be a rediss:// URL",
                ));
            }
            read_ca(path)?;
        }
        let ns = &self.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Invalid::new(
                "redis.namespace",
                "must be 1-64 characters of [A-Za-z0-9-_.]",
            ));
        }
        if !(self.breaker_failure_rate > 0.0 && self.breaker_failure_rate <= 1.0) {
            return Err(Invalid::new(
                "redis.breaker_failure_rate",
                "must be above 0 and at most 1",
            ));
        }
        Ok(())
    }

    /// The circuit breaker's settings.
    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: self.breaker_failures.get(),
            failure_rate: self.breaker_failure_rate,
            min_requests: self.breaker_min_requests,
            window: self.breaker_window,
            open_for: self.breaker_open,
        }
    }

    /// The CA's PEM (reading `tls_ca_file`, checked by `validate`).
    pub fn tls_ca(&self) -> Option<Vec<u8>> {
        self.tls_ca_file.as_deref().and_then(|p| read_ca(p).ok())
    }

    /// Where the sentinels are, in sentinel mode.
    pub fn sentinel(&self) -> Option<SentinelConfig> {
        (self.mode == RedisMode::Sentinel).then(|| SentinelConfig {
            urls: self
                .sentinel_urls
                .iter()
                .map(|u| u.expose().to_owned())
                .collect(),
            master: self.sentinel_master.clone(),
            wait_replicas: self.sentinel_wait_replicas,
        })
    }

    /// The Redis tier's settings.
    pub fn remote_config(&self) -> RemoteConfig {
        RemoteConfig {
            redis: RedisConfig {
                url: self.url.expose().to_owned(),
                tls_ca: self.tls_ca(),
                sentinel: self.sentinel(),
                cluster: (self.mode == RedisMode::Cluster).then(|| {
                    self.cluster_urls
                        .iter()
                        .map(|u| u.expose().to_owned())
                        .collect()
                }),
                timeout: self.timeout,
                connect_timeout: self.connect_timeout,
                pool_size: self.pool_size.get(),
                breaker: self.breaker(),
            },
            namespace: self.namespace.clone(),
        }
    }
}

/// A CA file's PEM, or why it cannot be used.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, Invalid> {
    let pem = std::fs::read(path).map_err(|e| {
        Invalid::new(
            "redis.tls_ca_file",
            format!("{} cannot be read: {e}", path.display()),
        )
    })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(Invalid::new(
            "redis.tls_ca_file",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}
