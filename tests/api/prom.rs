//! One reader of the Prometheus text exposition (`/metrics`), for the tests and the benchmarks
//! alike (`benches/load.rs` includes this file with `#[path]`).
//!
//! Items are `pub(crate)`, not `pub`: the benches lint `unreachable_pub`, the tests do not.

#![allow(dead_code)] // each includer uses part of it

/// One sample line, `name{labels} value`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample<'a> {
    /// The series name, e.g. `sidecache_http_request_duration_seconds_bucket`.
    pub(crate) name: &'a str,
    /// The label set as written, braces included (`{kind="lead_id"}`), or empty.
    pub(crate) labels: &'a str,
    pub(crate) value: f64,
}

impl<'a> Sample<'a> {
    /// The value of label `name`, if the sample has it.
    pub(crate) fn label(&self, name: &str) -> Option<&'a str> {
        let labels = self.labels;
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        let end = labels[start..].find('"')? + start;
        Some(&labels[start..end])
    }

    /// True if every `label="value"` given is among the sample's labels.
    pub(crate) fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.contains(&format!("{k}=\"{v}\"")))
    }
}

/// Every sample in `text`; comments and lines without a number for a value are skipped.
pub(crate) fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.find('{') {
                Some(i) => (&series[..i], &series[i..]),
                None => (series, ""),
            };
            Some(Sample {
                name,
                labels,
                value: value.parse().ok()?,
            })
        })
}

/// The samples of the series `name` (for a histogram, e.g. `…_bucket`).
pub(crate) fn series<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = Sample<'a>> {
    samples(text).filter(move |s| s.name == name)
}

/// The sum of a metric's samples whose labels include every `label="value"` given.
pub(crate) fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name)
        .filter(|s| s.has(labels))
        .map(|s| s.value)
        .sum()
}

/// The value of the unlabelled sample `name` (a gauge such as `sidecache_l1_entries`), or 0.
pub(crate) fn gauge(text: &str, name: &str) -> f64 {
    series(text, name)
        .find(|s| s.labels.is_empty())
        .map_or(0.0, |s| s.value)
}

/// The families declared by `# TYPE` lines, in order.
pub(crate) fn families(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
}
