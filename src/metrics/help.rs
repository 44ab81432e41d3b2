//! The help text of every metric family.

// Help texts, one per family (what `# HELP` says).
pub(super) const HTTP_REQUESTS: &str =
    "HTTP requests answered, by matched route, method and status code.";
pub(super) const HTTP_DURATION: &str = "Time from request received to response headers ready, by matched route, method and status code.";
pub(super) const LOOKUPS: &str =
    "Cache lookups by kind and result (hit_l1, hit_l2, miss, negative, stale).";
pub(super) const FILLS: &str = "Values loaded from Postgres and offered to a cache tier, by kind, tier and outcome (stored, fenced, error).";
pub(super) const FILL_DURATION: &str =
    "Time to load a missing value from Postgres and fill the caches, by kind.";
pub(super) const REDIS_OPS: &str = "Redis operations attempted, by command.";
pub(super) const REDIS_ERRORS: &str = "Redis operations that failed or timed out, by command.";
pub(super) const REDIS_DURATION: &str = "Redis operation latency, by command.";
pub(super) const PG_QUERIES: &str = "Postgres queries run, by query name.";
pub(super) const PG_ERRORS: &str = "Postgres queries that failed, by query name.";
pub(super) const PG_DURATION: &str = "Postgres query latency, by query name.";
pub(super) const INVALIDATIONS: &str =
    "Changes applied to the caches, by source (write, notify, peer, admin).";
pub(super) const INVALIDATED: &str =
    "Keys and tags dropped by invalidations, by tier (l1, l2) and what (key, tag).";
pub(super) const COALESCED: &str = "Lookups that waited for another request's load of the same key instead of loading it again, by kind.";
pub(super) const STALE_SERVED: &str = "Answers served past their TTL (x-cache: STALE), by kind and reason (error: the refresh failed; slow: it outlived the soft timeout; throttled: a recent refresh failed; busy: another instance is refreshing it).";
pub(super) const LOOKUP_TIMEOUTS: &str =
    "Lookups that reached their deadline with nothing servable (answered 503), by kind.";
pub(super) const REFRESHES_AHEAD: &str =
    "Background refreshes started for hot keys in the last part of their lifetime, by kind.";
pub(super) const REFRESH_FAILURES: &str =
    "Loads from Postgres that failed (unavailable, timed out, pool exhausted), by kind.";
pub(super) const PG_POOL_TIMEOUTS: &str = "Postgres queries that found no free connection within the acquire timeout (pool exhausted or Postgres unreachable).";
pub(super) const OVERLOAD: &str =
    "Requests answered 503 with Retry-After because the concurrency limit was reached.";
pub(super) const ADMIN_AUTH: &str =
    "Requests to /admin refused for a missing or wrong bearer token (401).";
pub(super) const COMPONENT: &str = "1 if a component is switched on by configuration (l1, redis, listener, bus, admin, sessions, events, rate_limits), else 0; alerts on a component being down only apply when it is on.";
pub(super) const IN_FLIGHT: &str =
    "API requests being handled now (bounded by server.max_concurrency).";
pub(super) const L1_ENTRIES: &str = "Entries held in the in-process cache (L1).";
pub(super) const L1_BYTES: &str =
    "Approximate bytes held in the in-process cache (L1), as weighed against its bound.";
pub(super) const REDIS_UP: &str = "1 if Redis is enabled and answering, else 0.";
pub(super) const POSTGRES_UP: &str = "1 if Postgres is answering, else 0.";
pub(super) const BREAKER: &str =
    "The Redis circuit breaker: 0 closed, 1 half-open (probing), 2 open (Redis skipped).";
pub(super) const BREAKER_TRANSITIONS: &str =
    "Redis circuit breaker transitions, by the state entered (closed, half_open, open).";
pub(super) const REDIS_SKIPPED: &str =
    "Redis operations not attempted because the circuit breaker was open.";
pub(super) const INVALIDATION_LAG: &str = "Time from a change's commit to its invalidation applied on this instance, by source (write, notify, peer).";
pub(super) const OUTBOX_BACKLOG: &str = "Outbox rows committed in Postgres that this instance's change listener has not applied yet (newest id minus last applied id).";
pub(super) const OUTBOX_ROWS: &str = "Outbox rows read by the change listener, by action (applied; own_write: this instance's write route had already applied it; already_applied: another instance had already dropped it from Redis).";
pub(super) const LISTENER_UP: &str =
    "1 while the Postgres change listener is connected and caught up, else 0.";
pub(super) const BUS_UP: &str = "1 while this instance is subscribed to the peer invalidation bus and hears its own heartbeats, else 0.";
pub(super) const BUS_MESSAGES: &str = "Peer invalidation bus messages, by direction (sent, received) and kind (invalidation, heartbeat).";
pub(super) const BUS_GAPS: &str =
    "Gaps seen in a peer's message sequence (a message was lost); each flushes L1.";
pub(super) const L1_FLUSHES: &str = "Times the whole L1 was dropped, by reason (bus_gap, bus_resubscribe, listener_gap, admin, redis_reset).";
pub(super) const REDIS_RESETS: &str = "Times the Redis namespace got a new incarnation (fills in flight refused, values voided, L1 dropped), made or seen by this instance, by cause (admin, listener_gap, state_lost, server_changed, evictions, observed).";
pub(super) const LEASE_WAITS: &str = "Lookups that found another load holding the key's fill lease and waited, by outcome (filled: its value arrived; released: it gave up, we loaded; timeout: we stopped waiting and loaded).";
