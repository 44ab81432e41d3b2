//! Event streams and their subscribers. One notification path per instance: every add is
//! announced on one Redis channel, a single listener task per instance turns each announcement
//! into a wake-up of this instance's subscribers of that stream ([`Hub`]), and each subscriber
//! reads from the stream what it has not seen yet — so a subscriber that was away or woke late
//! reads everything after its last id, in order, once. A subscriber reads ahead at most
//! `subscriber_buffer` events; one that leaves them unread for `slow_cut` is cut (with a final
//! `cut` item) instead of holding memory, and resumes with its last id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

use super::store::Sessions;
use super::streams::{Batch, Event, RedisStreams, Rings, END};
use crate::domain::{SessionId, TopicName};
use crate::labels::{StateStore, StateUser};
use crate::lifecycle::{Backoff, Shutdown};
use crate::metrics::Metrics;
use crate::redis::{Keys, Redis};

/// Events read from a stream per round trip.
const BATCH: usize = 100;

#[derive(Debug, Clone)]
pub struct EventsConfig {
    pub max_len: usize,
    pub retention: Duration,
    pub max_subscribers: usize,
    pub keepalive: Duration,
    pub subscriber_buffer: usize,
    pub slow_cut: Duration,
}

/// A stream: a session's or a topic's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stream {
    Session(SessionId),
    Topic(TopicName),
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    /// Events after `missed_after` were trimmed before this subscriber read them; it goes on
    /// after `resumed_after`.
    Gap {
        missed_after: String,
        resumed_after: String,
    },
    /// The session was deleted or expired; nothing follows.
    End,
    /// The subscriber left events unread too long and was cut; it may resume after this id.
    Cut {
        resume_after: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventsError {
    #[error("no such session")]
    NoSession,
    #[error("this instance serves as many subscribers as it may")]
    TooManySubscribers,
}

/// Wakes this instance's subscribers of a stream. An entry lives while someone watches.
#[derive(Default)]
struct Hub {
    /// A std Mutex: held for a map operation, never across an await.
    streams: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Hub {
    fn watch(&self, key: &str) -> watch::Receiver<u64> {
        let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn notify(&self, key: &str) {
        let map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(key) {
            tx.send_modify(|n| *n += 1);
        }
    }

    fn notify_all(&self) {
        let map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for tx in map.values() {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Forgets `key` if nobody watches it any more.
    fn release(&self, key: &str) {
        let mut map = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(key);
        }
    }
}

pub struct Events {
    cfg: EventsConfig,
    keys: Keys,
    redis: Option<Arc<Redis>>,
    streams: RedisStreams,
    rings: Rings,
    hub: Hub,
    sessions: Arc<Sessions>,
    subscribers: AtomicUsize,
    closing: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

/// A subscriber's receiving end. Dropping it ends its reader.
pub struct Subscription {
    rx: mpsc::Receiver<Item>,
    cut: Arc<AtomicBool>,
    last: Option<String>,
    _slot: Slot,
}

/// Holds one of `max_subscribers`; gives it back on drop.
struct Slot(Arc<Events>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.state.sse_subscribers.dec();
    }
}

impl Subscription {
    /// The next item; `None` when the stream is over.
    pub async fn next(&mut self) -> Option<Item> {
        match self.rx.recv().await {
            Some(item) => {
                if let Item::Event(e) = &item {
                    self.last = Some(e.id.clone());
                }
                Some(item)
            }
            None if self.cut.swap(false, Ordering::AcqRel) => Some(Item::Cut {
                resume_after: self.last.clone(),
            }),
            None => None,
        }
    }
}

impl Events {
    pub fn new(
        cfg: EventsConfig,
        keys: Keys,
        redis: Option<Arc<Redis>>,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Events {
            rings: Rings::new(cfg.max_len, cfg.retention.as_millis() as i64),
            cfg,
            keys,
            redis,
            streams: RedisStreams::new(),
            hub: Hub::default(),
            sessions,
            subscribers: AtomicUsize::new(0),
            closing: watch::channel(false).0,
            metrics,
        }
    }

    pub fn keepalive(&self) -> Duration {
        self.cfg.keepalive
    }

    fn key(&self, stream: &Stream) -> String {
        match stream {
            Stream::Session(id) => self.keys.session_stream(id.as_str()),
            Stream::Topic(name) => self.keys.topic_stream(name.as_str()),
        }
    }

    fn up(&self) -> Option<&Redis> {
        self.redis.as_deref().filter(|r| r.is_up())
    }

    fn fell_back(&self, what: &str, e: &crate::redis::RedisError) {
        self.metrics.state.fallback(StateUser::Events);
        tracing::warn!(error = %e, "redis failed: {what} from this instance's memory");
    }

    /// Whether a stream's session exists: `None` when that cannot be known now (Redis away and
    /// not held here); a topic always does.
    async fn session_exists(&self, stream: &Stream) -> Option<bool> {
        match stream {
            Stream::Session(id) => self.sessions.exists(id).await,
            Stream::Topic(_) => Some(true),
        }
    }

    /// Appends an event (`data` is JSON text) and wakes its subscribers on every instance.
    pub async fn publish(
        &self,
        stream: &Stream,
        kind: &str,
        data: &str,
    ) -> Result<(Event, StateStore), EventsError> {
        // Unknown (Redis away): accepted; the event goes to this instance's ring.
        if self.session_exists(stream).await == Some(false) {
            return Err(EventsError::NoSession);
        }
        let key = self.key(stream);
        let retention = self.cfg.retention.as_millis() as u64;
        let channel = self.keys.events_channel();
        let out = if let Some(redis) = self.up() {
            match self
                .streams
                .add(
                    redis,
                    &key,
                    kind,
                    data,
                    self.cfg.max_len,
                    retention,
                    &channel,
                )
                .await
            {
                Ok(e) => Some((e, StateStore::Redis)),
                Err(e) => {
                    self.fell_back("event stream", &e);
                    None
                }
            }
        } else {
            None
        };
        let (event, store) = out.unwrap_or_else(|| {
            let now = self.sessions.clock().now_ms();
            (self.rings.add(&key, kind, data, now), StateStore::Memory)
        });
        self.metrics.state.event_published(store);
        self.hub.notify(&key);
        Ok((event, store))
    }

    /// The events after `after` (`None`: from the oldest retained), at most `count`.
    pub async fn read(&self, stream: &Stream, after: Option<&str>, count: usize) -> Batch {
        let key = self.key(stream);
        if let Some(redis) = self.up() {
            match self.streams.read(redis, &key, after, count).await {
                Ok(b) => return b,
                Err(e) => self.fell_back("events read", &e),
            }
        }
        let now = self.sessions.clock().now_ms();
        self.rings.read(&key, after, count, now)
    }

    /// The id of the newest event of a stream (`0-0` for none): where `from=now` starts.
    pub async fn tail(&self, stream: &Stream) -> String {
        let key = self.key(stream);
        if let Some(redis) = self.up() {
            if let Ok(id) = self.streams.tail(redis, &key).await {
                return id;
            }
        }
        self.rings.tail(&key)
    }

    /// A session is gone: its subscribers everywhere get `end`.
    pub async fn session_ended(&self, id: &SessionId) {
        let key = self.key(&Stream::Session(id.clone()));
        let mut ended = false;
        if let Some(redis) = self.up() {
            match self
                .streams
                .end(redis, &key, &self.keys.events_channel())
                .await
            {
                Ok(()) => ended = true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not end a session's stream in redis; its subscribers on other instances end at their next check")
                }
            }
        }
        if !ended {
            let now = self.sessions.clock().now_ms();
            self.rings.add(&key, END, "null", now);
        }
        self.hub.notify(&key);
    }

    /// A session was created: a stream left from an earlier session of the same id goes.
    pub async fn session_created(&self, id: &SessionId) {
        let key = self.key(&Stream::Session(id.clone()));
        if let Some(redis) = self.up() {
            let _ = self.streams.drop_stream(redis, &key).await;
        }
        self.rings.remove(&key);
    }

    /// Subscribes to a stream from after `after` (`None`: the oldest retained event).
    pub async fn subscribe(
        self: &Arc<Self>,
        stream: Stream,
        after: Option<String>,
    ) -> Result<Subscription, EventsError> {
        if self.session_exists(&stream).await == Some(false) {
            return Err(EventsError::NoSession);
        }
        let taken = self.subscribers.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.clone());
        self.metrics.state.sse_subscribers.inc();
        if taken >= self.cfg.max_subscribers {
            self.metrics.state.sse_refused.inc();
            return Err(EventsError::TooManySubscribers);
        }
        let (tx, rx) = mpsc::channel(self.cfg.subscriber_buffer);
        let cut = Arc::new(AtomicBool::new(false));
        let this = self.clone();
        let cut_flag = cut.clone();
        tokio::spawn(async move { this.feed(stream, after, tx, cut_flag).await });
        Ok(Subscription {
            rx,
            cut,
            last: None,
            _slot: slot,
        })
    }

    /// One subscriber's reader: reads what it has not seen whenever its stream is announced
    /// (and at every keep-alive, which also notices an expired session).
    async fn feed(
        self: Arc<Self>,
        stream: Stream,
        mut after: Option<String>,
        tx: mpsc::Sender<Item>,
        cut: Arc<AtomicBool>,
    ) {
        let key = self.key(&stream);
        let mut wake = self.hub.watch(&key);
        let mut closing = self.closing.subscribe();
        let mut tick = tokio::time::interval(self.cfg.keepalive);
        tick.tick().await;
        let send = |item: Item| {
            let tx = tx.clone();
            let slow_cut = self.cfg.slow_cut;
            async move { tx.send_timeout(item, slow_cut).await }
        };
        'feed: loop {
            wake.borrow_and_update();
            loop {
                let batch = self.read(&stream, after.as_deref(), BATCH).await;
                let full = batch.events.len() == BATCH;
                let mut items = Vec::with_capacity(batch.events.len() + 1);
                if let (true, Some(resume)) = (batch.gap, batch.resume) {
                    items.push(Item::Gap {
                        missed_after: after.clone().unwrap_or_default(),
                        resumed_after: resume.clone(),
                    });
                    after = Some(resume);
                }
                let mut ended = false;
                for e in batch.events {
                    after = Some(e.id.clone());
                    if e.kind == END {
                        ended = true;
                        items.push(Item::End);
                        break;
                    }
                    items.push(Item::Event(e));
                }
                for item in items {
                    let is_event = matches!(item, Item::Event(_));
                    match send(item).await {
                        Ok(()) if is_event => self.metrics.state.events_delivered.inc(),
                        Ok(()) => {}
                        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                            cut.store(true, Ordering::Release);
                            self.metrics.state.sse_cut.inc();
                            break 'feed;
                        }
                        Err(mpsc::error::SendTimeoutError::Closed(_)) => break 'feed,
                    }
                }
                if ended {
                    break 'feed;
                }
                if !full {
                    break;
                }
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tick.tick() => {
                    // Only a session known to be gone ends the stream, not a Redis hiccup.
                    if self.session_exists(&stream).await == Some(false) {
                        let _ = send(Item::End).await;
                        break;
                    }
                }
                _ = tx.closed() => break,
                _ = closing.changed() => break,
            }
        }
        drop(wake);
        self.hub.release(&key);
    }

    /// Ends every subscription of this instance (shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Listens to the announcements of every instance's adds and wakes the local subscribers,
    /// until shutdown. After any reconnect it wakes them all: announcements sent meanwhile were
    /// lost, the events were not.
    pub async fn listen(self: Arc<Self>, mut shutdown: Shutdown) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let channel = self.keys.events_channel();
        let mut backoff = Backoff::default();
        loop {
            let subscribed = match redis.pubsub().await {
                Ok(mut p) => p
                    .subscribe(&channel)
                    .await
                    .map(|()| p)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let pubsub = match subscribed {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "events subscription failed; retrying");
                    if !backoff.wait(&mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            self.hub.notify_all();
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    msg = messages.next() => match msg {
                        Some(m) => match std::str::from_utf8(m.get_payload_bytes()) {
                            Ok(key) => self.hub.notify(key),
                            Err(_) => tracing::debug!("ignoring a malformed events announcement"),
                        },
                        None => break,
                    },
                    _ = shutdown.recv() => return,
                }
            }
            tracing::warn!("events subscription lost; resubscribing");
        }
    }
}
