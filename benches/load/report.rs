//! What the run found: one table row per scenario next to its baseline, the same figures as
//! JSON in `target/bench/load.json`, and the per-kind hit ratios and per-route latencies of the
//! mixed workload, computed from two scrapes of sidecache's own metrics.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use crate::tools::bench_dir;
use crate::wrk::Run;
use crate::{env_u64, prom, CONNECTIONS};

/// A table row: scenario, its figures, and its baseline's.
pub(crate) type Row = (String, Run, Option<(String, Run)>);

/// The rows of the table and the JSON report, filled in by the scenarios.
pub(crate) struct Report {
    pub(crate) table: Vec<Row>,
    pub(crate) json: Value,
}

impl Report {
    pub(crate) fn new() -> Self {
        Report {
            table: Vec::new(),
            json: json!({}),
        }
    }

    /// The table, then the mixed workload by kind and by route.
    pub(crate) fn print(&self) {
        println!(
            "\n{:<38} {:>10} {:>8} {:>8} {:>8}  {:<34} {:>10} {:>8}  {:>6}",
            "scenario",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "baseline",
            "req/s",
            "p99 ms",
            "ratio"
        );
        for (name, run, base) in &self.table {
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
        if let Some(kinds) = self.json["mixed"]["hit_ratio_by_kind"].as_object() {
            println!("\nmixed workload, by kind: lookups, hit L1 %, hit L2 %, miss %");
            for (k, v) in kinds {
                println!(
                    "  {k:<12} {:>9} {:>6} {:>6} {:>6}",
                    v["lookups"], v["hit_l1_pct"], v["hit_l2_pct"], v["miss_pct"]
                );
            }
        }
        if let Some(routes) = self.json["mixed"]["latency_by_route"].as_object() {
            println!("mixed workload, by route: requests, p50 ms, p99 ms");
            for (r, v) in routes {
                println!(
                    "  {r:<44} {:>9} {:>7} {:>7}",
                    v["requests"], v["p50_ms"], v["p99_ms"]
                );
            }
        }
    }

    /// Adds the run's parameters and writes `target/bench/load.json`.
    pub(crate) fn write(&mut self, started: Instant) {
        self.json["window_secs"] = json!(env_u64("WINDOW", 10));
        self.json["connections"] = json!(CONNECTIONS);
        self.json["total_secs"] = json!(started.elapsed().as_secs());
        let out = bench_dir().join("load.json");
        std::fs::write(&out, serde_json::to_vec_pretty(&self.json).unwrap()).unwrap();
        println!(
            "\nwritten to {} ({:.0}s in all)",
            out.display(),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Hit ratios per kind (hit_l1, hit_l2, miss shares of all lookups) between two scrapes.
pub(crate) fn hit_ratios(before: &str, after: &str) -> BTreeMap<String, Value> {
    let mut counts: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (text, sign) in [(after, 1.0), (before, -1.0)] {
        for s in prom::series(text, "sidecache_cache_lookups_total") {
            let (Some(kind), Some(result)) = (s.label("kind"), s.label("result")) else {
                continue;
            };
            *counts
                .entry(kind.into())
                .or_default()
                .entry(result.into())
                .or_default() += sign * s.value;
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
pub(crate) fn route_latencies(before: &str, after: &str) -> BTreeMap<String, Value> {
    let mut buckets: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    for (text, sign) in [(after, 1.0), (before, -1.0)] {
        for s in prom::series(text, "sidecache_http_request_duration_seconds_bucket") {
            let (Some(route), Some(method), Some(le)) =
                (s.label("route"), s.label("method"), s.label("le"))
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
                .or_default() += sign * s.value;
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
