//! Redis for every part of sidecache that uses it (the L2 cache, the peer bus, and next the
//! sessions): one connection type, [`Conn`] — standalone today, with Cluster and Sentinel to come
//! as variants — the guarded call ([`Redis::run`]: timeout, circuit breaker, metrics), the key
//! layout ([`Keys`]) and the Lua scripts. What the cache means by its keys stays in
//! `cache::remote`.

mod breaker;
mod client;
mod keys;
mod scripts;

pub use breaker::{Breaker, BreakerConfig, Transition};
pub use client::{Conn, Redis, RedisConfig, RedisError};
pub use keys::Keys;
pub use scripts::{MarkerMode, Scripts};
