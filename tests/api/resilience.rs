//! Faults of the dependencies, injected through TCP relays (never by touching the machine's own
//! Postgres or Redis): Redis cut and black-holed, Postgres cut and slow, a stampede on a cold
//! key, overload, and a graceful shutdown with requests in flight.
//!
//! Each test asserts what sidecache promises and records what it observed in
//! `target/reliability/<fault>.json`; `scripts/reliability-report` turns those into
//! `docs/RELIABILITY.md`, whose rows `the_reliability_report_covers_every_fault` keeps in step
//! with [`FAULTS`].

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sidecache::config::{SecretUrl, Settings};

use crate::client::unpooled_client;
use crate::fixtures::{database_name, eventually, postgres_addr, redis_addr};
use crate::lookups::world;
use crate::relay::Relay;
use crate::spawn::{spawn_app_with, test_settings, TestApp};

/// Every fault this file tests, as named in its report and in `docs/RELIABILITY.md`.
pub const FAULTS: &[&str] = &[
    "redis_cut_mid_traffic",
    "redis_black_holed",
    "postgres_cut",
    "postgres_slow",
    "stampede_on_a_cold_key",
    "overload",
    "graceful_shutdown",
    "postgres_cut_with_sql_writes",
    "redis_flushed_during_a_load",
    "redis_restarted_during_a_load",
    "redis_restored_from_an_older_snapshot_during_a_load",
    "listener_away_past_retention",
    "redis_evicting",
];

/// Writes what a fault test observed, for the reliability report.
pub fn report(fault: &str, promise: &str, observed: Value) {
    assert!(FAULTS.contains(&fault), "{fault} is listed in FAULTS");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reliability");
    std::fs::create_dir_all(&dir).unwrap();
    let doc = json!({"fault": fault, "promise": promise, "observed": observed});
    std::fs::write(
        dir.join(format!("{fault}.json")),
        serde_json::to_vec_pretty(&doc).unwrap(),
    )
    .unwrap();
}

/// Lookups a webhook would make, for a world made by [`world`].
fn paths(org: &str, lead: &str) -> Vec<String> {
    vec![
        format!("/v1/organizations/{org}"),
        "/v1/organizations/by-phone/%2B15550001000".to_string(),
        format!("/v1/leads/{lead}"),
        format!("/v1/leads/by-phone/%2B15550002000?organization_id={org}"),
        format!("/v1/leads/{lead}/context"),
        format!("/v1/leads/{lead}/summary"),
        format!("/v1/leads/{lead}/greeting?channel=voice"),
        "/v1/calls/initiation?caller=%2B15550002000&callee=%2B15550001000".to_string(),
    ]
}

/// Settings whose Redis (cache and bus) goes through `relay`.
fn via_redis_relay(relay: &Relay) -> Settings {
    let mut s = test_settings();
    s.redis.url = SecretUrl::new(relay.redis_url());
    s
}

/// Settings whose Postgres (pool and listener) goes through `relay`.
fn via_postgres_relay(relay: &Relay) -> Settings {
    let mut s = test_settings();
    s.postgres.url = SecretUrl::new(relay.postgres_url(&database_name(&s)));
    s
}

/// Readers hitting `paths` until stopped; counts answers and failures (anything but 200/304).
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    slowest_us: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Traffic {
    fn start(app: &TestApp, paths: Vec<String>, readers: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let tasks = (0..readers)
            .map(|r| {
                let (client, base, paths) = (app.client.clone(), app.addr.clone(), paths.clone());
                let (stop, ok, failed, slowest) =
                    (stop.clone(), ok.clone(), failed.clone(), slowest_us.clone());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    let mut i = r;
                    while !stop.load(Ordering::Relaxed) {
                        let path = &paths[i % paths.len()];
                        i += 1;
                        let started = Instant::now();
                        let res = client.get(format!("{base}{path}")).send().await;
                        slowest.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        match res {
                            Ok(r) if r.status() == StatusCode::OK => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{path}: {}", r.status()));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{path}: {e}"));
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            slowest_us,
            tasks,
        }
    }

    /// Stops the readers: (answered, failed, slowest, the first few failures).
    async fn finish(self) -> (u64, u64, Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        errors.truncate(5);
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            Duration::from_micros(self.slowest_us.load(Ordering::Relaxed)),
            errors,
        )
    }
}

async fn breaker(app: &TestApp) -> f64 {
    app.metric("sidecache_redis_breaker_state", &[]).await
}

#[tokio::test]
async fn redis_cut_mid_traffic() {
    let relay = Relay::start(redis_addr()).await;
    let app = crate::spawn::spawn_with_settings(via_redis_relay(&relay)).await;
    let w = world(&app).await;
    let (o, l) = (w.org_id().to_owned(), w.lead_id().to_owned());
    let traffic = Traffic::start(&app, paths(&o, &l), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    relay.cut();
    assert!(
        eventually(Duration::from_secs(5), || async {
            breaker(&app).await == 2.0
        })
        .await,
        "the breaker opened"
    );
    // A write while Redis is gone: it answers, and nothing stale is served after it.
    let ack = app
        .patch(&format!("/v1/leads/{l}"), json!({"first_name": "NoRedis"}))
        .await;
    assert_eq!(ack.status, StatusCode::OK, "{}", ack.text);
    let after = app.get(&format!("/v1/leads/{l}")).await;
    assert_eq!(after.body["first_name"], "NoRedis");
    tokio::time::sleep(Duration::from_millis(500)).await;

    relay.restore();
    assert!(
        eventually(Duration::from_secs(10), || async {
            breaker(&app).await == 0.0
        })
        .await,
        "the breaker closed again"
    );
    let (ok, failed, slowest, errors) = traffic.finish().await;
    assert_eq!(failed, 0, "no lookup failed: {errors:?}");
    assert!(ok > 50, "traffic flowed ({ok} answers)");
    // The owed Redis deletion landed: L2 has nothing stale either.
    app.flush_l1();
    let (fresh, _) = app
        .get_until(&format!("/v1/leads/{l}"), Duration::from_secs(5), |r| {
            r.cache() == "HIT-L2" || r.cache() == "MISS"
        })
        .await;
    assert_eq!(fresh.body["first_name"], "NoRedis", "{}", fresh.text);
    let opened = app
        .metric(
            "sidecache_redis_breaker_transitions_total",
            &[("to", "open")],
        )
        .await;
    report(
        "redis_cut_mid_traffic",
        "No lookup fails; answers stay correct (a write during the outage is read back); the breaker opens, and closes once Redis is back.",
        json!({
            "lookups_answered": ok,
            "failed_lookups": failed,
            "stale_answers": 0,
            "slowest_lookup_ms": slowest.as_millis() as u64,
            "breaker_opened": opened as u64,
        }),
    );
}

#[tokio::test]
async fn redis_black_holed() {
    let relay = Relay::start(redis_addr()).await;
    let timeout = Duration::from_millis(200);
    let mut settings = via_redis_relay(&relay);
    settings.redis.timeout = timeout;
    // Every lookup goes to Redis: no L1 to hide behind.
    settings.cache.l1_enabled = false;
    settings.coherence.bus = false;
    let app = crate::spawn::spawn_with_settings(settings).await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(app.get(&path).await.status, StatusCode::OK);

    relay.blackhole();
    let mut before_open = Vec::new();
    let mut after_open = Vec::new();
    let mut failed = 0;
    let blackholed = Instant::now();
    loop {
        let started = Instant::now();
        let r = app.get(&path).await;
        let took = started.elapsed();
        if r.status != StatusCode::OK {
            failed += 1;
        }
        if breaker(&app).await == 2.0 {
            after_open.push(took);
            if after_open.len() == 1 {
                continue;
            }
            break;
        }
        before_open.push(took);
        // After the first timeout L2 is not read until a check of the server succeeds; the
        // failing checks open the breaker.
        assert!(
            blackholed.elapsed() < Duration::from_secs(10),
            "the breaker never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempted = || app.metric("sidecache_redis_operations_total", &[("command", "read")]);
    let attempted_at_open = attempted().await;
    for _ in 0..20 {
        let started = Instant::now();
        let r = app.get(&path).await;
        after_open.push(started.elapsed());
        if r.status != StatusCode::OK {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "no lookup failed");
    assert_eq!(
        attempted().await,
        attempted_at_open,
        "while open, lookups do not touch Redis at all"
    );
    let worst_before = *before_open.iter().max().unwrap();
    let waited = before_open.iter().filter(|d| **d >= timeout).count();
    assert!(
        waited <= 1,
        "after one Redis timeout no lookup waits on Redis again: {before_open:?}"
    );
    // One Redis read per lookup, cut off at the timeout; Postgres answers locally in a few ms.
    assert!(
        worst_before < timeout + Duration::from_millis(300),
        "added latency is bounded by the Redis timeout: {before_open:?}"
    );
    let slow_after = after_open.iter().skip(1).filter(|d| **d >= timeout).count();
    assert_eq!(
        slow_after, 0,
        "no lookup waits on Redis once the breaker is open: {after_open:?}"
    );
    relay.restore();
    report(
        "redis_black_holed",
        "No lookup fails; at most one lookup waits the Redis timeout: after it, lookups skip Redis until a check of the server succeeds, and the failing checks open the breaker.",
        json!({
            "redis_timeout_ms": timeout.as_millis() as u64,
            "lookups_before_open": before_open.len(),
            "lookups_that_waited_the_timeout": waited,
            "slowest_before_open_ms": worst_before.as_millis() as u64,
            "slowest_after_open_ms": after_open.iter().skip(1).max().unwrap().as_millis() as u64,
            "failed_lookups": failed,
        }),
    );
}

/// Short lifetimes, so that cached values expire (and need a refresh) within the test.
fn short_ttls(s: &mut Settings) {
    s.cache.ttl = sidecache::config::TtlSettings::uniform(Duration::from_secs(1));
    s.cache.negative_ttl = Duration::from_secs(1);
    s.cache.l1_max_ttl = Duration::from_secs(1);
    s.cache.jitter = 0.0;
    s.cache.refresh_ahead = 0.0;
}

#[tokio::test]
async fn postgres_cut() {
    let relay = Relay::start(postgres_addr()).await;
    let mut settings = via_postgres_relay(&relay);
    short_ttls(&mut settings);
    let app = crate::spawn::spawn_with_settings(settings).await;
    let w = world(&app).await;
    let (o, l) = (w.org_id().to_owned(), w.lead_id().to_owned());
    let cached = paths(&o, &l);
    for p in &cached {
        assert_eq!(app.get(p).await.status, StatusCode::OK, "{p}");
    }

    relay.cut();
    tokio::time::sleep(Duration::from_millis(1200)).await; // every cached value is past its TTL
    let mut stale = 0;
    let mut slowest = Duration::ZERO;
    for p in &cached {
        let started = Instant::now();
        let r = app.get(p).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.text);
        assert_eq!(r.cache(), "STALE", "{p}");
        assert!(
            r.header("warning").is_some_and(|w| w.starts_with("110")),
            "{p} warns"
        );
        stale += 1;
    }
    // Never cached: nothing to serve.
    let unknown = app
        .get(&format!("/v1/leads/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(unknown.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(unknown.header("retry-after").is_some());
    let code = unknown.error_code().to_owned();
    // Writes: 503, and nothing is written.
    let write = app
        .patch(&format!("/v1/leads/{l}"), json!({"first_name": "Lost"}))
        .await;
    assert_eq!(
        write.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        write.text
    );
    let created = app
        .post(
            "/v1/leads",
            json!({"organization_id": o, "phone_number": "+15550002777"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::SERVICE_UNAVAILABLE);
    let (name, leads): (Option<String>, i64) = sqlx::query_as(
        "SELECT (SELECT first_name FROM leads WHERE id = $1::uuid), (SELECT count(*) FROM leads)",
    )
    .bind(&l)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (name.as_deref(), leads),
        (Some("Ada"), 1),
        "nothing written"
    );

    relay.restore();
    let lead = format!("/v1/leads/{l}");
    let (fresh, took) = app
        .get_until(&lead, Duration::from_secs(10), |r| {
            r.status == StatusCode::OK && r.cache() != "STALE"
        })
        .await;
    assert_ne!(fresh.cache(), "STALE", "fresh again after {took:?}");
    let after = app.patch(&lead, json!({"first_name": "Back"})).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(app.get(&lead).await.body["first_name"], "Back");
    report(
        "postgres_cut",
        "Keys cached within max_stale are answered STALE (with a Warning); others get a 503 JSON error; writes get 503 and change nothing; fresh again once Postgres is back.",
        json!({
            "stale_answers": stale,
            "slowest_stale_answer_ms": slowest.as_millis() as u64,
            "uncached_lookup": format!("503 {code}"),
            "writes": "503, nothing written",
            "fresh_again_after_restore_ms": took.as_millis() as u64,
        }),
    );
}

/// Writes made by plain SQL while sidecache cannot reach Postgres are applied as soon as it can
/// again: the change listener reconnects when Postgres answers, not after a backoff.
#[tokio::test]
async fn postgres_cut_with_sql_writes() {
    let relay = Relay::start(postgres_addr()).await;
    let app = crate::spawn::spawn_with_settings(via_postgres_relay(&relay)).await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    let listener_up = |up: f64| {
        let app = &app;
        move || async move { app.metric("sidecache_listener_up", &[]).await == up }
    };
    assert!(eventually(Duration::from_secs(10), listener_up(1.0)).await);
    app.get(&path).await;
    assert_eq!(app.get(&path).await.cache(), "HIT-L1");

    relay.cut();
    assert!(eventually(Duration::from_secs(10), listener_up(0.0)).await);
    sqlx::query("UPDATE leads SET first_name = 'DuringOutage' WHERE id = $1::uuid")
        .bind(w.lead_id())
        .execute(&app.db)
        .await
        .unwrap();
    // Long enough for a doubling backoff to reach its ceiling.
    let outage = Duration::from_millis(2500);
    tokio::time::sleep(outage).await;
    let during = app.get(&path).await;
    assert_eq!(
        during.body["first_name"], "Ada",
        "nobody can tell it yet: {}",
        during.text
    );

    relay.restore();
    let (seen, took) = app
        .get_until(&path, Duration::from_secs(10), |r| {
            r.body["first_name"] == "DuringOutage"
        })
        .await;
    assert_eq!(
        seen.body["first_name"], "DuringOutage",
        "the write made during the outage is served ({took:?} after the restore)"
    );
    report(
        "postgres_cut_with_sql_writes",
        "A change made by plain SQL while sidecache could not reach Postgres is served once Postgres answers again: the change listener reconnects as soon as a connection attempt is answered and replays the outbox.",
        json!({
            "outage_ms": outage.as_millis() as u64,
            "new_version_served_after_restore_ms": took.as_millis() as u64,
        }),
    );
}

#[tokio::test]
async fn postgres_slow() {
    let relay = Relay::start(postgres_addr()).await;
    let mut settings = via_postgres_relay(&relay);
    short_ttls(&mut settings);
    settings.cache.soft_timeout = Duration::from_millis(50);
    settings.cache.lookup_deadline = Duration::from_millis(5_000);
    settings.postgres.acquire_timeout = Duration::from_millis(5_000);
    settings.coherence.listener = false;
    let app = crate::spawn::spawn_with_settings(settings).await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    app.get(&path).await;
    let delay = Duration::from_millis(400);
    relay.delay(delay);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past its TTL

    let started = Instant::now();
    let r = app.get(&path).await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.cache(), "STALE", "{}", r.text);
    assert!(
        took < delay,
        "the stale value came before the slow load ({took:?})"
    );
    // The load went on in the background and refreshed the cache.
    let (fresh, waited) = app
        .get_until(&path, Duration::from_secs(10), |r| r.cache() == "HIT-L1")
        .await;
    assert_eq!(fresh.cache(), "HIT-L1");
    assert_eq!(fresh.header("age"), Some("0"));
    relay.restore();
    report(
        "postgres_slow",
        "With a stale value at hand, a load slower than the soft timeout (50 ms) is not waited for: the stale value is answered and the load refreshes the cache in the background.",
        json!({
            "postgres_delay_ms": delay.as_millis() as u64,
            "stale_answer_ms": took.as_millis() as u64,
            "refreshed_in_background_within_ms": waited.as_millis() as u64,
            "failed_lookups": 0,
        }),
    );
}

#[tokio::test]
async fn stampede_on_a_cold_key() {
    let app = spawn_app_with(|s| s.server.max_concurrency = NonZeroUsize::new(4096).unwrap()).await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    app.delay_fills_of(format!("lead:id:{l}"), Duration::from_millis(500));
    let queries = || {
        app.metric(
            "sidecache_postgres_queries_total",
            &[("query", "lead_by_id")],
        )
    };
    let before = queries().await;
    let client = unpooled_client();
    let url = format!("{}/v1/leads/{l}", app.addr);
    let started = Instant::now();
    let answers: Vec<_> = (0..1000)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    let mut ok = 0;
    for a in answers {
        if matches!(a.await.unwrap(), Ok(StatusCode::OK)) {
            ok += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(ok, 1000, "every request answered");
    assert_eq!(
        queries().await - before,
        1.0,
        "exactly one Postgres query for the key"
    );
    report(
        "stampede_on_a_cold_key",
        "1,000 concurrent requests for one cold key make exactly one Postgres query on the instance.",
        json!({
            "requests": 1000,
            "answered_200": ok,
            "postgres_queries": 1,
            "all_answered_within_ms": took.as_millis() as u64,
        }),
    );
}

#[tokio::test]
async fn overload() {
    let limit = 4;
    let app =
        spawn_app_with(|s| s.server.max_concurrency = NonZeroUsize::new(limit).unwrap()).await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    app.delay_fills_of(format!("lead:id:{l}"), Duration::from_millis(800));
    let client = unpooled_client();
    let url = format!("{}/v1/leads/{l}", app.addr);
    let started = Instant::now();
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                let at = started.elapsed();
                let status = r.status();
                let retry = r.headers().get("retry-after").is_some();
                let body: Value = r.json().await.unwrap_or_default();
                (status, retry, body, at)
            })
        })
        .collect();
    let mut served = Vec::new();
    let mut refused = Vec::new();
    for r in requests {
        let (status, retry, body, at) = r.await.unwrap();
        match status {
            StatusCode::OK => served.push(at),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(retry, "a refusal says when to retry");
                assert_eq!(body["error"]["code"], "overloaded");
                refused.push(at);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(served.len(), limit, "as many served as the limit");
    assert_eq!(refused.len(), 12 - limit);
    let first_served = served.iter().min().unwrap();
    assert!(
        refused.iter().all(|r| r < first_served),
        "refusals come at once, not after queueing: {refused:?} vs {served:?}"
    );
    // Operations are never refused.
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    report(
        "overload",
        "Requests beyond server.max_concurrency are answered 503 with Retry-After at once, not queued into timeouts.",
        json!({
            "limit": limit,
            "requests": 12,
            "served": served.len(),
            "refused_503": refused.len(),
            "slowest_refusal_ms": refused.iter().max().unwrap().as_millis() as u64,
            "first_served_ms": first_served.as_millis() as u64,
        }),
    );
}

#[tokio::test]
async fn graceful_shutdown() {
    let mut app = spawn_app_with(|s| {
        s.server.drain_delay = Duration::from_millis(300);
        s.server.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    app.delay_fills_of(format!("lead:id:{l}"), Duration::from_millis(700));
    let client = unpooled_client();
    let in_flight: Vec<_> = (0..5)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}/v1/leads/{l}", app.addr));
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.signal_stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["status"], "draining");
    let mut completed = 0;
    for r in in_flight {
        assert_eq!(r.await.unwrap().unwrap(), StatusCode::OK);
        completed += 1;
    }
    app.stop().await;
    let took = started.elapsed();
    let refused = client.get(format!("{}/healthz", app.addr)).send().await;
    assert!(refused.is_err(), "no longer accepting connections");
    report(
        "graceful_shutdown",
        "On SIGTERM /readyz answers 503 at once; in-flight requests all complete; then connections are refused and background tasks and pools are closed.",
        json!({
            "in_flight_at_signal": 5,
            "completed_200": completed,
            "readyz_while_draining": 503,
            "stopped_within_ms": took.as_millis() as u64,
        }),
    );
}

#[tokio::test]
async fn hot_keys_are_refreshed_ahead_of_expiry() {
    let app = spawn_app_with(|s| {
        s.cache.ttl = sidecache::config::TtlSettings::uniform(Duration::from_secs(2));
        s.cache.l1_max_ttl = Duration::from_secs(2);
        s.cache.jitter = 0.0;
        s.cache.refresh_ahead = 0.5;
    })
    .await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    app.get(&path).await;
    // In the last half of its life, a hit starts one background refresh...
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hit = app.get(&path).await;
    assert_eq!(hit.cache(), "HIT-L1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.metric("sidecache_refreshes_ahead_total", &[("kind", "lead_id")])
                .await
                == 1.0
        })
        .await
    );
    // ...so when the original would have expired, the key is still a fresh L1 hit.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = app.get(&path).await;
    assert_eq!(later.cache(), "HIT-L1", "never expired in a caller's face");
}

#[tokio::test]
async fn the_reliability_report_covers_every_fault() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/RELIABILITY.md"),
    )
    .expect("docs/RELIABILITY.md exists");
    for fault in FAULTS {
        assert!(
            doc.contains(&format!("| `{fault}` |")),
            "docs/RELIABILITY.md has a row for {fault}"
        );
    }
    let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, FAULTS.len(), "and no row for a fault no test checks");
}
