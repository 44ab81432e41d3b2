//! The scenarios, each next to its baseline: L1 hits (one key against nginx at its best and a
//! bare hyper server, keys spread over 100,000 leads against nginx serving 100,000 files, call
//! initiation against the one-key hit), L2 hits against redis-benchmark, misses against pgbench,
//! the mixed Zipf workload, and memory. Each HTTP scenario is measured closed-loop (wrk, its
//! maximum) and then open-loop at half that rate. Each starts its own sidecache and adds its
//! lines, targets and JSON to the report.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::baselines::{self, pgbench, redis_benchmark, start_bare_hyper, BARE_HYPER_CONFIG};
use crate::dataset::{enc, initiation_path, Dataset, Lead, Mixed, RandomPaths};
use crate::nginx;
use crate::open_loop::{self, get, Fixed, OpenRun, Requests};
use crate::report::{hit_ratios, route_latencies, thousands, Report};
use crate::sidecache::{drive, drive_bodies, metrics, start_sidecache};
use crate::tools::rss_bytes;
use crate::wrk::{measure, wrk, Run};
use crate::{env_u64, open_load, prom, wanted, CONNECTIONS, REDIS_PORT};

pub(crate) fn addr(url: &str) -> SocketAddr {
    let host = url.trim_start_matches("http://");
    host.split('/').next().unwrap().parse().unwrap()
}

/// Open loop at OPEN_LOAD (default 0.5) of the closed-loop maximum `max`, for WINDOW seconds.
fn open_at_half(url: &str, max: &Run, requests: Arc<dyn Requests>) -> OpenRun {
    let share = open_load();
    let run = open_loop::run(
        addr(url),
        CONNECTIONS,
        (max.rps * share).max(100.0),
        env_u64("WINDOW", 10),
        requests,
    );
    println!(
        "    open loop at {:.0} req/s: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, {} errors, {} unanswered, send lag p99 {:.3} ms",
        run.offered_rps, run.p50_ms, run.p99_ms, run.p999_ms, run.max_ms, run.errors, run.unfinished, run.send_lag_p99_ms
    );
    run
}

pub(crate) fn show(name: &str, run: &Run) {
    println!(
        "  {name}: {} req/s, p50 {:.2} p99 {:.2} ms{}",
        thousands(run.rps),
        run.p50_ms,
        run.p99_ms,
        if run.errors > 0 {
            format!(", {} errors", run.errors)
        } else {
            String::new()
        }
    );
}

/// L1: one key (against nginx at its best and bare hyper), spread keys, call initiation.
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
    println!("nginx variants, {} bytes, short windows:", body.len());
    let (best, best_nginx, best_url) = nginx::best_for(&body, plain);
    let nginx_name = "nginx at its best, one key".to_owned();
    let nginx_config = format!("{}; {}", best.config.describe(), nginx::common());
    let nginx_run = measure(&best_url, plain);
    show(&nginx_name, &nginx_run);
    let nginx_open = open_at_half(&best_url, &nginx_run, Arc::new(Fixed(get("/lead.json"))));
    report.line(
        &nginx_name,
        &nginx_config,
        Some(&nginx_run),
        Some(&nginx_open),
    );
    drop(best_nginx);

    let bare = start_bare_hyper(&body).map(|b| {
        let url = format!("http://127.0.0.1:{}/", b.port);
        let run = measure(&url, plain);
        show("bare hyper", &run);
        let open = open_at_half(&url, &run, Arc::new(Fixed(get("/"))));
        report.line(
            "bare hyper, same bytes",
            BARE_HYPER_CONFIG,
            Some(&run),
            Some(&open),
        );
        run
    });

    let hit = measure(&format!("{}{one_path}", sc.base), plain);
    show("sidecache L1 hit, one key", &hit);
    let hit_open = open_at_half(&sc.base, &hit, Arc::new(Fixed(get(one_path))));
    report.line(
        "sidecache: L1 hit, one key",
        "",
        Some(&hit),
        Some(&hit_open),
    );
    let nginx_baseline = format!("{nginx_name} ({nginx_config})");
    report.ratio_goal(
        "L1 hit, one key, c64",
        hit.rps,
        "req/s",
        &nginx_baseline,
        nginx_run.rps,
        true,
        1.1,
    );
    if let Some(bare) = &bare {
        report.ratio_goal(
            "L1 hit, one key, c64",
            hit.rps,
            "req/s",
            &format!("bare hyper ({BARE_HYPER_CONFIG})"),
            bare.rps,
            true,
            0.8,
        );
    }
    report.latency_goal(
        &format!("L1 hit, open loop at {:.0} %", open_load() * 100.0),
        &hit_open,
        1.0,
        Some(2.0),
    );
    report.json["l1_hit"] = json!({
        "sidecache": hit.json(), "sidecache_open_loop": hit_open.json(), "body_bytes": body.len(),
        "nginx": nginx_run.json(), "nginx_open_loop": nginx_open.json(), "nginx_config": nginx_config,
        "nginx_variants": best.json(), "bare_hyper": bare.as_ref().map(Run::json),
    });

    if wanted("spread") {
        print!("warming 100,000 lead-by-phone keys... ");
        std::io::stdout().flush().ok();
        let warm_started = Instant::now();
        let paths: Vec<String> = std::fs::read_to_string(spread_file)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let bodies = drive_bodies(&sc.base, paths.clone(), 8).await;
        let failed = bodies.iter().filter(|b| b.is_none()).count();
        println!(
            "{:.1}s, {failed} failed",
            warm_started.elapsed().as_secs_f64()
        );
        // nginx's analog: each lead's body, byte for byte as sidecache answered it, as a file.
        let bodies: Vec<Vec<u8>> = bodies.into_iter().map(Option::unwrap_or_default).collect();
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        println!("nginx serving the 100,000 bodies, short windows:");
        let (ngx, ngx_how, ngx_script, tried) = nginx::best_spread(&best, &bodies);
        let ngx_run = measure(&format!("http://127.0.0.1:{}/", ngx.port), &ngx_script);
        drop(ngx);
        let ngx_name = "nginx at its best, spread".to_owned();
        let ngx_config = format!(
            "{ngx_how}; {}; each lead's body as sidecache answered it ({:.1} MB in all) at a random /l/<n>/<i>.json",
            nginx::common(),
            bytes as f64 / 1e6
        );
        show(&ngx_name, &ngx_run);
        report.line(&ngx_name, &ngx_config, Some(&ngx_run), None);

        let spread_run = measure(&sc.base, spread);
        show("sidecache L1 hit, spread", &spread_run);
        let spread_open = open_at_half(
            &sc.base,
            &spread_run,
            Arc::new(RandomPaths::from_file(spread_file)),
        );
        report.line(
            "sidecache: L1 hit, spread over 100,000 leads",
            "",
            Some(&spread_run),
            Some(&spread_open),
        );
        report.ratio_goal(
            "L1 spread over 100,000 leads",
            spread_run.rps,
            "req/s",
            &format!("{ngx_name} ({ngx_config})"),
            ngx_run.rps,
            true,
            0.9,
        );
        report.json["l1_hit_spread"] = json!({
            "sidecache": spread_run.json(), "sidecache_open_loop": spread_open.json(),
            "nginx": ngx_run.json(), "nginx_name": ngx_name, "nginx_config": ngx_config, "bodies_bytes": bytes,
            "nginx_candidates": tried.iter().map(|(n, r)| json!({"config": n, "short_window": r.as_ref().map(Run::json)})).collect::<Vec<_>>(),
        });
    }
    if wanted("initiation") {
        let init_path = initiation_path(one);
        let r = reqwest::get(format!("{}{init_path}", sc.base))
            .await
            .unwrap();
        assert!(r.status().is_success());
        let init = measure(&format!("{}{init_path}", sc.base), plain);
        show("call initiation", &init);
        let init_open = open_at_half(&sc.base, &init, Arc::new(Fixed(get(&init_path))));
        report.line(
            "sidecache: call initiation, 4 parts from L1",
            "",
            Some(&init),
            Some(&init_open),
        );
        report.ratio_goal(
            "call initiation, 4 parts from L1",
            init.rps,
            "req/s",
            "sidecache L1 hit, one key (above)",
            hit.rps,
            true,
            0.8,
        );
        report.json["call_initiation"] = json!({
            "sidecache": init.json(), "sidecache_open_loop": init_open.json(), "single_l1_hit": hit.json(),
        });
    }
}

/// L2 hits: L1 off, against redis-benchmark GETs of the same value size.
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
    show("sidecache L2 hit", &l2);
    let l2_open = open_at_half(&sc.base, &l2, Arc::new(Fixed(get(one_path))));
    drop(sc);
    let (rb, rb_config) = redis_benchmark(stored.len());
    show("redis-benchmark GET", &rb);
    report.line("sidecache: L2 hit (L1 off)", "", Some(&l2), Some(&l2_open));
    let rb_name = format!("redis-benchmark GET, {} B", stored.len());
    report.line(&rb_name, &rb_config, Some(&rb), None);
    report.ratio_goal(
        "L2 hit (L1 off)",
        l2.rps,
        "req/s",
        &format!("{rb_name} ({rb_config})"),
        rb.rps,
        true,
        1.0,
    );
    report.json["l2_hit"] = json!({
        "sidecache": l2.json(), "sidecache_open_loop": l2_open.json(), "redis_benchmark": rb.json(),
        "redis_benchmark_config": rb_config, "value_bytes": stored.len(),
    });
}

/// Misses: both tiers off, against pgbench running the same SQL.
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
    show("sidecache miss", &miss);
    let miss_open = open_at_half(&sc.base, &miss, Arc::new(Fixed(get(one_path))));
    drop(sc);
    let (pg, pg_config) = pgbench(&data.db, db_url, &one.phone, &one.org).await;
    show("pgbench", &pg);
    report.line(
        "sidecache: miss (both tiers off)",
        "",
        Some(&miss),
        Some(&miss_open),
    );
    report.line(
        "pgbench, same SQL (p50 = its mean)",
        &pg_config,
        Some(&pg),
        None,
    );
    report.ratio_goal(
        "miss, both tiers off",
        miss.rps,
        "req/s",
        &format!("pgbench ({pg_config})"),
        pg.rps,
        true,
        0.6,
    );
    report.json["miss"] = json!({
        "sidecache": miss.json(), "sidecache_open_loop": miss_open.json(),
        "pgbench": {"tps": pg.rps.round(), "latency_avg_ms": pg.p50_ms}, "pgbench_config": pg_config,
    });
}

/// Mixed Zipf workload with writes: its closed-loop maximum, then open loop at half of it.
pub(crate) async fn mixed(db_url: &str, data: &Dataset, report: &mut Report) {
    let Dataset { mixed, leads, .. } = data;
    let sc = start_sidecache(db_url, "bench-mixed", &[]).await;
    wrk(&sc.base, mixed, env_u64("WARMUP", 3).max(5));
    let before = metrics(&sc.base).await;
    let run = wrk(&sc.base, mixed, env_u64("WINDOW", 10));
    let after = metrics(&sc.base).await;
    show("mixed", &run);
    let open = open_at_half(&sc.base, &run, Arc::new(Mixed::new(leads)));
    let after_open = metrics(&sc.base).await;
    report.line(
        "sidecache: mixed Zipf, every kind, 2 % writes",
        "",
        Some(&run),
        Some(&open),
    );
    report.latency_goal(
        &format!(
            "mixed Zipf, 2 % writes, open loop {:.0} %",
            open_load() * 100.0
        ),
        &open,
        5.0,
        None,
    );
    report.json["mixed"] = json!({
        "overall": run.json(),
        "open_loop": open.json(),
        "hit_ratio_by_kind": hit_ratios(&before, &after),
        "latency_by_route": route_latencies(&before, &after),
        "open_loop_hit_ratio_by_kind": hit_ratios(&after, &after_open),
    });
}

/// Instructions per request (scripts/instructions under valgrind): an L1 hit against bare hyper.
pub(crate) fn instructions(report: &mut Report) {
    let Some((rows, header)) = baselines::instructions() else {
        return;
    };
    let get = |name: &str| rows.iter().find(|(n, _)| n == name).map(|(_, v)| *v as f64);
    if let (Some(l1), Some(bare)) = (get("l1"), get("bare")) {
        report.ratio_goal(
            "L1 hit, instructions per request",
            l1,
            "instr/req",
            &format!(
                "bare hyper, same body (scripts/instructions: callgrind, user-space; {header})"
            ),
            bare,
            false,
            1.5,
        );
    }
    report.json["instructions_per_request"] = json!({"header": header, "rows": rows.iter().map(|(n, v)| json!({"path": n, "per_request": v})).collect::<Vec<_>>()});
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
            if i == per_lead.len() - 1 {
                report.ratio_goal(
                    &format!("memory at {} L1 entries", thousands(entries)),
                    rss as f64 / 1048576.0,
                    "MiB RSS",
                    &format!("1.5 × the {:.0} MiB L1 holds + 40 MiB", held / 1048576.0),
                    allowed / 1048576.0,
                    false,
                    1.0,
                );
                report.goals.last_mut().unwrap().target = "RSS ≤ 1.5× held + 40 MiB".into();
            }
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
