//! Stable labels: the kinds of lookup, where an answer came from, where a change came from, and
//! every reason, tier and outcome that shows up in a header, a metric label or a JSON field. One
//! enum per dimension, each with `as_str()` and `ALL` in a stable order, so `metrics` builds its
//! label tables from them and no code spells a label by hand. A leaf: it depends on nothing.

/// Declares a fieldless enum whose variants carry a stable label.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in a stable order (also the order of per-value tables).
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant,)+];

            /// The stable label.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

labels! {
    /// The kinds of lookup; each has its own key shape and policy (TTLs, caps).
    Kind {
        LeadByPhone => "lead_phone",
        LeadById => "lead_id",
        OrgByPhone => "org_phone",
        OrgById => "org_id",
        Context => "context",
        Summary => "summary",
        Greeting => "greeting",
        History => "history",
    }
}

labels! {
    /// The lookup routes, by their route template (the `route` label of the HTTP metrics):
    /// the hot path the front door answers without the router.
    LookupRoute {
        OrgById => "/v1/organizations/{id}",
        OrgByPhone => "/v1/organizations/by-phone/{phone}",
        LeadById => "/v1/leads/{id}",
        LeadByPhone => "/v1/leads/by-phone/{phone}",
        Context => "/v1/leads/{id}/context",
        Summary => "/v1/leads/{id}/summary",
        Greeting => "/v1/leads/{id}/greeting",
        History => "/v1/leads/{id}/history",
        Initiation => "/v1/calls/initiation",
        /// Not a cached lookup, but as hot: a handler reads its call's session on every turn.
        Session => "/v1/sessions/{id}",
    }
}

labels! {
    /// Where an answer came from: the `x-cache` header.
    CacheStatus {
        HitL1 => "HIT-L1",
        HitL2 => "HIT-L2",
        Miss => "MISS",
        Stale => "STALE",
        Bypass => "BYPASS",
    }
}

labels! {
    /// A lookup's result, as counted (`sidecache_cache_lookups_total{result}`): a cached "not
    /// found" counts as `negative` whichever tier answered it.
    LookupResult {
        HitL1 => "hit_l1",
        HitL2 => "hit_l2",
        Miss => "miss",
        Negative => "negative",
        Stale => "stale",
    }
}

impl LookupResult {
    /// How a lookup answered with `status` is counted.
    pub fn of(status: CacheStatus, negative: bool) -> Self {
        match status {
            CacheStatus::HitL1 | CacheStatus::HitL2 if negative => LookupResult::Negative,
            CacheStatus::HitL1 => LookupResult::HitL1,
            CacheStatus::HitL2 => LookupResult::HitL2,
            CacheStatus::Miss | CacheStatus::Bypass => LookupResult::Miss,
            CacheStatus::Stale => LookupResult::Stale,
        }
    }
}

labels! {
    /// Where a change was learned from.
    Source {
        /// One of sidecache's own write routes.
        Write => "write",
        /// The Postgres change listener (outbox + NOTIFY).
        Notify => "notify",
        /// Another instance, over the bus.
        Peer => "peer",
        /// The admin API.
        Admin => "admin",
    }
}

labels! {
    /// The state of one invalidation channel (the listener, the bus), for `/readyz`.
    ChannelState {
        Disabled => "disabled",
        Down => "down",
        Up => "up",
    }
}

labels! {
    /// The Redis circuit breaker's state.
    BreakerState {
        Closed => "closed",
        HalfOpen => "half_open",
        Open => "open",
    }
}

labels! {
    /// Why the Redis namespace got a new incarnation.
    ResetCause {
        /// `POST /admin/flush`.
        Admin => "admin",
        /// The change listener was away longer than the outbox keeps rows.
        ListenerGap => "listener_gap",
        /// Redis had lost the namespace's state (restart without persistence, `FLUSHALL`).
        StateLost => "state_lost",
        /// Another server answers now, or the same one restarted (from a snapshot, a failover).
        ServerChanged => "server_changed",
        /// Redis evicted keys since the last check; a fence may have been one of them.
        Evictions => "evictions",
        /// Another instance (or a loss nobody announced) changed it; seen on a read or probe.
        Observed => "observed",
    }
}

labels! {
    /// Why a stale value was answered.
    StaleReason {
        /// The load failed.
        Error => "error",
        /// The load took longer than the soft timeout.
        Slow => "slow",
        /// The key's loads are paused after a failure.
        Throttled => "throttled",
        /// Another instance holds the key's refresh lease.
        Busy => "busy",
    }
}

labels! {
    /// A cache tier.
    Tier {
        L1 => "l1",
        L2 => "l2",
    }
}

labels! {
    /// What became of a value offered to a tier.
    FillOutcome {
        Stored => "stored",
        /// Refused: an invalidation (or a Redis reset) came after the value was read.
        Fenced => "fenced",
        Error => "error",
    }
}

labels! {
    /// What an invalidation names: one key, or a tag (a family of keys).
    Target {
        Key => "key",
        Tag => "tag",
    }
}

labels! {
    /// Why the whole L1 was dropped.
    FlushReason {
        BusGap => "bus_gap",
        BusResubscribe => "bus_resubscribe",
        ListenerGap => "listener_gap",
        Admin => "admin",
        RedisReset => "redis_reset",
    }
}

labels! {
    /// What became of a lookup that waited for another load's fill lease.
    LeaseOutcome {
        /// Its value arrived.
        Filled => "filled",
        /// The holder gave up; we loaded.
        Released => "released",
        /// We stopped waiting and loaded.
        Timeout => "timeout",
    }
}

labels! {
    /// What the change listener did with an outbox row.
    OutboxAction {
        Applied => "applied",
        /// Written by this instance's own write route, which had invalidated already.
        OwnWrite => "own_write",
        /// Another instance's marker said its Redis part was done.
        AlreadyApplied => "already_applied",
    }
}

labels! {
    /// Direction of a bus message.
    BusDirection {
        Sent => "sent",
        Received => "received",
    }
}

labels! {
    /// Kind of bus message.
    BusMessage {
        Invalidation => "invalidation",
        Heartbeat => "heartbeat",
    }
}

labels! {
    /// Redis operations sidecache issues.
    RedisOp {
        Read => "read",
        Lease => "lease",
        Mget => "mget",
        Fill => "fill",
        Release => "release",
        Invalidate => "invalidate",
        Check => "check",
        Reset => "reset",
        Scan => "scan",
        Unlink => "unlink",
        Connect => "connect",
        SessionRead => "session_read",
        SessionWrite => "session_write",
        SessionList => "session_list",
        StreamAdd => "stream_add",
        StreamRead => "stream_read",
        RateLimit => "rate_limit",
        /// Claiming a call start's answer for the retry window (webhooks).
        CallStart => "call_start",
        /// `WAIT` for replicas after a state write (Sentinel mode).
        Replicate => "replicate",
    }
}

labels! {
    /// Session operations (the `op` label).
    SessionOp {
        Put => "put",
        Get => "get",
        Patch => "patch",
        Touch => "touch",
        Delete => "delete",
        List => "list",
    }
}

labels! {
    /// Where a session, an event stream or a rate-limit count lives: shared in Redis, or in
    /// this instance's memory (Redis off, down or skipped by the breaker).
    StateStore {
        Redis => "redis",
        Memory => "memory",
    }
}

labels! {
    /// How a session operation ended.
    SessionOutcome {
        Ok => "ok",
        NotFound => "not_found",
        Conflict => "version_mismatch",
        TooLarge => "too_large",
        Invalid => "invalid",
        Full => "memory_full",
    }
}

labels! {
    /// What became of a session written to memory while Redis was away, once Redis was back.
    WriteBack {
        /// Written to Redis.
        Written => "written",
        /// Redis held a more recent write; kept.
        Superseded => "superseded",
        /// It expired before Redis came back.
        Expired => "expired",
    }
}

labels! {
    /// What keeps shared call state (the `what` label of fallbacks to memory).
    StateUser {
        Sessions => "sessions",
        Events => "events",
        RateLimits => "rate_limits",
        Webhooks => "webhooks",
        Proxy => "proxy",
    }
}

labels! {
    /// A rate-limit decision, and who made it.
    RateDecision {
        Allowed => "allowed",
        Denied => "denied",
    }
}

labels! {
    /// Named Postgres statements.
    PgQuery {
        OrgById => "org_by_id",
        OrgByPhone => "org_by_phone",
        LeadById => "lead_by_id",
        LeadByPhone => "lead_by_phone",
        LeadWithOrg => "lead_with_org",
        ConversationsPage => "conversations_page",
        ConversationStats => "conversation_stats",
        LeadExists => "lead_exists",
        Ping => "ping",
        VersionOf => "version_of",
        OutboxRead => "outbox_read",
        OutboxNewest => "outbox_newest",
        OutboxPrune => "outbox_prune",
        CreateOrg => "create_org",
        UpdateOrg => "update_org",
        CreateLead => "create_lead",
        UpdateLead => "update_lead",
        DeleteLead => "delete_lead",
        CreateConversation => "create_conversation",
        UpdateConversation => "update_conversation",
    }
}

labels! {
    /// The voice platforms whose call-start webhooks sidecache answers.
    Platform {
        ElevenLabs => "elevenlabs",
        Vapi => "vapi",
        Retell => "retell",
        Twilio => "twilio",
    }
}

labels! {
    /// How a call-start webhook was answered.
    WebhookOutcome {
        /// Everything the lookups know: the organization, and the caller's lead if it is one.
        Full => "full",
        /// The organization only: the caller's part was not known within the deadline.
        Partial => "partial",
        /// Nothing known within the deadline: the configured defaults or a generic greeting.
        Fallback => "fallback",
        /// No organization has the called number.
        UnknownNumber => "unknown_number",
        /// The request's signature or secret did not check (401).
        AuthFailed => "auth_failed",
    }
}

labels! {
    /// What became of a proxied request: the upstream's status class, or why there was none.
    ProxyOutcome {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
        /// Could not connect, or the connection failed before an answer (502).
        Unavailable => "unavailable",
        /// No answer within `proxy.timeout_ms` (504).
        Timeout => "timeout",
    }
}

impl ProxyOutcome {
    /// The class of an upstream's status code.
    pub fn of_status(code: u16) -> Self {
        match code {
            100..=199 => ProxyOutcome::Informational,
            200..=299 => ProxyOutcome::Success,
            300..=399 => ProxyOutcome::Redirection,
            400..=499 => ProxyOutcome::ClientError,
            _ => ProxyOutcome::ServerError,
        }
    }
}

labels! {
    /// Parts of sidecache that configuration turns on or off.
    Component {
        L1 => "l1",
        Redis => "redis",
        Listener => "listener",
        Bus => "bus",
        Admin => "admin",
        Sessions => "sessions",
        Events => "events",
        RateLimits => "rate_limits",
        Webhooks => "webhooks",
        Proxy => "proxy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_labels_are_unique() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            all: &[T],
            index: fn(T) -> usize,
            label: fn(T) -> &'static str,
        ) {
            for (i, v) in all.iter().enumerate() {
                assert_eq!(index(*v), i, "{v:?}");
            }
            let mut labels: Vec<&str> = all.iter().map(|v| label(*v)).collect();
            labels.sort_unstable();
            labels.dedup();
            assert_eq!(labels.len(), all.len());
        }
        check(&Kind::ALL, Kind::index, Kind::as_str);
        check(&LookupRoute::ALL, LookupRoute::index, LookupRoute::as_str);
        check(&CacheStatus::ALL, CacheStatus::index, CacheStatus::as_str);
        check(
            &LookupResult::ALL,
            LookupResult::index,
            LookupResult::as_str,
        );
        check(&ResetCause::ALL, ResetCause::index, ResetCause::as_str);
        check(&RedisOp::ALL, RedisOp::index, RedisOp::as_str);
        check(&PgQuery::ALL, PgQuery::index, PgQuery::as_str);
    }

    #[test]
    fn a_cached_not_found_counts_as_negative_on_hits_only() {
        assert_eq!(
            LookupResult::of(CacheStatus::HitL2, true),
            LookupResult::Negative
        );
        assert_eq!(
            LookupResult::of(CacheStatus::Miss, true),
            LookupResult::Miss
        );
        assert_eq!(
            LookupResult::of(CacheStatus::Stale, false),
            LookupResult::Stale
        );
    }
}
