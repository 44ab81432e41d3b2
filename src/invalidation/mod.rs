//! What a change invalidates, and applying it.
//!
//! [`keys_for`] is the one rule (DESIGN §3), pure and table-tested. Write routes apply its
//! result through the tiered cache before they answer; the database listener and the admin API
//! will call the same function.

use std::sync::Arc;

use crate::cache::{CacheError, CacheKey, Deletion, Tag, Tiered};
use crate::domain::{Change, Channel, LeadId};
use crate::metrics::Metrics;

/// What a change touches: exact keys, and tags naming families of keys.
pub type Invalidation = Deletion;

/// Where a change was learned from (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// One of sidecache's own write routes.
    Write,
    /// The admin API.
    Admin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Write => "write",
            Source::Admin => "admin",
        }
    }
}

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

/// Applies invalidations to both tiers and counts them.
#[derive(Clone)]
pub struct Invalidator {
    cache: Arc<Tiered>,
    metrics: Arc<Metrics>,
}

impl Invalidator {
    pub fn new(cache: Arc<Tiered>, metrics: Arc<Metrics>) -> Self {
        Invalidator { cache, metrics }
    }

    /// Drops what `change` touches. L1 is always dropped before this returns; a Redis failure is
    /// queued for retry (L2 is bypassed meanwhile) and reported to the caller.
    pub async fn apply(&self, change: &Change, source: Source) -> Result<(), CacheError> {
        self.apply_invalidation(keys_for(change), source).await
    }

    pub async fn apply_invalidation(
        &self,
        inv: Invalidation,
        source: Source,
    ) -> Result<(), CacheError> {
        self.metrics
            .invalidations
            .with_label_values(&[source.as_str()])
            .inc();
        self.cache.invalidate(inv).await.map(|_| ())
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
