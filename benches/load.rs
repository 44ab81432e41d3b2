//! The load benchmark: sidecache next to what a user could run instead, on this machine, in one
//! run, so that every figure is a ratio to a baseline measured in the same harness.
//!
//! `cargo bench --bench load` does everything: installs wrk and nginx from Debian's packages if
//! they are missing, seeds a fresh database (100 organizations, 100,000 leads, 5 conversations
//! each), starts its own Redis, and starts sidecache (the release binary cargo built for this
//! bench) as a child process. The server under test (sidecache, nginx, Redis) is pinned to core
//! 0 with `taskset`, the load generator (wrk, redis-benchmark, pgbench, this process) to core 1.
//! Postgres is the machine's own and is not pinned (the miss scenario and its pgbench baseline
//! share it alike). 64 connections, a warm-up before each measured window.
//!
//! Scenarios, each next to its baseline: one warm lead-by-phone key (vs nginx serving the same
//! bytes as a static file), keys spread over all 100,000 leads (same baseline), L2 hits with L1
//! off (vs redis-benchmark GET of the same value size), misses with both tiers off (vs pgbench
//! running the same SQL), call initiation (four parts from L1), and a mixed Zipf workload over
//! every kind with 2 % writes (hit ratio per tier and p50/p99 per kind from sidecache's own
//! metrics). Then memory: RSS after warming 100,000 and 1,000,000 L1 entries.
//!
//! Prints one table and writes the same figures to `target/bench/load.json`.
//! Environment: WINDOW (seconds per measured window, default 10), WARMUP (default 3),
//! MEMORY=0 to skip the memory steps, SIDECACHE_TEST_DATABASE_URL for another Postgres.

//!
//! This file is the driver; the parts live in `benches/load/`: `tools` (installing and pinning
//! processes), `sidecache` (the server under test), `wrk` (measuring), `baselines`, `dataset`
//! (seeding and the wrk scripts), `scenarios`, and `report`. Metrics are read with the tests'
//! Prometheus reader, `tests/api/prom.rs`.

#[path = "load/baselines.rs"]
mod baselines;
#[path = "load/dataset.rs"]
mod dataset;
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

/// SCENARIOS=l1,spread,initiation,l2,miss,mixed,instructions,memory picks some (default: all;
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
