//! The key tests of `tests/api` — lookups, writes, fencing, coherence across instances, sessions,
//! events, rate limits, admin invalidation and the auditor — compiled a second time and run
//! against a Redis Cluster: `scripts/test-cluster`, a nextest setup script for this binary,
//! starts a 3-master, 3-replica cluster of the run's own and names it in
//! `SIDECACHE_TEST_REDIS_CLUSTER`, which `spawn::test_settings` turns into `redis.mode =
//! "cluster"`. The same source, not a copy. Tests that fault a single Redis through a TCP relay
//! are left to `tests/api` (see `.config/nextest.toml`); the cluster's own faults are in
//! `tests/api/cluster.rs`.

#![allow(unreachable_pub, dead_code)] // helpers shared with tests/api, some unused here

#[path = "../api/admin.rs"]
mod admin;
#[path = "../api/audit.rs"]
mod audit;
#[path = "../api/client.rs"]
mod client;
#[path = "../api/cluster_set.rs"]
mod cluster_set;
#[path = "../api/coherence.rs"]
mod coherence;
#[path = "../api/consistency.rs"]
mod consistency;
#[path = "../api/events.rs"]
mod events;
#[path = "../api/fencing.rs"]
mod fencing;
#[path = "../api/fixtures.rs"]
mod fixtures;
#[path = "../api/lookups.rs"]
mod lookups;
#[path = "../api/pki.rs"]
mod pki;
#[path = "../api/prom.rs"]
mod prom;
#[path = "../api/rate_limits.rs"]
mod rate_limits;
#[path = "../api/redis_server.rs"]
mod redis_server;
#[path = "../api/relay.rs"]
mod relay;
#[path = "../api/sessions.rs"]
mod sessions;
#[path = "../api/spawn.rs"]
mod spawn;
#[path = "../api/writes.rs"]
mod writes;
