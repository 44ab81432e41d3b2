//! REDIS_ENABLED=false, Redis unreachable at start, and both tiers off.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::fixtures::{eventually, redis_addr};
use crate::lookups::world;
use crate::relay::Relay;
use crate::spawn::spawn_app_with;

#[tokio::test]
async fn redis_disabled_gives_the_same_answers_from_l1_and_postgres() {
    let app = spawn_app_with(|s| s.redis.enabled = false).await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    let paths = [
        format!("/v1/leads/{l}"),
        format!("/v1/leads/{l}/context"),
        format!("/v1/leads/{l}/greeting"),
        "/v1/calls/initiation?caller=%2B15550002000&callee=%2B15550001000".to_string(),
    ];
    for p in &paths {
        let a = app.get(p).await;
        assert_eq!(a.status, StatusCode::OK, "{p}");
        assert_eq!(a.cache(), "MISS", "{p}");
        assert_eq!(app.get(p).await.cache(), "HIT-L1", "{p}");
        app.flush_l1();
        assert_eq!(
            app.get(p).await.cache(),
            "MISS",
            "{p}: never HIT-L2 without Redis"
        );
    }
    assert_eq!(
        app.patch(&format!("/v1/leads/{l}"), json!({"first_name": "Augusta"}))
            .await
            .status,
        StatusCode::OK
    );
    let after = app.get(&format!("/v1/leads/{l}")).await;
    assert_eq!(after.body["first_name"], "Augusta");
    assert!(
        app.redis_keys().await.is_empty(),
        "nothing was written to Redis"
    );
    let ready = app.get("/readyz").await;
    assert_eq!(ready.body["redis"]["enabled"], false);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(app.metric("sidecache_redis_up", &[]).await, 0.0);
}

#[tokio::test]
async fn redis_unreachable_at_start_serves_degraded_then_picks_redis_up() {
    let relay = Relay::start_cut(redis_addr()).await;
    let url = relay.redis_url();
    let app = spawn_app_with(|s| {
        s.redis.url = sidecache::config::SecretUrl::new(url);
        s.redis.connect_timeout = Duration::from_millis(200);
    })
    .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "degraded");
    assert_eq!(ready.body["redis"]["connected"], false);

    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(app.get(&path).await.cache(), "MISS");
    assert_eq!(app.get(&path).await.cache(), "HIT-L1");

    relay.restore();
    let up = eventually(Duration::from_secs(15), || async {
        app.get("/readyz").await.body["redis"]["connected"] == true
    })
    .await;
    assert!(up, "redis picked up once it answers");
    let back = eventually(Duration::from_secs(15), || async {
        let r = app.get("/readyz").await;
        r.body["status"] == "ready"
    })
    .await;
    assert!(
        back,
        "writes made while Redis was away were delivered, and L2 reads resumed"
    );

    // A fresh key goes through L2 now.
    let ctx = format!("/v1/leads/{}/summary", w.lead_id());
    assert_eq!(app.get(&ctx).await.cache(), "MISS");
    assert!(app.in_redis(&format!("summary:{}", w.lead_id())).await);
    app.flush_l1();
    assert_eq!(app.get(&ctx).await.cache(), "HIT-L2");
}

#[tokio::test]
async fn with_both_tiers_off_every_lookup_bypasses() {
    let app = spawn_app_with(|s| {
        s.redis.enabled = false;
        s.cache.l1_enabled = false;
    })
    .await;
    let w = world(&app).await;
    let path = format!("/v1/leads/{}", w.lead_id());
    for _ in 0..3 {
        let a = app.get(&path).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.cache(), "BYPASS");
    }
}
