//! Named rate limits, exact across the fleet: GCRA (the generic cell rate algorithm) in one Redis
//! script per check. A limit of `limit` per `period` spaces requests `period / limit` apart (the
//! emission interval `T`) and lets `burst` of them through at once; its whole state per key is
//! one number, the theoretical arrival time (TAT) of the next request. The script reads the
//! clock of Redis itself (`TIME`), so instances with skewed clocks still share one timeline.
//!
//! With Redis away, `on_redis_down` decides: `local` runs the same algorithm in this instance's
//! memory (each instance then admits up to the limit), `allow` admits, `deny` refuses.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use redis::Script;

use crate::labels::{RateDecision, RedisOp, StateStore, StateUser};
use crate::metrics::Metrics;
use crate::redis::{Keys, Redis};

/// The GCRA script (public for the benchmark that runs it bare, as its baseline).
#[doc(hidden)]
pub const GCRA_LUA: &str = r#"
-- KEYS: the key's TAT; ARGV: emission interval µs, burst, cost
-- Returns {allowed (1/0), remaining, reset after µs, retry after µs}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, string.format('%.0f', tat - now), string.format('%.0f', allow_at - now)}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
    string.format('%.0f', math.ceil((new_tat - now) / 1000) + 1))
end
return {1, math.floor((now - allow_at) / interval), string.format('%.0f', new_tat - now), '0'}
"#;

/// What `on_redis_down` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownPolicy {
    Local,
    Allow,
    Deny,
}

/// One limit: `limit` per `period`, `burst` at once.
#[derive(Debug, Clone, Copy)]
pub struct LimitConfig {
    pub limit: u32,
    pub period: Duration,
    pub burst: u32,
}

impl LimitConfig {
    /// The emission interval in µs (at least 1).
    fn interval_us(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.limit)).max(1)
    }
}

/// One check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the key is back to a full burst.
    pub reset_after: Duration,
    /// Until this request would have been admitted (zero when it was).
    pub retry_after: Duration,
    pub store: StateStore,
}

struct Limit {
    cfg: LimitConfig,
    /// `[outcome][store]`.
    counters: Vec<Vec<IntCounter>>,
}

pub struct RateLimiter {
    limits: BTreeMap<String, Limit>,
    redis: Option<(Arc<Redis>, Keys)>,
    script: Script,
    policy: DownPolicy,
    /// Per `limit\0key`: the TAT in µs since `epoch`. A std Mutex: never held across an await.
    local: Mutex<HashMap<String, u64>>,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

/// Local state is pruned of idle keys when it grows past this many.
const LOCAL_PRUNE_AT: usize = 100_000;

/// The GCRA step: from a key's TAT at `now` (both µs), the decision — allowed, remaining,
/// reset after, retry after (µs) — and the new TAT.
fn gcra(cfg: &LimitConfig, tat: u64, now: u64, cost: u32) -> (bool, u32, u64, u64, u64) {
    let t = cfg.interval_us() as i128;
    let (tat, now) = (tat.max(now) as i128, now as i128);
    let new_tat = tat + i128::from(cost) * t;
    let allow_at = new_tat - i128::from(cfg.burst) * t;
    if now < allow_at {
        (
            false,
            0,
            (tat - now) as u64,
            (allow_at - now) as u64,
            tat as u64,
        )
    } else {
        let remaining = ((now - allow_at) / t).min(i128::from(u32::MAX)) as u32;
        (true, remaining, (new_tat - now) as u64, 0, new_tat as u64)
    }
}

impl RateLimiter {
    pub fn new(
        limits: impl IntoIterator<Item = (String, LimitConfig)>,
        redis: Option<(Arc<Redis>, Keys)>,
        policy: DownPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limits = limits
            .into_iter()
            .map(|(name, cfg)| {
                let counters = metrics.state.rate_limit(&name);
                (name, Limit { cfg, counters })
            })
            .collect();
        RateLimiter {
            limits,
            redis,
            script: Script::new(GCRA_LUA),
            policy,
            local: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// The limit called `name`, if configured.
    pub fn limit(&self, name: &str) -> Option<LimitConfig> {
        self.limits.get(name).map(|l| l.cfg)
    }

    /// Counts `cost` against `key` under the limit `name` (which must exist: see [`Self::limit`]).
    pub async fn check(&self, name: &str, key: &str, cost: u32) -> Option<Decision> {
        let limit = self.limits.get(name)?;
        let cfg = limit.cfg;
        let decision = match &self.redis {
            Some((redis, keys)) if redis.is_up() => {
                match self.remote(redis, keys, name, key, cfg, cost).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(limit = name, error = %e, "redis failed: rate limit decided by on_redis_down");
                        self.metrics.state.fallback(StateUser::RateLimits);
                        self.down(name, key, cfg, cost)
                    }
                }
            }
            Some(_) => {
                self.metrics.state.fallback(StateUser::RateLimits);
                self.down(name, key, cfg, cost)
            }
            None => self.local(name, key, cfg, cost),
        };
        let outcome = if decision.allowed {
            RateDecision::Allowed
        } else {
            RateDecision::Denied
        };
        limit.counters[outcome.index()][decision.store.index()].inc();
        Some(decision)
    }

    async fn remote(
        &self,
        redis: &Redis,
        keys: &Keys,
        name: &str,
        key: &str,
        cfg: LimitConfig,
        cost: u32,
    ) -> Result<Decision, crate::redis::RedisError> {
        let mut conn = redis.state_conn()?;
        let generation = conn.generation();
        let mut inv = self.script.prepare_invoke();
        inv.key(keys.rate_limit(name, key))
            .arg(cfg.interval_us())
            .arg(cfg.burst)
            .arg(cost);
        let (allowed, remaining, reset_us, retry_us): (i64, i64, u64, u64) = redis
            .run(RedisOp::RateLimit, inv.invoke_async(&mut conn))
            .await?;
        redis.replicated(&mut conn, generation).await?;
        Ok(Decision {
            allowed: allowed == 1,
            limit: cfg.limit,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset_after: Duration::from_micros(reset_us),
            retry_after: Duration::from_micros(retry_us),
            store: StateStore::Redis,
        })
    }

    /// Redis is on but cannot be asked: `on_redis_down`.
    fn down(&self, name: &str, key: &str, cfg: LimitConfig, cost: u32) -> Decision {
        match self.policy {
            DownPolicy::Local => self.local(name, key, cfg, cost),
            DownPolicy::Allow | DownPolicy::Deny => Decision {
                allowed: self.policy == DownPolicy::Allow,
                limit: cfg.limit,
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: if self.policy == DownPolicy::Deny {
                    Duration::from_secs(1)
                } else {
                    Duration::ZERO
                },
                store: StateStore::Memory,
            },
        }
    }

    fn local(&self, name: &str, key: &str, cfg: LimitConfig, cost: u32) -> Decision {
        let now = self.epoch.elapsed().as_micros() as u64;
        let id = format!("{name}\0{key}");
        let mut map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= LOCAL_PRUNE_AT && !map.contains_key(&id) {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(&id).copied().unwrap_or(0);
        let (allowed, remaining, reset_us, retry_us, new_tat) = gcra(&cfg, tat, now, cost);
        if allowed && cost > 0 {
            map.insert(id, new_tat);
        }
        Decision {
            allowed,
            limit: cfg.limit,
            remaining,
            reset_after: Duration::from_micros(reset_us),
            retry_after: Duration::from_micros(retry_us),
            store: StateStore::Memory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let cfg = LimitConfig {
            limit: 10,
            period: Duration::from_secs(60),
            burst: 10,
        };
        let t = 6_000_000; // 6 s in µs
        let mut tat = 0;
        let now = 1_000_000_000;
        for i in 0..10 {
            let (ok, remaining, _, _, next) = gcra(&cfg, tat, now, 1);
            assert!(ok, "request {i} of the burst");
            assert_eq!(remaining, 9 - i);
            tat = next;
        }
        let (ok, remaining, reset, retry, _) = gcra(&cfg, tat, now, 1);
        assert!(!ok, "the eleventh at once is denied");
        assert_eq!((remaining, retry, reset), (0, t, 10 * t));
        let (ok, ..) = gcra(&cfg, tat, now + t - 1, 1);
        assert!(!ok, "not before one interval");
        let (ok, remaining, ..) = gcra(&cfg, tat, now + t, 1);
        assert!(ok, "one interval later, one more");
        assert_eq!(remaining, 0);
    }

    #[test]
    fn a_cost_above_the_burst_never_passes_and_zero_only_looks() {
        let cfg = LimitConfig {
            limit: 5,
            period: Duration::from_secs(5),
            burst: 5,
        };
        assert!(!gcra(&cfg, 0, 100, 6).0);
        let (ok, remaining, _, _, tat) = gcra(&cfg, 0, 100, 0);
        assert!(ok);
        assert_eq!(remaining, 5);
        assert_eq!(tat, 100);
    }
}
