//! The Prometheus registry and every metric family sidecache exports, with their help texts.
//! Label tables come from [`crate::labels`]; every series a label enum can name exists from the
//! start (at zero) and is resolved once, so counting on a hot path does no label hashing. Call
//! sites use the typed methods below, never a label string.

mod snapshot;

pub use snapshot::{hit_ratio, l1_hit_ratio, quantile, ratio, Counts, Lag, Rates, Snapshot};

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::labels::{
    BreakerState, BusDirection, BusMessage, CacheStatus, Component, FillOutcome, FlushReason, Kind,
    LeaseOutcome, LookupResult, OutboxAction, PgQuery, RedisOp, ResetCause, Source, StaleReason,
    Target, Tier,
};

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
        Arc::new(Metrics {
            registry: b.0,
            http_requests,
            http_duration,
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

// Help texts, one per family (what `# HELP` says).
const HTTP_REQUESTS: &str = "HTTP requests answered, by matched route, method and status code.";
const HTTP_DURATION: &str = "Time from request received to response headers ready, by matched route, method and status code.";
const LOOKUPS: &str = "Cache lookups by kind and result (hit_l1, hit_l2, miss, negative, stale).";
const FILLS: &str = "Values loaded from Postgres and offered to a cache tier, by kind, tier and outcome (stored, fenced, error).";
const FILL_DURATION: &str =
    "Time to load a missing value from Postgres and fill the caches, by kind.";
const REDIS_OPS: &str = "Redis operations attempted, by command.";
const REDIS_ERRORS: &str = "Redis operations that failed or timed out, by command.";
const REDIS_DURATION: &str = "Redis operation latency, by command.";
const PG_QUERIES: &str = "Postgres queries run, by query name.";
const PG_ERRORS: &str = "Postgres queries that failed, by query name.";
const PG_DURATION: &str = "Postgres query latency, by query name.";
const INVALIDATIONS: &str =
    "Changes applied to the caches, by source (write, notify, peer, admin).";
const INVALIDATED: &str =
    "Keys and tags dropped by invalidations, by tier (l1, l2) and what (key, tag).";
const COALESCED: &str = "Lookups that waited for another request's load of the same key instead of loading it again, by kind.";
const STALE_SERVED: &str = "Answers served past their TTL (x-cache: STALE), by kind and reason (error: the refresh failed; slow: it outlived the soft timeout; throttled: a recent refresh failed; busy: another instance is refreshing it).";
const LOOKUP_TIMEOUTS: &str =
    "Lookups that reached their deadline with nothing servable (answered 503), by kind.";
const REFRESHES_AHEAD: &str =
    "Background refreshes started for hot keys in the last part of their lifetime, by kind.";
const REFRESH_FAILURES: &str =
    "Loads from Postgres that failed (unavailable, timed out, pool exhausted), by kind.";
const PG_POOL_TIMEOUTS: &str = "Postgres queries that found no free connection within the acquire timeout (pool exhausted or Postgres unreachable).";
const OVERLOAD: &str =
    "Requests answered 503 with Retry-After because the concurrency limit was reached.";
const ADMIN_AUTH: &str = "Requests to /admin refused for a missing or wrong bearer token (401).";
const COMPONENT: &str = "1 if a component is switched on by configuration (l1, redis, listener, bus, admin), else 0; alerts on a component being down only apply when it is on.";
const IN_FLIGHT: &str = "API requests being handled now (bounded by server.max_concurrency).";
const L1_ENTRIES: &str = "Entries held in the in-process cache (L1).";
const L1_BYTES: &str =
    "Approximate bytes held in the in-process cache (L1), as weighed against its bound.";
const REDIS_UP: &str = "1 if Redis is enabled and answering, else 0.";
const POSTGRES_UP: &str = "1 if Postgres is answering, else 0.";
const BREAKER: &str =
    "The Redis circuit breaker: 0 closed, 1 half-open (probing), 2 open (Redis skipped).";
const BREAKER_TRANSITIONS: &str =
    "Redis circuit breaker transitions, by the state entered (closed, half_open, open).";
const REDIS_SKIPPED: &str = "Redis operations not attempted because the circuit breaker was open.";
const INVALIDATION_LAG: &str = "Time from a change's commit to its invalidation applied on this instance, by source (write, notify, peer).";
const OUTBOX_BACKLOG: &str = "Outbox rows committed in Postgres that this instance's change listener has not applied yet (newest id minus last applied id).";
const OUTBOX_ROWS: &str = "Outbox rows read by the change listener, by action (applied; own_write: this instance's write route had already applied it; already_applied: another instance had already dropped it from Redis).";
const LISTENER_UP: &str =
    "1 while the Postgres change listener is connected and caught up, else 0.";
const BUS_UP: &str = "1 while this instance is subscribed to the peer invalidation bus and hears its own heartbeats, else 0.";
const BUS_MESSAGES: &str = "Peer invalidation bus messages, by direction (sent, received) and kind (invalidation, heartbeat).";
const BUS_GAPS: &str =
    "Gaps seen in a peer's message sequence (a message was lost); each flushes L1.";
const L1_FLUSHES: &str = "Times the whole L1 was dropped, by reason (bus_gap, bus_resubscribe, listener_gap, admin, redis_reset).";
const REDIS_RESETS: &str = "Times the Redis namespace got a new incarnation (fills in flight refused, values voided, L1 dropped), made or seen by this instance, by cause (admin, listener_gap, state_lost, server_changed, evictions, observed).";
const LEASE_WAITS: &str = "Lookups that found another load holding the key's fill lease and waited, by outcome (filled: its value arrived; released: it gave up, we loaded; timeout: we stopped waiting and loaded).";
