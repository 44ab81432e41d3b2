//! Booting the real application for a test: `test_settings()` (port 0, a fresh database, a
//! unique Redis namespace), `spawn_app`/`spawn_app_with`/`spawn_with_settings`, peers sharing one
//! fleet's database and namespace, and the `TestApp` lifecycle: stop, and clean-up on drop.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use sidecache::config::{SecretUrl, Settings};
use sidecache::http::AppState;
use sidecache::startup::{prepare_database, Application};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::oneshot;

use crate::fixtures::{database_base_url, database_name, redis_url};

/// Settings for a test app: port 0, a fresh database name, a unique namespace, fast probes.
pub fn test_settings() -> Settings {
    let mut s = Settings::default();
    let id = uuid::Uuid::new_v4().simple().to_string();
    s.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    s.server.shutdown_grace = Duration::from_secs(2);
    s.postgres.url = SecretUrl::new(format!(
        "{}/sidecache_test_{}",
        database_base_url(),
        &id[..16]
    ));
    s.postgres.max_connections = NonZeroU32::new(8).unwrap();
    s.redis.url = SecretUrl::new(redis_url());
    if let Some(nodes) = crate::cluster_set::suite_cluster() {
        s.redis.mode = sidecache::config::RedisMode::Cluster;
        s.redis.cluster_urls = nodes.into_iter().map(SecretUrl::new).collect();
    }
    s.redis.namespace = format!("sctest-{}", &id[..12]);
    // Loopback Redis answers in well under a millisecond; a generous budget keeps a loaded CI
    // machine from turning slow answers into misses.
    s.redis.timeout = Duration::from_millis(500);
    // The auditor's reloads are Postgres queries of their own: tests that count queries (or
    // fills) exactly would see them. The auditor's tests switch it on.
    s.audit.samples_per_sec = 0.0;
    s.log.level = "warn".into();
    s
}

pub struct TestApp {
    pub addr: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub db: PgPool,
    pub db_url: String,
    pub namespace: String,
    pub settings: Settings,
    pub state: AppState,
    pub redis: crate::cluster_set::TestRedis,
    /// False for a second instance sharing another's database and namespace: the first one
    /// removes them.
    owns_resources: bool,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    tweak(&mut settings);
    spawn_with_settings(settings).await
}

/// Boots an app on `settings` as given (the database is created and migrated if missing).
pub async fn spawn_with_settings(settings: Settings) -> TestApp {
    sidecache::telemetry::init(&settings.log);
    prepare_database(&settings)
        .await
        .expect("test database prepared");
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let port = app.port();
    let state = app.state().clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));
    // Assertions and clean-up talk to Postgres directly, even when the app goes through a relay.
    let db_url = format!("{}/{}", database_base_url(), database_name(&settings));
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db_url)
        .await
        .expect("test pool");
    let redis = crate::cluster_set::TestRedis::open(&redis_url()).await;
    let app = TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::new(),
        db,
        db_url,
        namespace: settings.redis.namespace.clone(),
        settings,
        state,
        redis,
        owns_resources: true,
        stop: Some(stop_tx),
        server: Some(server),
    };
    app.wait_ready().await;
    app
}

impl TestApp {
    /// The key layout of this app's namespace (sharded on a cluster).
    pub fn keys(&self) -> sidecache::redis::Keys {
        match self.settings.redis.mode {
            sidecache::config::RedisMode::Cluster => {
                sidecache::redis::Keys::sharded(&self.namespace)
            }
            _ => sidecache::redis::Keys::new(&self.namespace),
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.addr))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("app never became ready");
    }

    /// A second instance on the same database and Redis namespace (a peer in the same fleet),
    /// with `tweak` applied to a copy of this one's settings.
    pub async fn spawn_peer(&self, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings.clone();
        settings.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        tweak(&mut settings);
        let mut peer = spawn_with_settings(settings).await;
        peer.owns_resources = false;
        peer
    }

    /// Holds every fill of the cache key `key` (its text, e.g. `lead:id:…`) for `by` after the
    /// load, so that requests arriving meanwhile find the load in flight.
    pub fn delay_fills_of(&self, key: String, by: Duration) {
        let hook: sidecache::cache::FillHook = Arc::new(move |k: &sidecache::cache::CacheKey| {
            let slow = k.as_str() == key;
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(by).await;
                }
            })
        });
        self.state.cache.set_fill_hook(Some(hook));
    }

    /// Drops this instance's L1 (so the next read shows what L2 holds).
    pub fn flush_l1(&self) {
        self.state.cache.local().flush();
    }

    /// Asks the app to stop (as SIGTERM would) without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the app and waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if !self.owns_resources {
            return;
        }
        let db_url = self.db_url.clone();
        let ns = self.namespace.clone();
        // Clean up on a thread of its own: Drop cannot await, and the test's runtime may be gone.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let name = db_url.rsplit('/').next().unwrap_or_default().to_owned();
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&format!("{}/postgres", database_base_url()))
                    .await
                {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&admin)
                            .await;
                    admin.close().await;
                }
                crate::cluster_set::TestRedis::open(&redis_url())
                    .await
                    .delete_matching(&format!("{ns}:*"))
                    .await;
            });
        })
        .join();
    }
}
