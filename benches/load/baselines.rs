//! What a user could run instead, and the limit of sidecache's own stack, measured in the same
//! harness: a bare hyper server serving the same bytes from memory (`examples/bare_hyper`),
//! redis-benchmark GETs of the same value size, pgbench running the same SQL with the same
//! parameters, and the instruction counts of `scripts/instructions`. nginx is in `nginx.rs`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::tools::{bench_dir, free_port, pinned, Proc};
use crate::wrk::Run;
use crate::{env_u64, CLIENT_CORE, CONNECTIONS, REDIS_PORT, SERVER_CORE};

/// `examples/bare_hyper`, built by cargo for this run.
pub(crate) struct BareHyper {
    _proc: Proc,
    pub(crate) port: u16,
}

pub(crate) const BARE_HYPER_CONFIG: &str =
    "examples/bare_hyper: hyper 1 http1, tokio multi-thread runtime (1 worker on its core), \
     mimalloc, nodelay, body from memory, content-type application/json";

/// A command that runs cargo, or a script that does, without the variables cargo set for this
/// bench (CARGO_PKG_*, OUT_DIR, LD_LIBRARY_PATH, ...): with them, the nested build's build
/// scripts see another environment, rebuild (ring, mimalloc), and the next `cargo bench` rebuilds
/// everything once more.
fn cargo_clean(program: &str) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let set_by_cargo =
            (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR")
                || ["OUT_DIR", "LD_LIBRARY_PATH", "RUST_RECURSION_COUNT"].contains(&k.as_ref());
        if set_by_cargo {
            c.env_remove(k.as_ref());
        }
    }
    c
}

fn cargo() -> Command {
    cargo_clean(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds (if need be) and starts `examples/bare_hyper` on the server core, serving `body`.
pub(crate) fn start_bare_hyper(body: &[u8]) -> Option<BareHyper> {
    let built = cargo()
        .args(["build", "--release", "--quiet", "--example", "bare_hyper"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .is_ok_and(|s| s.success());
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/bare_hyper");
    if !built || !bin.exists() {
        println!("  bare hyper: `cargo build --release --example bare_hyper` failed; left out");
        return None;
    }
    let file = bench_dir().join("bare_hyper_body.json");
    std::fs::write(&file, body).unwrap();
    let port = free_port();
    let proc = Proc(
        pinned(SERVER_CORE, bin.to_str().unwrap())
            .arg(port.to_string())
            .arg(&file)
            .stdout(Stdio::null())
            .spawn()
            .expect("bare_hyper starts"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(BareHyper { _proc: proc, port });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("bare_hyper did not start");
}

/// redis-benchmark's figures and the command line that produced them. Its client runs with one
/// thread and with two (on the one client core) for a first, warming run each; the faster is
/// kept and run again, sized to last the window.
pub(crate) fn redis_benchmark(value_size: usize) -> (Run, String) {
    let args = |n: u64, threads: u32| -> Vec<String> {
        [
            "-p",
            &REDIS_PORT.to_string(),
            "-c",
            &CONNECTIONS.to_string(),
            "-n",
            &n.to_string(),
            "-d",
            &value_size.to_string(),
            "--threads",
            &threads.to_string(),
            "-t",
            "set,get",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let go = |n: u64, threads: u32| -> Run {
        let out = pinned(CLIENT_CORE, "redis-benchmark")
            .args(args(n, threads))
            .arg("--csv")
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
    };
    let probes: Vec<(u32, Run)> = [1, 2].map(|t| (t, go(100_000, t))).to_vec();
    for (t, r) in &probes {
        println!("  redis-benchmark --threads {t}: {:.0} GET/s", r.rps);
    }
    let (threads, probe) = probes
        .into_iter()
        .max_by(|a, b| a.1.rps.total_cmp(&b.1.rps))
        .unwrap();
    let n = ((probe.rps * env_u64("WINDOW", 10) as f64) as u64).max(100_000);
    let run = go(n, threads);
    let cmd = format!(
        "redis-benchmark {} (the faster of --threads 1 and 2; GET of the {value_size}-byte value \
         SET just before; redis-server {}, --save '' --appendonly no, on the server core)",
        args(n, threads).join(" "),
        redis_version()
    );
    (run, cmd)
}

fn redis_version() -> String {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
        })
        .unwrap_or_default()
}

/// The statement sidecache runs for a lead-by-phone miss (store::reads::lead_by_phone), with the
/// same two parameters bound (pgbench -M prepared sends `:phone` and `:org` as $1 and $2).
pub(crate) const MISS_SQL: &str = "SELECT id, organization_id, phone_number, first_name, last_name, email, status, attributes, version, created_at, updated_at FROM leads WHERE phone_number = :phone AND organization_id = :org;";

/// pgbench's figures and its configuration (command line and the server's settings).
pub(crate) async fn pgbench(
    db: &sqlx::PgPool,
    db_url: &str,
    phone: &str,
    org: &str,
) -> (Run, String) {
    let script = bench_dir().join("pgbench.sql");
    std::fs::write(&script, format!("{MISS_SQL}\n")).unwrap();
    let args = |secs: u64| -> Vec<String> {
        [
            "-n",
            "-M",
            "prepared",
            "-c",
            &CONNECTIONS.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-D",
            &format!("phone={phone}"),
            "-D",
            &format!("org={org}"),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let run = |secs: u64| {
        pinned(CLIENT_CORE, "pgbench")
            .args(args(secs))
            .arg("-f")
            .arg(&script)
            .arg(db_url)
            .output()
            .expect("pgbench runs")
    };
    run(env_u64("WARMUP", 3).max(1));
    let window = env_u64("WINDOW", 10);
    let out = run(window);
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
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN \
         ('server_version', 'shared_buffers', 'max_connections', 'ssl', 'jit', 'huge_pages', \
          'work_mem', 'effective_cache_size', 'max_worker_processes') ORDER BY name",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default();
    let config = format!(
        "pgbench {} -f pgbench.sql (the miss's SELECT, params :phone :org), same TLS mode as sidecache (libpq sslmode=prefer); Postgres unpinned: {}",
        args(window).join(" ").replace(phone, "<lead's phone>").replace(org, "<its org>"),
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let run = Run {
        rps: tps,
        // pgbench reports the mean only: it stands in for p50 (marked in the table).
        p50_ms: avg,
        p99_ms: f64::NAN,
        max_ms: f64::NAN,
        errors: 0,
    };
    (run, config)
}

/// Instructions per request from `scripts/instructions`: (l1, initiation, l2, bare) and the
/// script's header line. None if valgrind is missing, INSTRUCTIONS=0, or the script failed.
pub(crate) fn instructions() -> Option<(Vec<(String, u64)>, String)> {
    if env_u64("INSTRUCTIONS", 1) == 0 {
        return None;
    }
    let have_valgrind = Command::new("sh")
        .args(["-c", "command -v valgrind"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_valgrind {
        println!("valgrind is missing: no instruction counts (apt-get install valgrind)");
        return None;
    }
    println!("counting instructions per request with scripts/instructions (valgrind)...");
    let out = cargo_clean("bash")
        .arg("scripts/instructions")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        )
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    if !out.status.success() {
        println!("scripts/instructions failed");
        return None;
    }
    Some(parse_instructions(&text))
}

/// `l1          HIT-L1    3000 requests      99520504 instructions     33173 per request`
fn parse_instructions(text: &str) -> (Vec<(String, u64)>, String) {
    let rows = text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 8 && w[3] == "requests" && w[7] == "per")
                .then(|| Some((w[0].to_owned(), w[6].parse().ok()?)))
                .flatten()
        })
        .collect();
    let header = text
        .lines()
        .find(|l| l.starts_with("commit "))
        .unwrap_or("")
        .to_owned();
    (rows, header)
}
