//! The families of the platform edge: call-start webhooks answered by platform and outcome, their
//! latency, and requests passed through to the handler app.

use prometheus::{Histogram, IntCounter};

use super::Builder;
use crate::labels::{Platform, ProxyOutcome, WebhookOutcome};

const WEBHOOK_ANSWERS: &str = "Call-start webhooks answered, by platform and outcome (full, partial: organization only, fallback: defaults or a generic greeting, unknown_number, auth_failed).";
const WEBHOOK_DURATION: &str =
    "Time to answer a call-start webhook, by platform (bounded by webhooks.deadline_ms).";
const PROXY_REQUESTS: &str = "Requests passed through to proxy.upstream, by outcome: the upstream's status class, or unavailable (502) / timeout (504).";
const PROXY_DURATION: &str =
    "Time until the upstream's answer began (its body streams on), for proxied requests.";
const MIRRORS: &str = "Call starts mirrored to proxy.upstream in the background, by whether the upstream took them (2xx) or not.";

/// The edge families.
pub struct EdgeMetrics {
    /// Per platform, outcome.
    answers: Vec<Vec<IntCounter>>,
    durations: Vec<Histogram>,
    proxied: Vec<IntCounter>,
    pub proxy_duration: Histogram,
    /// `[taken, refused]`.
    mirrors: [IntCounter; 2],
}

impl EdgeMetrics {
    pub(super) fn new(b: &Builder) -> Self {
        let answers = b.counter_vec(
            "sidecache_webhook_answers_total",
            WEBHOOK_ANSWERS,
            &["platform", "outcome"],
        );
        let answers = Platform::ALL
            .iter()
            .map(|p| {
                WebhookOutcome::ALL
                    .iter()
                    .map(|o| answers.with_label_values(&[p.as_str(), o.as_str()]))
                    .collect()
            })
            .collect();
        let (_, durations) = b.histograms(
            "sidecache_webhook_duration_seconds",
            WEBHOOK_DURATION,
            "platform",
            &Platform::ALL,
            Platform::as_str,
        );
        let mirrors = b.counter_vec("sidecache_proxy_mirrors_total", MIRRORS, &["result"]);
        EdgeMetrics {
            answers,
            durations,
            proxied: b.counters(
                "sidecache_proxy_requests_total",
                PROXY_REQUESTS,
                "outcome",
                &ProxyOutcome::ALL,
                ProxyOutcome::as_str,
            ),
            proxy_duration: b
                .histogram_vec("sidecache_proxy_duration_seconds", PROXY_DURATION, &[])
                .with_label_values::<&str>(&[]),
            mirrors: [
                mirrors.with_label_values(&["taken"]),
                mirrors.with_label_values(&["refused"]),
            ],
        }
    }

    pub fn webhook(&self, platform: Platform, outcome: WebhookOutcome, secs: f64) {
        self.answers[platform.index()][outcome.index()].inc();
        self.durations[platform.index()].observe(secs);
    }

    pub fn proxied(&self, outcome: ProxyOutcome) {
        self.proxied[outcome.index()].inc();
    }

    pub fn mirrored(&self, taken: bool) {
        self.mirrors[usize::from(!taken)].inc();
    }
}
