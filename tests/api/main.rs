//! Integration tests against the real local Postgres and Redis (see `common`).

#![allow(unreachable_pub)] // test modules share helpers with `pub`; nothing here is a public API

mod admin;
mod bad_input;
mod coherence;
mod common;
mod config_cli;
mod consistency;
mod fencing;
mod fuzz;
mod lookups;
mod metrics;
mod redis_loss;
mod redis_modes;
mod redis_server;
mod resilience;
mod writes;
