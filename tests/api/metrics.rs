//! `/metrics`: the families exist, buckets reach 50 µs, and promtool accepts the exposition.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::lookups::world;
use crate::spawn::spawn_app;

const FAMILIES: &[&str] = &[
    "sidecache_http_requests_total",
    "sidecache_http_request_duration_seconds",
    "sidecache_cache_lookups_total",
    "sidecache_cache_fills_total",
    "sidecache_cache_fill_duration_seconds",
    "sidecache_redis_operations_total",
    "sidecache_redis_errors_total",
    "sidecache_redis_operation_duration_seconds",
    "sidecache_postgres_queries_total",
    "sidecache_postgres_errors_total",
    "sidecache_postgres_query_duration_seconds",
    "sidecache_invalidations_total",
    "sidecache_invalidated_keys_total",
    "sidecache_coalesced_waits_total",
    "sidecache_l1_entries",
    "sidecache_l1_weighted_bytes",
    "sidecache_redis_up",
    "sidecache_postgres_up",
    "sidecache_session_operations_total",
    "sidecache_sessions_active",
    "sidecache_session_write_backs_total",
    "sidecache_state_fallbacks_total",
    "sidecache_events_published_total",
    "sidecache_events_delivered_total",
    "sidecache_sse_subscribers",
    "sidecache_sse_subscribers_cut_total",
    "sidecache_sse_subscribers_refused_total",
];

#[tokio::test]
async fn metrics_cover_every_family_and_pass_promtool() {
    let app = spawn_app().await;
    let w = world(&app).await;
    for _ in 0..2 {
        app.get(&format!("/v1/leads/{}/context", w.lead_id())).await;
    }
    app.get("/v1/leads/00000000-0000-4000-8000-000000000000")
        .await;
    app.get("/v1/calls/initiation?caller=%2B15550002000&callee=%2B15550001000")
        .await;
    let res = app
        .client
        .get(format!("{}/metrics", app.addr))
        .send()
        .await
        .unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = res.text().await.unwrap();
    for f in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {f} ")),
            "family {f} is exported"
        );
    }
    assert!(
        text.contains("le=\"0.00005\""),
        "buckets reach down to 50 µs"
    );
    assert!(text.contains("sidecache_http_requests_total{method=\"GET\",route=\"/v1/leads/{id}/context\",status=\"200\"} 2"), "matched route label");
    assert!(app.metric("sidecache_l1_entries", &[]).await >= 3.0);
    assert!(app.metric("sidecache_l1_weighted_bytes", &[]).await > 0.0);
    assert_eq!(app.metric("sidecache_redis_up", &[]).await, 1.0);
    assert_eq!(app.metric("sidecache_postgres_up", &[]).await, 1.0);
    // The second context read and the initiation's context part.
    assert_eq!(
        app.metric(
            "sidecache_cache_lookups_total",
            &[("kind", "context"), ("result", "hit_l1")]
        )
        .await,
        2.0
    );
    assert!(
        app.metric("sidecache_invalidations_total", &[("source", "write")])
            .await
            >= 4.0
    );

    // promtool is installed by .ci/run; on a developer machine without it the check is skipped,
    // but CI (CI=true) requires it.
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "promtool must be installed in CI"
        );
        eprintln!("promtool not installed; skipping `promtool check metrics`");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `sidecache_*` name in `text`, histogram series mapped to their family.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sidecache_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_that_exist() {
    // A configured limit, so that its decision series exist.
    let app = crate::spawn::spawn_app_with(|s| {
        s.rate_limits.limits.insert(
            "voice".into(),
            sidecache::config::LimitSettings {
                limit: std::num::NonZeroU32::new(10).unwrap(),
                period: std::time::Duration::from_secs(60),
                burst: None,
            },
        );
    })
    .await;
    let exposed = app.metrics_text().await;
    let families: std::collections::BTreeSet<String> =
        crate::prom::families(&exposed).map(str::to_owned).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/sidecache.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = parsed["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= panels.len(), "every panel queries something");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    for (what, text) in [("dashboard", exprs.join("\n")), ("alerts", alerts)] {
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{what} uses sidecache's metrics");
        let missing: Vec<&String> = used.iter().filter(|m| !families.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{what} uses metrics that do not exist: {missing:?}"
        );
    }
    // The dashboard covers what operators asked for.
    for needed in [
        "sidecache_cache_lookups_total",
        "sidecache_http_request_duration_seconds",
        "sidecache_redis_operations_total",
        "sidecache_postgres_queries_total",
        "sidecache_invalidation_lag_seconds",
        "sidecache_redis_breaker_state",
        "sidecache_session_operations_total",
        "sidecache_events_delivered_total",
        "sidecache_rate_limit_decisions_total",
    ] {
        assert!(dashboard.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_their_tests_fire_every_alert() {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "promtool must be installed in CI"
        );
        eprintln!("promtool not installed; skipping the alert rule checks");
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert in the rules has a test that fires it.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 10);
    for a in alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {a}\n        exp_alerts:\n          - exp_labels"
            )),
            "a test fires {a}"
        );
    }
}
