//! What a user could run instead, measured in the same harness: nginx serving the same bytes,
//! redis-benchmark GETs of the same value size, pgbench running the same SQL.

use std::process::Stdio;
use std::time::Duration;

use crate::tools::{bench_dir, free_port, pinned, Proc};
use crate::wrk::Run;
use crate::{env_u64, CLIENT_CORE, CONNECTIONS, REDIS_PORT, SERVER_CORE};

pub(crate) fn start_nginx(body: &[u8]) -> (Proc, String) {
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

pub(crate) fn redis_benchmark(value_size: usize) -> Run {
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

pub(crate) fn pgbench(db_url: &str, phone: &str, org: &str) -> Run {
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
