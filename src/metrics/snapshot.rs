//! What an operator's view is computed from: a [`Snapshot`] of the counters (lookups by kind and
//! result, API requests, 5xx and latency buckets) and the arithmetic on it — totals, hit
//! ratios, quantiles from buckets, and the rates between two snapshots. Presentation (JSON) is
//! the admin routes' business.

use std::time::Instant;

use prometheus::core::Collector;

use super::Metrics;
use crate::labels::{Kind, LookupResult};

/// Lookups of one kind, in the order of [`LookupResult::ALL`].
pub type Counts = [u64; LookupResult::ALL.len()];

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// Per kind, in the order of [`Kind::ALL`].
    pub lookups: Vec<Counts>,
    /// API requests answered, and those that were 5xx.
    pub api_requests: f64,
    pub api_errors: f64,
    /// Cumulative latency buckets of the API routes: (upper bound in seconds, count).
    pub buckets: Vec<(f64, f64)>,
}

/// The rates between two snapshots.
#[derive(Debug, Clone)]
pub struct Rates {
    pub interval_secs: f64,
    pub requests_per_sec: f64,
    pub errors_per_sec: f64,
    pub p50_secs: Option<f64>,
    pub p99_secs: Option<f64>,
    /// Lookups per kind during the interval.
    pub lookups: Vec<Counts>,
}

/// Invalidation lag of one source.
#[derive(Debug, Clone)]
pub struct Lag {
    pub source: String,
    pub count: u64,
    pub mean_secs: Option<f64>,
    pub p99_secs: Option<f64>,
}

/// `part / total`, rounded to four places; `None` when there is no total.
pub fn ratio(part: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| (part as f64 / total as f64 * 10_000.0).round() / 10_000.0)
}

/// The `q` quantile (0..1) of cumulative buckets, interpolated within a bucket.
pub fn quantile(buckets: &[(f64, f64)], total: f64, q: f64) -> Option<f64> {
    if total <= 0.0 {
        return None;
    }
    let rank = total * q;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            let span = (count - prev.1).max(f64::EPSILON);
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / span);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

/// A kind's (or all kinds') hit ratio: answers from L1, L2 or a cached "not found".
pub fn hit_ratio(c: &Counts) -> Option<f64> {
    let hits = c[LookupResult::HitL1.index()]
        + c[LookupResult::HitL2.index()]
        + c[LookupResult::Negative.index()];
    ratio(hits, c.iter().sum())
}

/// The share answered from L1.
pub fn l1_hit_ratio(c: &Counts) -> Option<f64> {
    ratio(c[LookupResult::HitL1.index()], c.iter().sum())
}

impl Snapshot {
    /// Lookups of every kind together.
    pub fn totals(&self) -> Counts {
        self.lookups
            .iter()
            .fold([0; LookupResult::ALL.len()], |mut acc, c| {
                for (a, n) in acc.iter_mut().zip(c) {
                    *a += n;
                }
                acc
            })
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Rates {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-3);
        let window: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, (le, c))| (*le, c - earlier.buckets.get(i).map_or(0.0, |b| b.1)))
            .collect();
        let n = self.api_requests - earlier.api_requests;
        let zero = [0; LookupResult::ALL.len()];
        let lookups = self
            .lookups
            .iter()
            .zip(earlier.lookups.iter().chain(std::iter::repeat(&zero)))
            .map(|(c, p)| std::array::from_fn(|i| c[i].saturating_sub(p[i])))
            .collect();
        Rates {
            interval_secs: secs,
            requests_per_sec: n / secs,
            errors_per_sec: (self.api_errors - earlier.api_errors) / secs,
            p50_secs: quantile(&window, n, 0.5),
            p99_secs: quantile(&window, n, 0.99),
            lookups,
        }
    }
}

impl Metrics {
    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        let mut requests = 0.0;
        let mut errors = 0.0;
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for family in self.http_duration.collect() {
            for m in family.get_metric() {
                let labels = m.get_label();
                let route = labels
                    .iter()
                    .find(|l| l.name() == "route")
                    .map_or("", |l| l.value());
                if !route.starts_with("/v1/") {
                    continue;
                }
                let h = m.get_histogram();
                requests += h.get_sample_count() as f64;
                if labels
                    .iter()
                    .any(|l| l.name() == "status" && l.value().starts_with('5'))
                {
                    errors += h.get_sample_count() as f64;
                }
                for (i, b) in h.get_bucket().iter().enumerate() {
                    if buckets.len() <= i {
                        buckets.push((b.upper_bound(), 0.0));
                    }
                    buckets[i].1 += b.cumulative_count() as f64;
                }
            }
        }
        Snapshot {
            at: Instant::now(),
            lookups: Kind::ALL.iter().map(|k| self.lookup_counts(*k)).collect(),
            api_requests: requests,
            api_errors: errors,
            buckets,
        }
    }

    /// Invalidation lag per source.
    pub fn lags(&self) -> Vec<Lag> {
        let mut out = Vec::new();
        for family in self.invalidation_lag.collect() {
            for m in family.get_metric() {
                let source = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "source")
                    .map_or("", |l| l.value())
                    .to_owned();
                let h = m.get_histogram();
                let buckets: Vec<(f64, f64)> = h
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count() as f64))
                    .collect();
                let n = h.get_sample_count() as f64;
                out.push(Lag {
                    source,
                    count: h.get_sample_count(),
                    mean_secs: (n > 0.0).then(|| h.get_sample_sum() / n),
                    p99_secs: quantile(&buckets, n, 0.99),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let b = [(0.1, 50.0), (0.2, 100.0)];
        assert_eq!(quantile(&b, 100.0, 0.5), Some(0.1));
        let p75 = quantile(&b, 100.0, 0.75).unwrap();
        assert!((p75 - 0.15).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(&b, 0.0, 0.5), None);
        assert_eq!(ratio(1, 3), Some(0.3333));
        assert_eq!(ratio(1, 0), None);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [
            (0.001, 50.0),
            (0.01, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&b, 100.0, 0.5), Some(0.001));
        let p99 = quantile(&b, 100.0, 0.99).unwrap();
        assert!((0.01..=0.1).contains(&p99), "{p99}");
        assert_eq!(quantile(&b, 0.0, 0.5), None);
    }
}
