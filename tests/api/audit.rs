//! The consistency auditor against real Postgres and Redis: healthy entries are checked and
//! never reported; an entry planted in Redis behind sidecache's back (the value of a row's older
//! version, after its change was applied) is found, counted, listed and dropped.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sidecache::config::Secret;

use crate::fixtures::eventually;
use crate::lookups::world;
use crate::spawn::{spawn_app_with, TestApp};

const TOKEN: &str = "test-admin-token-0123456789";

async fn audit_app() -> TestApp {
    spawn_app_with(|s| {
        s.audit.samples_per_sec = 40.0;
        s.audit.window = Duration::from_millis(300);
        s.admin.token = Secret::new(TOKEN);
    })
    .await
}

async fn stale(app: &TestApp, kind: &str, tier: &str) -> f64 {
    app.metric(
        "sidecache_audit_stale_total",
        &[("kind", kind), ("tier", tier)],
    )
    .await
}

async fn stats(app: &TestApp) -> serde_json::Value {
    let a = app
        .request(
            reqwest::Method::GET,
            "/admin/stats",
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.body
}

#[tokio::test]
async fn the_auditor_checks_healthy_entries_and_reports_none() {
    let app = audit_app().await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    for p in [
        format!("/v1/leads/{l}"),
        format!("/v1/leads/{l}/context"),
        format!("/v1/leads/{l}/summary"),
        format!("/v1/leads/{l}/history"),
    ] {
        assert_eq!(app.get(&p).await.status, StatusCode::OK, "{p}");
    }
    // Writes through sidecache while it samples: every change lands within the window.
    for i in 0..5 {
        let p = app
            .patch(
                &format!("/v1/leads/{l}"),
                json!({"first_name": format!("Ada{i}")}),
            )
            .await;
        assert_eq!(p.status, StatusCode::OK);
        app.get(&format!("/v1/leads/{l}")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.metric("sidecache_audit_checked_total", &[]).await >= 20.0
        })
        .await,
        "the auditor samples L1 and Redis"
    );
    // Let the last disagreements (if any were sampled mid-change) outlive their window.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = stats(&app).await;
    assert_eq!(s["audit"]["stale"], 0, "{}", s["audit"]);
    assert_eq!(s["audit"]["last_findings"], json!([]));
}

#[tokio::test]
async fn the_auditor_finds_a_stale_entry_planted_in_redis_and_drops_it() {
    let app = audit_app().await;
    let w = world(&app).await;
    let l = w.lead_id().to_owned();
    let key = format!("lead:id:{l}");
    let redis_key = app.keys().value(&key);
    assert_eq!(app.get(&format!("/v1/leads/{l}")).await.cache(), "MISS");
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.in_redis(&key).await
        })
        .await,
        "filled into Redis"
    );
    let mut redis = app.redis.clone();
    let old: Vec<u8> = redis::cmd("GET")
        .arg(&redis_key)
        .query_async(&mut redis)
        .await
        .unwrap();

    // The change is applied (both tiers dropped), then the old value is written back behind
    // sidecache's back: Redis now disagrees with Postgres, and no change is on its way.
    let p = app
        .patch(&format!("/v1/leads/{l}"), json!({"first_name": "Grace"}))
        .await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(!app.in_redis(&key).await, "the write dropped it");
    let _: () = redis::cmd("SET")
        .arg(&redis_key)
        .arg(&old)
        .query_async(&mut redis)
        .await
        .unwrap();
    app.flush_l1();
    let planted = app.get(&format!("/v1/leads/{l}")).await;
    assert_eq!(planted.cache(), "HIT-L2");
    assert_ne!(planted.body["first_name"], "Grace", "the plant is served");
    app.flush_l1();
    // A peer (auditing nothing itself) takes the stale value into its L1.
    let peer = app.spawn_peer(|s| s.audit.samples_per_sec = 0.0).await;
    let held = peer.get(&format!("/v1/leads/{l}")).await;
    assert_ne!(held.body["first_name"], "Grace");
    assert_eq!(peer.get(&format!("/v1/leads/{l}")).await.cache(), "HIT-L1");

    assert!(
        eventually(Duration::from_secs(20), || async {
            stale(&app, "lead_id", "l2").await >= 1.0
        })
        .await,
        "the auditor finds the planted entry"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            !app.in_redis(&key).await
        })
        .await,
        "and drops it"
    );
    let s = stats(&app).await;
    let findings = s["audit"]["last_findings"].as_array().unwrap().clone();
    let f = findings
        .iter()
        .find(|f| f["key"] == key.as_str())
        .unwrap_or_else(|| panic!("listed in /admin/stats: {findings:?}"));
    assert_eq!(f["tier"], "l2");
    assert_eq!(f["kind"], "lead_id");
    assert_ne!(f["cached_etag"], f["postgres_etag"]);
    let fresh = app.get(&format!("/v1/leads/{l}")).await;
    assert_eq!(fresh.body["first_name"], "Grace", "answers are right again");
    assert!(
        eventually(Duration::from_secs(5), || async {
            peer.get(&format!("/v1/leads/{l}")).await.body["first_name"] == "Grace"
        })
        .await,
        "the peer's L1 copy was dropped over the bus"
    );
}
