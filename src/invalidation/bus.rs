//! The invalidation bus between instances: Redis pub/sub on `{namespace}:v1:bus`.
//!
//! Every message carries its origin (a random id per process) and a per-origin sequence number.
//! A publisher task sends messages in sequence order (pipelined), plus a heartbeat every
//! `heartbeat`; a subscriber task applies peers' messages to L1. The subscriber flushes L1 when
//! it sees a gap in a peer's sequence (a message was lost) and when it subscribes again after
//! losing its subscription (anything may have been missed meanwhile). It knows its subscription
//! is alive because it hears its own heartbeats; one it published but did not hear within two
//! heartbeats means the subscription is dead, even if the TCP connection looks fine.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Invalidation, Invalidator};

use crate::cache::{now_ms, CacheKey, Coherence, Kind, Tag};
use crate::domain::TxId;
use crate::labels::{BusDirection, BusMessage, FlushReason};
use crate::lifecycle::{Backoff, Shutdown};
use crate::metrics::Metrics;
use crate::redis::{Conn, Redis, RedisConfig, RedisError};

/// How long a silent peer's last sequence number is remembered.
const PEER_MEMORY: Duration = Duration::from_secs(3600);

/// Bus settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Where to publish and subscribe (often the same Redis as the cache); its connect timeout
    /// bounds every bus operation.
    pub redis: RedisConfig,
    /// `{namespace}:v1:bus`.
    pub channel: String,
    pub heartbeat: Duration,
}

/// On the wire: short field names, JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// Origin instance.
    o: String,
    /// Sequence number, per origin, from 1.
    s: u64,
    /// When the origin sent it (Unix ms): the lag metric's start.
    t: u64,
    /// The transaction it invalidates, when it comes from a write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    k: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    g: Vec<String>,
    /// Kinds dropped whole (admin).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    d: Vec<String>,
    /// Flush everything (admin).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    f: bool,
}

impl Wire {
    fn is_heartbeat(&self) -> bool {
        self.k.is_empty() && self.g.is_empty() && self.d.is_empty() && !self.f
    }
}

#[derive(Default)]
struct Outgoing {
    txid: Option<TxId>,
    inv: Invalidation,
    kinds: Vec<Kind>,
    flush: bool,
    at_ms: u64,
}

/// The sending end, held by the [`Invalidator`]. Sending never waits.
#[derive(Clone)]
pub struct BusSender(mpsc::UnboundedSender<Outgoing>);

impl BusSender {
    /// Queues an invalidation for the peers.
    pub fn send(&self, txid: Option<TxId>, inv: Invalidation) {
        let _ = self.0.send(Outgoing {
            txid,
            inv,
            at_ms: now_ms(),
            ..Outgoing::default()
        });
    }

    /// Queues an operator's purge of whole kinds, or of everything, for the peers.
    pub fn send_admin(&self, kinds: Vec<Kind>, flush: bool) {
        let _ = self.0.send(Outgoing {
            kinds,
            flush,
            at_ms: now_ms(),
            ..Outgoing::default()
        });
    }
}

/// The bus of one instance.
pub struct Bus {
    cfg: BusConfig,
    origin: String,
    redis: Redis,
    coherence: Arc<Coherence>,
    metrics: Arc<Metrics>,
    /// Heartbeats published successfully and not heard back yet: (sequence, when). A std Mutex:
    /// nothing is awaited while it is held.
    unheard: std::sync::Mutex<VecDeque<(u64, Instant)>>,
    /// Highest own sequence heard back.
    heard: AtomicU64,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
}

impl Bus {
    /// A bus for instance `origin`, publishing and subscribing on `cfg.url`. Returns the bus (to
    /// [`Bus::spawn`]) and the sender for the invalidator.
    pub fn new(
        cfg: BusConfig,
        origin: &str,
        coherence: Arc<Coherence>,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Self>, BusSender), RedisError> {
        let redis = Redis::new(&cfg.redis, metrics.clone())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = Bus {
            cfg,
            origin: origin.to_owned(),
            redis,
            coherence,
            metrics,
            unheard: std::sync::Mutex::new(VecDeque::new()),
            heard: AtomicU64::new(0),
            rx: std::sync::Mutex::new(Some(rx)),
        };
        Ok((Arc::new(bus), BusSender(tx)))
    }

    /// Starts the publisher and the subscriber; both end on shutdown.
    pub fn spawn(
        self: &Arc<Self>,
        invalidator: Invalidator,
        shutdown: Shutdown,
    ) -> Vec<JoinHandle<()>> {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut tasks = Vec::new();
        if let Some(rx) = rx {
            let this = Arc::clone(self);
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                this.publish_loop(rx, shutdown).await
            }));
        }
        let this = Arc::clone(self);
        tasks.push(tokio::spawn(async move {
            this.subscribe_loop(invalidator, shutdown).await
        }));
        tasks
    }

    /// True when a heartbeat published more than two heartbeats ago has not been heard back.
    fn heartbeat_overdue(&self) -> bool {
        let heard = self.heard.load(Ordering::Relaxed);
        let mut unheard = self.unheard.lock().unwrap_or_else(|p| p.into_inner());
        while unheard.front().is_some_and(|(seq, _)| *seq <= heard) {
            unheard.pop_front();
        }
        unheard
            .front()
            .is_some_and(|(_, at)| at.elapsed() > 2 * self.cfg.heartbeat)
    }

    async fn publish_loop(
        &self,
        mut rx: mpsc::UnboundedReceiver<Outgoing>,
        mut shutdown: Shutdown,
    ) {
        let mut seq = 0u64;
        // Its own connection to the bus's Redis (which may not be the cache's).
        let mut conn: Option<Conn> = None;
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Vec::new();
            let heartbeat = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => {
                        batch.push(m);
                        // Whatever else is already queued goes in the same round trip.
                        while batch.len() < 256 {
                            match rx.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        false
                    }
                    None => break,
                },
                _ = tick.tick() => true,
                _ = shutdown.recv() => break,
            };
            let mut payloads = Vec::with_capacity(batch.len() + 1);
            for m in &batch {
                seq += 1;
                payloads.push(self.encode(seq, m));
            }
            if heartbeat {
                seq += 1;
                let beat = Outgoing {
                    at_ms: now_ms(),
                    ..Outgoing::default()
                };
                payloads.push(self.encode(seq, &beat));
            }
            let sent = self.publish(&mut conn, &payloads).await;
            if sent {
                let m = &self.metrics;
                m.bus_messages(
                    BusDirection::Sent,
                    BusMessage::Invalidation,
                    batch.len() as u64,
                );
                if heartbeat {
                    m.bus_messages(BusDirection::Sent, BusMessage::Heartbeat, 1);
                    let mut unheard = self.unheard.lock().unwrap_or_else(|p| p.into_inner());
                    unheard.push_back((seq, Instant::now()));
                    // Bounded: while nobody listens, only the oldest matters.
                    if unheard.len() > 64 {
                        unheard.truncate(1);
                    }
                }
            } else if !batch.is_empty() {
                // The sequence numbers are spent: peers see the gap and flush their L1.
                tracing::debug!(
                    messages = batch.len(),
                    "could not publish invalidations to peers"
                );
            }
        }
    }

    /// Publishes `payloads` on the channel, in order, in one round trip; false if it could not.
    async fn publish(&self, conn: &mut Option<Conn>, payloads: &[Vec<u8>]) -> bool {
        if conn.is_none() {
            *conn = self.redis.open(self.cfg.redis.connect_timeout).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            return false;
        };
        let mut pipe = redis::pipe();
        for p in payloads {
            pipe.cmd("PUBLISH")
                .arg(&self.cfg.channel)
                .arg(p.as_slice())
                .ignore();
        }
        matches!(
            tokio::time::timeout(self.cfg.redis.connect_timeout, pipe.query_async::<()>(c)).await,
            Ok(Ok(()))
        )
    }

    fn encode(&self, seq: u64, m: &Outgoing) -> Vec<u8> {
        let wire = Wire {
            o: self.origin.clone(),
            s: seq,
            t: m.at_ms,
            x: m.txid.map(|t| t.0),
            k: m.inv.keys.iter().map(|k| k.as_str().to_owned()).collect(),
            g: m.inv.tags.iter().map(Tag::name).collect(),
            d: m.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
            f: m.flush,
        };
        // Serializing strings and integers cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    async fn subscribe_loop(&self, invalidator: Invalidator, mut shutdown: Shutdown) {
        let mut subscribed_before = false;
        let mut backoff = Backoff::default();
        loop {
            if shutdown.is_stopped() {
                return;
            }
            let pubsub = match self.subscribe().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "bus subscription failed; retrying");
                    if !backoff.wait(&mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            // Messages sent while we were not subscribed are lost: drop what they would have.
            // The first subscription needs no flush: until now the bus was down, so every L1
            // entry was stored with the short degraded lifetime.
            if subscribed_before {
                invalidator.cache().flush_local(FlushReason::BusResubscribe);
                tracing::info!("bus subscription restored; L1 flushed");
            } else {
                tracing::info!(channel = %self.cfg.channel, "subscribed to the invalidation bus");
            }
            subscribed_before = true;
            // Heartbeats sent before this subscription cannot be heard on it.
            self.unheard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            self.coherence.set_bus(true);
            self.metrics.bus_up.set(1);
            let lost = self.listen(pubsub, &invalidator, &mut shutdown).await;
            self.coherence.set_bus(false);
            self.metrics.bus_up.set(0);
            match lost {
                Some(why) => tracing::warn!(reason = why, "bus subscription lost; resubscribing"),
                None => return,
            }
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, String> {
        let mut pubsub = self.redis.pubsub().await.map_err(|e| e.to_string())?;
        let subscribe = pubsub.subscribe(&self.cfg.channel);
        match tokio::time::timeout(self.cfg.redis.connect_timeout, subscribe).await {
            Ok(Ok(())) => Ok(pubsub),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Applies messages until the subscription is lost (`Some(reason)`) or `stop` is set.
    async fn listen(
        &self,
        pubsub: redis::aio::PubSub,
        invalidator: &Invalidator,
        shutdown: &mut Shutdown,
    ) -> Option<&'static str> {
        let mut stream = pubsub.into_on_message();
        let subscribed_at = Instant::now();
        let mut peers: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut watchdog = tokio::time::interval(self.cfg.heartbeat);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return Some("connection closed") };
                    // Past a few heartbeats every live peer has been heard from at least once.
                    let settled = subscribed_at.elapsed() > 3 * self.cfg.heartbeat;
                    self.handle(msg.get_payload_bytes(), invalidator, &mut peers, settled).await;
                }
                _ = watchdog.tick() => {
                    if self.heartbeat_overdue() {
                        return Some("own heartbeat not heard back");
                    }
                    // Peers that went away (a restart is a new origin) are forgotten after an hour.
                    peers.retain(|_, (_, seen)| seen.elapsed() < PEER_MEMORY);
                }
                _ = shutdown.recv() => return None,
            }
        }
    }

    async fn handle(
        &self,
        payload: &[u8],
        invalidator: &Invalidator,
        peers: &mut HashMap<String, (u64, Instant)>,
        settled: bool,
    ) {
        let Ok(wire) = serde_json::from_slice::<Wire>(payload) else {
            tracing::debug!("ignoring a malformed bus message");
            return;
        };
        let is_heartbeat = wire.is_heartbeat();
        let kind = if is_heartbeat {
            BusMessage::Heartbeat
        } else {
            BusMessage::Invalidation
        };
        self.metrics.bus_messages(BusDirection::Received, kind, 1);
        if wire.o == self.origin {
            self.heard.fetch_max(wire.s, Ordering::Relaxed);
            return;
        }
        let previous = peers.insert(wire.o.clone(), (wire.s, Instant::now()));
        // A peer first heard in the middle of its sequence, once this subscription has settled,
        // sent messages we never got (it was silent longer than we remember, say).
        let expected = match previous {
            Some((last, _)) => Some(last.saturating_add(1)),
            None if settled => Some(1),
            None => None,
        };
        if let Some(expected) = expected.filter(|e| *e != wire.s) {
            self.metrics.bus_gaps.inc();
            invalidator.cache().flush_local(FlushReason::BusGap);
            tracing::warn!(
                peer = %wire.o,
                expected,
                got = wire.s,
                "lost a peer's bus message; L1 flushed"
            );
        }
        if is_heartbeat {
            return;
        }
        if wire.f {
            invalidator.cache().flush_local(FlushReason::Admin);
            return;
        }
        for kind in wire.d.iter().filter_map(|k| Kind::parse(k)) {
            invalidator.cache().local().invalidate_kind(kind);
        }
        let inv = Invalidation {
            keys: wire.k.iter().filter_map(|k| CacheKey::parse(k)).collect(),
            tags: wire.g.iter().filter_map(|t| Tag::parse(t)).collect(),
        };
        invalidator.peer(wire.x.map(TxId), &inv, wire.t).await;
    }
}
