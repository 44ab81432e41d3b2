//! `[coherence]`: keeping every instance fresh — the Postgres change listener, the peer bus and
//! fill leases.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

use super::postgres::check_url;
use super::{typed, ConfigError, Invalid, PostgresSettings, RedisSettings, SecretUrl};
use crate::cache::LeaseConfig;
use crate::invalidation::{BusConfig, ListenerConfig};
use crate::redis::RedisConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoherenceSettings {
    #[serde(deserialize_with = "typed::flexible_bool")]
    pub listener: bool,
    /// Where the listener connects; empty = `postgres.url`.
    pub listener_url: SecretUrl,
    /// Read the outbox this often even without a notification (`poll_interval_ms`).
    #[serde(rename = "poll_interval_ms", with = "typed::nonzero_millis")]
    pub poll_interval: Duration,
    /// Outbox rows are kept this long (`outbox_retention_secs`).
    #[serde(rename = "outbox_retention_secs", with = "typed::nonzero_secs")]
    pub outbox_retention: Duration,
    /// `outbox_prune_interval_secs`.
    #[serde(rename = "outbox_prune_interval_secs", with = "typed::nonzero_secs")]
    pub outbox_prune_interval: Duration,
    #[serde(deserialize_with = "typed::flexible_bool")]
    pub bus: bool,
    /// Where the bus subscribes; empty = `redis.url`.
    pub bus_url: SecretUrl,
    /// `heartbeat_ms`.
    #[serde(rename = "heartbeat_ms", with = "typed::nonzero_millis")]
    pub heartbeat: Duration,
    /// While a channel is down, new L1 entries live at most this long (`degraded_l1_ttl_secs`).
    #[serde(rename = "degraded_l1_ttl_secs", with = "typed::nonzero_secs")]
    pub degraded_l1_ttl: Duration,
    /// Lifetime of a fill lease; zero turns leases off (`lease_ms`).
    #[serde(rename = "lease_ms", with = "typed::millis")]
    pub lease: Duration,
    /// `lease_wait_ms`.
    #[serde(rename = "lease_wait_ms", with = "typed::millis")]
    pub lease_wait: Duration,
    /// `lease_poll_ms`.
    #[serde(rename = "lease_poll_ms", with = "typed::nonzero_millis")]
    pub lease_poll: Duration,
}

impl Default for CoherenceSettings {
    fn default() -> Self {
        CoherenceSettings {
            listener: true,
            listener_url: SecretUrl::new(""),
            poll_interval: Duration::from_millis(1000),
            outbox_retention: Duration::from_secs(3600),
            outbox_prune_interval: Duration::from_secs(60),
            bus: true,
            bus_url: SecretUrl::new(""),
            heartbeat: Duration::from_millis(500),
            degraded_l1_ttl: Duration::from_secs(5),
            lease: Duration::from_millis(2000),
            lease_wait: Duration::from_millis(300),
            lease_poll: Duration::from_millis(5),
        }
    }
}

impl CoherenceSettings {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let listen = self.listener_url.expose();
        if !listen.is_empty() {
            check_url("coherence.listener_url", &self.listener_url)?;
            if listen.parse::<PgConnectOptions>().is_err() {
                return Err(Invalid::new(
                    "coherence.listener_url",
                    format!("{} cannot be parsed", self.listener_url),
                ));
            }
        }
        let bus = self.bus_url.expose();
        if !bus.is_empty() && ::redis::Client::open(bus).is_err() {
            return Err(Invalid::new(
                "coherence.bus_url",
                format!("{} is not a redis:// or rediss:// URL", self.bus_url),
            ));
        }
        if self.outbox_retention < self.poll_interval.saturating_mul(10) {
            return Err(Invalid::new(
                "coherence.outbox_retention_secs",
                "must cover at least ten listener polls (coherence.poll_interval_ms)",
            ));
        }
        Ok(())
    }

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

    /// Fleet-wide single flight, unless `lease_ms` is 0.
    pub fn leases(&self) -> Option<LeaseConfig> {
        (!self.lease.is_zero()).then_some(LeaseConfig {
            ttl: self.lease,
            wait: self.lease_wait,
            poll: self.lease_poll,
        })
    }

    /// The peer bus's settings; `channel` is `{namespace}:v1:bus`.
    pub fn bus_config(&self, redis: &RedisSettings, channel: String) -> BusConfig {
        let url = self.bus_url(redis).expose().to_owned();
        let own_server = !self.bus_url.expose().is_empty();
        // Without a server of its own the bus follows the Sentinel master, or the cluster.
        let shared = (!own_server).then(|| redis.remote_config().redis);
        let cluster = shared.as_ref().and_then(|r| r.cluster.clone());
        // A bus on a rediss:// server (its own, or the cluster) trusts the cache's CA.
        let tls_ca = (url.starts_with("rediss://") || cluster.is_some())
            .then(|| redis.tls_ca())
            .flatten();
        BusConfig {
            redis: RedisConfig {
                sentinel: shared.and_then(|r| r.sentinel),
                cluster,
                url,
                tls_ca,
                timeout: redis.connect_timeout,
                connect_timeout: redis.connect_timeout,
                pool_size: 1,
                breaker: redis.breaker(),
            },
            channel,
            heartbeat: self.heartbeat,
        }
    }

    /// The change listener's settings; its sessions are named `{application_name}/listener`.
    pub fn listener_config(
        &self,
        postgres: &PostgresSettings,
        redis: &RedisSettings,
        application_name: &str,
    ) -> Result<ListenerConfig, ConfigError> {
        let url = self.listener_url(postgres);
        let connect = url
            .expose()
            .parse::<PgConnectOptions>()
            .map_err(|_| {
                ConfigError::new(format!("coherence.listener_url {url} cannot be parsed"))
            })?
            .application_name(&format!("{application_name}/listener"));
        Ok(ListenerConfig {
            connect,
            // No keys of its own: Redis's connect budget (at least 1 s) and twice the statement
            // timeout (at least 2 s) for a catch-up.
            connect_timeout: redis.connect_timeout.max(Duration::from_secs(1)),
            read_timeout: postgres.statement_timeout.max(Duration::from_secs(2)) * 2,
            poll: self.poll_interval,
            retention: self.outbox_retention,
            prune_every: self.outbox_prune_interval,
            batch: 5000,
        })
    }
}
