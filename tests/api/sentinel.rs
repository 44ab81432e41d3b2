//! Redis behind Sentinel, for real: a master, a replica and three sentinels of the test's own.
//! sidecache finds the master through the sentinels, follows it through `SENTINEL FAILOVER`,
//! drops the connection to the demoted master instead of retrying it, and treats the change of
//! master as a loss of fence state (the namespace gets a new incarnation before L2 is used
//! again), so no read is older than an acknowledged write and no acknowledged session write is
//! lost.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use sidecache::config::{RedisMode, SecretUrl};

use crate::fixtures::eventually;
use crate::lookups::world;
use crate::sentinel_set::{SentinelSet, MASTER_NAME};
use crate::spawn::{spawn_app_with, TestApp};

async fn put_session(app: &TestApp, id: &str, n: u32) -> crate::client::Answer {
    app.request(
        Method::PUT,
        &format!("/v1/sessions/{id}"),
        Some(json!({"data": {"turn": n}})),
        &[],
    )
    .await
}

#[tokio::test]
async fn sentinel_failover_is_followed_and_treated_as_a_loss() {
    let set = SentinelSet::start().await;
    let app = spawn_app_with(|s| {
        s.redis.mode = RedisMode::Sentinel;
        s.redis.sentinel_urls = set.urls().into_iter().map(SecretUrl::new).collect();
        s.redis.sentinel_master = MASTER_NAME.into();
        // Only the credentials, database and TLS of `url` are used in sentinel mode.
        s.redis.url = SecretUrl::new("redis://127.0.0.1:1");
    })
    .await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.body["redis"]["connected"], true, "{}", ready.text);

    // Through the master the sentinels name: L2 and sessions.
    let w = world(&app).await;
    let lead = format!("/v1/leads/{}", w.lead_id());
    assert_eq!(app.get(&lead).await.cache(), "MISS");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.flush_l1();
            app.get(&lead).await.cache() == "HIT-L2"
        })
        .await
    );
    let put = put_session(&app, "call:before", 1).await;
    assert!(put.status.is_success(), "{}", put.text);
    assert_eq!(put.header("x-session-store"), Some("redis"));
    let keys = set.master.keys(&format!("{}:*", app.namespace)).await;
    assert!(!keys.is_empty(), "written on the sentinels' master");
    let resets = || async {
        app.metric(
            "sidecache_redis_resets_total",
            &[("cause", "server_changed")],
        )
        .await
    };
    let before = resets().await;

    set.fail_over().await;

    // Session writes right through the failover: every one is acknowledged (by the new master,
    // or kept in memory when the write could not be confirmed on a replica), and none is lost.
    // The old master accepts writes until the sentinels demote it, but its replica is gone:
    // WAIT confirms none of them, so none is acknowledged as if it were safe.
    let mut acked = Vec::new();
    for i in 0..20u32 {
        let id = format!("call:burst-{i}");
        let put = put_session(&app, &id, i).await;
        assert!(put.status.is_success(), "{}", put.text);
        acked.push((id, i));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        eventually(Duration::from_secs(40), || async {
            let put = put_session(&app, "call:after", 2).await;
            put.status.is_success() && put.header("x-session-store") == Some("redis")
        })
        .await,
        "session writes follow the new master"
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.get("/readyz").await.body["sessions"]["owed_write_backs"] == false
        })
        .await,
        "what was kept in memory is written back"
    );
    let mut promoted = set.replica.conn().await;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut promoted).await.unwrap();
    assert!(matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master"));
    for (id, turn) in &acked {
        let s = app.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(s.status, StatusCode::OK, "{id}: {}", s.text);
        assert_eq!(s.body["data"]["turn"], *turn, "{id}");
        let on_new = set.replica.keys(&format!("{}:*{id}", app.namespace)).await;
        assert!(!on_new.is_empty(), "{id} is on the promoted master");
    }

    // A change of master is a loss of fence state: a new incarnation before L2 is used again.
    assert!(
        eventually(Duration::from_secs(20), || async {
            resets().await > before
        })
        .await,
        "the new master is treated as a loss ({} server_changed resets before)",
        before
    );

    // No read older than an acknowledged write, and the session acknowledged before the
    // failover is still there.
    let p = app.patch(&lead, json!({"first_name": "After"})).await;
    assert_eq!(p.status, StatusCode::OK);
    for _ in 0..3 {
        app.flush_l1();
        assert_eq!(app.get(&lead).await.body["first_name"], "After");
    }
    let s = app.get("/v1/sessions/call:before").await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text);
    assert_eq!(s.body["data"]["turn"], 1);
    let s = app.get("/v1/sessions/call:after").await;
    assert_eq!(s.body["data"]["turn"], 2);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.body["redis"]["connected"], true, "{}", ready.text);
}
