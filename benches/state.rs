//! The shared-call-state benchmark (issue 13): sessions, events and rate limits next to Redis
//! doing the bare equivalent, in one run on this machine.
//!
//! `cargo bench --bench state` starts its own Redis (port 6391) and sidecache (the release
//! binary) pinned to core 0, and drives them from core 1 with 64 connections (wrk for HTTP,
//! redis-benchmark for Redis; this process for events):
//! - session GET and PATCH against redis-benchmark GET and SET of a value the size of the
//!   session's stored data, 64 clients (target ≥ 0.8×);
//! - rate-limit checks against redis-benchmark EVALSHA of the same GCRA script, keys spread
//!   alike (target ≥ 0.8×);
//! - event delivery: a second sidecache instance, one SSE subscriber on it, events posted to the
//!   first at a fixed 1,000 a second (open loop); latency from each POST's scheduled time to its
//!   arrival on the subscriber, p50/p99 (target p99 ≤ 5 ms).
//!
//! Environment: WINDOW (seconds per measured window, default 10), WARMUP (default 3). Writes
//! `target/bench/state.json`.

#[allow(dead_code)]
#[path = "load/sidecache.rs"]
mod sidecache;
#[allow(dead_code)]
#[path = "load/tools.rs"]
mod tools;
#[allow(dead_code)]
#[path = "load/wrk.rs"]
mod wrk;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{json, Value};

const SERVER_CORE: &str = "0";
const CLIENT_CORE: &str = "1";
const CONNECTIONS: u32 = 64;
const REDIS_PORT: u16 = 6391;
/// Sessions the PATCH scenario spreads over (no two connections on one session for long).
const SESSIONS: u32 = 1000;
/// Keys the rate-limit scenario spreads over.
const RL_KEYS: u32 = 10_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let _ = Command::new("taskset")
        .args(["-cp", CLIENT_CORE, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    tools::ensure_tools();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

/// One row: a figure, its baseline, and the target.
struct Row {
    what: &'static str,
    figure: String,
    baseline: String,
    ratio: Option<f64>,
    target: &'static str,
    met: bool,
    config: String,
}

/// redis-benchmark of one command (`-t` test name or a raw command), its rate and the command
/// line. The faster of one and two client threads.
fn redis_benchmark(what: &[&str], value_size: usize, keyspace: u32) -> (f64, String) {
    let go = |n: u64, threads: u32| -> (f64, Vec<String>) {
        let mut args: Vec<String> = [
            "-p",
            &REDIS_PORT.to_string(),
            "-c",
            &CONNECTIONS.to_string(),
            "-n",
            &n.to_string(),
            "-d",
            &value_size.to_string(),
            "-r",
            &keyspace.to_string(),
            "--threads",
            &threads.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.push("--csv".into());
        args.extend(what.iter().map(|s| s.to_string()));
        let out = tools::pinned(CLIENT_CORE, "redis-benchmark")
            .args(&args)
            .output()
            .expect("redis-benchmark runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let row = text
            .lines()
            .find(|l| l.starts_with('"') && !l.starts_with("\"test\""))
            .unwrap_or_else(|| {
                panic!(
                    "redis-benchmark said: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let rps: f64 = row
            .split(',')
            .nth(1)
            .and_then(|x| x.trim_matches('"').parse().ok())
            .unwrap_or(0.0);
        (rps, args)
    };
    let probes = [1, 2].map(|t| (t, go(100_000, t).0));
    let (threads, probe) = probes
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let n = ((probe * env_u64("WINDOW", 10) as f64) as u64).max(100_000);
    let (rps, args) = go(n, threads);
    let shown: Vec<String> = args.into_iter().filter(|a| a != "--csv").collect();
    (rps, format!("redis-benchmark {}", shown.join(" ")))
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &REDIS_PORT.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn run() {
    let started = Instant::now();
    let server = std::env::var("SIDECACHE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(s, _)| s)
        .to_owned();
    let db_url = format!("{server}/sidecache_state_bench");
    let migrated = Command::new(env!("CARGO_BIN_EXE_sidecache"))
        .arg("migrate")
        .env("DATABASE_URL", &db_url)
        .env("SIDECACHE__LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir())
        .status()
        .is_ok_and(|s| s.success());
    assert!(migrated, "sidecache migrate");
    let _redis = tools::start_redis();
    let limits = [
        ("SIDECACHE__RATE_LIMITS__LIMITS__BENCH__LIMIT", "1000000000"),
        ("SIDECACHE__RATE_LIMITS__LIMITS__BENCH__PERIOD_SECS", "1"),
    ];
    let a = sidecache::start_sidecache(&db_url, "state-bench", &limits).await;
    let client = reqwest::Client::new();
    let mut rows = Vec::new();

    // Sessions: a typical call state (caller, agent, a few turns), ~400 bytes of data.
    let data = json!({
        "caller": "+15550200001", "callee": "+15550100001", "agent_id": "agent_7f3a9c21",
        "platform": "elevenlabs", "language": "en-US", "human_takeover": false,
        "turns": [
            {"role": "agent", "text": "Hi Ada, thanks for calling Acme Dental. How can I help?"},
            {"role": "user", "text": "I would like to move my cleaning appointment to Friday."},
        ],
        "slots": {"appointment_id": "apt_1029", "preferred_day": "friday"},
    });
    for i in 0..SESSIONS {
        let r = client
            .put(format!("{}/v1/sessions/bench:{i}", a.base))
            .json(&json!({"data": data}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{}",
            r.text().await.unwrap_or_default()
        );
    }
    let stored = redis_cli(&["HGET", "state-bench:state:v1:session:bench:0", "d"]).len();
    let session_doc = client
        .get(format!("{}/v1/sessions/bench:0", a.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    println!("sessions: {SESSIONS} of {stored} bytes of data ({session_doc}-byte answers)");

    let get_lua = format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format('GET', '/v1/sessions/bench:' .. (counter % {SESSIONS}))\nend"
    );
    let get = wrk::measure(&a.base, &wrk::write_script("state-session-get", &get_lua));
    let patch_lua = format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format('PATCH', '/v1/sessions/bench:' .. (math.random(0, {}) ), {{['Content-Type'] = 'application/merge-patch+json'}}, '{{\"slots\": {{\"n\": ' .. counter .. '}}}}')\nend",
        SESSIONS - 1
    );
    let patch = wrk::measure(
        &a.base,
        &wrk::write_script("state-session-patch", &patch_lua),
    );
    let (r_get, get_cmd) = redis_benchmark(&["-t", "get"], stored, SESSIONS);
    let (r_set, set_cmd) = redis_benchmark(&["-t", "set"], stored, SESSIONS);
    println!(
        "  session GET {:.0}/s (errors {}), redis GET {r_get:.0}/s",
        get.rps, get.errors
    );
    println!(
        "  session PATCH {:.0}/s (errors {}), redis SET {r_set:.0}/s",
        patch.rps, patch.errors
    );
    let session_cfg = format!(
        "sidecache: wrk -t2 -c{CONNECTIONS}, {SESSIONS} sessions of {stored} B, one sidecache and redis-server on the server core"
    );
    rows.push(Row {
        what: "session GET",
        figure: format!("{:.0} req/s (p99 {:.2} ms)", get.rps, get.p99_ms),
        baseline: format!("{r_get:.0} GET/s"),
        ratio: Some(get.rps / r_get),
        target: "≥ 0.8×",
        met: get.rps >= 0.8 * r_get && get.errors == 0,
        config: format!("{session_cfg}; baseline: {get_cmd}"),
    });
    rows.push(Row {
        what: "session PATCH (merge)",
        figure: format!("{:.0} req/s (p99 {:.2} ms)", patch.rps, patch.p99_ms),
        baseline: format!("{r_set:.0} SET/s"),
        ratio: Some(patch.rps / r_set),
        target: "≥ 0.8×",
        met: patch.rps >= 0.8 * r_set && patch.errors == 0,
        config: format!("{session_cfg}; PATCH = one script (version check and write) on the copy this instance last wrote, HMGET first only when another instance moved it; baseline: {set_cmd}"),
    });

    // Rate limits: the same script, bare.
    let rl_lua = format!(
        "request = function()\n  return wrk.format('POST', '/v1/rate-limits/bench/check', {{['Content-Type'] = 'application/json'}}, '{{\"key\": \"k:' .. math.random(0, {}) .. '\"}}')\nend",
        RL_KEYS - 1
    );
    let rl = wrk::measure(&a.base, &wrk::write_script("state-rate-limit", &rl_lua));
    let sha = redis_cli(&["SCRIPT", "LOAD", ::sidecache::sessions::GCRA_LUA]);
    let (r_eval, eval_cmd) = redis_benchmark(
        &[
            "EVALSHA",
            &sha,
            "1",
            "rl:bench:k:__rand_int__",
            "1",
            "1000000000",
            "1",
        ],
        8,
        RL_KEYS,
    );
    println!(
        "  rate-limit checks {:.0}/s, redis EVALSHA {r_eval:.0}/s",
        rl.rps
    );
    rows.push(Row {
        what: "rate-limit check",
        figure: format!("{:.0} checks/s (p99 {:.2} ms)", rl.rps, rl.p99_ms),
        baseline: format!("{r_eval:.0} EVALSHA/s"),
        ratio: Some(rl.rps / r_eval),
        target: "≥ 0.8×",
        met: rl.rps >= 0.8 * r_eval && rl.errors == 0,
        config: format!("sidecache: wrk -t2 -c{CONNECTIONS}, POST /v1/rate-limits/bench/check over {RL_KEYS} keys; baseline: {eval_cmd} (the GCRA script sidecache runs)"),
    });

    // Events: POST on A, one SSE subscriber on B.
    let b = sidecache::start_sidecache(&db_url, "state-bench", &limits).await;
    let (p50, p99, max, n, lost) = event_latency(&client, &a.base, &b.base).await;
    println!(
        "  events: {n} at 1000/s, p50 {p50:.2} p99 {p99:.2} max {max:.2} ms, {lost} not delivered"
    );
    rows.push(Row {
        what: "event delivery, POST on A to SSE on B",
        figure: format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
        baseline: "—".into(),
        ratio: None,
        target: "p99 ≤ 5 ms",
        met: p99 <= 5.0 && lost == 0,
        config: format!("1,000 events/s open loop for the window ({n} events), 64-byte data, from each POST's scheduled time to its arrival on a subscriber of the other instance; both instances and Redis on the server core"),
    });

    println!();
    println!(
        "{:<40} {:<34} {:<18} {:>6}  {:<12} {:<6}  configuration",
        "target row", "figure", "baseline", "ratio", "target", "met"
    );
    for r in &rows {
        println!(
            "{:<40} {:<34} {:<18} {:>6}  {:<12} {:<6}  {}",
            r.what,
            r.figure,
            r.baseline,
            r.ratio.map_or(String::new(), |x| format!("{x:.2}")),
            r.target,
            if r.met { "met" } else { "MISSED" },
            r.config
        );
    }
    let out = json!({
        "rows": rows.iter().map(|r| json!({"what": r.what, "figure": r.figure, "baseline": r.baseline, "ratio": r.ratio, "target": r.target, "met": r.met, "configuration": r.config})).collect::<Vec<Value>>(),
        "seconds": started.elapsed().as_secs(),
    });
    let path = tools::bench_dir().join("state.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    println!(
        "\nwritten to {} ({}s in all)",
        path.display(),
        started.elapsed().as_secs()
    );
    drop((a, b));
    let _ = Command::new(env!("CARGO_BIN_EXE_sidecache"))
        .args(["check-config"])
        .stdout(Stdio::null())
        .status();
    if let Ok(admin) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{server}/postgres"))
        .await
    {
        let _ = sqlx::query("DROP DATABASE IF EXISTS sidecache_state_bench WITH (FORCE)")
            .execute(&admin)
            .await;
    }
}

/// Posts events to `a` at 1,000 a second for the window (each on its schedule, not after the
/// previous answer) while one SSE subscriber reads them on `b`; the latency of each from its
/// scheduled send time to its arrival. (p50, p99, max in ms, events, undelivered).
async fn event_latency(
    client: &reqwest::Client,
    a: &str,
    b: &str,
) -> (f64, f64, f64, usize, usize) {
    let session = format!("{a}/v1/sessions/events-bench");
    client
        .put(&session)
        .json(&json!({"data": {}}))
        .send()
        .await
        .unwrap();
    let res = client
        .get(format!("{b}/v1/sessions/events-bench/events?from=now"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let origin = Instant::now();
    let total = (1000 * (env_u64("WARMUP", 3) + env_u64("WINDOW", 10))) as usize;
    let warm = (1000 * env_u64("WARMUP", 3)) as usize;
    let reader = tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        let mut seen: Vec<(usize, f64)> = Vec::with_capacity(total);
        let deadline = tokio::time::sleep(Duration::from_secs(
            env_u64("WARMUP", 3) + env_u64("WINDOW", 10) + 5,
        ));
        tokio::pin!(deadline);
        while seen.len() < total {
            let chunk = tokio::select! {
                c = body.next() => match c { Some(Ok(c)) => c, _ => break },
                _ = &mut deadline => break,
            };
            let now = origin.elapsed().as_secs_f64() * 1000.0;
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                    let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if let (Some(i), Some(at)) = (v["data"]["i"].as_u64(), v["data"]["t"].as_f64())
                    {
                        seen.push((i as usize, now - at));
                    }
                }
            }
        }
        seen
    });
    let url = format!("{session}/events");
    let posts = futures_util::stream::iter(0..total)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let at = Duration::from_micros(1000 * i as u64);
                tokio::time::sleep_until(tokio::time::Instant::from_std(origin + at)).await;
                let t = at.as_secs_f64() * 1000.0;
                let _ = client
                    .post(&url)
                    .json(&json!({"type": "line", "data": {"i": i, "t": t, "pad": "0123456789abcdef0123456789"}}))
                    .send()
                    .await;
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<()>>();
    posts.await;
    let seen = reader.await.unwrap();
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for (i, ms) in &seen {
        if *i >= warm {
            let _ = hist.record((ms * 1000.0).max(1.0) as u64);
        }
    }
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    let measured = total - warm;
    let got = seen.iter().filter(|(i, _)| *i >= warm).count();
    (
        q(0.5),
        q(0.99),
        hist.max() as f64 / 1000.0,
        measured,
        measured - got,
    )
}
