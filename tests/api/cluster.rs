//! A Redis Cluster of the test's own (3 masters, 3 replicas, `cluster-node-timeout` 1 s) losing a
//! master mid-traffic: lookups keep answering while the slot moves, the shards the dead master
//! held are treated as lost (their incarnations rotate: no fence state is trusted across the
//! failover), no read is older than a write acknowledged after it, and no session write
//! acknowledged during or after it is lost. The rest of the suite's key tests run against a
//! cluster too (`tests/cluster`).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sidecache::config::{RedisMode, SecretUrl};

use crate::cluster_set::RedisCluster;
use crate::fixtures::eventually;
use crate::lookups::world;
use crate::spawn::{spawn_app_with, TestApp};

async fn put_session(app: &TestApp, id: &str, n: u32) -> crate::client::Answer {
    app.put_session(id, json!({"data": {"turn": n}})).await
}

#[tokio::test]
async fn killing_a_master_mid_traffic_loses_no_acknowledged_write_and_serves_nothing_stale() {
    let cluster = RedisCluster::start(3).await;
    let app = spawn_app_with(|s| {
        s.redis.mode = RedisMode::Cluster;
        s.redis.cluster_urls = cluster.urls().into_iter().map(SecretUrl::new).collect();
        s.redis.url = SecretUrl::new("redis://127.0.0.1:1"); // not used in cluster mode
        s.redis.timeout = Duration::from_millis(300);
        s.redis.breaker_open = Duration::from_millis(300);
    })
    .await;
    let w = world(&app).await;
    let lead = format!("/v1/leads/{}", w.lead_id());
    let key = app.keys().value(&format!("lead:id:{}", w.lead_id()));
    assert_eq!(app.get(&lead).await.cache(), "MISS");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.flush_l1();
            app.get(&lead).await.cache() == "HIT-L2"
        })
        .await,
        "L2 on the cluster"
    );
    // Sessions before the failure, spread over every shard (and so every master).
    let mut acked = Vec::new();
    for i in 0..24u32 {
        let id = format!("call:before-{i}");
        let put = put_session(&app, &id, i).await;
        assert!(put.status.is_success(), "{}", put.text);
        assert_eq!(put.header("x-session-store"), Some("redis"), "{}", put.text);
        acked.push((id, i));
    }
    let resets = || async {
        app.metric(
            "sidecache_redis_resets_total",
            &[("cause", "server_changed")],
        )
        .await
    };
    let before = resets().await;

    // The master holding the lead's shard dies (SIGKILL: nothing saved, nothing handed over).
    let victim = cluster.master_of(&key).await;
    let victim_port = victim.port;
    let mut on_victim = std::collections::HashSet::new();
    for (id, _) in &acked {
        if cluster.master_of(&app.keys().session(id)).await.port == victim_port {
            on_victim.insert(id.clone());
        }
    }
    assert!(
        !on_victim.is_empty() && on_victim.len() < acked.len(),
        "sessions on every master"
    );
    let keys = app.keys();
    let mut victim_shards = 0.0;
    for shard in 0..keys.shards() {
        if cluster.master_of(&keys.incarnation(shard)).await.port == victim_port {
            victim_shards += 1.0;
        }
    }
    assert!(victim_shards > 0.0);
    victim.kill();
    let killed_at = Instant::now();

    // Lookups and session writes right through the failover: every lookup answers 200 (from L1,
    // or Postgres while the slot has no master), every session write is acknowledged (by Redis,
    // or kept in memory and written back).
    let mut i = 0u32;
    let mut settled = false;
    while killed_at.elapsed() < Duration::from_secs(30) {
        app.flush_l1();
        let r = app.get(&lead).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["first_name"], w.lead["first_name"]);
        let id = format!("call:during-{i}");
        let put = put_session(&app, &id, i).await;
        assert!(put.status.is_success(), "{}", put.text);
        acked.push((id, i));
        i += 1;
        if r.cache() == "HIT-L2" && put.header("x-session-store") == Some("redis") {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled,
        "L2 and sessions back on the promoted replica within 30 s"
    );
    assert_ne!(
        cluster.master_of(&key).await.port,
        victim_port,
        "the slot moved"
    );

    // The dead master's shards are treated as lost: their incarnations rotated, and only theirs.
    assert!(
        eventually(Duration::from_secs(10), || async {
            resets().await - before == victim_shards
        })
        .await,
        "the failover is a loss of fence state in the {victim_shards} shards the master held"
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.get("/readyz").await.body["sessions"]["owed_write_backs"] == false
        })
        .await,
        "what was kept in memory is written back"
    );

    // Writes acknowledged after the failover are what every later read sees.
    let p = app.patch(&lead, json!({"first_name": "After"})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text);
    for _ in 0..3 {
        app.flush_l1();
        assert_eq!(app.get(&lead).await.body["first_name"], "After");
    }
    for n in 0..12u32 {
        let id = format!("call:after-{n}");
        let put = put_session(&app, &id, n).await;
        assert_eq!(put.header("x-session-store"), Some("redis"), "{}", put.text);
        acked.push((id, n));
    }
    // No acknowledged session write is lost: every one acknowledged during or after the failover
    // is there, and so is every one on the masters that lived. Only a write the dead master had
    // not yet sent to its replica when it was SIGKILLed may be gone (replication is asynchronous;
    // Sentinel mode's WAIT is what closes that window there).
    for (id, turn) in &acked {
        let s = app.get(&format!("/v1/sessions/{id}")).await;
        if on_victim.contains(id) && s.status == StatusCode::NOT_FOUND {
            continue;
        }
        assert_eq!(s.status, StatusCode::OK, "{id}: {}", s.text);
        assert_eq!(s.body["data"]["turn"], *turn, "{id}");
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.body["redis"]["connected"], true, "{}", ready.text);
}
