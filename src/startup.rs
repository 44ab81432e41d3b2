//! Process wiring. `Application::build(settings)` connects the pieces and binds the listener
//! (port 0 allowed), so tests boot the real thing; `run_until_stopped` serves until SIGTERM or
//! Ctrl-C, then drains.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{ConnectOptions, Connection};
use tokio::net::TcpListener;

use crate::answers::Answers;
use crate::audit::Auditor;
use crate::cache::{ChannelState, Coherence, Remote, Tiered};
use crate::config::Settings;
use crate::http::{self, AppInner, AppState};
use crate::invalidation::{Bus, Invalidator, Listener};
use crate::labels::Component;
use crate::lifecycle::{self, Health, Phase, Shutdown};
use crate::metrics::Metrics;
use crate::sessions::{Clock, Events, RateLimiter, Sessions};
use crate::store::Store;

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database if it does not exist, then applies the migrations.
pub async fn prepare_database(settings: &Settings) -> anyhow::Result<()> {
    let opts = settings.postgres.connect_options()?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let mut admin = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .with_context(|| format!("cannot connect to postgres at {}", settings.postgres.url))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it first: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context(format!("cannot create database {name}")),
        }
    }
    admin.close().await.ok();
    let mut conn = opts
        .connect()
        .await
        .with_context(|| format!("cannot connect to database {name}"))?;
    MIGRATOR.run(&mut conn).await.context("migrations failed")?;
    conn.close().await.ok();
    Ok(())
}

/// A bound, ready-to-run sidecache.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    settings: Settings,
}

impl Application {
    /// Builds every component and binds the listener. Postgres and Redis are connected lazily or
    /// in the background: a dependency that is down does not stop sidecache from starting.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        // Names this process in fill leases, bus messages and `application_name`.
        let instance = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let application_name = format!("sidecache/{instance}");
        let store = Store::new(
            &settings.postgres.store_config(&application_name)?,
            metrics.clone(),
        );
        let co = &settings.coherence;
        let bus_on = settings.redis.enabled && co.bus;
        let coherence = Arc::new(Coherence::new(co.listener, bus_on, co.degraded_l1_ttl));
        let remote = if settings.redis.enabled {
            let cfg = settings.redis.remote_config();
            let remote =
                Arc::new(Remote::new(&cfg, metrics.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
            if let Err(e) = remote.connect().await {
                tracing::warn!(redis = %settings.redis.url, error = %e, "redis unreachable at start; serving from L1 and Postgres until it answers");
            }
            Some(remote)
        } else {
            tracing::warn!("REDIS_ENABLED=false: Redis is off; lookups use the in-process cache and Postgres only");
            None
        };
        let mut tiered = Tiered::new(
            settings.cache.local(),
            remote.clone(),
            settings.cache.policies(),
            metrics.clone(),
        )
        .with_coherence(coherence.clone());
        if let (Some(_), Some(lease)) = (&remote, co.leases()) {
            tiered = tiered.with_leases(&instance, lease);
        }
        let cache = Arc::new(tiered.with_fail_safe(settings.cache.fail_safe()));
        let bus = match (&remote, bus_on) {
            (Some(remote), true) => {
                let cfg = co.bus_config(&settings.redis, remote.keys().bus_channel());
                let (bus, sender) = Bus::new(cfg, &instance, coherence.clone(), metrics.clone())
                    .map_err(|e| anyhow::anyhow!("coherence.bus_url: {e}"))?;
                Some((bus, sender))
            }
            _ => None,
        };
        let invalidator = Invalidator::new(
            cache.clone(),
            metrics.clone(),
            bus.as_ref().map(|(_, s)| s.clone()),
            &application_name,
        );
        let listener = if co.listener {
            Some(Listener::new(
                co.listener_config(&settings.postgres, &settings.redis, &application_name)?,
                invalidator.clone(),
                store.clone(),
                coherence.clone(),
                metrics.clone(),
            ))
        } else {
            None
        };
        let w = &settings.webhooks;
        let webhooks_on = w.elevenlabs.secret.is_set()
            || w.vapi.secret.is_set()
            || w.vapi.hmac_secret.is_set()
            || w.retell.api_key.is_set()
            || w.twilio.auth_token.is_set();
        for (component, on) in [
            (Component::L1, settings.cache.l1_enabled),
            (Component::Redis, settings.redis.enabled),
            (Component::Listener, co.listener),
            (Component::Bus, bus_on),
            (Component::Admin, settings.admin.token.is_set()),
            (Component::Sessions, true),
            (Component::Events, true),
            (
                Component::RateLimits,
                !settings.rate_limits.limits.is_empty(),
            ),
            (Component::Webhooks, webhooks_on),
            (Component::Proxy, !settings.proxy.upstream.is_empty()),
        ] {
            metrics.component(component, on);
        }
        let shared_redis = remote
            .as_ref()
            .map(|r| (r.redis().clone(), r.keys().clone()));
        let keys = shared_redis.as_ref().map_or_else(
            || crate::redis::Keys::new(&settings.redis.namespace),
            |(_, k)| k.clone(),
        );
        let sessions = Arc::new(Sessions::new(
            settings.sessions.config(),
            shared_redis.clone(),
            Arc::new(Clock::default()),
            metrics.clone(),
        ));
        let events = Arc::new(Events::new(
            settings.events.config(),
            keys,
            shared_redis.as_ref().map(|(r, _)| r.clone()),
            sessions.clone(),
            metrics.clone(),
        ));
        let rate_limits = Arc::new(RateLimiter::new(
            settings.rate_limits.limits(),
            shared_redis,
            settings.rate_limits.policy(),
            metrics.clone(),
        ));
        let claims = remote
            .as_ref()
            .map(|r| crate::webhooks::Claims::new(r.redis().clone(), r.keys().clone()));
        let health = Arc::new(Health::default());
        let answers = Answers::new(cache.clone(), store.clone());
        let auditor = settings.audit.interval().map(|every| {
            Arc::new(Auditor::new(
                answers.clone(),
                invalidator.clone(),
                metrics.clone(),
                every,
                settings.audit.window,
            ))
        });
        let state = AppState(Arc::new(AppInner {
            answers,
            cache,
            store,
            invalidator,
            metrics,
            phones: crate::domain::PhoneParser::new(settings.cache.default_region),
            health,
            redis_enabled: settings.redis.enabled,
            instance,
            listener,
            bus: bus.map(|(b, _)| b),
            limiter: Arc::new(tokio::sync::Semaphore::new(
                settings.server.max_concurrency.get(),
            )),
            admin_token: settings.admin.token.clone(),
            postgres_url: settings.postgres.url.redacted(),
            redis_url: settings.redis.url.redacted(),
            l1_max_bytes: settings.cache.l1_max_bytes,
            sessions,
            events,
            rate_limits,
            hooks: Arc::new(http::Hooks::new(settings.webhooks.clone(), claims)),
            proxy: http::Proxy::new(&settings.proxy).map(Arc::new),
            auditor,
        }));
        let addr = settings.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let port = listener.local_addr()?.port();
        Ok(Application {
            listener,
            port,
            state,
            settings,
        })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests reach the cache and store through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(lifecycle::signal()).await
    }

    /// Serves until `stop` completes, then drains in-flight requests (within the grace period)
    /// and stops background tasks.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            port,
            state,
            settings,
        } = self;
        let (stop_tasks, shutdown) = Shutdown::new();
        let tasks = spawn_background(&state, shutdown);
        // One probe before declaring readiness, so /readyz tells the truth from the first answer.
        probe_postgres(&state).await;
        // Give the change listener a moment to take its place in the outbox: changes committed
        // before it has are only covered by the short degraded L1 lifetime.
        if state.cache.coherence().listener() == ChannelState::Down && state.health.postgres_up() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while state.cache.coherence().listener() == ChannelState::Down
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        state.health.set_phase(Phase::Ready);
        tracing::info!(
            port,
            redis = settings.redis.enabled,
            "sidecache listening on {}",
            settings.server.listen.ip()
        );

        let front = http::Front::new(state.clone(), settings.server.body_limit_bytes);
        // Two signals: the server stops accepting first; background tasks stop after the
        // in-flight requests are done (a finishing write still publishes to its peers).
        let (stop_serving, mut serving) = Shutdown::new();
        let server = http::serve(listener, front, async move {
            serving.recv().await;
        });
        let grace = settings.server.shutdown_grace;
        let drain_delay = settings.server.drain_delay;
        let mut server = std::pin::pin!(server);
        tokio::select! {
            res = &mut server => res?,
            _ = stop => {
                state.events.close();
                // Not ready any more (load balancers stop sending), but still serving for the
                // drain delay, so requests already routed here are not refused.
                state.health.set_phase(Phase::Draining);
                tracing::info!(
                    drain_delay_ms = drain_delay.as_millis() as u64,
                    "shutdown requested; /readyz answers 503"
                );
                let early = tokio::select! {
                    res = &mut server => Some(res),
                    _ = tokio::time::sleep(drain_delay) => None,
                };
                if let Some(res) = early {
                    res?;
                } else {
                    tracing::info!("no longer accepting connections; finishing in-flight requests");
                    stop_serving.stop();
                    if tokio::time::timeout(grace, &mut server).await.is_err() {
                        tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period");
                    }
                }
            }
        }
        stop_tasks.stop();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        state.store.pool().close().await;
        tracing::info!("sidecache stopped");
        Ok(())
    }
}

async fn probe_postgres(state: &AppState) {
    let up = state.store.ping().await.is_ok();
    if up != state.health.postgres_up() {
        if up {
            tracing::info!("postgres is answering");
        } else {
            tracing::warn!(
                "postgres is not answering; lookups are served from cache where possible"
            );
        }
    }
    state.health.set_postgres_up(up);
    state.metrics.postgres_up.set(i64::from(up));
}

/// Probes Postgres and Redis, (re)connects Redis and delivers owed invalidations.
fn spawn_background(state: &AppState, shutdown: Shutdown) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    {
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => probe_postgres(&state).await,
                    _ = shutdown.recv() => break,
                }
            }
        }));
    }
    if let Some(listener) = &state.listener {
        let l = listener.clone();
        tasks.push(tokio::spawn(l.run(shutdown.clone())));
        let l = listener.clone();
        tasks.push(tokio::spawn(l.housekeeping(shutdown.clone())));
    }
    if let Some(bus) = &state.bus {
        tasks.extend(bus.spawn(state.invalidator.clone(), shutdown.clone()));
    }
    tasks.push(tokio::spawn(state.events.clone().listen(shutdown.clone())));
    if let Some(auditor) = &state.auditor {
        tasks.push(tokio::spawn(auditor.clone().run(shutdown.clone())));
    }
    {
        // Sessions kept in memory while Redis was away are written back as soon as it answers;
        // the gauges of live sessions are refreshed every few seconds.
        let sessions = state.sessions.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut n: u32 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.recv() => break,
                }
                if sessions.owes() {
                    sessions.write_back().await;
                }
                n = n.wrapping_add(1);
                if n % 20 == 1 {
                    sessions.measure().await;
                }
            }
        }));
    }
    if let Some(remote) = state.cache.remote().cloned() {
        let cache = state.cache.clone();
        let mut shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                // Every 500 ms, and at once after a failed operation (L2 is not read until a
                // check has seen the server again).
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = remote.check_wanted() => {}
                    _ = shutdown.recv() => break,
                }
                if cache.probe_redis().await {
                    remote.retry_pending().await;
                }
            }
        }));
    }
    tasks
}
