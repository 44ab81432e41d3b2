//! Rate limits: exact across instances, the draft's headers, and `on_redis_down`.

use std::num::NonZeroU32;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use sidecache::config::{LimitSettings, OnRedisDown, SecretUrl, Settings};

use crate::fixtures::{eventually, redis_addr};
use crate::relay::Relay;
use crate::spawn::{spawn_app_with, spawn_with_settings, test_settings};

fn with_limit(s: &mut Settings, name: &str, limit: u32, period_secs: u64) {
    s.rate_limits.limits.insert(
        name.into(),
        LimitSettings {
            limit: NonZeroU32::new(limit).unwrap(),
            period: Duration::from_secs(period_secs),
            burst: None,
        },
    );
}

#[tokio::test]
async fn concurrent_checks_across_two_instances_admit_exactly_the_limit() {
    let a = spawn_app_with(|s| with_limit(s, "voice", 25, 3600)).await;
    let b = a.spawn_peer(|_| {}).await;
    let checks = (0..120).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            app.post("/v1/rate-limits/voice/check", json!({"key": "user:1"}))
                .await
        }
    });
    let answers = join_all(checks).await;
    let allowed = answers.iter().filter(|r| r.body["allowed"] == true).count();
    assert_eq!(allowed, 25, "exactly the limit, fleet-wide");
    for r in &answers {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("ratelimit-policy"), Some("\"voice\";q=25;w=3600"));
        assert!(r.header("ratelimit").unwrap().starts_with("\"voice\";r="));
        assert_eq!(r.header("x-ratelimit-store"), Some("redis"));
        if r.body["allowed"] == false {
            assert_eq!(
                r.header("retry-after"),
                Some("144"),
                "one interval: 3600/25 s"
            );
            assert!(r.body["retry_after_ms"].as_u64().unwrap() > 143_000);
        } else {
            assert_eq!(r.header("retry-after"), None);
        }
    }
    // Another key has its own budget.
    let other = a
        .post(
            "/v1/rate-limits/voice/check",
            json!({"key": "user:2", "cost": 5}),
        )
        .await;
    assert_eq!(
        (
            other.body["allowed"].as_bool(),
            other.body["remaining"].as_u64()
        ),
        (Some(true), Some(20))
    );
    assert_eq!(
        a.metric(
            "sidecache_rate_limit_decisions_total",
            &[("limit", "voice"), ("outcome", "allowed")]
        )
        .await
            + b.metric(
                "sidecache_rate_limit_decisions_total",
                &[("limit", "voice"), ("outcome", "allowed")]
            )
            .await,
        26.0
    );
}

async fn down_with(policy: OnRedisDown) -> (Relay, crate::spawn::TestApp) {
    let relay = Relay::start(redis_addr()).await;
    let mut s = test_settings();
    s.redis.url = SecretUrl::new(relay.redis_url());
    s.redis.timeout = Duration::from_millis(200);
    s.rate_limits.on_redis_down = policy;
    with_limit(&mut s, "l", 3, 60);
    let app = spawn_with_settings(s).await;
    relay.cut();
    (relay, app)
}

#[tokio::test]
async fn with_redis_down_the_policy_decides() {
    let (relay, app) = down_with(OnRedisDown::Local).await;
    let mut allowed = 0;
    for _ in 0..5 {
        let r = app
            .post("/v1/rate-limits/l/check", json!({"key": "k"}))
            .await;
        assert_eq!(r.header("x-ratelimit-store"), Some("memory"));
        allowed += usize::from(r.body["allowed"] == true);
    }
    assert_eq!(allowed, 3, "counted in this instance's memory");
    relay.restore();
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.post("/v1/rate-limits/l/check", json!({"key": "k2"}))
                .await
                .header("x-ratelimit-store")
                == Some("redis")
        })
        .await
    );

    for (policy, want) in [(OnRedisDown::Allow, true), (OnRedisDown::Deny, false)] {
        let (_relay, app) = down_with(policy).await;
        for _ in 0..4 {
            let r = app
                .post("/v1/rate-limits/l/check", json!({"key": "k"}))
                .await;
            assert_eq!(r.body["allowed"], want, "{policy:?}");
        }
    }
}
