//! Propagation benchmark: how long after a write is acknowledged does every instance stop
//! serving the old value?
//!
//! Two sidecache instances run in this process on one fresh database and one Redis namespace
//! (the local Postgres and Redis, overridable with SIDECACHE_TEST_DATABASE_URL and
//! SIDECACHE_TEST_REDIS_URL). For each round a lead is warm in both instances' L1, then it is
//! changed and both are read back-to-back until they answer the new version:
//! - through instance A, seen on B (the peer bus, with the change listener as a second path);
//! - with plain SQL on Postgres, seen on A and on B (the change listener only).
//!
//! Staleness is the time from the acknowledgement of the write to the start of the first read
//! that returned the new version. Prints a table and writes `target/bench/propagation.json`.
//!
//! Run: `cargo bench --bench propagation` (ROUNDS=n to change the number of rounds).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sidecache::config::{SecretUrl, Settings};
use sidecache::startup::{prepare_database, Application};
use sqlx::postgres::PgPoolOptions;

struct Instance {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(settings: Settings) -> Instance {
    let app = Application::build(settings)
        .await
        .expect("sidecache builds");
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Instance { base, stop }
}

async fn version(client: &reqwest::Client, url: &str) -> i64 {
    let r = client.get(url).send().await.expect("lookup answered");
    let v: Value = r.json().await.unwrap_or_default();
    v["version"].as_i64().unwrap_or(-1)
}

/// Reads `url` until it answers `want`; the time from `acked` to the start of that read.
async fn staleness(client: &reqwest::Client, url: &str, want: i64, acked: Instant) -> Duration {
    let deadline = acked + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        if version(client, url).await >= want {
            return started.saturating_duration_since(acked);
        }
        assert!(Instant::now() < deadline, "{url} never reached v{want}");
    }
}

fn summary(name: &str, mut v: Vec<Duration>) -> Value {
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<34} {:>6} {:>9.3} {:>9.3} {:>9.3}",
        v.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*v.last().unwrap())
    );
    json!({"path": name, "samples": v.len(), "p50_ms": ms(pct(0.5)), "p99_ms": ms(pct(0.99)), "max_ms": ms(*v.last().unwrap())})
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let base = std::env::var("SIDECACHE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db_name = format!("sidecache_bench_{}", &id[..12]);
    let mut settings = Settings::default();
    settings.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.postgres.url = SecretUrl::new(format!("{server}/{db_name}"));
    settings.redis.url = SecretUrl::new(
        std::env::var("SIDECACHE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    );
    settings.redis.namespace = format!("scbench-{}", &id[..12]);
    settings.log.level = "warn".into();
    sidecache::telemetry::init(&settings.log);
    prepare_database(&settings).await.expect("database ready");

    let a = start(settings.clone()).await;
    let b = start(settings.clone()).await;
    let client = reqwest::Client::new();
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(settings.postgres.url.expose())
        .await
        .unwrap();
    for inst in [&a, &b] {
        for _ in 0..100 {
            let ready = client.get(format!("{}/readyz", inst.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let org: Value = client
        .post(format!("{}/v1/organizations", a.base))
        .json(&json!({"name": "Bench", "phone_number": "+15550009000"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut leads = Vec::new();
    for i in 0..20 {
        let lead: Value = client
            .post(format!("{}/v1/leads", a.base))
            .json(
                &json!({"organization_id": org["id"], "phone_number": format!("+155500091{i:02}")}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        leads.push(lead["id"].as_str().unwrap().to_owned());
    }

    let (mut peer, mut sql_a, mut sql_b) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let lead = &leads[round % leads.len()];
        let (on_a, on_b) = (
            format!("{}/v1/leads/{lead}", a.base),
            format!("{}/v1/leads/{lead}", b.base),
        );
        for url in [&on_a, &on_b, &on_a, &on_b] {
            version(&client, url).await;
        }
        if round % 2 == 0 {
            let r: Value = client
                .patch(&on_a)
                .json(&json!({"first_name": format!("R{round}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let acked = Instant::now();
            let want = r["version"].as_i64().unwrap();
            peer.push(staleness(&client, &on_b, want, acked).await);
        } else {
            let want: i64 = sqlx::query_scalar(
                "UPDATE leads SET first_name = $1 WHERE id = $2::uuid RETURNING version",
            )
            .bind(format!("S{round}"))
            .bind(lead)
            .fetch_one(&db)
            .await
            .unwrap();
            let acked = Instant::now();
            // Both instances, one after the other: B's figure includes A's wait, so read B
            // first on odd rounds and A first on the others.
            if round % 4 == 1 {
                sql_b.push(staleness(&client, &on_b, want, acked).await);
                sql_a.push(staleness(&client, &on_a, want, acked).await);
            } else {
                sql_a.push(staleness(&client, &on_a, want, acked).await);
                sql_b.push(staleness(&client, &on_b, want, acked).await);
            }
        }
        // Let the listener's own notifications for this round settle before the next one.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    println!(
        "\n{:<34} {:>6} {:>9} {:>9} {:>9}",
        "staleness after the write's ack", "n", "p50 ms", "p99 ms", "max ms"
    );
    let results = vec![
        summary("write via A, seen on B (bus)", peer),
        summary("plain SQL, seen on A (listener)", sql_a),
        summary("plain SQL, seen on B (listener)", sql_b),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("propagation.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({"rounds": rounds, "results": results})).unwrap(),
    )
    .unwrap();
    println!("\nwritten to {}", out.display());

    let _ = a.stop.send(());
    let _ = b.stop.send(());
    db.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let _ = sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    ))
    .execute(&admin)
    .await;
    if let Ok(c) = redis::Client::open(settings.redis.url.expose()) {
        if let Ok(mut conn) = c.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", settings.redis.namespace))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        }
    }
}
