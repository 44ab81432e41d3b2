//! Test helpers: `spawn_app()` boots the real application on port 0 against a fresh database
//! (created and migrated, dropped afterwards) and a unique Redis namespace; `Relay` is a TCP
//! relay to put between sidecache and a dependency and cut, to simulate faults without touching
//! the machine's own services.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sidecache::config::{SecretUrl, Settings};
use sidecache::http::AppState;
use sidecache::startup::{prepare_database, Application};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, oneshot};

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
    s.redis.namespace = format!("sctest-{}", &id[..12]);
    // Loopback Redis answers in well under a millisecond; a generous budget keeps a loaded CI
    // machine from turning slow answers into misses.
    s.redis.timeout = Duration::from_millis(500);
    s.log.level = "warn".into();
    s
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

pub struct TestApp {
    pub addr: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub db: PgPool,
    pub db_url: String,
    pub namespace: String,
    pub settings: Settings,
    pub state: AppState,
    pub redis: redis::aio::MultiplexedConnection,
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
    let redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis for assertions");
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

/// One HTTP answer, with the bits tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn version(&self) -> i64 {
        self.body["version"].as_i64().unwrap_or(-1)
    }
    /// Asserts the error shape and returns its code.
    pub fn error_code(&self) -> &str {
        assert!(
            self.header("content-type")
                .unwrap_or("")
                .starts_with("application/json"),
            "error answers are JSON: {self:?}"
        );
        let code = self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error shape: {}", self.text));
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "message: {}",
            self.text
        );
        code
    }
}

impl TestApp {
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.addr, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        Self::answer(res).await
    }

    pub async fn answer(res: reqwest::Response) -> Answer {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.request(Method::GET, path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.request(Method::POST, path, Some(body), &[]).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.request(Method::PATCH, path, Some(body), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Answer {
        self.request(Method::DELETE, path, None, &[]).await
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
            .arg(format!("{}:v1:{key}", self.namespace))
            .query_async(&mut c)
            .await
            .unwrap();
        n == 1
    }

    /// Every Redis key in this app's namespace.
    pub async fn redis_keys(&self) -> Vec<String> {
        let mut c = self.redis.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.namespace))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of a metric's samples whose labels include every `label="value"` given.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_metric(&self.metrics_text().await, name, labels)
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

    /// The name of this app's database.
    pub fn database_name(&self) -> String {
        self.db_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// GETs `path` until `pred` holds for the answer or `timeout` passes; returns the last answer
    /// and how long it took.
    pub async fn get_until(
        &self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&Answer) -> bool,
    ) -> (Answer, Duration) {
        let started = std::time::Instant::now();
        loop {
            let a = self.get(path).await;
            if pred(&a) || started.elapsed() > timeout {
                return (a, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

/// A client that opens a connection per concurrent request (no pooled connections shared).
pub fn unpooled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
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
                if let Ok(client) = redis::Client::open(redis_url()) {
                    if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                        let mut cursor: u64 = 0;
                        loop {
                            let Ok((next, keys)): Result<(u64, Vec<String>), _> =
                                redis::cmd("SCAN")
                                    .arg(cursor)
                                    .arg("MATCH")
                                    .arg(format!("{ns}:*"))
                                    .arg("COUNT")
                                    .arg(1000)
                                    .query_async(&mut c)
                                    .await
                            else {
                                break;
                            };
                            if !keys.is_empty() {
                                let _: Result<i64, _> =
                                    redis::cmd("DEL").arg(&keys).query_async(&mut c).await;
                            }
                            if next == 0 {
                                break;
                            }
                            cursor = next;
                        }
                    }
                }
            });
        })
        .join();
    }
}

/// A TCP relay in front of a dependency, to simulate its faults without touching the machine's
/// own services: `cut()` drops every open connection and refuses new ones (the dependency looks
/// dead); `blackhole()` accepts connections and forwards nothing (it hangs); `delay(d)` holds
/// every answer for `d` (it is slow); `restore()` forwards again.
pub struct Relay {
    pub addr: SocketAddr,
    mode: Arc<AtomicU64>,
    kill: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

const FORWARD: u64 = 0;
const REFUSE: u64 = 1;
const BLACKHOLE: u64 = 2;
/// Modes from here on are a delay of `mode - DELAY` milliseconds.
const DELAY: u64 = 3;

/// Copies one direction; `answers` is the upstream-to-client direction, which delays apply to.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU64>,
    answers: bool,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            match mode.load(Ordering::SeqCst) {
                BLACKHOLE => tokio::time::sleep(Duration::from_millis(5)).await,
                m if m >= DELAY && answers => {
                    tokio::time::sleep(Duration::from_millis(m - DELAY)).await;
                    break;
                }
                _ => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU64::new(FORWARD));
        let (kill, _) = broadcast::channel(1);
        let task = {
            let mode = mode.clone();
            let kill = kill.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut down, _)) = listener.accept().await else {
                        break;
                    };
                    if mode.load(Ordering::SeqCst) == REFUSE {
                        let _ = down.shutdown().await;
                        continue;
                    }
                    let mut killed = kill.subscribe();
                    let mode = mode.clone();
                    tokio::spawn(async move {
                        let Ok(up) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let (down_r, down_w) = down.into_split();
                        let (up_r, up_w) = up.into_split();
                        tokio::select! {
                            _ = pump(down_r, up_w, mode.clone(), false) => {}
                            _ = pump(up_r, down_w, mode, true) => {}
                            _ = killed.recv() => {}
                        }
                    });
                }
            })
        };
        Relay {
            addr,
            mode,
            kill,
            task,
        }
    }

    /// Starts refusing from the outset (the dependency is down before the app starts).
    pub async fn start_cut(upstream: SocketAddr) -> Relay {
        let r = Relay::start(upstream).await;
        r.cut();
        r
    }

    /// The dependency dies: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.mode.store(REFUSE, Ordering::SeqCst);
        let _ = self.kill.send(());
    }

    /// The dependency hangs: connections are accepted, nothing comes back.
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// The dependency is slow: every answer is held for `by`.
    pub fn delay(&self, by: Duration) {
        self.mode
            .store(DELAY + by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Back to normal. Connections that lived through a black hole are dropped (what they had
    /// sent is lost), so their clients reconnect cleanly.
    pub fn restore(&self) {
        if self.mode.swap(FORWARD, Ordering::SeqCst) == BLACKHOLE {
            let _ = self.kill.send(());
        }
    }

    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// A Postgres URL for `database` through this relay.
    pub fn postgres_url(&self, database: &str) -> String {
        let base = database_base_url();
        let user = base
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_once('@'))
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("postgres://{user}{}/{database}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.kill.send(());
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
