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

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

/// SCENARIOS=l1,spread,initiation,l2,miss,mixed,memory picks some (default: all).
fn wanted(name: &str) -> bool {
    match std::env::var("SCENARIOS") {
        Ok(list) if !list.is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => name != "memory" || env_u64("MEMORY", 1) == 1,
    }
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs what the benchmark drives, from Debian's packages, if it is missing.
fn ensure_tools() {
    let missing: Vec<&str> = [
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("pgbench", "postgresql-client"),
        ("taskset", "util-linux"),
    ]
    .into_iter()
    .filter(|(bin, _)| !have(bin))
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return;
    }
    println!("installing {missing:?} from Debian's packages");
    // A policy-rc.d that says no keeps the packages from starting their own services (nginx on
    // port 80, a second Redis): the benchmark starts what it needs itself.
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!(
                "own=0; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own=1; fi; \
                 apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {}; \
                 status=$?; if [ $own = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $status",
                missing.join(" ")
            ),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install {missing:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bench_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pinned(core: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", core, program]);
    c
}

// ---- sidecache --------------------------------------------------------------------------------

struct Sidecache {
    proc: Proc,
    base: String,
}

impl Sidecache {
    fn pid(&self) -> u32 {
        self.proc.0.id()
    }
}

async fn start_sidecache(db_url: &str, namespace: &str, extra: &[(&str, &str)]) -> Sidecache {
    let port = free_port();
    let mut cmd = pinned(SERVER_CORE, env!("CARGO_BIN_EXE_sidecache"));
    cmd.args(["serve", "--no-migrate"])
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", format!("redis://127.0.0.1:{REDIS_PORT}"))
        .env("SIDECACHE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SIDECACHE__REDIS__NAMESPACE", namespace)
        .env("SIDECACHE__LOG__LEVEL", "warn")
        .env("SIDECACHE__SERVER__MAX_CONCURRENCY", "100000")
        // A warm pool, as a sidecar in steady state has: a burst of misses that had to open
        // connections (TLS handshake, auth) on the one pinned core would spend the 100 ms
        // acquire budget doing so.
        .env("SIDECACHE__POSTGRES__MIN_CONNECTIONS", "16")
        .current_dir(std::env::temp_dir())
        .stdout(
            std::fs::File::create(bench_dir().join(format!("sidecache-{namespace}.log")))
                .expect("log file"),
        );
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let proc = Proc(cmd.spawn().expect("sidecache starts"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                // Let the pool open its connections before load arrives.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Sidecache { proc, base };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("sidecache did not become ready");
}

// ---- wrk --------------------------------------------------------------------------------------

/// The figures of one measured window.
#[derive(Debug, Clone, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
}

impl Run {
    fn json(&self) -> Value {
        json!({"rps": self.rps.round(), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms, "errors": self.errors})
    }
}

const DONE_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

fn write_script(name: &str, body: &str) -> PathBuf {
    let p = bench_dir().join(format!("{name}.lua"));
    std::fs::write(&p, format!("{body}\n{DONE_LUA}")).unwrap();
    p
}

fn wrk(url: &str, script: &Path, seconds: u64) -> Run {
    let out = pinned(CLIENT_CORE, "wrk")
        .args([
            "-t2",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .unwrap_or_else(|| panic!("wrk said: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    Run {
        rps: v[0] / (v[1] / 1e6),
        errors: (v[2] + v[3]) as u64,
        p50_ms: v[4] / 1000.0,
        p99_ms: v[5] / 1000.0,
        max_ms: v[6] / 1000.0,
    }
}

/// Warm-up, then the measured window.
fn measure(url: &str, script: &Path) -> Run {
    let warm = env_u64("WARMUP", 3);
    if warm > 0 {
        wrk(url, script, warm);
    }
    wrk(url, script, env_u64("WINDOW", 10))
}

// ---- baselines --------------------------------------------------------------------------------

fn start_nginx(body: &[u8]) -> (Proc, String) {
    let dir = bench_dir().join("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::write(www.join("lead.json"), body).unwrap();
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "user root; worker_processes 1; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off; sendfile on; tcp_nodelay on; keepalive_requests 100000000;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{port}; root {d}/www; default_type application/json; }}
}}
"
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let proc = Proc(
        pinned(SERVER_CORE, "nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts"),
    );
    std::thread::sleep(Duration::from_millis(500));
    (proc, format!("http://127.0.0.1:{port}/lead.json"))
}

fn start_redis() -> Proc {
    let p = Proc(
        pinned(SERVER_CORE, "redis-server")
            .args([
                "--port",
                &REDIS_PORT.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts"),
    );
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).is_ok() {
            return p;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("redis did not start");
}

fn redis_benchmark(value_size: usize) -> Run {
    let requests = 200_000 * env_u64("WINDOW", 10) / 10;
    let out = pinned(CLIENT_CORE, "redis-benchmark")
        .args([
            "-p",
            &REDIS_PORT.to_string(),
            "-c",
            &CONNECTIONS.to_string(),
            "-n",
            &requests.to_string(),
            "-d",
            &value_size.to_string(),
            "--threads",
            "2",
            "-t",
            "set,get",
            "--csv",
        ])
        .output()
        .expect("redis-benchmark runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .unwrap_or_else(|| panic!("redis-benchmark said: {text}"));
    let f: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|x| x.trim_matches('"').parse().unwrap_or(0.0))
        .collect();
    Run {
        rps: f[0],
        p50_ms: f[3],
        p99_ms: f[5],
        max_ms: f[6],
        errors: 0,
    }
}

fn pgbench(db_url: &str, phone: &str, org: &str) -> Run {
    let script = bench_dir().join("pgbench.sql");
    // The statement sidecache runs for a lead-by-phone miss (store::reads::lead_by_phone).
    std::fs::write(
        &script,
        format!(
            "SELECT id, organization_id, phone_number, first_name, last_name, email, status, attributes, version, created_at, updated_at FROM leads WHERE phone_number = '{phone}' AND organization_id = '{org}';\n"
        ),
    )
    .unwrap();
    let run = |secs: u64| {
        pinned(CLIENT_CORE, "pgbench")
            .args([
                "-n",
                "-M",
                "prepared",
                "-c",
                &CONNECTIONS.to_string(),
                "-j",
                "2",
                "-T",
                &secs.to_string(),
            ])
            .arg("-f")
            .arg(&script)
            .arg(db_url)
            .output()
            .expect("pgbench runs")
    };
    run(env_u64("WARMUP", 3).max(1));
    let out = run(env_u64("WINDOW", 10));
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "pgbench said: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let avg = text
        .lines()
        .find_map(|l| l.strip_prefix("latency average = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Run {
        rps: tps,
        // pgbench reports the mean only: it stands in for p50 (marked in the table).
        p50_ms: avg,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        errors: 0,
    }
}

// ---- metrics ----------------------------------------------------------------------------------

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// (series, value) of every sample of `family`.
fn samples<'a>(text: &'a str, family: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            Some((s, v.parse().ok()?))
        })
        .collect()
}

fn gauge(text: &str, family: &str) -> f64 {
    samples(text, family)
        .iter()
        .find(|(s, _)| *s == family)
        .map_or(0.0, |(_, v)| *v)
}

/// Hit ratios per kind (hit_l1, hit_l2, miss shares of all lookups) between two scrapes.
fn hit_ratios(before: &str, after: &str) -> BTreeMap<String, Value> {
    let mut counts: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (text, sign) in [(after, 1.0), (before, -1.0)] {
        for (s, v) in samples(text, "sidecache_cache_lookups_total{") {
            let (Some(kind), Some(result)) = (label(s, "kind"), label(s, "result")) else {
                continue;
            };
            *counts
                .entry(kind.into())
                .or_default()
                .entry(result.into())
                .or_default() += sign * v;
        }
    }
    counts
        .into_iter()
        .filter_map(|(kind, r)| {
            let total: f64 = r.values().sum();
            (total > 0.0).then(|| {
                let share = |k: &str| (r.get(k).copied().unwrap_or(0.0) / total * 1000.0).round() / 10.0;
                (
                    kind,
                    json!({"lookups": total, "hit_l1_pct": share("hit_l1"), "hit_l2_pct": share("hit_l2"),
                           "miss_pct": share("miss"), "negative_pct": share("negative"), "stale_pct": share("stale")}),
                )
            })
        })
        .collect()
}

/// p50/p99 per GET route between two scrapes, interpolated in the histogram buckets as
/// Prometheus' histogram_quantile does.
fn route_latencies(before: &str, after: &str) -> BTreeMap<String, Value> {
    let mut buckets: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for (text, sign) in [(after, 1.0), (before, -1.0)] {
        for (s, v) in samples(text, "sidecache_http_request_duration_seconds_bucket{") {
            let (Some(route), Some(method), Some(le)) =
                (label(s, "route"), label(s, "method"), label(s, "le"))
            else {
                continue;
            };
            if method != "GET" && method != "PATCH" {
                continue;
            }
            let le = if le == "+Inf" {
                u64::MAX
            } else {
                (le.parse::<f64>().unwrap() * 1e6) as u64
            };
            *buckets
                .entry(format!("{method} {route}"))
                .or_default()
                .entry(le)
                .or_default() += sign * v;
        }
    }
    let q = |b: &BTreeMap<u64, f64>, p: f64| -> f64 {
        let total = b.get(&u64::MAX).copied().unwrap_or(0.0);
        let rank = total * p;
        let mut prev = (0u64, 0.0);
        for (&le, &count) in b {
            if count >= rank {
                if le == u64::MAX {
                    return prev.0 as f64 / 1000.0;
                }
                let span = (count - prev.1).max(1e-9);
                return (prev.0 as f64 + (le - prev.0) as f64 * (rank - prev.1) / span) / 1000.0;
            }
            prev = (le, count);
        }
        f64::NAN
    };
    buckets
        .into_iter()
        .filter(|(_, b)| b.get(&u64::MAX).copied().unwrap_or(0.0) > 0.0)
        .map(|(route, b)| {
            let n = b.get(&u64::MAX).copied().unwrap_or(0.0);
            (
                route,
                json!({"requests": n, "p50_ms": (q(&b, 0.5) * 1000.0).round() / 1000.0, "p99_ms": (q(&b, 0.99) * 1000.0).round() / 1000.0}),
            )
        })
        .collect()
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

static FAILURES_SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// GETs every path with `concurrency` requests in flight (fewer than the pool's connections, so
/// that no miss waits for one past the 100 ms acquire budget), retrying a failed one once;
/// returns the answers that failed twice.
async fn drive(base: &str, paths: Vec<String>, concurrency: usize) -> usize {
    use futures_util::StreamExt;
    let client = reqwest::Client::new();
    let failures = futures_util::stream::iter(paths)
        .map(|p| {
            let (client, url) = (client.clone(), format!("{base}{p}"));
            async move {
                let mut why = String::new();
                for _ in 0..2 {
                    match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            if status.is_success() || status == 404 {
                                return 0;
                            }
                            why = format!("{status} {body}");
                        }
                        Err(e) => why = format!("{e:?}"),
                    }
                }
                if FAILURES_SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3 {
                    println!("  {url}: {why}");
                }
                1
            }
        })
        .buffer_unordered(concurrency)
        .fold(0, |a, b| async move { a + b })
        .await;
    failures
}

// ---- the run ----------------------------------------------------------------------------------

/// A table row: scenario, its figures, and its baseline's.
type Row = (String, Run, Option<(String, Run)>);

struct Lead {
    id: String,
    phone: String,
    org: String,
    org_phone: String,
}

fn enc(phone: &str) -> String {
    phone.replace('+', "%2B")
}

fn main() {
    // This process drives load too: keep it on the client core.
    let _ = Command::new("taskset")
        .args(["-cp", CLIENT_CORE, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    ensure_tools();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

#[allow(clippy::too_many_lines)]
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
    let _redis = start_redis();
    print!("seeding 100 organizations, 100,000 leads, 500,000 conversations... ");
    std::io::stdout().flush().ok();
    let seeded = Command::new(env!("CARGO_BIN_EXE_sidecache"))
        .args([
            "seed",
            "--orgs",
            "100",
            "--leads",
            "100000",
            "--conversations",
            "5",
        ])
        .env("DATABASE_URL", &db_url)
        .env("SIDECACHE__LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir())
        .stderr(Stdio::null())
        .output()
        .expect("seed runs");
    assert!(seeded.status.success(), "seeding failed");
    println!("{}", String::from_utf8_lossy(&seeded.stdout).trim());

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .unwrap();
    // Steady state: autovacuum would otherwise set about the fresh 1.2 M rows mid-measurement.
    sqlx::query("VACUUM (ANALYZE) organizations, leads, conversations, sidecache_outbox")
        .execute(&db)
        .await
        .unwrap();
    let rows: Vec<(uuid::Uuid, String, uuid::Uuid, String)> = sqlx::query_as(
        "SELECT l.id, l.phone_number, o.id, o.phone_number FROM leads l \
           JOIN organizations o ON o.id = l.organization_id ORDER BY random()",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let leads: Vec<Lead> = rows
        .into_iter()
        .map(|(id, phone, org, org_phone)| Lead {
            id: id.to_string(),
            phone,
            org: org.to_string(),
            org_phone,
        })
        .collect();
    let one = &leads[0];
    let one_path = format!(
        "/v1/leads/by-phone/{}?organization_id={}",
        enc(&one.phone),
        one.org
    );

    // Key files for the Lua scripts: one request path per line.
    let spread_file = bench_dir().join("spread.txt");
    std::fs::write(
        &spread_file,
        leads
            .iter()
            .map(|l| {
                format!(
                    "/v1/leads/by-phone/{}?organization_id={}\n",
                    enc(&l.phone),
                    l.org
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let mixed_file = bench_dir().join("mixed.txt");
    std::fs::write(
        &mixed_file,
        leads
            .iter()
            .map(|l| {
                format!(
                    "{} {} {} {}\n",
                    l.id,
                    enc(&l.phone),
                    l.org,
                    enc(&l.org_phone)
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let plain = write_script("plain", "");
    let spread = write_script(
        "spread",
        &format!(
            r#"
local paths = {{}}
for line in io.lines("{}") do paths[#paths + 1] = line end
local n = #paths
local counter = 0
function setup(thread) counter = counter + 1; thread:set("seed", counter) end
function init(args) math.randomseed(os.time() + (seed or 0)) end
request = function() return wrk.format("GET", paths[math.random(n)]) end
"#,
            spread_file.display()
        ),
    );
    let mixed = write_script(
        "mixed",
        &format!(
            r#"
-- Zipf (s = 1) over the leads in file order; kinds weighted as a voice platform asks for them.
local leads = {{}}
for line in io.lines("{}") do
  local id, phone, org, org_phone = line:match("(%S+) (%S+) (%S+) (%S+)")
  leads[#leads + 1] = {{id = id, phone = phone, org = org, org_phone = org_phone}}
end
local n = #leads
local cdf, total = {{}}, 0
for k = 1, n do total = total + 1 / k; cdf[k] = total end
for k = 1, n do cdf[k] = cdf[k] / total end
local function zipf()
  local u, lo, hi = math.random(), 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return leads[lo]
end
local channels = {{"voice", "sms", "email", "chat", "whatsapp"}}
local counter = 0
function setup(thread) counter = counter + 1; thread:set("seed", counter) end
function init(args) math.randomseed(os.time() * 7 + (seed or 0)) end
local writes = 0
request = function()
  local l, r = zipf(), math.random(100)
  if r <= 2 then
    writes = writes + 1
    return wrk.format("PATCH", "/v1/leads/" .. l.id, {{["Content-Type"] = "application/json"}},
      '{{"first_name": "W' .. writes .. '"}}')
  elseif r <= 27 then return wrk.format("GET", "/v1/leads/by-phone/" .. l.phone .. "?organization_id=" .. l.org)
  elseif r <= 37 then return wrk.format("GET", "/v1/leads/" .. l.id)
  elseif r <= 47 then return wrk.format("GET", "/v1/organizations/by-phone/" .. l.org_phone)
  elseif r <= 52 then return wrk.format("GET", "/v1/organizations/" .. l.org)
  elseif r <= 72 then return wrk.format("GET", "/v1/leads/" .. l.id .. "/context")
  elseif r <= 77 then return wrk.format("GET", "/v1/leads/" .. l.id .. "/summary")
  elseif r <= 92 then return wrk.format("GET", "/v1/leads/" .. l.id .. "/greeting?channel=" .. channels[math.random(5)])
  else return wrk.format("GET", "/v1/leads/" .. l.id .. "/history?limit=" .. math.random(1, 3) * 5 .. "&offset=0")
  end
end
"#,
            mixed_file.display()
        ),
    );

    let mut table: Vec<Row> = Vec::new();
    let mut report = json!({});

    // 1-2, 5. L1: one key, spread keys, call initiation.
    if wanted("l1") || wanted("spread") || wanted("initiation") {
        let sc = start_sidecache(&db_url, "bench-l1", &[]).await;
        let body = reqwest::get(format!("{}{one_path}", sc.base))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (_nginx, nginx_url) = start_nginx(&body);
        let nginx = measure(&nginx_url, &plain);
        let hit = measure(&format!("{}{one_path}", sc.base), &plain);
        table.push((
            "L1 hit (one lead-by-phone key)".into(),
            hit.clone(),
            Some(("nginx, same bytes, 1 worker".into(), nginx.clone())),
        ));
        report["l1_hit"] =
            json!({"sidecache": hit.json(), "nginx": nginx.json(), "body_bytes": body.len()});
        if wanted("spread") {
            print!("warming 100,000 lead-by-phone keys... ");
            std::io::stdout().flush().ok();
            let warm_started = Instant::now();
            let paths: Vec<String> = std::fs::read_to_string(&spread_file)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect();
            let failed = drive(&sc.base, paths, 8).await;
            println!(
                "{:.1}s, {failed} failed",
                warm_started.elapsed().as_secs_f64()
            );
            let spread_run = measure(&sc.base, &spread);
            table.push((
                "L1 hit, spread over 100,000 leads".into(),
                spread_run.clone(),
                Some(("nginx, same bytes, 1 worker".into(), nginx.clone())),
            ));
            report["l1_hit_spread"] =
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
            let init = measure(&format!("{}{init_path}", sc.base), &plain);
            table.push((
                "call initiation (4 parts, all L1)".into(),
                init.clone(),
                Some(("L1 hit (one key) above".into(), hit.clone())),
            ));
            report["call_initiation"] =
                json!({"sidecache": init.json(), "single_l1_hit": hit.json()});
        }
    }

    // 3. L2 hits: L1 off.
    if wanted("l2") {
        let sc = start_sidecache(
            &db_url,
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
        let l2 = measure(&format!("{}{one_path}", sc.base), &plain);
        let rb = redis_benchmark(stored.len());
        table.push((
            "L2 hit (L1 off)".into(),
            l2.clone(),
            Some((
                format!("redis-benchmark GET, {} B", stored.len()),
                rb.clone(),
            )),
        ));
        report["l2_hit"] = json!({"sidecache": l2.json(), "redis_benchmark": rb.json(), "value_bytes": stored.len()});
    }

    // 4. Misses: both tiers off.
    if wanted("miss") {
        let sc = start_sidecache(
            &db_url,
            "bench-miss",
            &[
                ("SIDECACHE__CACHE__L1_ENABLED", "false"),
                ("REDIS_ENABLED", "false"),
            ],
        )
        .await;
        let miss = measure(&format!("{}{one_path}", sc.base), &plain);
        drop(sc);
        let pg = pgbench(&db_url, &one.phone, &one.org);
        table.push((
            "miss (both tiers off)".into(),
            miss.clone(),
            Some(("pgbench, same SQL (p50 = mean)".into(), pg.clone())),
        ));
        report["miss"] = json!({"sidecache": miss.json(), "pgbench": {"tps": pg.rps.round(), "latency_avg_ms": pg.p50_ms}});
    }

    // 6. Mixed Zipf workload with writes.
    if wanted("mixed") {
        let sc = start_sidecache(&db_url, "bench-mixed", &[]).await;
        wrk(&sc.base, &mixed, env_u64("WARMUP", 3).max(5));
        let before = metrics(&sc.base).await;
        let run = wrk(&sc.base, &mixed, env_u64("WINDOW", 10));
        let after = metrics(&sc.base).await;
        table.push((
            "mixed: Zipf, every kind, 2 % writes".into(),
            run.clone(),
            None,
        ));
        report["mixed"] = json!({
            "overall": run.json(),
            "hit_ratio_by_kind": hit_ratios(&before, &after),
            "latency_by_route": route_latencies(&before, &after),
        });
    }

    // Memory: RSS against the bytes L1 holds.
    if wanted("memory") {
        let sc = start_sidecache(
            &db_url,
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
                    gauge(&m, "sidecache_l1_entries"),
                    gauge(&m, "sidecache_l1_weighted_bytes"),
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
        report["memory"] =
            json!({"idle_rss_bytes": idle, "l1_bound_bytes": 2147483648u64, "steps": steps});
    }

    // The table.
    println!(
        "\n{:<38} {:>10} {:>8} {:>8} {:>8}  {:<34} {:>10} {:>8}  {:>6}",
        "scenario", "req/s", "p50 ms", "p99 ms", "max ms", "baseline", "req/s", "p99 ms", "ratio"
    );
    for (name, run, base) in &table {
        let (bname, brps, bp99, ratio) = match base {
            Some((n, b)) => (
                n.as_str(),
                format!("{:.0}", b.rps),
                format!("{:.2}", b.p99_ms),
                format!("{:.2}", run.rps / b.rps),
            ),
            None => ("", String::new(), String::new(), String::new()),
        };
        println!(
            "{name:<38} {:>10.0} {:>8.2} {:>8.2} {:>8.2}  {bname:<34} {brps:>10} {bp99:>8}  {ratio:>6}{}",
            run.rps,
            run.p50_ms,
            run.p99_ms,
            run.max_ms,
            if run.errors > 0 { format!("  ({} errors)", run.errors) } else { String::new() }
        );
    }
    if let Some(kinds) = report["mixed"]["hit_ratio_by_kind"].as_object() {
        println!("\nmixed workload, by kind: lookups, hit L1 %, hit L2 %, miss %");
        for (k, v) in kinds {
            println!(
                "  {k:<12} {:>9} {:>6} {:>6} {:>6}",
                v["lookups"], v["hit_l1_pct"], v["hit_l2_pct"], v["miss_pct"]
            );
        }
    }
    if let Some(routes) = report["mixed"]["latency_by_route"].as_object() {
        println!("mixed workload, by route: requests, p50 ms, p99 ms");
        for (r, v) in routes {
            println!(
                "  {r:<44} {:>9} {:>7} {:>7}",
                v["requests"], v["p50_ms"], v["p99_ms"]
            );
        }
    }
    report["window_secs"] = json!(env_u64("WINDOW", 10));
    report["connections"] = json!(CONNECTIONS);
    report["total_secs"] = json!(started.elapsed().as_secs());
    let out = bench_dir().join("load.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!(
        "\nwritten to {} ({:.0}s in all)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    db.close().await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await;
}
