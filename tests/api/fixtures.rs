//! Test data and surroundings: creating organizations, leads and conversations through the
//! API, looking into the app's Redis namespace, `eventually`, and where the test Postgres and
//! Redis are (URLs, addresses, database names).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sidecache::config::Settings;

use crate::spawn::TestApp;

pub fn database_base_url() -> String {
    let raw = std::env::var("SIDECACHE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    // Keep scheme, credentials and host; the database name is chosen per test.
    let after = raw.find("://").map(|i| i + 3).unwrap_or(0);
    match raw[after..].find('/') {
        Some(slash) => raw[..after + slash].to_owned(),
        None => raw,
    }
}

pub fn redis_url() -> String {
    std::env::var("SIDECACHE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Where the test Redis listens (for relays).
pub fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let host = url
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap_or("127.0.0.1:6379");
    let host = host.rsplit('@').next().unwrap_or(host);
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .expect("redis address resolves")
        .next()
        .expect("an address")
}

/// Where the test Postgres listens (for relays).
pub fn postgres_addr() -> SocketAddr {
    let base = database_base_url();
    let host = base.split("://").nth(1).unwrap_or("127.0.0.1:5432");
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .expect("postgres address resolves")
        .next()
        .expect("an address")
}

/// The database name in `settings`' Postgres URL.
pub fn database_name(settings: &Settings) -> String {
    settings
        .postgres
        .url
        .expose()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

impl TestApp {
    /// Creates an organization through the API; returns its JSON.
    pub async fn create_org(&self, phone: &str) -> Value {
        let a = self
            .post("/v1/organizations", serde_json::json!({"name": format!("Org {phone}"), "phone_number": phone, "timezone": "America/New_York"}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.body
    }

    /// Creates a lead through the API; returns its JSON.
    pub async fn create_lead(&self, org: &str, phone: &str, first_name: &str) -> Value {
        let a = self
            .post("/v1/leads", serde_json::json!({"organization_id": org, "phone_number": phone, "first_name": first_name}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.body
    }

    pub async fn create_conversation(&self, lead: &str, summary: &str) -> Value {
        let a = self
            .post(
                &format!("/v1/leads/{lead}/conversations"),
                serde_json::json!({"channel": "voice", "direction": "inbound", "summary": summary}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.body
    }

    /// True if Redis holds a value for the cache key (text after the `{ns}:v1:` prefix).
    pub async fn in_redis(&self, key: &str) -> bool {
        let mut c = self.redis.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.keys().value(key))
            .query_async(&mut c)
            .await
            .unwrap();
        n == 1
    }

    /// Every Redis key in this app's namespace.
    pub async fn redis_keys(&self) -> Vec<String> {
        self.redis
            .clone()
            .scan(&format!("{}:*", self.namespace))
            .await
    }

    /// The name of this app's database.
    pub fn database_name(&self) -> String {
        self.db_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
