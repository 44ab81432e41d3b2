//! Redis for every part of sidecache that uses it (the L2 cache, the peer bus, sessions, events
//! and rate limits): one connection type, [`Conn`] — to one server, or following the master the
//! sentinels name (`sentinel`) — the guarded call ([`Redis::run`]: timeout, circuit breaker, metrics), the key
//! layout ([`Keys`]) and the Lua scripts. What the cache means by its keys stays in
//! `cache::remote`.

mod breaker;
mod client;
mod cluster;
mod error;
mod keys;
mod scripts;
mod sentinel;

pub use breaker::{Breaker, BreakerConfig, Transition};
pub use client::{Conn, Redis, RedisConfig, RedisError};
pub use keys::{slot, Keys, SHARDS};
pub use scripts::{MarkerMode, Scripts};
pub use sentinel::SentinelConfig;
