//! What a change invalidates, and applying it.
//!
//! [`keys_for`] is the one rule (DESIGN §3), pure and table-tested. Every source of changes
//! applies its result through the [`Invalidator`]:
//! - a write route, before it answers: Redis (marking the transaction as handled), then L1, then
//!   the peers over the [`bus`];
//! - the change [`listener`] (Postgres outbox): Redis unless someone already did, then L1;
//! - a peer's bus message: L1 only (the origin dropped Redis);
//! - the admin API: L1, Redis, peers.

pub mod bus;
pub mod listener;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::{
    now_ms, CacheError, CacheKey, Deletion, Dropped, Kind, Marker, ResetCause, Tag, Tiered,
};
use crate::domain::{Change, Channel, Commit, LeadId, TxId};
use crate::metrics::Metrics;
use crate::store::outbox::OutboxChange;

pub use bus::{Bus, BusConfig, BusSender};
pub use listener::{Listener, ListenerConfig};

/// What a change touches: exact keys, and tags naming families of keys.
pub type Invalidation = Deletion;

use crate::labels::OutboxAction;
pub use crate::labels::Source;

fn push_unique(keys: &mut Vec<CacheKey>, key: CacheKey) {
    if !keys.contains(&key) {
        keys.push(key);
    }
}

/// Everything derived from one lead: context, summary, a greeting per channel, and (by tag) every
/// history page.
fn lead_dependents(lead: LeadId, keys: &mut Vec<CacheKey>, tags: &mut Vec<Tag>) {
    keys.push(CacheKey::context(lead));
    keys.push(CacheKey::summary(lead));
    keys.extend(Channel::ALL.iter().map(|c| CacheKey::greeting(lead, *c)));
    tags.push(Tag::History(lead));
}

/// The keys and tags a committed change makes stale. Old and new values both count: a phone
/// change drops the entry under the old number and the (possibly negative) one under the new.
pub fn keys_for(change: &Change) -> Invalidation {
    let mut keys = Vec::new();
    let mut tags = Vec::new();
    match change {
        Change::Organization {
            id,
            old_phone,
            new_phone,
            ..
        } => {
            keys.push(CacheKey::org_by_id(*id));
            for p in [old_phone, new_phone].into_iter().flatten() {
                push_unique(&mut keys, CacheKey::org_by_phone(p));
            }
            // Its leads' context and greetings embed the organization: dropped by tag.
            tags.push(Tag::Org(*id));
        }
        Change::Lead {
            id,
            org,
            old_phone,
            new_phone,
            ..
        } => {
            keys.push(CacheKey::lead_by_id(*id));
            for p in [old_phone, new_phone].into_iter().flatten() {
                push_unique(&mut keys, CacheKey::lead_by_phone(p, *org));
            }
            lead_dependents(*id, &mut keys, &mut tags);
        }
        Change::Conversation { lead, .. } => lead_dependents(*lead, &mut keys, &mut tags),
    }
    Invalidation { keys, tags }
}

/// Transactions recently handled on this instance: by its own write routes (everything), or by a
/// peer's bus message (L1 only). The change listener consults it so it does not drop the same
/// keys again when their outbox rows arrive. Entries are forgotten after [`RECENT_FOR`].
#[derive(Debug, Default)]
struct Handled {
    // A std Mutex: nothing is awaited while it is held.
    map: Mutex<HashMap<TxId, Instant>>,
}

const RECENT_FOR: Duration = Duration::from_secs(300);

impl Handled {
    fn note(&self, txid: TxId) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 4096 {
            map.retain(|_, at| at.elapsed() < RECENT_FOR);
        }
        map.insert(txid, Instant::now());
    }

    fn contains(&self, txid: TxId) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&txid).is_some_and(|at| at.elapsed() < RECENT_FOR)
    }

    /// Waits up to `patience` for `txid` to be noted.
    async fn wait_for(&self, txid: TxId, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            if self.contains(txid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How long the listener waits for this instance's write route to claim a transaction whose
/// outbox rows it wrote. The route claims it as soon as the statement returns; a claim that
/// does not come means the write failed after committing (the client was told it failed), and
/// the listener invalidates in its stead.
const OWN_WRITE_PATIENCE: Duration = Duration::from_millis(200);

/// Applies invalidations from every source to the tiers and the peers, and counts them.
#[derive(Clone)]
pub struct Invalidator {
    cache: Arc<Tiered>,
    metrics: Arc<Metrics>,
    bus: Option<BusSender>,
    own_handled: Arc<Handled>,
    peer_handled: Arc<Handled>,
    /// The `application_name` of this instance's pool: outbox rows written under it come from
    /// this instance's write routes, which invalidate before they answer.
    origin: String,
}

impl Invalidator {
    pub fn new(
        cache: Arc<Tiered>,
        metrics: Arc<Metrics>,
        bus: Option<BusSender>,
        origin: &str,
    ) -> Self {
        Invalidator {
            cache,
            metrics,
            bus,
            own_handled: Arc::new(Handled::default()),
            peer_handled: Arc::new(Handled::default()),
            origin: origin.to_owned(),
        }
    }

    pub fn cache(&self) -> &Arc<Tiered> {
        &self.cache
    }

    fn count(&self, source: Source) {
        self.metrics.invalidation(source);
    }

    fn lag(&self, source: Source, seconds: f64) {
        self.metrics.invalidation_lag(source, seconds);
    }

    /// A write route's commit, before it answers: Redis (marking the transaction as handled
    /// there), then L1, then the peers. L1 is always dropped before this returns; a Redis failure
    /// is owed and retried (L2 is bypassed meanwhile) and reported to the caller.
    pub async fn commit(&self, commit: &Commit, committed_at: Instant) -> Result<(), CacheError> {
        self.count(Source::Write);
        self.own_handled.note(commit.txid);
        let inv = keys_for(&commit.change);
        // Peers are told after Redis: told first, they could refill their L1 from the old L2.
        let peers = self.bus.as_ref().map(|_| inv.clone());
        let remote = self.cache.invalidate(inv, Marker::Write(commit.txid)).await;
        if let (Some(bus), Some(inv)) = (&self.bus, peers) {
            // The transaction id tells a peer's listener it need not drop L1 again; that is only
            // true if Redis no longer holds the old value (else the peer may refill its L1 from
            // it, and its listener must drop it once more, after fixing Redis).
            let txid = remote.is_ok().then_some(commit.txid);
            bus.send(txid, inv);
        }
        self.lag(Source::Write, committed_at.elapsed().as_secs_f64());
        remote.map(|_| ())
    }

    /// The changes of one committed transaction, read from the outbox. Parts that this instance
    /// (or, for Redis, anyone) already dropped are skipped: its own writes entirely once their
    /// write route claimed them (it runs the invalidation to the end, even if the client hangs
    /// up), L1 when a peer's message already dropped it, Redis when another instance's marker
    /// says it is done.
    pub async fn replay(&self, txid: TxId, changes: &[OutboxChange]) -> Result<(), CacheError> {
        let Some(first) = changes.first() else {
            return Ok(());
        };
        let rows = changes.len() as u64;
        let own = changes
            .iter()
            .all(|c| c.origin.as_deref() == Some(self.origin.as_str()));
        if own && self.own_handled.wait_for(txid, OWN_WRITE_PATIENCE).await {
            self.metrics.outbox_rows(OutboxAction::OwnWrite, rows);
            return Ok(());
        }
        self.count(Source::Notify);
        let mut inv = Invalidation::default();
        for c in changes {
            let one = keys_for(&c.change);
            for k in one.keys {
                push_unique(&mut inv.keys, k);
            }
            for t in one.tags {
                if !inv.tags.contains(&t) {
                    inv.tags.push(t);
                }
            }
        }
        let last = changes.iter().map(|c| c.id).max().unwrap_or(first.id);
        let marker = Marker::Replay {
            txid,
            group: format!("{}-{last}", first.id),
        };
        // Redis before L1, as in `Tiered::invalidate`.
        let local = (!self.peer_handled.contains(txid)).then(|| inv.clone());
        let remote = self.cache.invalidate_remote(inv, marker).await;
        if let Some(inv) = local {
            self.cache.invalidate_local(&inv).await;
        }
        let action = match remote {
            Ok(Some(Dropped::AlreadyApplied)) => OutboxAction::AlreadyApplied,
            _ => OutboxAction::Applied,
        };
        self.metrics.outbox_rows(action, rows);
        self.lag(
            Source::Notify,
            (now_ms() as f64 - first.created_ms) / 1000.0,
        );
        remote.map(|_| ())
    }

    /// A peer's message: its keys leave L1 (the peer already dropped them from Redis).
    pub async fn peer(&self, txid: Option<TxId>, inv: &Invalidation, sent_at_ms: u64) {
        self.count(Source::Peer);
        if let Some(txid) = txid {
            self.peer_handled.note(txid);
        }
        self.cache.invalidate_local(inv).await;
        self.lag(
            Source::Peer,
            now_ms().saturating_sub(sent_at_ms) as f64 / 1000.0,
        );
    }

    /// An operator's purge of whole kinds: Redis (by the kind's fence and a SCAN of this
    /// namespace for its prefix), then L1 (by the kind's generation), then the peers. Returns the
    /// Redis values dropped.
    pub async fn admin_kinds(&self, kinds: &[Kind]) -> Result<u64, CacheError> {
        self.count(Source::Admin);
        let mut dropped = 0;
        let mut failed = None;
        for kind in kinds {
            if let Some(remote) = self.cache.remote() {
                match remote.invalidate_kind(*kind).await {
                    Ok(n) => dropped += n,
                    Err(e) => failed = Some(e),
                }
            }
            self.cache.local().invalidate_kind(*kind);
        }
        if let Some(bus) = &self.bus {
            bus.send_admin(kinds.to_vec(), false);
        }
        failed.map_or(Ok(dropped), Err)
    }

    /// An operator's flush: this namespace in Redis, this instance's L1, and every peer's L1.
    /// Returns the Redis keys removed.
    pub async fn flush_all(&self) -> Result<u64, CacheError> {
        self.count(Source::Admin);
        let removed = match self.cache.reset(ResetCause::Admin).await {
            Ok(()) => self.cache.sweep().await,
            Err(e) => Err(e),
        };
        if let Some(bus) = &self.bus {
            bus.send_admin(Vec::new(), true);
        }
        removed
    }

    /// An operator's invalidation: both tiers, then the peers.
    pub async fn admin(&self, inv: Invalidation) -> Result<Option<Dropped>, CacheError> {
        self.count(Source::Admin);
        let peers = self.bus.as_ref().map(|_| inv.clone());
        let dropped = self.cache.invalidate(inv, Marker::None).await;
        if let (Some(bus), Some(inv)) = (&self.bus, peers) {
            bus.send(None, inv);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ConversationId, Op, OrgId, PhoneNumber};

    fn texts(inv: &Invalidation) -> (Vec<String>, Vec<String>) {
        let mut k: Vec<String> = inv.keys.iter().map(|k| k.as_str().to_owned()).collect();
        let mut t: Vec<String> = inv.tags.iter().map(Tag::name).collect();
        k.sort();
        t.sort();
        (k, t)
    }

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    const L: &str = "00000000-0000-4000-8000-00000000000a";
    const O: &str = "00000000-0000-4000-8000-00000000000b";
    const C: &str = "00000000-0000-4000-8000-00000000000c";

    fn lead_derived() -> Vec<String> {
        let mut v = vec![format!("context:{L}"), format!("summary:{L}")];
        v.extend(
            ["voice", "sms", "email", "chat", "whatsapp"].map(|c| format!("greeting:{L}:{c}")),
        );
        v
    }

    #[test]
    fn the_table() {
        let lead: LeadId = L.parse().unwrap();
        let org: OrgId = O.parse().unwrap();
        let conv: ConversationId = C.parse().unwrap();
        let p1 = Some(PhoneNumber::from_e164_unchecked("+15550000001"));
        let p2 = Some(PhoneNumber::from_e164_unchecked("+15550000002"));

        struct Case {
            name: &'static str,
            change: Change,
            keys: Vec<String>,
            tags: Vec<&'static str>,
        }
        let with = |extra: &[String]| {
            let mut v = lead_derived();
            v.extend_from_slice(extra);
            v
        };
        let cases = vec![
            Case {
                name: "lead created drops the negative entry for its phone",
                change: Change::Lead {
                    id: lead,
                    org,
                    op: Op::Insert,
                    old_phone: None,
                    new_phone: p1.clone(),
                },
                keys: with(&[
                    format!("lead:id:{L}"),
                    format!("lead:phone:+15550000001:{O}"),
                ]),
                tags: vec!["history"],
            },
            Case {
                name: "lead phone changed drops old and new phone",
                change: Change::Lead {
                    id: lead,
                    org,
                    op: Op::Update,
                    old_phone: p1.clone(),
                    new_phone: p2.clone(),
                },
                keys: with(&[
                    format!("lead:id:{L}"),
                    format!("lead:phone:+15550000001:{O}"),
                    format!("lead:phone:+15550000002:{O}"),
                ]),
                tags: vec!["history"],
            },
            Case {
                name: "lead updated, same phone, one phone key",
                change: Change::Lead {
                    id: lead,
                    org,
                    op: Op::Update,
                    old_phone: p1.clone(),
                    new_phone: p1.clone(),
                },
                keys: with(&[
                    format!("lead:id:{L}"),
                    format!("lead:phone:+15550000001:{O}"),
                ]),
                tags: vec!["history"],
            },
            Case {
                name: "lead deleted drops its old phone",
                change: Change::Lead {
                    id: lead,
                    org,
                    op: Op::Delete,
                    old_phone: p1.clone(),
                    new_phone: None,
                },
                keys: with(&[
                    format!("lead:id:{L}"),
                    format!("lead:phone:+15550000001:{O}"),
                ]),
                tags: vec!["history"],
            },
            Case {
                name: "conversation created drops the lead's derived data only",
                change: Change::Conversation {
                    id: conv,
                    lead,
                    org,
                    op: Op::Insert,
                },
                keys: lead_derived(),
                tags: vec!["history"],
            },
            Case {
                name: "conversation updated, same",
                change: Change::Conversation {
                    id: conv,
                    lead,
                    org,
                    op: Op::Update,
                },
                keys: lead_derived(),
                tags: vec!["history"],
            },
            Case {
                name: "organization phone changed drops both phones and its dependents by tag",
                change: Change::Organization {
                    id: org,
                    op: Op::Update,
                    old_phone: p1.clone(),
                    new_phone: p2.clone(),
                },
                keys: vec![
                    format!("org:id:{O}"),
                    "org:phone:+15550000001".into(),
                    "org:phone:+15550000002".into(),
                ],
                tags: vec!["org"],
            },
            Case {
                name: "organization created drops the negative entry for its phone",
                change: Change::Organization {
                    id: org,
                    op: Op::Insert,
                    old_phone: None,
                    new_phone: p1.clone(),
                },
                keys: vec![format!("org:id:{O}"), "org:phone:+15550000001".into()],
                tags: vec!["org"],
            },
        ];
        for case in cases {
            let (keys, tags) = texts(&keys_for(&case.change));
            let mut want = case.keys.clone();
            want.sort();
            assert_eq!(keys, want, "{}", case.name);
            let want_tags: Vec<String> = case
                .tags
                .iter()
                .map(|t| match *t {
                    "history" => format!("history:{L}"),
                    _ => format!("org:{O}"),
                })
                .collect();
            assert_eq!(
                tags,
                sorted(&want_tags.iter().map(String::as_str).collect::<Vec<_>>()),
                "{}",
                case.name
            );
        }
    }
}
