//! sidecache: a caching sidecar for voice-agent platforms.
//!
//! Lookups are served read-through — process memory (moka) → Redis → Postgres — and every
//! change drops exactly the cache entries it affects. The crate map, leaves first: each module
//! depends only on modules above it (checked by `tests/api/layout.rs`, with: no import cycle,
//! nothing imports `startup`, nothing outside `http` names axum or hyper).

/// What each lookup answers, and the call initiation: the read path HTTP and webhooks share.
pub mod answers;
/// The consistency auditor: samples cached entries, checks them against Postgres, drops stale ones.
pub mod audit;
/// The tiered read-through cache: keys and policies, L1 (moka), L2 (Redis), fencing, coalescing.
pub mod cache;
/// Command-line interface: `serve`, `migrate`, `seed`, `check-config`.
pub mod cli;
/// Settings by section, typed; `config.toml` < environment < flags, checked before anything binds.
pub mod config;
/// Parse-don't-validate newtypes (phone numbers, ids, channels) and the resource models.
pub mod domain;
/// The HTTP surface: router, middleware, thin handlers per surface, errors, OpenAPI.
pub mod http;
/// What a change invalidates (`keys_for`) and how: the invalidator, change listener, peer bus.
pub mod invalidation;
/// Stable labels (kinds, statuses, reasons, outcomes) with `as_str` and `ALL`.
pub mod labels;
/// Shutdown handle, OS signals, phase and health, reconnect backoff.
pub mod lifecycle;
/// The Prometheus registry, every metric family, and the operator's snapshot arithmetic.
pub mod metrics;
/// Redis for everyone who uses it: one connection type, the guarded call, keys, Lua scripts.
pub mod redis;
/// Demo and bulk data generation (`serve --demo`, `seed`).
pub mod seed;
/// Shared call state: sessions (Redis, or memory while it is away), event streams, rate limits.
pub mod sessions;
/// Process wiring: `Application::build`, background tasks, graceful shutdown.
pub mod startup;
/// Postgres: queries and writes (each returns a `Change`), the outbox; maps its errors into the
/// cache's `LoadError`.
pub mod store;
/// Tracing subscriber set-up (text or JSON).
pub mod telemetry;
/// The voice platforms' call-start webhooks: parse, verify and render per platform.
pub mod webhooks;
