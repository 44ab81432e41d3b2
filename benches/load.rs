//! The load benchmark: sidecache next to what a user could run instead, and next to the limit of
//! its own stack, on this machine, in one run, so that every figure is a ratio to a baseline
//! measured in the same harness, printed with the target it is held to.
//!
//! `cargo bench --bench load` does everything: installs wrk and nginx from Debian's packages if
//! they are missing, seeds a fresh database (100 organizations, 100,000 leads, 5 conversations
//! each), starts its own Redis (port 6390), and starts sidecache (the release binary cargo built
//! for this bench) as a child process. The server under test (sidecache, nginx, bare hyper,
//! Redis) is pinned to core 0 with `taskset`, the load generator (wrk, redis-benchmark, pgbench,
//! this process and its open-loop generator) to core 1. Postgres is the machine's own and is not
//! pinned (the miss scenario and its pgbench baseline share it alike). 64 connections
//! everywhere, a warm-up before each measured window.
//!
//! Each HTTP scenario is measured twice: closed-loop with wrk (its maximum, req/s), then
//! open-loop at half that rate with this bench's own generator (`open_loop`: a fixed request
//! rate, latency from each request's scheduled time, p50/p99/p99.9), so that queueing at a
//! realistic load is seen, not hidden.
//!
//! Scenarios and baselines, all in the same run, same pinning, same body bytes:
//! - L1 hit, one lead-by-phone key: against nginx at its best (eight configurations tried for a
//!   short window each: sendfile on/off, tcp_nopush, open_file_cache, master_process on/off, the
//!   body from memory with `return 200`; the fastest measured and named) and against a bare hyper
//!   server serving the same bytes from memory (`examples/bare_hyper`, built by the bench);
//! - L1 hits spread over 100,000 leads: against nginx serving 100,000 files, each lead's body as
//!   sidecache answered it, with the best file configuration and an `open_file_cache` for all;
//! - call initiation (four parts from L1): against the one-key L1 hit;
//! - L2 hits (L1 off): against redis-benchmark GET of the same value size, 64 clients;
//! - misses (both tiers off): against pgbench running the same SQL with the same parameters,
//!   prepared, 64 clients;
//! - a mixed Zipf workload over every kind with 2 % writes, closed-loop and open-loop (hit ratio
//!   per tier and p50/p99 per route from sidecache's own metrics);
//! - call-start webhooks per platform, every part in L1, each request a distinct call start:
//!   against call initiation on the same instance (`edge`);
//! - the proxy pass-through: against the same upstream (bare hyper) reached directly and
//!   through nginx as a reverse proxy at its best, closed-loop and at one open-loop rate;
//! - instructions per request (`scripts/instructions`, callgrind): an L1 hit against bare hyper;
//! - memory: RSS after warming 100,000 and 1,000,000 L1 entries.
//!
//! Prints every measurement with each baseline's configuration, then one row per target of
//! issue 12 (figure, baseline, ratio, target, met or MISSED), and writes the same to
//! `target/bench/load.json`. Environment: WINDOW (seconds per measured window, default 10),
//! WARMUP (default 3), SCENARIOS (a comma-separated subset of l1, spread, initiation, l2, miss,
//! mixed, webhooks, proxy, instructions, memory; default all), MEMORY=0 and INSTRUCTIONS=0 to skip those steps,
//! OPEN_LOAD (the open-loop rate as a share of the closed-loop maximum, default 0.5),
//! SIDECACHE_TEST_DATABASE_URL for another Postgres.
//!
//! This file is the driver; the parts live in `benches/load/`: `tools` (installing and pinning
//! processes), `sidecache` (the server under test), `wrk` (closed-loop measuring), `open_loop`
//! (the open-loop generator), `nginx` (its variants), `baselines` (bare hyper, redis-benchmark,
//! pgbench, instruction counts), `dataset` (seeding, the wrk scripts and their open-loop twins),
//! `scenarios`, and `report`. Metrics are read with the tests' Prometheus reader,
//! `tests/api/prom.rs`.

#[path = "load/baselines.rs"]
mod baselines;
#[path = "load/dataset.rs"]
mod dataset;
#[path = "load/edge.rs"]
mod edge;
#[path = "load/nginx.rs"]
mod nginx;
#[path = "load/open_loop.rs"]
mod open_loop;
#[path = "../tests/api/prom.rs"]
mod prom;
#[path = "load/report.rs"]
mod report;
#[path = "load/scenarios.rs"]
mod scenarios;
#[path = "load/sidecache.rs"]
mod sidecache;
#[path = "load/tools.rs"]
mod tools;
#[path = "load/wrk.rs"]
mod wrk;

use std::process::{Command, Stdio};
use std::time::Instant;

use report::Report;

const SERVER_CORE: &str = "0";
const CLIENT_CORE: &str = "1";
const CONNECTIONS: u32 = 64;
const REDIS_PORT: u16 = 6390;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The open-loop rate as a share of the closed-loop maximum: OPEN_LOAD, default 0.5.
fn open_load() -> f64 {
    std::env::var("OPEN_LOAD")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(0.5)
}

/// SCENARIOS=l1,spread,initiation,l2,miss,mixed,webhooks,proxy,instructions,memory picks some (default: all;
/// MEMORY=0 and INSTRUCTIONS=0 leave those out).
fn wanted(name: &str) -> bool {
    match std::env::var("SCENARIOS") {
        Ok(list) if !list.is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => match name {
            "memory" => env_u64("MEMORY", 1) == 1,
            "instructions" => env_u64("INSTRUCTIONS", 1) == 1,
            _ => true,
        },
    }
}

fn main() {
    // This process drives load too: keep it on the client core.
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

async fn run() {
    let started = Instant::now();
    let base = std::env::var("SIDECACHE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(s, _)| s)
        .to_owned();
    let db_name = "sidecache_load_bench";
    let db_url = format!("{server}/{db_name}");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{server}/postgres"))
        .await
        .expect("postgres answers");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    let _redis = tools::start_redis();
    let data = dataset::prepare(&db_url).await;

    let mut report = Report::new();
    if wanted("l1") || wanted("spread") || wanted("initiation") {
        scenarios::l1(&db_url, &data, &mut report).await;
    }
    if wanted("l2") {
        scenarios::l2(&db_url, &data, &mut report).await;
    }
    if wanted("miss") {
        scenarios::miss(&db_url, &data, &mut report).await;
    }
    if wanted("mixed") {
        scenarios::mixed(&db_url, &data, &mut report).await;
    }
    if wanted("webhooks") {
        edge::webhooks(&db_url, &data, &mut report).await;
    }
    if wanted("proxy") {
        edge::proxy(&db_url, &data, &mut report).await;
    }
    if wanted("instructions") {
        scenarios::instructions(&mut report);
    }
    if wanted("memory") {
        scenarios::memory(&db_url, &data, &mut report).await;
    }

    report.print();
    report.write(started);
    data.db.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await;
}
