//! Call sessions: the contract of every route, expiry and sliding by a controllable clock,
//! atomic merge patches across instances, exact `If-Match`, and the memory fallback with its
//! write-back when Redis comes back.

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client::Answer;
use crate::fixtures::{eventually, redis_addr};
use crate::relay::Relay;
use sidecache::config::Settings;

use crate::spawn::{spawn_app, spawn_app_with, spawn_with_settings, test_settings, TestApp};

impl TestApp {
    pub async fn put_session(&self, id: &str, body: Value) -> Answer {
        self.request(Method::PUT, &format!("/v1/sessions/{id}"), Some(body), &[])
            .await
    }

    /// A merge patch sent as `application/merge-patch+json`.
    pub async fn patch_session(&self, id: &str, patch: Value, headers: &[(&str, &str)]) -> Answer {
        let mut req = self
            .client
            .patch(format!("{}/v1/sessions/{id}", self.addr))
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    /// Moves this instance's session clock forward.
    pub fn advance(&self, by: Duration) {
        self.state.sessions.clock().advance(by);
    }

    /// The session hash as Redis holds it (field → value), straight from Redis.
    pub async fn session_in_redis(&self, id: &str) -> std::collections::HashMap<String, String> {
        let mut c = self.redis.clone();
        redis::cmd("HGETALL")
            .arg(self.keys().session(id))
            .query_async(&mut c)
            .await
            .unwrap()
    }
}

/// An app whose Redis is reached through a relay (for the test to cut), with `budget` as its
/// Redis timeout and breaker pause, and `tweak` applied.
pub async fn behind_relay(budget: Duration, tweak: impl FnOnce(&mut Settings)) -> (Relay, TestApp) {
    let relay = Relay::start(redis_addr()).await;
    let mut settings = test_settings();
    settings.redis.url = sidecache::config::SecretUrl::new(relay.redis_url());
    settings.redis.timeout = budget;
    settings.redis.breaker_open = budget;
    tweak(&mut settings);
    (relay, spawn_with_settings(settings).await)
}

impl TestApp {
    /// A peer of this app that reaches Redis directly (not through its relay).
    pub async fn spawn_direct_peer(&self) -> TestApp {
        self.spawn_peer(|s| {
            s.redis.url = sidecache::config::SecretUrl::new(crate::fixtures::redis_url())
        })
        .await
    }
}

fn store(a: &Answer) -> &str {
    a.header("x-session-store").unwrap_or("")
}

#[tokio::test]
async fn every_route_does_what_the_contract_says() {
    let app = spawn_app().await;
    let a = app
        .put_session(
            "call:CA1",
            json!({"data": {"caller": "+15550001", "turns": 0}, "ttl_secs": 120}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert_eq!(store(&a), "redis");
    assert_eq!(a.body["id"], "call:CA1");
    assert_eq!(a.body["data"], json!({"caller": "+15550001", "turns": 0}));
    assert_eq!(a.body["version"], 1);
    let created = a.body["created_at"].as_str().unwrap().to_owned();
    let exp = chrono::DateTime::parse_from_rfc3339(a.body["expires_at"].as_str().unwrap()).unwrap();
    let upd = chrono::DateTime::parse_from_rfc3339(a.body["updated_at"].as_str().unwrap()).unwrap();
    assert_eq!((exp - upd).num_seconds(), 120);

    let a = app
        .put_session("call:CA1", json!({"data": {"turns": 1}}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "a second PUT replaces");
    assert_eq!(a.body["data"], json!({"turns": 1}), "replaced, not merged");
    assert_eq!(a.body["version"], 2);
    assert_eq!(a.body["created_at"], created.as_str(), "created_at stays");

    let a = app
        .patch_session(
            "call:CA1",
            json!({"human": true, "turns": null, "n": {"a": 1}}),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.body["data"],
        json!({"human": true, "n": {"a": 1}}),
        "null removes"
    );
    assert_eq!(a.header("etag"), Some("\"3\""));
    // application/json is a merge patch too.
    let a = app
        .request(
            Method::PATCH,
            "/v1/sessions/call:CA1?ttl_secs=30",
            Some(json!({"n": {"b": 2}})),
            &[],
        )
        .await;
    assert_eq!(
        a.body["data"],
        json!({"human": true, "n": {"a": 1, "b": 2}})
    );

    let a = app.get("/v1/sessions/call:CA1").await;
    assert_eq!((a.status, a.version()), (StatusCode::OK, 4));
    let before = a.body["expires_at"].as_str().unwrap().to_owned();
    app.advance(Duration::from_secs(10));
    let a = app.get("/v1/sessions/call:CA1?touch=true").await;
    assert_eq!(a.version(), 4, "a touch is not a write");
    assert!(
        a.body["expires_at"].as_str().unwrap() > before.as_str(),
        "touch slid it"
    );
    let a = app
        .request(
            Method::POST,
            "/v1/sessions/call:CA1/touch",
            Some(json!({"ttl_secs": 5})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let exp = chrono::DateTime::parse_from_rfc3339(a.body["expires_at"].as_str().unwrap()).unwrap();
    assert!(
        exp < chrono::Utc::now() + chrono::Duration::seconds(20),
        "ttl 5 from the moved clock"
    );

    // If-Match: exact.
    let stale = app
        .patch_session("call:CA1", json!({"x": 1}), &[("if-match", "\"3\"")])
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.error_code(), "version_mismatch");
    let ok = app
        .patch_session("call:CA1", json!({"x": 1}), &[("if-match", "\"4\"")])
        .await;
    assert_eq!(ok.version(), 5);
    let a = app
        .request(
            Method::PUT,
            "/v1/sessions/call:CA1",
            Some(json!({"data": {}})),
            &[("if-match", "\"4\"")],
        )
        .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);
    let a = app
        .request(
            Method::DELETE,
            "/v1/sessions/call:CA1",
            None,
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);

    // Listing by prefix, a page at a time, with a total count.
    for i in 0..5 {
        app.put_session(&format!("web:{i}"), json!({"data": {}}))
            .await;
    }
    let a = app.get("/v1/sessions?prefix=web:&limit=2").await;
    assert_eq!(store(&a), "redis");
    assert_eq!(a.body["count"], 5);
    let ids = |a: &Answer| -> Vec<String> {
        a.body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&a), ["web:0", "web:1"]);
    let mut seen = ids(&a);
    let mut cursor = a.body["next_cursor"].as_str().unwrap().to_owned();
    loop {
        let a = app
            .get(&format!("/v1/sessions?prefix=web:&limit=2&cursor={cursor}"))
            .await;
        seen.extend(ids(&a));
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["web:0", "web:1", "web:2", "web:3", "web:4"]);
    assert_eq!(app.get("/v1/sessions").await.body["count"], 6);

    let a = app.delete("/v1/sessions/call:CA1").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(store(&a), "redis");
    assert_eq!(
        app.get("/v1/sessions/call:CA1").await.error_code(),
        "session_not_found"
    );
    assert_eq!(
        app.delete("/v1/sessions/call:CA1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.patch_session("call:CA1", json!({}), &[]).await.status,
        StatusCode::NOT_FOUND
    );
    // Only its version is kept (a day), so that a new session of the id counts on.
    let buried = app.session_in_redis("call:CA1").await;
    assert_eq!((buried["d"].as_str(), buried["e"].as_str()), ("", "0"));
    assert_eq!(app.get("/v1/sessions").await.body["count"], 5);
}

#[tokio::test]
async fn sessions_expire_by_their_ttl_and_every_write_slides_it() {
    let app = spawn_app().await;
    app.put_session("s", json!({"data": {"a": 1}, "ttl_secs": 60}))
        .await;
    app.advance(Duration::from_secs(50));
    let a = app
        .request(
            Method::PATCH,
            "/v1/sessions/s?ttl_secs=60",
            Some(json!({"b": 2})),
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "alive at 50 s");
    app.advance(Duration::from_secs(50));
    assert_eq!(
        app.get("/v1/sessions/s").await.status,
        StatusCode::OK,
        "the patch slid it: alive at 100 s"
    );
    assert_eq!(app.get("/v1/sessions?prefix=s").await.body["count"], 1);
    app.advance(Duration::from_secs(11));
    assert_eq!(
        app.get("/v1/sessions/s").await.status,
        StatusCode::NOT_FOUND,
        "expired at 110 s"
    );
    assert_eq!(
        app.get("/v1/sessions?prefix=s").await.body["count"],
        0,
        "dropped from the index"
    );
    assert_eq!(
        app.patch_session("s", json!({"c": 3}), &[]).await.status,
        StatusCode::NOT_FOUND
    );
    // A new session of the same id: created, with a version above the old one's (an old ETag
    // cannot match it).
    let a = app.put_session("s", json!({"data": {}})).await;
    assert_eq!((a.status, a.version()), (StatusCode::CREATED, 3));
    assert_eq!(a.body["data"], json!({}));
    // The default lifetime is sessions.ttl_secs.
    let exp = chrono::DateTime::parse_from_rfc3339(a.body["expires_at"].as_str().unwrap()).unwrap();
    let upd = chrono::DateTime::parse_from_rfc3339(a.body["updated_at"].as_str().unwrap()).unwrap();
    assert_eq!((exp - upd).num_seconds(), 3600);
}

#[tokio::test]
async fn concurrent_patches_across_two_instances_lose_no_field() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    assert_eq!(
        a.put_session("shared", json!({"data": {}})).await.status,
        StatusCode::CREATED
    );
    let patches = (0..200).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            let r = app
                .patch_session("shared", json!({ format!("f{i}"): i }), &[])
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
    });
    join_all(patches).await;
    let s = b.get("/v1/sessions/shared").await;
    let data = s.body["data"].as_object().unwrap();
    let missing: Vec<usize> = (0..200)
        .filter(|i| data.get(&format!("f{i}")) != Some(&json!(i)))
        .collect();
    assert!(missing.is_empty(), "lost fields: {missing:?}");
    assert_eq!(s.version(), 201);
}

#[tokio::test]
async fn if_match_writers_race_and_exactly_one_wins_each_version() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    a.put_session("race", json!({"data": {}})).await;
    for version in 1..=3 {
        let tag = format!("\"{version}\"");
        let writers = (0..20).map(|i| {
            let app = if i % 2 == 0 { &a } else { &b };
            let tag = tag.clone();
            async move {
                app.patch_session("race", json!({ "w": i }), &[("if-match", &tag)])
                    .await
                    .status
            }
        });
        let statuses = join_all(writers).await;
        let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let lost = statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!((won, lost), (1, 19), "version {version}: {statuses:?}");
    }
    assert_eq!(a.get("/v1/sessions/race").await.version(), 4);
}

#[tokio::test]
async fn with_redis_cut_sessions_live_in_memory_and_are_written_back() {
    let (relay, app) = behind_relay(Duration::from_millis(200), |_| {}).await;
    assert_eq!(
        store(&app.put_session("before", json!({"data": {"k": 0}})).await),
        "redis"
    );
    assert_eq!(
        store(&app.put_session("old", json!({"data": {"k": 0}})).await),
        "redis"
    );

    relay.cut();
    // Every write answered during the outage is acknowledged from memory.
    let a = app.put_session("during", json!({"data": {"k": 1}})).await;
    assert_eq!(
        (a.status, store(&a)),
        (StatusCode::CREATED, "memory"),
        "{}",
        a.text
    );
    let a = app.patch_session("during", json!({"m": 2}), &[]).await;
    assert_eq!((a.status, store(&a)), (StatusCode::OK, "memory"));
    let a = app.put_session("before", json!({"data": {"k": 9}})).await;
    assert_eq!(
        store(&a),
        "memory",
        "a PUT of a session Redis holds goes to memory"
    );
    assert_eq!(
        app.delete("/v1/sessions/old").await.status,
        StatusCode::NO_CONTENT
    );
    let a = app.get("/v1/sessions/during").await;
    assert_eq!((a.status, store(&a)), (StatusCode::OK, "memory"));
    assert_eq!(a.body["data"], json!({"k": 1, "m": 2}));
    assert_eq!(app.get("/v1/sessions?prefix=during").await.body["count"], 1);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.body["status"], "degraded");
    assert_eq!(ready.body["sessions"]["store"], "memory");

    relay.restore();
    assert!(
        eventually(Duration::from_secs(10), || async {
            !app.session_in_redis("during").await.is_empty()
                && app
                    .session_in_redis("old")
                    .await
                    .get("e")
                    .map(String::as_str)
                    == Some("0")
        })
        .await,
        "written back once Redis answers"
    );
    let during = app.session_in_redis("during").await;
    assert_eq!(
        serde_json::from_str::<Value>(&during["d"]).unwrap(),
        json!({"k": 1, "m": 2})
    );
    let before = app.session_in_redis("before").await;
    assert_eq!(
        serde_json::from_str::<Value>(&before["d"]).unwrap(),
        json!({"k": 9}),
        "the later write wins"
    );
    let a = app.get("/v1/sessions/during").await;
    assert_eq!(
        (store(&a), &a.body["data"]),
        ("redis", &json!({"k": 1, "m": 2}))
    );
    assert!(
        app.metric(
            "sidecache_session_write_backs_total",
            &[("result", "written")]
        )
        .await
            >= 3.0
    );
    assert!(
        app.metric("sidecache_state_fallbacks_total", &[("what", "sessions")])
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_write_back_never_overwrites_a_later_write_made_elsewhere() {
    let (relay, cut_off) = behind_relay(Duration::from_millis(200), |_| {}).await;
    let direct = cut_off.spawn_direct_peer().await;
    direct
        .put_session("x", json!({"data": {"v": "start"}}))
        .await;
    relay.cut();
    assert_eq!(
        store(
            &cut_off
                .put_session("x", json!({"data": {"v": "memory"}}))
                .await
        ),
        "memory"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    direct
        .put_session("x", json!({"data": {"v": "later"}}))
        .await;
    relay.restore();
    assert!(
        eventually(Duration::from_secs(10), || async {
            cut_off
                .metric(
                    "sidecache_session_write_backs_total",
                    &[("result", "superseded")],
                )
                .await
                >= 1.0
        })
        .await
    );
    assert_eq!(
        direct.get("/v1/sessions/x").await.body["data"],
        json!({"v": "later"})
    );
    assert_eq!(
        cut_off.get("/v1/sessions/x").await.body["data"],
        json!({"v": "later"})
    );
}

#[tokio::test]
async fn with_redis_off_sessions_work_from_memory() {
    let app = spawn_app_with(|s| s.redis.enabled = false).await;
    let a = app.put_session("m", json!({"data": {"a": 1}})).await;
    assert_eq!((a.status, store(&a)), (StatusCode::CREATED, "memory"));
    let a = app
        .patch_session("m", json!({"b": 2}), &[("if-match", "\"1\"")])
        .await;
    assert_eq!(
        (a.version(), &a.body["data"]),
        (2, &json!({"a": 1, "b": 2}))
    );
    assert_eq!(
        app.patch_session("m", json!({"b": 3}), &[("if-match", "\"1\"")])
            .await
            .status,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(app.get("/v1/sessions?prefix=m").await.body["count"], 1);
    app.advance(Duration::from_secs(3601));
    assert_eq!(
        app.get("/v1/sessions/m").await.status,
        StatusCode::NOT_FOUND
    );
    app.put_session("m2", json!({"data": {}})).await;
    assert_eq!(
        app.delete("/v1/sessions/m2").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete("/v1/sessions/m2").await.status,
        StatusCode::NOT_FOUND
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.body["sessions"]["store"], "memory");
}

#[tokio::test]
async fn memory_is_bounded_without_dropping_an_acknowledged_session() {
    let app = spawn_app_with(|s| {
        s.redis.enabled = false;
        s.sessions.memory_max_entries = std::num::NonZeroUsize::new(2).unwrap();
    })
    .await;
    app.put_session("a", json!({"data": {}})).await;
    app.put_session("b", json!({"data": {}})).await;
    let full = app.put_session("c", json!({"data": {}})).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.error_code(), "session_store_full");
    assert_eq!(app.get("/v1/sessions/a").await.status, StatusCode::OK);
    assert_eq!(
        app.put_session("a", json!({"data": {"x": 1}})).await.status,
        StatusCode::OK
    );
}

/// One writer's session, written only through one instance (as a sticky client would), while
/// that instance's Redis link is cut, slowed past its timeout or black-holed at random. Every
/// write it acknowledged must be in the session once Redis is back and the write-back is done.
async fn sticky_writer(
    app: &TestApp,
    id: String,
    seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (String, Vec<String>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acked: serde_json::Map<String, Value> = serde_json::Map::new();
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let field = format!("f{n}");
        let ok = if rng.random_bool(0.7) {
            let a = app.patch_session(&id, json!({ &field: n }), &[]).await;
            assert!(
                a.status.is_success() || a.status == StatusCode::NOT_FOUND,
                "{}",
                a.text
            );
            a.status.is_success()
        } else {
            let mut data = acked.clone();
            data.insert(field.clone(), json!(n));
            let a = app.put_session(&id, json!({ "data": data })).await;
            assert!(a.status.is_success(), "{}", a.text);
            true
        };
        if ok {
            acked.insert(field, json!(n));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
    }
    (id, acked.keys().cloned().collect())
}

#[tokio::test]
async fn random_faults_under_sticky_writers_lose_no_acknowledged_write() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("SIDECACHE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (SIDECACHE_TEST_SEED={seed} repeats this run)");
    let (relay, faulty) = behind_relay(Duration::from_millis(100), |_| {}).await;
    let direct = faulty.spawn_direct_peer().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let app = if w % 2 == 0 { &faulty } else { &direct };
        let id = format!("rand:{w}");
        assert!(app
            .put_session(&id, json!({"data": {}}))
            .await
            .status
            .is_success());
        writers.push(sticky_writer(app, id, seed.wrapping_add(w), stop.clone()));
    }
    let faults = async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..14 {
            match rng.random_range(0..4) {
                0 => relay.cut(),
                1 => relay.delay(Duration::from_millis(150)),
                2 => relay.blackhole(),
                _ => relay.restore(),
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        }
        relay.restore();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (results, ()) = tokio::join!(join_all(writers), faults);
    assert!(
        eventually(Duration::from_secs(15), || async {
            let r = faulty.get("/readyz").await;
            r.body["sessions"]["store"] == "redis"
                && r.body["sessions"]["owed_write_backs"] == false
        })
        .await,
        "everything written back"
    );
    let mut acked_total = 0;
    for (id, acked) in results {
        let d: Value = serde_json::from_str(&direct.session_in_redis(&id).await["d"]).unwrap();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|f| d.get(f.as_str()).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "seed {seed}: {id} lost acknowledged fields {missing:?}"
        );
        acked_total += acked.len();
    }
    assert!(acked_total > 100, "the writers got through: {acked_total}");
    assert!(
        faulty
            .metric("sidecache_state_fallbacks_total", &[("what", "sessions")])
            .await
            > 0.0,
        "seed {seed}: the faults reached the sessions"
    );
}

#[tokio::test]
async fn an_outage_patch_is_merged_into_what_redis_holds_and_conditional_writes_wait() {
    let (relay, cut_off) = behind_relay(Duration::from_millis(200), |_| {}).await;
    let direct = cut_off.spawn_direct_peer().await;
    assert_eq!(
        direct
            .put_session("m", json!({"data": {"start": 0}}))
            .await
            .status,
        StatusCode::CREATED
    );
    relay.cut();
    // Acknowledged from memory: a put, then a patch of it.
    assert_eq!(
        store(&cut_off.put_session("m", json!({"data": {"a": 1}})).await),
        "memory"
    );
    let p = cut_off.patch_session("m", json!({"b": 2}), &[]).await;
    assert_eq!(
        (store(&p), &p.body["data"]),
        ("memory", &json!({"a": 1, "b": 2}))
    );
    // A conditional write cannot be checked without the shared store: refused, not guessed.
    let c = cut_off
        .patch_session(
            "m",
            json!({"x": 1}),
            &[("if-match", &format!("\"{}\"", p.version()))],
        )
        .await;
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(c.error_code(), "session_store_unavailable");
    assert!(c.header("retry-after").is_some());
    let d = cut_off
        .request(
            Method::DELETE,
            "/v1/sessions/m",
            None,
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(d.status, StatusCode::SERVICE_UNAVAILABLE);
    // Meanwhile, elsewhere, a later patch.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        direct.patch_session("m", json!({"c": 3}), &[]).await.status,
        StatusCode::OK
    );
    relay.restore();
    assert!(
        eventually(Duration::from_secs(10), || async {
            cut_off.get("/readyz").await.body["sessions"]["owed_write_backs"] == false
                && store(&cut_off.get("/v1/sessions/m").await) == "redis"
        })
        .await
    );
    // The put was older than the direct patch (a later write wins over a put); the patch is
    // merged into what Redis held, dropping nobody's field.
    let m = direct.get("/v1/sessions/m").await;
    assert_eq!(m.body["data"], json!({"start": 0, "b": 2, "c": 3}));
    assert_eq!(
        cut_off.get("/v1/sessions/m").await.body,
        m.body,
        "one copy, seen alike"
    );
}

#[tokio::test]
async fn a_patch_never_builds_on_a_copy_another_instance_has_moved_past() {
    let a = spawn_app().await;
    let b = a.spawn_peer(|_| {}).await;
    a.put_session("p", json!({"data": {"a": 1}})).await;
    // `a` now holds version 1 as the base of its next patch; `b` moves the session on.
    assert_eq!(
        b.patch_session("p", json!({"b": 2}), &[]).await.version(),
        2
    );
    assert_eq!(
        b.put_session("p", json!({"data": {"c": 3}}))
            .await
            .version(),
        3
    );
    let r = a.patch_session("p", json!({"d": 4}), &[]).await;
    assert_eq!(
        (r.version(), &r.body["data"]),
        (4, &json!({"c": 3, "d": 4}))
    );
    // And with If-Match of the copy `a` last wrote, after `b` moved on: 412, not a merge.
    b.patch_session("p", json!({"e": 5}), &[]).await;
    let stale = a
        .patch_session("p", json!({"f": 6}), &[("if-match", "\"4\"")])
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        b.get("/v1/sessions/p").await.body["data"],
        json!({"c": 3, "d": 4, "e": 5})
    );
}
