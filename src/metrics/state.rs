//! The families of the shared call state: session operations, sessions held, write-backs after
//! an outage, events and their subscribers, rate-limit decisions, and fallbacks to memory.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::Builder;
use crate::labels::{RateDecision, SessionOp, SessionOutcome, StateStore, StateUser, WriteBack};

const SESSION_OPS: &str = "Session operations, by operation (put, get, patch, touch, delete, list), store (redis, memory) and outcome.";
const SESSIONS_ACTIVE: &str = "Live sessions, by store: in Redis (the fleet's, counted through the index every few seconds) and in this instance's memory.";
const WRITE_BACKS: &str = "Sessions written to memory while Redis was away, and what became of them once it was back (written; superseded: Redis held a later write; expired).";
const FALLBACKS: &str = "Operations that could not use Redis and were served from this instance's memory, by what (sessions, events, rate_limits).";
const EVENTS_PUBLISHED: &str = "Events appended to a stream, by store (redis, memory).";
const EVENTS_DELIVERED: &str = "Events sent to Server-Sent Events subscribers on this instance.";
const SSE_SUBSCRIBERS: &str = "Server-Sent Events subscribers connected to this instance now.";
const SSE_CUT: &str = "Subscribers cut because they left events unread too long (they may resume).";
const SSE_REFUSED: &str =
    "Subscriptions refused because this instance serves events.max_subscribers already.";
const RATE_LIMIT_DECISIONS: &str =
    "Rate-limit checks, by limit, outcome (allowed, denied) and store (redis, memory).";

/// The state families.
pub struct StateMetrics {
    /// Per op, store, outcome.
    session_ops: Vec<Vec<Vec<IntCounter>>>,
    sessions_active: Vec<IntGauge>,
    write_backs: Vec<IntCounter>,
    fallbacks: Vec<IntCounter>,
    events_published: Vec<IntCounter>,
    pub events_delivered: IntCounter,
    pub sse_subscribers: IntGauge,
    pub sse_cut: IntCounter,
    pub sse_refused: IntCounter,
    rate_limit_decisions: IntCounterVec,
}

impl StateMetrics {
    pub(super) fn new(b: &Builder) -> Self {
        let ops = b.counter_vec(
            "sidecache_session_operations_total",
            SESSION_OPS,
            &["op", "store", "outcome"],
        );
        let session_ops = SessionOp::ALL
            .iter()
            .map(|op| {
                StateStore::ALL
                    .iter()
                    .map(|s| {
                        SessionOutcome::ALL
                            .iter()
                            .map(|o| ops.with_label_values(&[op.as_str(), s.as_str(), o.as_str()]))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let active = b.gauge_vec("sidecache_sessions_active", SESSIONS_ACTIVE, &["store"]);
        StateMetrics {
            session_ops,
            sessions_active: StateStore::ALL
                .iter()
                .map(|s| active.with_label_values(&[s.as_str()]))
                .collect(),
            write_backs: b.counters(
                "sidecache_session_write_backs_total",
                WRITE_BACKS,
                "result",
                &WriteBack::ALL,
                WriteBack::as_str,
            ),
            fallbacks: b.counters(
                "sidecache_state_fallbacks_total",
                FALLBACKS,
                "what",
                &StateUser::ALL,
                StateUser::as_str,
            ),
            events_published: b.counters(
                "sidecache_events_published_total",
                EVENTS_PUBLISHED,
                "store",
                &StateStore::ALL,
                StateStore::as_str,
            ),
            events_delivered: b.counter("sidecache_events_delivered_total", EVENTS_DELIVERED),
            sse_subscribers: b.gauge("sidecache_sse_subscribers", SSE_SUBSCRIBERS),
            sse_cut: b.counter("sidecache_sse_subscribers_cut_total", SSE_CUT),
            sse_refused: b.counter("sidecache_sse_subscribers_refused_total", SSE_REFUSED),
            rate_limit_decisions: b.counter_vec(
                "sidecache_rate_limit_decisions_total",
                RATE_LIMIT_DECISIONS,
                &["limit", "outcome", "store"],
            ),
        }
    }

    pub fn session_op(&self, op: SessionOp, store: StateStore, outcome: SessionOutcome) {
        self.session_ops[op.index()][store.index()][outcome.index()].inc();
    }

    pub fn sessions_active(&self, store: StateStore) -> &IntGauge {
        &self.sessions_active[store.index()]
    }

    pub fn write_back(&self, result: WriteBack) {
        self.write_backs[result.index()].inc();
    }

    pub fn fallback(&self, what: StateUser) {
        self.fallbacks[what.index()].inc();
    }

    pub fn event_published(&self, store: StateStore) {
        self.events_published[store.index()].inc();
    }

    /// The decision counters of one limit, resolved once: `[outcome][store]`.
    pub fn rate_limit(&self, limit: &str) -> Vec<Vec<IntCounter>> {
        RateDecision::ALL
            .iter()
            .map(|o| {
                StateStore::ALL
                    .iter()
                    .map(|s| {
                        self.rate_limit_decisions.with_label_values(&[
                            limit,
                            o.as_str(),
                            s.as_str(),
                        ])
                    })
                    .collect()
            })
            .collect()
    }
}
