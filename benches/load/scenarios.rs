//! The scenarios, each next to its baseline: L1 hits (one key, spread keys, call initiation),
//! L2 hits, misses, the mixed Zipf workload, and memory. Each starts its own sidecache, adds its
//! rows to the table and its figures to the JSON report.

use std::io::Write as _;
use std::time::Instant;

use serde_json::json;

use crate::baselines::{pgbench, redis_benchmark, start_nginx};
use crate::dataset::{enc, Dataset, Lead};
use crate::report::{hit_ratios, route_latencies, Report};
use crate::sidecache::{drive, metrics, start_sidecache};
use crate::tools::rss_bytes;
use crate::wrk::{measure, wrk};
use crate::{env_u64, prom, wanted, REDIS_PORT};

/// 1-2, 5. L1: one key, spread keys, call initiation.
pub(crate) async fn l1(db_url: &str, data: &Dataset, report: &mut Report) {
    let Dataset {
        one_path,
        spread_file,
        plain,
        spread,
        ..
    } = data;
    let one = data.one();
    let sc = start_sidecache(db_url, "bench-l1", &[]).await;
    let body = reqwest::get(format!("{}{one_path}", sc.base))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_nginx, nginx_url) = start_nginx(&body);
    let nginx = measure(&nginx_url, plain);
    let hit = measure(&format!("{}{one_path}", sc.base), plain);
    report.table.push((
        "L1 hit (one lead-by-phone key)".into(),
        hit.clone(),
        Some(("nginx, same bytes, 1 worker".into(), nginx.clone())),
    ));
    report.json["l1_hit"] =
        json!({"sidecache": hit.json(), "nginx": nginx.json(), "body_bytes": body.len()});
    if wanted("spread") {
        print!("warming 100,000 lead-by-phone keys... ");
        std::io::stdout().flush().ok();
        let warm_started = Instant::now();
        let paths: Vec<String> = std::fs::read_to_string(spread_file)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let failed = drive(&sc.base, paths, 8).await;
        println!(
            "{:.1}s, {failed} failed",
            warm_started.elapsed().as_secs_f64()
        );
        let spread_run = measure(&sc.base, spread);
        report.table.push((
            "L1 hit, spread over 100,000 leads".into(),
            spread_run.clone(),
            Some(("nginx, same bytes, 1 worker".into(), nginx.clone())),
        ));
        report.json["l1_hit_spread"] =
            json!({"sidecache": spread_run.json(), "nginx": nginx.json()});
    }
    if wanted("initiation") {
        let init_path = format!(
            "/v1/calls/initiation?caller={}&callee={}&channel=voice",
            enc(&one.phone),
            enc(&one.org_phone)
        );
        let r = reqwest::get(format!("{}{init_path}", sc.base))
            .await
            .unwrap();
        assert!(r.status().is_success());
        let init = measure(&format!("{}{init_path}", sc.base), plain);
        report.table.push((
            "call initiation (4 parts, all L1)".into(),
            init.clone(),
            Some(("L1 hit (one key) above".into(), hit.clone())),
        ));
        report.json["call_initiation"] =
            json!({"sidecache": init.json(), "single_l1_hit": hit.json()});
    }
}

/// 3. L2 hits: L1 off.
pub(crate) async fn l2(db_url: &str, data: &Dataset, report: &mut Report) {
    let Dataset {
        one_path, plain, ..
    } = data;
    let one = data.one();
    let sc = start_sidecache(
        db_url,
        "bench-l2",
        &[("SIDECACHE__CACHE__L1_ENABLED", "false")],
    )
    .await;
    reqwest::get(format!("{}{one_path}", sc.base))
        .await
        .unwrap();
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:{REDIS_PORT}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(format!("bench-l2:v1:lead:phone:{}:{}", one.phone, one.org))
        .query_async(&mut redis)
        .await
        .unwrap_or_default();
    assert!(!stored.is_empty(), "the value is in Redis");
    let l2 = measure(&format!("{}{one_path}", sc.base), plain);
    let rb = redis_benchmark(stored.len());
    report.table.push((
        "L2 hit (L1 off)".into(),
        l2.clone(),
        Some((
            format!("redis-benchmark GET, {} B", stored.len()),
            rb.clone(),
        )),
    ));
    report.json["l2_hit"] =
        json!({"sidecache": l2.json(), "redis_benchmark": rb.json(), "value_bytes": stored.len()});
}

/// 4. Misses: both tiers off.
pub(crate) async fn miss(db_url: &str, data: &Dataset, report: &mut Report) {
    let Dataset {
        one_path, plain, ..
    } = data;
    let one = data.one();
    let sc = start_sidecache(
        db_url,
        "bench-miss",
        &[
            ("SIDECACHE__CACHE__L1_ENABLED", "false"),
            ("REDIS_ENABLED", "false"),
        ],
    )
    .await;
    let miss = measure(&format!("{}{one_path}", sc.base), plain);
    drop(sc);
    let pg = pgbench(db_url, &one.phone, &one.org);
    report.table.push((
        "miss (both tiers off)".into(),
        miss.clone(),
        Some(("pgbench, same SQL (p50 = mean)".into(), pg.clone())),
    ));
    report.json["miss"] = json!({"sidecache": miss.json(), "pgbench": {"tps": pg.rps.round(), "latency_avg_ms": pg.p50_ms}});
}

/// 6. Mixed Zipf workload with writes.
pub(crate) async fn mixed(db_url: &str, data: &Dataset, report: &mut Report) {
    let Dataset { mixed, .. } = data;
    let sc = start_sidecache(db_url, "bench-mixed", &[]).await;
    wrk(&sc.base, mixed, env_u64("WARMUP", 3).max(5));
    let before = metrics(&sc.base).await;
    let run = wrk(&sc.base, mixed, env_u64("WINDOW", 10));
    let after = metrics(&sc.base).await;
    report.table.push((
        "mixed: Zipf, every kind, 2 % writes".into(),
        run.clone(),
        None,
    ));
    report.json["mixed"] = json!({
        "overall": run.json(),
        "hit_ratio_by_kind": hit_ratios(&before, &after),
        "latency_by_route": route_latencies(&before, &after),
    });
}

/// Memory: RSS against the bytes L1 holds.
pub(crate) async fn memory(db_url: &str, data: &Dataset, report: &mut Report) {
    let Dataset { leads, .. } = data;
    let sc = start_sidecache(
        db_url,
        "bench-mem",
        &[
            ("SIDECACHE__CACHE__L1_MAX_BYTES", "2147483648"),
            ("SIDECACHE__COHERENCE__LISTENER", "false"),
        ],
    )
    .await;
    let idle = rss_bytes(sc.pid());
    let mut steps = Vec::new();
    let per_lead: Vec<fn(&Lead) -> String> = vec![
        |l| format!("/v1/leads/{}", l.id),
        |l| {
            format!(
                "/v1/leads/by-phone/{}?organization_id={}",
                enc(&l.phone),
                l.org
            )
        },
        |l| format!("/v1/leads/{}/summary", l.id),
        |l| format!("/v1/leads/{}/greeting?channel=voice", l.id),
        |l| format!("/v1/leads/{}/greeting?channel=sms", l.id),
        |l| format!("/v1/leads/{}/greeting?channel=email", l.id),
        |l| format!("/v1/leads/{}/greeting?channel=chat", l.id),
        |l| format!("/v1/leads/{}/greeting?channel=whatsapp", l.id),
        |l| format!("/v1/leads/{}/history?limit=1&offset=0", l.id),
        |l| format!("/v1/leads/{}/history?limit=1&offset=1", l.id),
    ];
    for (i, make) in per_lead.iter().enumerate() {
        let t = Instant::now();
        let failed = drive(&sc.base, leads.iter().map(make).collect(), 8).await;
        assert_eq!(failed, 0, "warming step {i} failed");
        if i == 0 || i == per_lead.len() - 1 {
            let m = metrics(&sc.base).await;
            let (entries, held) = (
                prom::gauge(&m, "sidecache_l1_entries"),
                prom::gauge(&m, "sidecache_l1_weighted_bytes"),
            );
            let rss = rss_bytes(sc.pid());
            let allowed = 1.5 * held + 40.0 * 1024.0 * 1024.0;
            println!(
                "  L1 {entries:.0} entries, {:.1} MiB held; RSS {:.1} MiB (goal <= {:.1} MiB), warmed in {:.1}s",
                held / 1048576.0,
                rss as f64 / 1048576.0,
                allowed / 1048576.0,
                t.elapsed().as_secs_f64()
            );
            steps.push(json!({
                "l1_entries": entries, "l1_bytes": held, "rss_bytes": rss,
                "rss_over_goal": (rss as f64 / allowed * 100.0).round() / 100.0,
                "rss_over_l1_bytes": (rss as f64 / held * 100.0).round() / 100.0,
            }));
        }
    }
    report.json["memory"] =
        json!({"idle_rss_bytes": idle, "l1_bound_bytes": 2147483648u64, "steps": steps});
}
