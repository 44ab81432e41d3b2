//! Fenced fills and coalescing, with the interleavings forced by the cache's fill hook (run
//! between a load from Postgres and its fills).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sidecache::cache::{CacheKey, FillHook};
use tokio::sync::Notify;

use crate::lookups::world;
use crate::spawn::{spawn_app, spawn_app_with, TestApp};

/// Pauses the first fill of `target` until released; other fills pass.
pub struct Pause {
    pub loaded: Arc<Notify>,
    pub go: Arc<Notify>,
}

pub fn pause_first_fill(app: &TestApp, target: String) -> Pause {
    let loaded = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let first = Arc::new(AtomicBool::new(true));
    let (l, g) = (loaded.clone(), go.clone());
    let hook: FillHook = Arc::new(move |key: &CacheKey| {
        let pause = key.as_str() == target && first.swap(false, Ordering::SeqCst);
        let (l, g) = (l.clone(), g.clone());
        Box::pin(async move {
            if pause {
                l.notify_one();
                g.notified().await;
            }
        })
    });
    app.state.cache.set_fill_hook(Some(hook));
    Pause { loaded, go }
}

pub async fn get_in_background(
    app: &TestApp,
    path: String,
) -> tokio::task::JoinHandle<(StatusCode, String, serde_json::Value)> {
    let client = app.client.clone();
    let url = format!("{}{}", app.addr, path);
    tokio::spawn(async move {
        let r = client.get(url).send().await.unwrap();
        let status = r.status();
        let cache = r
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, cache, r.json().await.unwrap_or_default())
    })
}

async fn fill_that_read_before_a_write_is_never_stored(app: TestApp) {
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    let key = format!("lead:id:{l}");
    let pause = pause_first_fill(&app, key.clone());

    // 1. A miss reads version 1 from Postgres and stops before filling.
    let reader = get_in_background(&app, format!("/v1/leads/{l}")).await;
    tokio::time::timeout(Duration::from_secs(10), pause.loaded.notified())
        .await
        .expect("load reached the hook");
    // 2. A write commits version 2 and invalidates.
    let w2 = app
        .patch(&format!("/v1/leads/{l}"), json!({"first_name": "Augusta"}))
        .await;
    assert_eq!(w2.status, StatusCode::OK);
    assert_eq!(w2.version(), 2);
    // 3. The old load resumes and tries to fill.
    pause.go.notify_one();
    let (status, cache, body) = reader.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache, "MISS");
    assert_eq!(
        body["version"], 1,
        "the racing read itself may see the old row"
    );

    // Nothing it read was stored, in either tier.
    assert!(
        !app.in_redis(&key).await,
        "a fenced fill must not reach Redis"
    );
    let after = app.get(&format!("/v1/leads/{l}")).await;
    assert_eq!(
        after.version(),
        2,
        "no stale value is served after the write"
    );
    assert_eq!(
        after.cache(),
        "MISS",
        "the fenced value was not kept in L1 either"
    );
    assert_eq!(
        app.metric(
            "sidecache_cache_fills_total",
            &[("kind", "lead_id"), ("tier", "l1"), ("outcome", "fenced")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_fill_that_read_before_a_write_is_rejected_in_both_tiers() {
    let app = spawn_app().await;
    fill_that_read_before_a_write_is_never_stored(app).await;
}

#[tokio::test]
async fn the_l2_fill_is_fenced_by_redis() {
    let app = spawn_app().await;
    let redis_only = app
        .metric(
            "sidecache_cache_fills_total",
            &[("tier", "l2"), ("outcome", "fenced")],
        )
        .await;
    fill_that_read_before_a_write_is_never_stored_l2(&app).await;
    let after = app
        .metric(
            "sidecache_cache_fills_total",
            &[("kind", "lead_id"), ("tier", "l2"), ("outcome", "fenced")],
        )
        .await;
    assert_eq!(
        after - redis_only,
        1.0,
        "Redis refused the fill (compare-and-set against the fence)"
    );
}

async fn fill_that_read_before_a_write_is_never_stored_l2(app: &TestApp) {
    let w = world(app).await;
    let l = w.lead_id().to_owned();
    let pause = pause_first_fill(app, format!("lead:id:{l}"));
    let reader = get_in_background(app, format!("/v1/leads/{l}")).await;
    tokio::time::timeout(Duration::from_secs(10), pause.loaded.notified())
        .await
        .unwrap();
    assert_eq!(
        app.patch(&format!("/v1/leads/{l}"), json!({"status": "lost"}))
            .await
            .status,
        StatusCode::OK
    );
    pause.go.notify_one();
    reader.await.unwrap();
    assert!(!app.in_redis(&format!("lead:id:{l}")).await);
}

#[tokio::test]
async fn with_redis_disabled_the_l1_fence_alone_holds() {
    let app = spawn_app_with(|s| s.redis.enabled = false).await;
    fill_that_read_before_a_write_is_never_stored(app).await;
}

#[tokio::test]
async fn a_read_that_starts_after_a_write_does_not_share_an_older_load() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    let pause = pause_first_fill(&app, format!("lead:id:{l}"));
    let old_reader = get_in_background(&app, format!("/v1/leads/{l}")).await;
    tokio::time::timeout(Duration::from_secs(10), pause.loaded.notified())
        .await
        .unwrap();
    assert_eq!(
        app.patch(&format!("/v1/leads/{l}"), json!({"first_name": "Augusta"}))
            .await
            .status,
        StatusCode::OK
    );

    // The old load is still parked; a read that starts now must see the write.
    let fresh = tokio::time::timeout(Duration::from_secs(10), app.get(&format!("/v1/leads/{l}")))
        .await
        .expect("not stuck behind the parked load");
    assert_eq!(fresh.version(), 2);
    assert_eq!(fresh.body["first_name"], "Augusta");

    pause.go.notify_one();
    let (_, _, old) = old_reader.await.unwrap();
    assert_eq!(old["version"], 1);
    // The parked load finished last, but it did not overwrite the fresh entry.
    let again = app.get(&format!("/v1/leads/{l}")).await;
    assert_eq!(again.version(), 2);
    assert_eq!(again.cache(), "HIT-L1");
}

#[tokio::test]
async fn concurrent_misses_on_one_key_load_postgres_once() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    // Hold every load of the key open for a while so all requests arrive during it.
    let target = format!("lead:id:{l}");
    let hook: FillHook = Arc::new(move |key: &CacheKey| {
        let slow = key.as_str() == target;
        Box::pin(async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    });
    app.state.cache.set_fill_hook(Some(hook));
    let before = app
        .metric(
            "sidecache_postgres_queries_total",
            &[("query", "lead_by_id")],
        )
        .await;
    let mut readers = Vec::new();
    for _ in 0..50 {
        readers.push(get_in_background(&app, format!("/v1/leads/{l}")).await);
    }
    for r in readers {
        let (status, _, body) = r.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], serde_json::Value::String(l.clone()));
    }
    let after = app
        .metric(
            "sidecache_postgres_queries_total",
            &[("query", "lead_by_id")],
        )
        .await;
    assert_eq!(after - before, 1.0, "50 concurrent misses, one query");
    let waits = app
        .metric("sidecache_coalesced_waits_total", &[("kind", "lead_id")])
        .await;
    assert!(
        waits >= 40.0,
        "most requests waited for the one load ({waits})"
    );
}
