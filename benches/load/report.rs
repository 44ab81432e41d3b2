//! What the run found: every measurement (closed-loop and open-loop figures, each baseline with
//! its configuration), one row per target (figure, baseline, ratio, target, met or MISSED), the
//! same as JSON in `target/bench/load.json`, and the per-kind hit ratios and per-route latencies
//! of the mixed workload, computed from two scrapes of sidecache's own metrics.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use crate::open_loop::OpenRun;
use crate::tools::bench_dir;
use crate::wrk::Run;
use crate::{env_u64, open_load, prom, CONNECTIONS};

/// One measured server and workload: its closed-loop (wrk) and open-loop figures and, for a
/// baseline, its configuration.
pub(crate) struct Line {
    pub(crate) name: String,
    pub(crate) config: String,
    pub(crate) closed: Option<Run>,
    pub(crate) open: Option<OpenRun>,
}

/// One target of the issue: our figure, the baseline's (named with its configuration), the
/// ratio, the target, and whether it was met.
pub(crate) struct Goal {
    pub(crate) row: String,
    pub(crate) figure: String,
    pub(crate) baseline: String,
    pub(crate) base_figure: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: String,
    pub(crate) met: bool,
}

/// The measurements, the targets and the JSON report, filled in by the scenarios.
pub(crate) struct Report {
    pub(crate) lines: Vec<Line>,
    pub(crate) goals: Vec<Goal>,
    pub(crate) json: Value,
}

/// 12345.6 as "12,346".
pub(crate) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

impl Report {
    pub(crate) fn new() -> Self {
        Report {
            lines: Vec::new(),
            goals: Vec::new(),
            json: json!({}),
        }
    }

    pub(crate) fn line(
        &mut self,
        name: &str,
        config: &str,
        closed: Option<&Run>,
        open: Option<&OpenRun>,
    ) {
        self.lines.push(Line {
            name: name.into(),
            config: config.into(),
            closed: closed.cloned(),
            open: open.cloned(),
        });
    }

    /// A throughput (or cost) target: `ours / base` against `want`, at least (`at_least`) or at
    /// most.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ratio_goal(
        &mut self,
        row: &str,
        ours: f64,
        unit: &str,
        baseline: &str,
        base: f64,
        at_least: bool,
        want: f64,
    ) {
        let ratio = ours / base;
        self.goals.push(Goal {
            row: row.into(),
            figure: format!("{} {unit}", thousands(ours)),
            baseline: baseline.into(),
            base_figure: format!("{} {unit}", thousands(base)),
            ratio: Some(ratio),
            target: format!("{} {want}×", if at_least { "≥" } else { "≤" }),
            met: if at_least {
                ratio >= want
            } else {
                ratio <= want
            },
        });
    }

    /// An open-loop latency target: p99 (and p99.9, if given) at most so many ms, no errors,
    /// every request answered, and the offered rate achieved within 2 %.
    pub(crate) fn latency_goal(&mut self, row: &str, run: &OpenRun, p99: f64, p999: Option<f64>) {
        let mut target = format!("p99 ≤ {p99} ms");
        let mut met = run.p99_ms <= p99;
        let mut figure = format!("p50 {:.2}, p99 {:.2}", run.p50_ms, run.p99_ms);
        if let Some(p999) = p999 {
            target.push_str(&format!(", p99.9 ≤ {p999} ms"));
            met &= run.p999_ms <= p999;
            figure.push_str(&format!(", p99.9 {:.2}", run.p999_ms));
        }
        figure.push_str(" ms");
        if run.send_lag_p99_ms > 0.5 {
            // The generator itself sent late (the client core was taken from it): part of the
            // latency is the client's.
            figure.push_str(&format!(" (client lag p99 {:.1} ms)", run.send_lag_p99_ms));
        }
        if run.errors > 0 || run.unfinished > 0 {
            figure.push_str(&format!(
                " ({} errors, {} unanswered)",
                run.errors, run.unfinished
            ));
        }
        met &= run.errors == 0 && run.unfinished == 0 && run.achieved_rps >= 0.98 * run.offered_rps;
        self.goals.push(Goal {
            row: row.into(),
            figure,
            baseline: format!(
                "open loop, {CONNECTIONS} connections, at {:.0} % of this scenario's wrk maximum",
                open_load() * 100.0
            ),
            base_figure: format!("{} req/s offered", thousands(run.offered_rps)),
            ratio: None,
            target,
            met,
        });
    }

    /// The measurements, the targets, then the mixed workload by kind and by route.
    pub(crate) fn print(&self) {
        if !self.lines.is_empty() {
            self.print_lines();
        }
        self.print_goals();
        self.print_mixed();
    }

    fn print_lines(&self) {
        println!(
            "\nclosed loop: wrk, {CONNECTIONS} connections; open loop: this bench's generator, {CONNECTIONS} connections, latency from each request's scheduled time"
        );
        println!(
            "{:<46} {:>9} {:>7} {:>7} {:>7} | {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>5} | configuration",
            "server and workload", "req/s", "p50", "p99", "max", "offered", "achieved", "p50", "p99", "p99.9", "max", "err"
        );
        for l in &self.lines {
            let closed = match &l.closed {
                Some(r) => format!(
                    "{:>9} {:>7} {:>7} {:>7}",
                    thousands(r.rps),
                    ms(r.p50_ms),
                    ms(r.p99_ms),
                    ms(r.max_ms)
                ),
                None => format!("{:>9} {:>7} {:>7} {:>7}", "", "", "", ""),
            };
            let open = match &l.open {
                Some(o) => format!(
                    "{:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>5}",
                    thousands(o.offered_rps),
                    thousands(o.achieved_rps),
                    ms(o.p50_ms),
                    ms(o.p99_ms),
                    ms(o.p999_ms),
                    ms(o.max_ms),
                    o.errors + o.unfinished
                ),
                None => format!(
                    "{:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>5}",
                    "", "", "", "", "", "", ""
                ),
            };
            let errors = l.closed.as_ref().map_or(0, |r| r.errors);
            println!(
                "{:<46} {closed} | {open} | {}{}",
                l.name,
                l.config,
                if errors > 0 {
                    format!(" (wrk: {errors} errors)")
                } else {
                    String::new()
                }
            );
        }
    }

    fn print_goals(&self) {
        println!(
            "\n{:<36} {:<36} {:<24} {:>6}  {:<26} {:<6}  baseline",
            "target row", "figure", "baseline figure", "ratio", "target", "met"
        );
        for g in &self.goals {
            println!(
                "{:<36} {:<36} {:<24} {:>6}  {:<26} {:<6}  {}",
                g.row,
                g.figure,
                g.base_figure,
                g.ratio.map_or(String::new(), |r| format!("{r:.2}")),
                g.target,
                if g.met { "met" } else { "MISSED" },
                g.baseline
            );
        }
    }

    fn print_mixed(&self) {
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
        self.json["warmup_secs"] = json!(env_u64("WARMUP", 3));
        self.json["measurements"] = json!(self
            .lines
            .iter()
            .map(|l| json!({
                "name": l.name, "config": l.config,
                "closed_loop": l.closed.as_ref().map(Run::json),
                "open_loop": l.open.as_ref().map(OpenRun::json),
            }))
            .collect::<Vec<_>>());
        self.json["targets"] = json!(self
            .goals
            .iter()
            .map(|g| json!({
                "row": g.row, "figure": g.figure, "baseline": g.baseline,
                "baseline_figure": g.base_figure, "ratio": g.ratio.map(|r| (r * 1000.0).round() / 1000.0),
                "target": g.target, "met": g.met,
            }))
            .collect::<Vec<_>>());
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
