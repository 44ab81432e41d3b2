//! The Prometheus registry and every metric family sidecache exports, with their help texts.
//! Hot-path counters are resolved once at start-up so a lookup does no label hashing.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cache::{CacheStatus, Kind, ResetCause};

/// Latency buckets in seconds, from 50 µs (an L1 hit) to 10 s (a stuck query).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Results of a cache lookup, as the `result` label.
pub const LOOKUP_RESULTS: [&str; 5] = ["hit_l1", "hit_l2", "miss", "negative", "stale"];

/// Redis commands sidecache issues (their series exist from the start, at zero).
pub const REDIS_COMMANDS: &[&str] = &[
    "read",
    "lease",
    "mget",
    "fill",
    "release",
    "invalidate",
    "check",
    "reset",
    "scan",
    "unlink",
];

/// Where an invalidation came from, as the `source` label.
pub const INVALIDATION_SOURCES: [&str; 4] = ["write", "notify", "peer", "admin"];

/// Why L1 was flushed as a whole, as the `reason` label.
pub const FLUSH_REASONS: [&str; 5] = [
    "bus_gap",
    "bus_resubscribe",
    "listener_gap",
    "admin",
    "redis_reset",
];

/// What became of a lookup that found another load holding the key's lease.
pub const LEASE_OUTCOMES: [&str; 3] = ["filled", "released", "timeout"];

/// What the change listener did with an outbox row.
pub const OUTBOX_ACTIONS: [&str; 3] = ["applied", "own_write", "already_applied"];

/// Named Postgres statements (their series exist from the start, at zero).
pub const PG_QUERIES: &[&str] = &[
    "org_by_id",
    "org_by_phone",
    "lead_by_id",
    "lead_by_phone",
    "lead_with_org",
    "conversations_page",
    "conversation_stats",
    "lead_exists",
    "ping",
    "version_of",
    "outbox_read",
    "outbox_newest",
    "outbox_prune",
    "create_org",
    "update_org",
    "create_lead",
    "update_lead",
    "delete_lead",
    "create_conversation",
    "update_conversation",
];

/// Every metric family, registered in one registry.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    lookups: Vec<[IntCounter; 5]>,
    pub fills: IntCounterVec,
    fill_duration: Vec<Histogram>,
    pub redis_ops: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub redis_duration: HistogramVec,
    pub pg_queries: IntCounterVec,
    pub pg_errors: IntCounterVec,
    pub pg_duration: HistogramVec,
    pub invalidations: IntCounterVec,
    pub invalidated_keys: IntCounterVec,
    coalesced: Vec<IntCounter>,
    pub stale_served: IntCounterVec,
    lookup_timeouts: Vec<IntCounter>,
    refreshes_ahead: Vec<IntCounter>,
    refresh_failures: Vec<IntCounter>,
    pub pg_pool_timeouts: IntCounter,
    pub overload_rejections: IntCounter,
    pub admin_auth_failures: IntCounter,
    pub component_enabled: IntGaugeVec,
    pub in_flight: IntGauge,
    pub l1_entries: IntGauge,
    pub l1_bytes: IntGauge,
    pub redis_up: IntGauge,
    pub postgres_up: IntGauge,
    pub redis_breaker: IntGauge,
    pub redis_breaker_transitions: IntCounterVec,
    pub redis_skipped: IntCounter,
    pub invalidation_lag: HistogramVec,
    pub outbox_backlog: IntGauge,
    pub outbox_rows: IntCounterVec,
    pub listener_up: IntGauge,
    pub bus_up: IntGauge,
    pub bus_messages: IntCounterVec,
    pub bus_gaps: IntCounter,
    pub l1_flushes: IntCounterVec,
    pub lease_waits: IntCounterVec,
    pub redis_resets: IntCounterVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// Builds and registers every family. Panics only on a programming error in a definition.
    pub fn new() -> Arc<Self> {
        let r = Registry::new();
        let http_requests = counter_vec(
            &r,
            "sidecache_http_requests_total",
            "HTTP requests answered, by matched route, method and status code.",
            &["route", "method", "status"],
        );
        let http_duration = histogram_vec(
            &r,
            "sidecache_http_request_duration_seconds",
            "Time from request received to response headers ready, by matched route, method and status code.",
            &["route", "method", "status"],
        );
        let lookups_vec = counter_vec(
            &r,
            "sidecache_cache_lookups_total",
            "Cache lookups by kind and result (hit_l1, hit_l2, miss, negative, stale).",
            &["kind", "result"],
        );
        let lookups = Kind::ALL
            .iter()
            .map(|k| LOOKUP_RESULTS.map(|res| lookups_vec.with_label_values(&[k.as_str(), res])))
            .collect();
        let fills = counter_vec(
            &r,
            "sidecache_cache_fills_total",
            "Values loaded from Postgres and offered to a cache tier, by kind, tier and outcome (stored, fenced, error).",
            &["kind", "tier", "outcome"],
        );
        let fill_duration_vec = histogram_vec(
            &r,
            "sidecache_cache_fill_duration_seconds",
            "Time to load a missing value from Postgres and fill the caches, by kind.",
            &["kind"],
        );
        let fill_duration = Kind::ALL
            .iter()
            .map(|k| fill_duration_vec.with_label_values(&[k.as_str()]))
            .collect();
        let redis_ops = counter_vec(
            &r,
            "sidecache_redis_operations_total",
            "Redis operations attempted, by command.",
            &["command"],
        );
        let redis_errors = counter_vec(
            &r,
            "sidecache_redis_errors_total",
            "Redis operations that failed or timed out, by command.",
            &["command"],
        );
        let redis_duration = histogram_vec(
            &r,
            "sidecache_redis_operation_duration_seconds",
            "Redis operation latency, by command.",
            &["command"],
        );
        let pg_queries = counter_vec(
            &r,
            "sidecache_postgres_queries_total",
            "Postgres queries run, by query name.",
            &["query"],
        );
        let pg_errors = counter_vec(
            &r,
            "sidecache_postgres_errors_total",
            "Postgres queries that failed, by query name.",
            &["query"],
        );
        let pg_duration = histogram_vec(
            &r,
            "sidecache_postgres_query_duration_seconds",
            "Postgres query latency, by query name.",
            &["query"],
        );
        let invalidations = counter_vec(
            &r,
            "sidecache_invalidations_total",
            "Changes applied to the caches, by source (write, notify, peer, admin).",
            &["source"],
        );
        let invalidated_keys = counter_vec(
            &r,
            "sidecache_invalidated_keys_total",
            "Keys and tags dropped by invalidations, by tier (l1, l2) and what (key, tag).",
            &["tier", "what"],
        );
        let coalesced_vec = counter_vec(
            &r,
            "sidecache_coalesced_waits_total",
            "Lookups that waited for another request's load of the same key instead of loading it again, by kind.",
            &["kind"],
        );
        let coalesced = Kind::ALL
            .iter()
            .map(|k| coalesced_vec.with_label_values(&[k.as_str()]))
            .collect();
        let stale_served = counter_vec(
            &r,
            "sidecache_stale_served_total",
            "Answers served past their TTL (x-cache: STALE), by kind and reason (error: the refresh failed; slow: it outlived the soft timeout; throttled: a recent refresh failed; busy: another instance is refreshing it).",
            &["kind", "reason"],
        );
        let per_kind = |name: &str, help: &str| -> Vec<IntCounter> {
            let v = counter_vec(&r, name, help, &["kind"]);
            Kind::ALL
                .iter()
                .map(|k| v.with_label_values(&[k.as_str()]))
                .collect()
        };
        let lookup_timeouts = per_kind(
            "sidecache_lookup_timeouts_total",
            "Lookups that reached their deadline with nothing servable (answered 503), by kind.",
        );
        let refreshes_ahead = per_kind(
            "sidecache_refreshes_ahead_total",
            "Background refreshes started for hot keys in the last part of their lifetime, by kind.",
        );
        let refresh_failures = per_kind(
            "sidecache_refresh_failures_total",
            "Loads from Postgres that failed (unavailable, timed out, pool exhausted), by kind.",
        );
        let pg_pool_timeouts = IntCounter::new(
            "sidecache_postgres_pool_timeouts_total",
            "Postgres queries that found no free connection within the acquire timeout (pool exhausted or Postgres unreachable).",
        )
        .expect("valid metric definition");
        r.register(Box::new(pg_pool_timeouts.clone()))
            .expect("metric registered once");
        let overload_rejections = IntCounter::new(
            "sidecache_overload_rejections_total",
            "Requests answered 503 with Retry-After because the concurrency limit was reached.",
        )
        .expect("valid metric definition");
        r.register(Box::new(overload_rejections.clone()))
            .expect("metric registered once");
        let admin_auth_failures = IntCounter::new(
            "sidecache_admin_auth_failures_total",
            "Requests to /admin refused for a missing or wrong bearer token (401).",
        )
        .expect("valid metric definition");
        r.register(Box::new(admin_auth_failures.clone()))
            .expect("metric registered once");
        let component_enabled = IntGaugeVec::new(
            Opts::new(
                "sidecache_component_enabled",
                "1 if a component is switched on by configuration (l1, redis, listener, bus, admin), else 0; alerts on a component being down only apply when it is on.",
            ),
            &["component"],
        )
        .expect("valid metric definition");
        r.register(Box::new(component_enabled.clone()))
            .expect("metric registered once");
        let in_flight = gauge(
            &r,
            "sidecache_http_requests_in_flight",
            "API requests being handled now (bounded by server.max_concurrency).",
        );
        let l1_entries = gauge(
            &r,
            "sidecache_l1_entries",
            "Entries held in the in-process cache (L1).",
        );
        let l1_bytes = gauge(
            &r,
            "sidecache_l1_weighted_bytes",
            "Approximate bytes held in the in-process cache (L1), as weighed against its bound.",
        );
        let redis_up = gauge(
            &r,
            "sidecache_redis_up",
            "1 if Redis is enabled and answering, else 0.",
        );
        let postgres_up = gauge(
            &r,
            "sidecache_postgres_up",
            "1 if Postgres is answering, else 0.",
        );
        let redis_breaker = gauge(
            &r,
            "sidecache_redis_breaker_state",
            "The Redis circuit breaker: 0 closed, 1 half-open (probing), 2 open (Redis skipped).",
        );
        let redis_breaker_transitions = counter_vec(
            &r,
            "sidecache_redis_breaker_transitions_total",
            "Redis circuit breaker transitions, by the state entered (closed, half_open, open).",
            &["to"],
        );
        let redis_skipped = IntCounter::new(
            "sidecache_redis_skipped_total",
            "Redis operations not attempted because the circuit breaker was open.",
        )
        .expect("valid metric definition");
        r.register(Box::new(redis_skipped.clone()))
            .expect("metric registered once");
        let invalidation_lag = histogram_vec(
            &r,
            "sidecache_invalidation_lag_seconds",
            "Time from a change's commit to its invalidation applied on this instance, by source (write, notify, peer).",
            &["source"],
        );
        let outbox_backlog = gauge(
            &r,
            "sidecache_outbox_backlog",
            "Outbox rows committed in Postgres that this instance's change listener has not applied yet (newest id minus last applied id).",
        );
        let outbox_rows = counter_vec(
            &r,
            "sidecache_outbox_rows_total",
            "Outbox rows read by the change listener, by action (applied; own_write: this instance's write route had already applied it; already_applied: another instance had already dropped it from Redis).",
            &["action"],
        );
        let listener_up = gauge(
            &r,
            "sidecache_listener_up",
            "1 while the Postgres change listener is connected and caught up, else 0.",
        );
        let bus_up = gauge(
            &r,
            "sidecache_bus_up",
            "1 while this instance is subscribed to the peer invalidation bus and hears its own heartbeats, else 0.",
        );
        let bus_messages = counter_vec(
            &r,
            "sidecache_bus_messages_total",
            "Peer invalidation bus messages, by direction (sent, received) and kind (invalidation, heartbeat).",
            &["direction", "kind"],
        );
        let bus_gaps = IntCounter::new(
            "sidecache_bus_gaps_total",
            "Gaps seen in a peer's message sequence (a message was lost); each flushes L1.",
        )
        .expect("valid metric definition");
        r.register(Box::new(bus_gaps.clone()))
            .expect("metric registered once");
        let l1_flushes = counter_vec(
            &r,
            "sidecache_l1_flushes_total",
            "Times the whole L1 was dropped, by reason (bus_gap, bus_resubscribe, listener_gap, admin, redis_reset).",
            &["reason"],
        );
        let redis_resets = counter_vec(
            &r,
            "sidecache_redis_resets_total",
            "Times the Redis namespace got a new incarnation (fills in flight refused, values voided, L1 dropped), made or seen by this instance, by cause (admin, listener_gap, state_lost, server_changed, evictions, observed).",
            &["cause"],
        );
        let lease_waits = counter_vec(
            &r,
            "sidecache_lease_waits_total",
            "Lookups that found another load holding the key's fill lease and waited, by outcome (filled: its value arrived; released: it gave up, we loaded; timeout: we stopped waiting and loaded).",
            &["outcome"],
        );

        // Zero-valued series from the start, so rates and alerts work before the first event.
        for c in REDIS_COMMANDS {
            redis_ops.with_label_values(&[c]);
            redis_errors.with_label_values(&[c]);
        }
        for q in PG_QUERIES {
            pg_queries.with_label_values(&[q]);
            pg_errors.with_label_values(&[q]);
        }
        for k in Kind::ALL {
            for reason in ["error", "slow", "throttled", "busy"] {
                stale_served.with_label_values(&[k.as_str(), reason]);
            }
            for tier in ["l1", "l2"] {
                for outcome in ["stored", "fenced", "error"] {
                    fills.with_label_values(&[k.as_str(), tier, outcome]);
                }
            }
        }
        for source in INVALIDATION_SOURCES {
            invalidations.with_label_values(&[source]);
            invalidation_lag.with_label_values(&[source]);
        }
        for to in ["closed", "half_open", "open"] {
            redis_breaker_transitions.with_label_values(&[to]);
        }
        for reason in FLUSH_REASONS {
            l1_flushes.with_label_values(&[reason]);
        }
        for outcome in LEASE_OUTCOMES {
            lease_waits.with_label_values(&[outcome]);
        }
        for cause in ResetCause::ALL {
            redis_resets.with_label_values(&[cause.as_str()]);
        }
        for action in OUTBOX_ACTIONS {
            outbox_rows.with_label_values(&[action]);
        }
        for direction in ["sent", "received"] {
            for kind in ["invalidation", "heartbeat"] {
                bus_messages.with_label_values(&[direction, kind]);
            }
        }
        for tier in ["l1", "l2"] {
            for what in ["key", "tag"] {
                invalidated_keys.with_label_values(&[tier, what]);
            }
        }

        Arc::new(Metrics {
            registry: r,
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
            invalidated_keys,
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
            redis_breaker_transitions,
            redis_skipped,
            invalidation_lag,
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
        let i = match status {
            CacheStatus::HitL1 | CacheStatus::HitL2 if negative => 3,
            CacheStatus::HitL1 => 0,
            CacheStatus::HitL2 => 1,
            CacheStatus::Miss | CacheStatus::Bypass => 2,
            CacheStatus::Stale => 4,
        };
        self.lookups[kind.index()][i].inc();
    }

    /// Lookups of `kind` so far, in the order of [`LOOKUP_RESULTS`].
    pub fn lookup_counts(&self, kind: Kind) -> [u64; 5] {
        self.lookups[kind.index()].each_ref().map(IntCounter::get)
    }

    pub fn fill_duration(&self, kind: Kind) -> &Histogram {
        &self.fill_duration[kind.index()]
    }

    pub fn coalesced(&self, kind: Kind) -> &IntCounter {
        &self.coalesced[kind.index()]
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

    /// The text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}
