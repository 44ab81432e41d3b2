//! Redis losing state while a load is in flight, and a change listener away longer than the
//! outbox keeps rows: nothing stale may be stored in Redis or served afterwards.
//!
//! The interleavings are forced with the cache's fill hook: instance C (the slow one) has read
//! version 1 from Postgres and is held before its fill; instance A acknowledges version 2; Redis
//! loses its state; then C's fill goes on. Each loss is made on a `redis-server` the test started
//! itself (`FLUSHALL`, a kill and restart without persistence, a restart from a snapshot taken
//! before the write), never on the machine's own Redis.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sidecache::config::SecretUrl;

use crate::fencing::{get_in_background, pause_first_fill};
use crate::fixtures::{database_name, eventually, postgres_addr};
use crate::lookups::world;
use crate::redis_server::RedisServer;
use crate::relay::Relay;
use crate::resilience::report;
use crate::spawn::{spawn_app_with, TestApp};

const BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// `FLUSHALL`: every key gone, the server the same.
    Flushall,
    /// SIGKILL and a new process on the same port, nothing persisted.
    Restart,
    /// SIGKILL and a new process that loads a snapshot taken after the load's read but before
    /// the write: the fences and the incarnation come back as they were then.
    Snapshot,
}

/// Two instances on a Redis of the test's own: C loads slowly, A takes the writes.
struct Fleet {
    redis: RedisServer,
    c: TestApp,
    a: TestApp,
}

async fn fleet() -> Fleet {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let c = spawn_app_with(|s| s.redis.url = SecretUrl::new(url)).await;
    let a = c.spawn_peer(|_| {}).await;
    // Both have checked the server once (the record a snapshot restart is compared with).
    let server = format!("{}:v1server", c.namespace);
    let mut conn = redis.conn().await;
    assert!(
        eventually(BOUND, || {
            let mut conn = conn.clone();
            let server = server.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(&server)
                    .query_async::<i64>(&mut conn)
                    .await
                    .unwrap_or(0)
                    == 1
            }
        })
        .await
    );
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    Fleet { redis, c, a }
}

impl Fleet {
    /// True if the test's Redis holds a value for the cache key.
    async fn in_redis(&self, key: &str) -> bool {
        let mut conn = self.redis.conn().await;
        redis::cmd("EXISTS")
            .arg(format!("{}:v1:{key}", self.c.namespace))
            .query_async::<i64>(&mut conn)
            .await
            .unwrap()
            == 1
    }

    async fn save(&self) {
        let mut conn = self.redis.conn().await;
        let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    }

    /// Makes Redis lose its state, then waits until both instances talk to it again, so that
    /// the held fill reaches Redis (and is refused there, not failed on a dead connection).
    async fn lose(&self, loss: Loss) {
        match loss {
            Loss::Flushall => {
                let mut conn = self.redis.conn().await;
                let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            }
            Loss::Restart => {
                // The snapshot folder is empty: nothing was ever saved.
                self.redis.restart().await;
            }
            Loss::Snapshot => self.redis.restart().await,
        }
        for app in [&self.c, &self.a] {
            assert!(
                eventually(BOUND, || app.state.cache.probe_redis()).await,
                "the instance reaches Redis again"
            );
        }
    }

    async fn l2_fills(&self, outcome: &str) -> f64 {
        self.c
            .metric(
                "sidecache_cache_fills_total",
                &[("tier", "l2"), ("outcome", outcome)],
            )
            .await
    }
}

/// A load of `path` (cache key `key`) on C reads Postgres, A writes with `write`, Redis loses
/// its state, C's fill goes on. Returns what C's held lookup answered.
async fn race(
    f: &Fleet,
    loss: Loss,
    key: &str,
    path: &str,
    write: impl std::future::Future<Output = ()>,
) -> (StatusCode, serde_json::Value) {
    let pause = pause_first_fill(&f.c, key.to_owned());
    let reader = get_in_background(&f.c, path.to_owned()).await;
    tokio::time::timeout(BOUND, pause.loaded.notified())
        .await
        .expect("the load reached the hook");
    if loss == Loss::Snapshot {
        f.save().await;
    }
    write.await;
    f.lose(loss).await;
    let fenced = f.l2_fills("fenced").await;
    pause.go.notify_one();
    let (status, _, body) = reader.await.unwrap();
    assert_eq!(
        f.l2_fills("fenced").await - fenced,
        1.0,
        "{loss:?}: the fill reached Redis and was refused there"
    );
    assert!(
        !f.in_redis(key).await,
        "{loss:?}: what the load read before the write was not stored"
    );
    (status, body)
}

async fn a_value_read_before_a_write_is_not_stored_after(loss: Loss) {
    let f = fleet().await;
    let w = world(&f.a).await;
    let l = w.lead_id().to_owned();
    let path = format!("/v1/leads/{l}");
    let a = &f.a;
    let write = async {
        let ack = a.patch(&path, json!({"first_name": "Augusta"})).await;
        assert_eq!((ack.status, ack.version()), (StatusCode::OK, 2));
    };
    let (status, old) = race(&f, loss, &format!("lead:id:{l}"), &path, write).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(old["version"], 1, "the held lookup itself read version 1");

    // A acknowledged version 2 and reads it back; so does C, once its L1 is out of the way.
    let mine = f.a.get(&path).await;
    assert_eq!((mine.version(), mine.cache()), (2, "MISS"), "{loss:?}");
    f.c.flush_l1();
    assert_eq!(f.c.get(&path).await.version(), 2, "{loss:?}");
}

async fn a_not_found_read_before_an_insert_is_not_stored_after(loss: Loss) {
    let f = fleet().await;
    let w = world(&f.a).await;
    let o = w.org_id().to_owned();
    let phone = "+15550009999";
    let path = format!("/v1/leads/by-phone/%2B15550009999?organization_id={o}");
    let a = &f.a;
    let write = async {
        a.create_lead(&o, phone, "Late").await;
    };
    let key = format!("lead:phone:{phone}:{o}");
    let (status, _) = race(&f, loss, &key, &path, write).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the held lookup read nothing"
    );

    let mine = f.a.get(&path).await;
    assert_eq!(mine.status, StatusCode::OK, "{loss:?}: {}", mine.text);
    assert_eq!(mine.body["first_name"], "Late");
    f.c.flush_l1();
    assert_eq!(f.c.get(&path).await.status, StatusCode::OK, "{loss:?}");
}

/// Both forms of the race under one loss, timed for the reliability report.
async fn both_forms(loss: Loss, fault: &str, promise: &str) {
    let started = Instant::now();
    a_value_read_before_a_write_is_not_stored_after(loss).await;
    let value = started.elapsed();
    let started = Instant::now();
    a_not_found_read_before_an_insert_is_not_stored_after(loss).await;
    let not_found = started.elapsed();
    report(
        fault,
        promise,
        json!({
            "value fill": "refused (fenced in Redis); version 2 served by both instances",
            "not found fill": "refused; the new lead found by both instances",
            "value race ms": value.as_millis() as u64,
            "not found race ms": not_found.as_millis() as u64,
        }),
    );
}

#[tokio::test]
async fn redis_flushed_during_a_load() {
    both_forms(
        Loss::Flushall,
        "redis_flushed_during_a_load",
        "A load that read Postgres before a write, whose fill reaches Redis after a FLUSHALL, is refused (the namespace's incarnation is gone), for a value and for a not-found entry; the writer reads its write back, and so does every instance.",
    )
    .await;
}

#[tokio::test]
async fn redis_restarted_during_a_load() {
    both_forms(
        Loss::Restart,
        "redis_restarted_during_a_load",
        "The same race across a Redis restart without persistence (the test's own redis-server, killed and started again): the fill is refused, nothing stale is stored or served.",
    )
    .await;
}

#[tokio::test]
async fn redis_restored_from_an_older_snapshot_during_a_load() {
    both_forms(
        Loss::Snapshot,
        "redis_restored_from_an_older_snapshot_during_a_load",
        "The same race across a restart that loads a snapshot taken before the write (fences and incarnation come back as they were): the server's new run_id resets the namespace, and the fill is refused.",
    )
    .await;
}

/// A fence that expired (here: deleted, as its expiry would) and is moved again must not come
/// back with the number a load in flight holds as its token.
#[tokio::test]
async fn a_fence_that_expired_and_moved_again_refuses_the_fill() {
    let f = fleet().await;
    let w = world(&f.a).await;
    let l = w.lead_id().to_owned();
    let path = format!("/v1/leads/{l}");
    let key = format!("lead:id:{l}");
    // The lead's fence has moved once (its creation), and the value is not cached.
    let fence = format!("{}:v1:fence:{key}", f.c.namespace);
    let mut conn = f.redis.conn().await;
    let token: Option<String> = redis::cmd("GET")
        .arg(&fence)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(token.is_some(), "the write moved the fence");

    let pause = pause_first_fill(&f.c, key.clone());
    let reader = get_in_background(&f.c, path.clone()).await;
    tokio::time::timeout(BOUND, pause.loaded.notified())
        .await
        .expect("the load reached the hook");
    let _: () = redis::cmd("DEL")
        .arg(&fence)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ack = f.a.patch(&path, json!({"first_name": "Augusta"})).await;
    assert_eq!(ack.version(), 2);
    let moved: Option<String> = redis::cmd("GET")
        .arg(&fence)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_ne!(moved, token, "the fence did not repeat its old number");
    pause.go.notify_one();
    let (_, _, old) = reader.await.unwrap();
    assert_eq!(old["version"], 1);
    assert!(!f.in_redis(&key).await, "the fill was refused");
    f.c.flush_l1();
    assert_eq!(f.c.get(&path).await.version(), 2);
}

/// Right after a restart from an older snapshot, before any check of the server: the values it
/// brought back are not read (the first failed operation stops L2 reads until a check).
#[tokio::test]
async fn values_restored_from_a_snapshot_are_not_read_before_the_check() {
    let f = fleet().await;
    let w = world(&f.a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(f.c.get(&path).await.cache(), "MISS");
    f.save().await;
    assert_eq!(
        f.a.patch(&path, json!({"first_name": "Augusta"}))
            .await
            .version(),
        2
    );
    // A's checks are held: its reads after the reconnect come before any check.
    let remote = f.a.state.cache.remote().unwrap().clone();
    remote.hold_checks(true);
    f.redis.restart().await;
    for i in 0..10 {
        f.a.flush_l1();
        let r = f.a.get(&path).await;
        assert_eq!(r.version(), 2, "read {i}: {} {}", r.cache(), r.text);
        assert_ne!(
            r.cache(),
            "HIT-L2",
            "read {i}: L2 is not read before the check"
        );
    }
    // Once checked, the restored values are voided and L2 is read again.
    remote.hold_checks(false);
    assert!(eventually(BOUND, || async { remote.usable() }).await);
    f.a.flush_l1();
    assert_eq!(f.a.get(&path).await.version(), 2);
    f.a.flush_l1();
    let again = f.a.get(&path).await;
    assert_eq!((again.version(), again.cache()), (2, "HIT-L2"));
}

/// A restart from a snapshot brings back values that later writes had dropped. They are voided
/// once an instance sees the server changed (on its next probe, or on any fill).
#[tokio::test]
async fn values_restored_from_an_older_snapshot_are_voided() {
    let f = fleet().await;
    let w = world(&f.a).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(f.c.get(&path).await.cache(), "MISS");
    assert!(f.in_redis(&format!("lead:id:{}", w.lead_id())).await);
    f.save().await;
    let ack = f.a.patch(&path, json!({"first_name": "Augusta"})).await;
    assert_eq!(ack.version(), 2);
    f.redis.restart().await;
    assert!(
        f.in_redis(&format!("lead:id:{}", w.lead_id())).await,
        "the snapshot brought version 1 back"
    );
    // Both instances probe; the first to do so resets the namespace, the other sees it.
    for app in [&f.c, &f.a] {
        assert!(eventually(BOUND, || app.state.cache.probe_redis()).await);
    }
    f.c.flush_l1();
    let r = f.c.get(&path).await;
    assert_eq!((r.version(), r.cache()), (2, "MISS"), "{}", r.text);
    f.a.flush_l1();
    let r = f.a.get(&path).await;
    assert_eq!(r.version(), 2, "{} {}", r.cache(), r.text);
    let changed =
        f.c.metric(
            "sidecache_redis_resets_total",
            &[("cause", "server_changed")],
        )
        .await
            + f.a
                .metric(
                    "sidecache_redis_resets_total",
                    &[("cause", "server_changed")],
                )
                .await;
    assert_eq!(changed, 1.0, "one instance reset the namespace");
}

/// An evicting Redis may have dropped a fence: every eviction resets the namespace (found by the
/// next probe or fill), so a value cached before is voided.
#[tokio::test]
async fn evictions_reset_the_namespace() {
    let redis = RedisServer::start_with(&[
        "--maxmemory",
        "4mb",
        "--maxmemory-policy",
        "volatile-random",
    ])
    .await;
    let url = redis.url();
    let app = spawn_app_with(|s| s.redis.url = SecretUrl::new(url)).await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(app.get(&path).await.cache(), "MISS");
    app.flush_l1();
    assert_eq!(app.get(&path).await.cache(), "HIT-L2");
    assert!(eventually(BOUND, || app.state.cache.probe_redis()).await);

    // Someone else's data fills the server past maxmemory, in another database. Under a
    // volatile policy only keys with a TTL are evicted: theirs, or sidecache's values and fences
    // (never the incarnation or its record, which have none).
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("SELECT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let blob = vec![b'x'; 64 * 1024];
    for i in 0..200 {
        let _: Result<(), _> = redis::cmd("SET")
            .arg(format!("junk:{i}"))
            .arg(&blob)
            .arg("EX")
            .arg(3600)
            .query_async(&mut conn)
            .await;
    }
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !info.contains("evicted_keys:0\r"),
        "the server evicted keys"
    );

    assert!(eventually(BOUND, || app.state.cache.probe_redis()).await);
    let resets = app
        .metric("sidecache_redis_resets_total", &[("cause", "evictions")])
        .await;
    assert!(resets >= 1.0, "an eviction reset the namespace ({resets})");
    app.flush_l1();
    let after = app.get(&path).await;
    assert_eq!(
        after.cache(),
        "MISS",
        "the value cached before the evictions is voided"
    );
    report(
        "redis_evicting",
        "On a Redis that evicts keys (an evicted fence could let a racing fill through), every eviction resets the namespace: values cached before are voided. Correct, but the cache is cold after each eviction: give Redis enough memory or noeviction.",
        json!({
            "policy": "volatile-random, maxmemory 4mb",
            "resets (evictions)": resets,
            "lookup after": after.cache(),
        }),
    );
}

/// Every listener away longer than the outbox keeps rows: the changes made meanwhile are gone
/// from the outbox, so the returning listener resets Redis as well as L1.
#[tokio::test]
async fn a_listener_away_past_the_retention_resets_redis_too() {
    let relay = Relay::start(postgres_addr()).await;
    let app = spawn_app_with(|s| {
        s.coherence.listener_url = SecretUrl::new(relay.postgres_url(&database_name(s)));
        s.coherence.bus = false;
        s.coherence.poll_interval = Duration::from_millis(100);
        s.coherence.outbox_retention = Duration::from_secs(1);
        s.coherence.outbox_prune_interval = Duration::from_secs(1);
    })
    .await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    let path = format!("/v1/leads/{l}");
    let listener_up = |up: f64| {
        let app = &app;
        move || async move { app.metric("sidecache_listener_up", &[]).await == up }
    };
    assert!(eventually(BOUND, listener_up(1.0)).await);
    app.get(&path).await;
    assert_eq!(app.get(&path).await.cache(), "HIT-L1");
    assert!(app.in_redis(&format!("lead:id:{l}")).await);

    let started = Instant::now();
    relay.cut();
    assert!(eventually(BOUND, listener_up(0.0)).await);
    sqlx::query("UPDATE leads SET first_name = 'Pruned' WHERE id = $1::uuid")
        .bind(&l)
        .execute(&app.db)
        .await
        .unwrap();
    let pruned = eventually(BOUND, || async {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM sidecache_outbox")
            .fetch_one(&app.db)
            .await
            .unwrap();
        n == 0
    })
    .await;
    assert!(pruned, "the change was pruned before anyone read it");
    relay.restore();
    assert!(eventually(BOUND, listener_up(1.0)).await);
    let away = started.elapsed();

    let r = app.get(&path).await;
    assert_eq!(r.body["first_name"], "Pruned", "{}", r.text);
    assert_eq!(r.cache(), "MISS", "neither L1 nor Redis kept the old value");
    let resets = app
        .metric("sidecache_redis_resets_total", &[("cause", "listener_gap")])
        .await;
    // At least once: on a loaded machine a poll delayed past a 1 s retention is a gap too.
    assert!(resets >= 1.0, "{resets}");
    report(
        "listener_away_past_retention",
        "A change listener that returns after longer than coherence.outbox_retention_secs (changes may have been pruned unread) resets the Redis namespace and drops L1: the change made meanwhile is served, not the old value from Redis.",
        json!({
            "retention_s": 1,
            "away_ms": away.as_millis() as u64,
            "served_after_return": format!("{} {}", r.cache(), r.body["first_name"]),
            "redis_resets": resets,
        }),
    );
}
