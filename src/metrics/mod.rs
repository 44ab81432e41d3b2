//! The Prometheus registry and every metric family sidecache exports, with their help texts.
//! Label tables come from [`crate::labels`]; every series a label enum can name exists from the
//! start (at zero) and is resolved once, so counting on a hot path does no label hashing. Call
//! sites use the typed methods below, never a label string.

mod audit;
mod edge;
mod help;
mod snapshot;
mod state;

use help::*;

pub use audit::{AuditMetrics, AUDIT_TIERS};
pub use edge::EdgeMetrics;
pub use snapshot::{hit_ratio, l1_hit_ratio, quantile, ratio, Counts, Lag, Rates, Snapshot};
pub use state::StateMetrics;

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::labels::{
    BreakerState, BusDirection, BusMessage, CacheStatus, Component, FillOutcome, FlushReason, Kind,
    LeaseOutcome, LookupResult, LookupRoute, OutboxAction, PgQuery, RedisOp, ResetCause, Source,
    StaleReason, Target, Tier,
};

/// The statuses a lookup route answers most, whose series [`Metrics::lookup_request`] keeps.
const LOOKUP_STATUSES: [u16; 5] = [200, 304, 400, 404, 503];

/// Latency buckets in seconds, from 50 µs (an L1 hit) to 10 s (a stuck query).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Every metric family, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Per lookup route, per [`LOOKUP_STATUSES`]: the series of `GET` answers, resolved on first
    /// use (so that /metrics lists only series that happened).
    http_lookups: Vec<[OnceLock<(IntCounter, Histogram)>; LOOKUP_STATUSES.len()]>,
    /// Per kind, per [`LookupResult`].
    lookups: Vec<Vec<IntCounter>>,
    /// Per kind, tier, outcome.
    fills: Vec<Vec<Vec<IntCounter>>>,
    fill_duration: Vec<Histogram>,
    redis_ops: Vec<IntCounter>,
    redis_errors: Vec<IntCounter>,
    redis_duration: Vec<Histogram>,
    pg_queries: Vec<IntCounter>,
    pg_errors: Vec<IntCounter>,
    pg_duration: Vec<Histogram>,
    invalidations: Vec<IntCounter>,
    /// Per tier, target.
    invalidated: Vec<Vec<IntCounter>>,
    coalesced: Vec<IntCounter>,
    /// Per kind, reason.
    stale_served: Vec<Vec<IntCounter>>,
    lookup_timeouts: Vec<IntCounter>,
    refreshes_ahead: Vec<IntCounter>,
    refresh_failures: Vec<IntCounter>,
    pub pg_pool_timeouts: IntCounter,
    pub overload_rejections: IntCounter,
    pub admin_auth_failures: IntCounter,
    component_enabled: Vec<IntGauge>,
    pub in_flight: IntGauge,
    pub l1_entries: IntGauge,
    pub l1_bytes: IntGauge,
    pub redis_up: IntGauge,
    pub postgres_up: IntGauge,
    pub redis_breaker: IntGauge,
    breaker_transitions: Vec<IntCounter>,
    pub redis_skipped: IntCounter,
    pub invalidation_lag: HistogramVec,
    invalidation_lag_by_source: Vec<Histogram>,
    pub outbox_backlog: IntGauge,
    outbox_rows: Vec<IntCounter>,
    pub listener_up: IntGauge,
    pub bus_up: IntGauge,
    /// Per direction, kind.
    bus_messages: Vec<Vec<IntCounter>>,
    pub bus_gaps: IntCounter,
    l1_flushes: Vec<IntCounter>,
    redis_resets: Vec<IntCounter>,
    lease_waits: Vec<IntCounter>,
    /// Sessions, events and rate limits.
    pub state: StateMetrics,
    /// Webhooks and the proxy.
    pub edge: EdgeMetrics,
    pub audit: AuditMetrics,
}

/// Builds families and registers them, panicking only on a programming error in a definition.
struct Builder(Registry);

impl Builder {
    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
        self.0
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }

    fn histogram_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        let h = HistogramVec::new(opts, labels).expect("valid metric definition");
        self.0
            .register(Box::new(h.clone()))
            .expect("metric registered once");
        h
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
        self.0
            .register(Box::new(g.clone()))
            .expect("metric registered once");
        g
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect("valid metric definition");
        self.0
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric definition");
        self.0
            .register(Box::new(g.clone()))
            .expect("metric registered once");
        g
    }

    /// A family with one label, resolved for every value of a label enum.
    fn counters<L: Copy>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        all: &[L],
        s: fn(L) -> &'static str,
    ) -> Vec<IntCounter> {
        let v = self.counter_vec(name, help, &[label]);
        all.iter().map(|l| v.with_label_values(&[s(*l)])).collect()
    }

    fn histograms<L: Copy>(
        &self,
        name: &str,
        help: &str,
        label: &str,
        all: &[L],
        s: fn(L) -> &'static str,
    ) -> (HistogramVec, Vec<Histogram>) {
        let v = self.histogram_vec(name, help, &[label]);
        let each = all.iter().map(|l| v.with_label_values(&[s(*l)])).collect();
        (v, each)
    }

    fn per_kind(&self, name: &str, help: &str) -> Vec<IntCounter> {
        self.counters(name, help, "kind", &Kind::ALL, Kind::as_str)
    }
}

impl Metrics {
    /// Builds and registers every family. Panics only on a programming error in a definition.
    pub fn new() -> Arc<Self> {
        let b = Builder(Registry::new());
        let http_requests = b.counter_vec(
            "sidecache_http_requests_total",
            HTTP_REQUESTS,
            &["route", "method", "status"],
        );
        let http_duration = b.histogram_vec(
            "sidecache_http_request_duration_seconds",
            HTTP_DURATION,
            &["route", "method", "status"],
        );
        let lookups_vec = b.counter_vec(
            "sidecache_cache_lookups_total",
            LOOKUPS,
            &["kind", "result"],
        );
        let lookups = Kind::ALL
            .iter()
            .map(|k| {
                LookupResult::ALL
                    .iter()
                    .map(|r| lookups_vec.with_label_values(&[k.as_str(), r.as_str()]))
                    .collect()
            })
            .collect();
        let fills_vec = b.counter_vec(
            "sidecache_cache_fills_total",
            FILLS,
            &["kind", "tier", "outcome"],
        );
        let fills = Kind::ALL
            .iter()
            .map(|k| {
                Tier::ALL
                    .iter()
                    .map(|t| {
                        FillOutcome::ALL
                            .iter()
                            .map(|o| {
                                fills_vec.with_label_values(&[k.as_str(), t.as_str(), o.as_str()])
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let (_, fill_duration) = b.histograms(
            "sidecache_cache_fill_duration_seconds",
            FILL_DURATION,
            "kind",
            &Kind::ALL,
            Kind::as_str,
        );
        let redis_ops = b.counters(
            "sidecache_redis_operations_total",
            REDIS_OPS,
            "command",
            &RedisOp::ALL,
            RedisOp::as_str,
        );
        let redis_errors = b.counters(
            "sidecache_redis_errors_total",
            REDIS_ERRORS,
            "command",
            &RedisOp::ALL,
            RedisOp::as_str,
        );
        let (_, redis_duration) = b.histograms(
            "sidecache_redis_operation_duration_seconds",
            REDIS_DURATION,
            "command",
            &RedisOp::ALL,
            RedisOp::as_str,
        );
        let pg_queries = b.counters(
            "sidecache_postgres_queries_total",
            PG_QUERIES,
            "query",
            &PgQuery::ALL,
            PgQuery::as_str,
        );
        let pg_errors = b.counters(
            "sidecache_postgres_errors_total",
            PG_ERRORS,
            "query",
            &PgQuery::ALL,
            PgQuery::as_str,
        );
        let (_, pg_duration) = b.histograms(
            "sidecache_postgres_query_duration_seconds",
            PG_DURATION,
            "query",
            &PgQuery::ALL,
            PgQuery::as_str,
        );
        let invalidations = b.counters(
            "sidecache_invalidations_total",
            INVALIDATIONS,
            "source",
            &Source::ALL,
            Source::as_str,
        );
        let invalidated_vec = b.counter_vec(
            "sidecache_invalidated_keys_total",
            INVALIDATED,
            &["tier", "what"],
        );
        let invalidated = Tier::ALL
            .iter()
            .map(|t| {
                Target::ALL
                    .iter()
                    .map(|w| invalidated_vec.with_label_values(&[t.as_str(), w.as_str()]))
                    .collect()
            })
            .collect();
        let coalesced = b.per_kind("sidecache_coalesced_waits_total", COALESCED);
        let stale_vec = b.counter_vec(
            "sidecache_stale_served_total",
            STALE_SERVED,
            &["kind", "reason"],
        );
        let stale_served = Kind::ALL
            .iter()
            .map(|k| {
                StaleReason::ALL
                    .iter()
                    .map(|r| stale_vec.with_label_values(&[k.as_str(), r.as_str()]))
                    .collect()
            })
            .collect();
        let lookup_timeouts = b.per_kind("sidecache_lookup_timeouts_total", LOOKUP_TIMEOUTS);
        let refreshes_ahead = b.per_kind("sidecache_refreshes_ahead_total", REFRESHES_AHEAD);
        let refresh_failures = b.per_kind("sidecache_refresh_failures_total", REFRESH_FAILURES);
        let pg_pool_timeouts =
            b.counter("sidecache_postgres_pool_timeouts_total", PG_POOL_TIMEOUTS);
        let overload_rejections = b.counter("sidecache_overload_rejections_total", OVERLOAD);
        let admin_auth_failures = b.counter("sidecache_admin_auth_failures_total", ADMIN_AUTH);
        let component_vec = IntGaugeVec::new(
            Opts::new("sidecache_component_enabled", COMPONENT),
            &["component"],
        )
        .expect("valid metric definition");
        b.0.register(Box::new(component_vec.clone()))
            .expect("metric registered once");
        let component_enabled = Component::ALL
            .iter()
            .map(|c| component_vec.with_label_values(&[c.as_str()]))
            .collect();
        let in_flight = b.gauge("sidecache_http_requests_in_flight", IN_FLIGHT);
        let l1_entries = b.gauge("sidecache_l1_entries", L1_ENTRIES);
        let l1_bytes = b.gauge("sidecache_l1_weighted_bytes", L1_BYTES);
        let redis_up = b.gauge("sidecache_redis_up", REDIS_UP);
        let postgres_up = b.gauge("sidecache_postgres_up", POSTGRES_UP);
        let redis_breaker = b.gauge("sidecache_redis_breaker_state", BREAKER);
        let breaker_transitions = b.counters(
            "sidecache_redis_breaker_transitions_total",
            BREAKER_TRANSITIONS,
            "to",
            &BreakerState::ALL,
            BreakerState::as_str,
        );
        let redis_skipped = b.counter("sidecache_redis_skipped_total", REDIS_SKIPPED);
        let (invalidation_lag, invalidation_lag_by_source) = b.histograms(
            "sidecache_invalidation_lag_seconds",
            INVALIDATION_LAG,
            "source",
            &Source::ALL,
            Source::as_str,
        );
        let outbox_backlog = b.gauge("sidecache_outbox_backlog", OUTBOX_BACKLOG);
        let outbox_rows = b.counters(
            "sidecache_outbox_rows_total",
            OUTBOX_ROWS,
            "action",
            &OutboxAction::ALL,
            OutboxAction::as_str,
        );
        let listener_up = b.gauge("sidecache_listener_up", LISTENER_UP);
        let bus_up = b.gauge("sidecache_bus_up", BUS_UP);
        let bus_vec = b.counter_vec(
            "sidecache_bus_messages_total",
            BUS_MESSAGES,
            &["direction", "kind"],
        );
        let bus_messages = BusDirection::ALL
            .iter()
            .map(|d| {
                BusMessage::ALL
                    .iter()
                    .map(|k| bus_vec.with_label_values(&[d.as_str(), k.as_str()]))
                    .collect()
            })
            .collect();
        let bus_gaps = b.counter("sidecache_bus_gaps_total", BUS_GAPS);
        let l1_flushes = b.counters(
            "sidecache_l1_flushes_total",
            L1_FLUSHES,
            "reason",
            &FlushReason::ALL,
            FlushReason::as_str,
        );
        let redis_resets = b.counters(
            "sidecache_redis_resets_total",
            REDIS_RESETS,
            "cause",
            &ResetCause::ALL,
            ResetCause::as_str,
        );
        let lease_waits = b.counters(
            "sidecache_lease_waits_total",
            LEASE_WAITS,
            "outcome",
            &LeaseOutcome::ALL,
            LeaseOutcome::as_str,
        );
        let state = StateMetrics::new(&b);
        let edge = EdgeMetrics::new(&b);
        let audit = AuditMetrics::new(&b);
        Arc::new(Metrics {
            state,
            edge,
            audit,
            registry: b.0,
            http_requests,
            http_duration,
            http_lookups: LookupRoute::ALL
                .iter()
                .map(|_| std::array::from_fn(|_| OnceLock::new()))
                .collect(),
            lookups,
            fills,
            fill_duration,
            redis_ops,
            redis_errors,
            redis_duration,
            pg_queries,
            pg_errors,
            pg_duration,
            invalidations,
            invalidated,
            coalesced,
            stale_served,
            lookup_timeouts,
            refreshes_ahead,
            refresh_failures,
            pg_pool_timeouts,
            overload_rejections,
            admin_auth_failures,
            component_enabled,
            in_flight,
            l1_entries,
            l1_bytes,
            redis_up,
            postgres_up,
            redis_breaker,
            breaker_transitions,
            redis_skipped,
            invalidation_lag,
            invalidation_lag_by_source,
            outbox_backlog,
            outbox_rows,
            listener_up,
            bus_up,
            bus_messages,
            bus_gaps,
            l1_flushes,
            redis_resets,
            lease_waits,
        })
    }

    /// Counts and times one answered request.
    pub fn http_request(&self, route: &str, method: &str, status: &str, seconds: f64) {
        let labels = [route, method, status];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(seconds);
    }

    /// Counts and times one `GET` of a lookup route; the common statuses without hashing labels.
    pub fn lookup_request(
        &self,
        route: LookupRoute,
        status: u16,
        status_label: &str,
        seconds: f64,
    ) {
        let Some(i) = LOOKUP_STATUSES.iter().position(|s| *s == status) else {
            return self.http_request(route.as_str(), "GET", status_label, seconds);
        };
        let (requests, duration) = self.http_lookups[route.index()][i].get_or_init(|| {
            let labels = [route.as_str(), "GET", status_label];
            (
                self.http_requests.with_label_values(&labels),
                self.http_duration.with_label_values(&labels),
            )
        });
        requests.inc();
        duration.observe(seconds);
    }

    /// Counts one lookup answered with `status` (a negative entry counts as `negative`).
    pub fn lookup(&self, kind: Kind, status: CacheStatus, negative: bool) {
        self.lookups[kind.index()][LookupResult::of(status, negative).index()].inc();
    }

    /// Lookups of `kind` so far, in the order of [`LookupResult::ALL`].
    pub fn lookup_counts(&self, kind: Kind) -> [u64; LookupResult::ALL.len()] {
        std::array::from_fn(|i| self.lookups[kind.index()][i].get())
    }

    /// A value offered to a tier, and what became of it.
    pub fn fill(&self, kind: Kind, tier: Tier, outcome: FillOutcome) {
        self.fills[kind.index()][tier.index()][outcome.index()].inc();
    }

    pub fn fill_duration(&self, kind: Kind) -> &Histogram {
        &self.fill_duration[kind.index()]
    }

    pub fn coalesced(&self, kind: Kind) -> &IntCounter {
        &self.coalesced[kind.index()]
    }

    pub fn stale(&self, kind: Kind, reason: StaleReason) {
        self.stale_served[kind.index()][reason.index()].inc();
    }

    pub fn lookup_timeouts(&self, kind: Kind) -> &IntCounter {
        &self.lookup_timeouts[kind.index()]
    }

    pub fn refreshes_ahead(&self, kind: Kind) -> &IntCounter {
        &self.refreshes_ahead[kind.index()]
    }

    pub fn refresh_failures(&self, kind: Kind) -> &IntCounter {
        &self.refresh_failures[kind.index()]
    }

    /// One Redis operation attempted: its latency, and whether it failed.
    pub fn redis_op(&self, op: RedisOp, seconds: f64, ok: bool) {
        self.redis_ops[op.index()].inc();
        self.redis_duration[op.index()].observe(seconds);
        if !ok {
            self.redis_errors[op.index()].inc();
        }
    }

    /// How long (re)connecting to Redis took (not an operation: not counted as one).
    pub fn redis_connected(&self, seconds: f64) {
        self.redis_duration[RedisOp::Connect.index()].observe(seconds);
    }

    /// One Postgres statement run: its latency, and whether it failed.
    pub fn pg_query(&self, q: PgQuery, seconds: f64, ok: bool) {
        self.pg_queries[q.index()].inc();
        self.pg_duration[q.index()].observe(seconds);
        if !ok {
            self.pg_errors[q.index()].inc();
        }
    }

    pub fn invalidation(&self, source: Source) {
        self.invalidations[source.index()].inc();
    }

    pub fn invalidation_lag(&self, source: Source, seconds: f64) {
        self.invalidation_lag_by_source[source.index()].observe(seconds.max(0.0));
    }

    /// Keys or tags dropped from a tier.
    pub fn invalidated(&self, tier: Tier, target: Target, n: u64) {
        self.invalidated[tier.index()][target.index()].inc_by(n);
    }

    pub fn breaker_transition(&self, to: BreakerState) {
        self.breaker_transitions[to.index()].inc();
    }

    pub fn outbox_rows(&self, action: OutboxAction, n: u64) {
        self.outbox_rows[action.index()].inc_by(n);
    }

    pub fn bus_messages(&self, direction: BusDirection, kind: BusMessage, n: u64) {
        self.bus_messages[direction.index()][kind.index()].inc_by(n);
    }

    pub fn l1_flush(&self, reason: FlushReason) {
        self.l1_flushes[reason.index()].inc();
    }

    pub fn redis_reset(&self, cause: ResetCause) {
        self.redis_resets[cause.index()].inc();
    }

    pub fn lease_wait(&self, outcome: LeaseOutcome) {
        self.lease_waits[outcome.index()].inc();
    }

    /// Whether configuration switched a component on.
    pub fn component(&self, c: Component, on: bool) {
        self.component_enabled[c.index()].set(i64::from(on));
    }

    /// The text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}
