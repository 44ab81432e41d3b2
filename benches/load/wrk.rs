//! Measuring with wrk: one measured window's figures (`Run`), Lua scripts that report them as
//! one machine-readable line, and a warm-up before each window.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::tools::{bench_dir, pinned};
use crate::{env_u64, CLIENT_CORE, CONNECTIONS};

/// The figures of one measured window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) errors: u64,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
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

pub(crate) fn write_script(name: &str, body: &str) -> PathBuf {
    let p = bench_dir().join(format!("{name}.lua"));
    std::fs::write(&p, format!("{body}\n{DONE_LUA}")).unwrap();
    p
}

pub(crate) fn wrk(url: &str, script: &Path, seconds: u64) -> Run {
    wrk_with(url, script, seconds, &[])
}

/// As [`wrk`], with `args` for the script's `init` (after `--`).
pub(crate) fn wrk_with(url: &str, script: &Path, seconds: u64, args: &[String]) -> Run {
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
        .arg("--")
        .args(args)
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
pub(crate) fn measure(url: &str, script: &Path) -> Run {
    let warm = env_u64("WARMUP", 3);
    if warm > 0 {
        wrk(url, script, warm);
    }
    wrk(url, script, env_u64("WINDOW", 10))
}
