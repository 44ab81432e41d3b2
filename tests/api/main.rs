//! Integration tests against the real local Postgres and Redis (see `spawn`).

#![allow(unreachable_pub)] // test modules share helpers with `pub`; nothing here is a public API

mod admin;
mod audit;
mod bad_input;
mod client;
mod cluster;
mod cluster_set;
mod coherence;
mod config_cli;
mod consistency;
mod events;
mod fencing;
mod fixtures;
mod fuzz;
mod layout;
mod lookups;
mod metrics;
mod pg_server;
mod pki;
mod prom;
mod proxy;
mod rate_limits;
mod redis_loss;
mod redis_modes;
mod redis_server;
mod relay;
mod resilience;
mod secure;
mod sentinel;
mod sentinel_set;
mod sessions;
mod spawn;
mod upstream;
mod webhooks;
mod writes;
