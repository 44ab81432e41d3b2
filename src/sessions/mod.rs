//! The state handlers share during a call: session documents (Redis, or this instance's memory
//! while Redis is away, written back when it returns), event streams delivered to SSE
//! subscribers on every instance, and named rate limits exact across the fleet.

mod doc;
mod events;
mod locks;
mod memory;
mod model;
mod ratelimit;
mod shared;
mod store;
mod streams;
mod upkeep;

pub use doc::{merge_patch, rfc3339_ms, Clock, Doc};
pub use events::{Events, EventsConfig, EventsError, Item, Stream, Subscription};
pub use model::{Answer, Page, SessionError, SessionsConfig};
pub use ratelimit::{Decision, DownPolicy, LimitConfig, RateLimiter, GCRA_LUA};
pub use shared::Listed;
pub use store::Sessions;
pub use streams::{Batch, Event};
