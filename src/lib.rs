//! sidecache: a caching sidecar for voice-agent platforms.
//!
//! Lookups are served read-through — process memory (moka) → Redis → Postgres — and every
//! change drops exactly the cache entries it affects. The crate map:

/// What each lookup answers, and the call initiation: the read path HTTP and webhooks share.
pub mod answers;
/// The tiered read-through cache: keys and policies, L1 (moka), L2 (Redis), fencing, coalescing.
pub mod cache;
/// Command-line interface: `serve`, `migrate`, `seed`, `check-config`.
pub mod cli;
/// Settings by section, typed; `config.toml` < environment < flags, checked before anything binds.
pub mod config;
/// Parse-don't-validate newtypes (phone numbers, ids, channels) and the resource models.
pub mod domain;
/// The HTTP surface: router, lookups, writes, operations, error mapping.
pub mod http;
/// What a change invalidates (`keys_for`) and how the invalidation is applied.
pub mod invalidation;
/// Stable labels (kinds, statuses, reasons, outcomes) with `as_str` and `ALL`.
pub mod labels;
/// Shutdown handle, OS signals, phase and health, reconnect backoff.
pub mod lifecycle;
/// The Prometheus registry and every metric family.
pub mod metrics;
/// Redis access shared by the cache and the bus: connection type, guarded call, keys, scripts.
pub mod redis;
/// Demo and bulk data generation (`serve --demo`, `seed`).
pub mod seed;
/// Process wiring: `Application::build`, background tasks, graceful shutdown.
pub mod startup;
/// Postgres: queries and writes; every write returns a `Change`.
pub mod store;
/// Tracing subscriber set-up (text or JSON).
pub mod telemetry;
