//! Cache keys, the kinds of data they name, tags that group dependents, and per-kind policies.
//!
//! A key is built once per request from parsed domain values; it carries the kind (for TTLs and
//! metric labels) and a precomputed hash used by L1 fencing.

use std::fmt;
use std::time::Duration;

use crate::domain::{Channel, LeadId, OrgId, PhoneNumber};
pub use crate::labels::Kind;

/// What the cache needs of a kind beyond its label: its key shape and its L1 generation slot.
impl Kind {
    /// The start of every key of this kind (after the namespace prefix).
    pub fn key_prefix(self) -> &'static str {
        match self {
            Kind::LeadByPhone => "lead:phone:",
            Kind::LeadById => "lead:id:",
            Kind::OrgByPhone => "org:phone:",
            Kind::OrgById => "org:id:",
            Kind::Context => "context:",
            Kind::Summary => "summary:",
            Kind::Greeting => "greeting:",
            Kind::History => "history:",
        }
    }

    /// Parses the label form (`lead_phone`, `context`, ...).
    pub fn parse(label: &str) -> Option<Self> {
        Kind::ALL.into_iter().find(|k| k.as_str() == label)
    }

    /// Hash of the kind's L1 generation slot (a space of its own, like tags').
    pub fn hash64(self) -> u64 {
        fnv1a_from(fnv1a(b"kind:"), self.as_str().as_bytes())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const UUID_LEN: usize = 36;

/// A key's text, built to its exact length without the formatting machinery (a key is built on
/// every lookup; `format!` was a twentieth of an L1 hit).
struct Text(String);

impl Text {
    fn new(prefix: &str, rest: usize) -> Self {
        let mut s = String::with_capacity(prefix.len() + rest);
        s.push_str(prefix);
        Text(s)
    }
    fn str(mut self, part: &str) -> Self {
        self.0.push_str(part);
        self
    }
    fn id(mut self, id: uuid::Uuid) -> Self {
        self.0
            .push_str(id.hyphenated().encode_lower(&mut [0u8; UUID_LEN]));
        self
    }
}

/// A cache key: the part after `{namespace}:v1:`, plus its kind and hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    kind: Kind,
    text: Box<str>,
    hash: u64,
}

impl CacheKey {
    fn new(kind: Kind, text: String) -> Self {
        let hash = fnv1a(text.as_bytes());
        CacheKey {
            kind,
            text: text.into_boxed_str(),
            hash,
        }
    }

    pub fn lead_by_phone(phone: &PhoneNumber, org: OrgId) -> Self {
        let text = Text::new("lead:phone:", phone.as_str().len() + 1 + UUID_LEN)
            .str(phone.as_str())
            .str(":")
            .id(org.0);
        Self::new(Kind::LeadByPhone, text.0)
    }
    pub fn lead_by_id(id: LeadId) -> Self {
        Self::new(Kind::LeadById, Text::new("lead:id:", UUID_LEN).id(id.0).0)
    }
    pub fn org_by_phone(phone: &PhoneNumber) -> Self {
        let text = Text::new("org:phone:", phone.as_str().len()).str(phone.as_str());
        Self::new(Kind::OrgByPhone, text.0)
    }
    pub fn org_by_id(id: OrgId) -> Self {
        Self::new(Kind::OrgById, Text::new("org:id:", UUID_LEN).id(id.0).0)
    }
    pub fn context(lead: LeadId) -> Self {
        Self::new(Kind::Context, Text::new("context:", UUID_LEN).id(lead.0).0)
    }
    pub fn summary(lead: LeadId) -> Self {
        Self::new(Kind::Summary, Text::new("summary:", UUID_LEN).id(lead.0).0)
    }
    pub fn greeting(lead: LeadId, channel: Channel) -> Self {
        let text = Text::new("greeting:", UUID_LEN + 1 + channel.as_str().len())
            .id(lead.0)
            .str(":")
            .str(channel.as_str());
        Self::new(Kind::Greeting, text.0)
    }
    pub fn history(lead: LeadId, limit: u32, offset: u32) -> Self {
        Self::new(Kind::History, format!("history:{lead}:{limit}:{offset}"))
    }

    /// Parses the text form back into a key (admin input, tests). `None` if it names no kind.
    pub fn parse(text: &str) -> Option<Self> {
        let kind = match text.split(':').next()? {
            "lead" if text.starts_with("lead:phone:") => Kind::LeadByPhone,
            "lead" if text.starts_with("lead:id:") => Kind::LeadById,
            "org" if text.starts_with("org:phone:") => Kind::OrgByPhone,
            "org" if text.starts_with("org:id:") => Kind::OrgById,
            "context" => Kind::Context,
            "summary" => Kind::Summary,
            "greeting" => Kind::Greeting,
            "history" => Kind::History,
            _ => return None,
        };
        Some(Self::new(kind, text.to_owned()))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// A stable 64-bit hash of the text (FNV-1a), computed once.
    pub fn hash64(&self) -> u64 {
        self.hash
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A group of entries dropped together: a family that cannot be enumerated (every history page
/// of a lead) or everything derived from an organization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tag {
    /// Context and greetings of the organization's leads (they embed its name, template, zone).
    Org(OrgId),
    /// Every `history:{lead}:{limit}:{offset}` page of one lead.
    History(LeadId),
}

impl Tag {
    /// The tag's name, as used in Redis keys.
    pub fn name(&self) -> String {
        match self {
            Tag::Org(id) => format!("org:{id}"),
            Tag::History(id) => format!("history:{id}"),
        }
    }

    /// Parses a name back into a tag (peer messages, admin input). `None` if it names none.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(id) = name.strip_prefix("org:") {
            return id.parse().ok().map(Tag::Org);
        }
        if let Some(id) = name.strip_prefix("history:") {
            return id.parse().ok().map(Tag::History);
        }
        None
    }

    /// Hash of the name, distinct from any key's hash space by a prefix.
    pub fn hash64(&self) -> u64 {
        fnv1a(format!("tag:{}", self.name()).as_bytes())
    }
}

/// FNV-1a: tiny, stable across processes and builds, good enough to spread keys over stripes.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a continued from `h`: `fnv1a_from(fnv1a(a), b) == fnv1a(a ++ b)`.
fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// How long entries of one kind live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Lifetime of a found value (before jitter).
    pub ttl: Duration,
    /// Lifetime of a not-found answer.
    pub negative_ttl: Duration,
    /// L1 keeps an entry at most this long (`min(ttl, l1_max_ttl)`).
    pub l1_max_ttl: Duration,
    /// Relative jitter applied to TTLs, e.g. 0.1 for ±10 %.
    pub jitter: f64,
    /// How long past its TTL a value is kept, to be served (marked stale) when a refresh fails.
    pub max_stale: Duration,
}

impl Policy {
    /// The TTL for a new entry, jittered so a warm-up does not expire all at once.
    pub fn ttl_for(&self, negative: bool) -> Duration {
        let base = if negative {
            self.negative_ttl
        } else {
            self.ttl
        };
        if self.jitter <= 0.0 {
            return base;
        }
        let factor = 1.0 + rand::random_range(-self.jitter..=self.jitter);
        base.mul_f64(factor.max(0.0))
    }
}

/// Policies for every kind, indexed by [`Kind::index`].
#[derive(Debug, Clone)]
pub struct Policies([Policy; 8]);

impl Policies {
    pub fn new(f: impl Fn(Kind) -> Policy) -> Self {
        Policies(Kind::ALL.map(f))
    }
    pub fn get(&self, kind: Kind) -> &Policy {
        &self.0[kind.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead() -> LeadId {
        "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f".parse().unwrap()
    }

    #[test]
    fn key_shapes_match_the_design_table() {
        let org: OrgId = "11111111-2222-3333-4444-555555555555".parse().unwrap();
        let phone = PhoneNumber::from_e164_unchecked("+15551234567");
        assert_eq!(
            CacheKey::lead_by_phone(&phone, org).as_str(),
            "lead:phone:+15551234567:11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(
            CacheKey::greeting(lead(), Channel::Sms).as_str(),
            "greeting:6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f:sms"
        );
        assert_eq!(
            CacheKey::history(lead(), 20, 40).as_str(),
            "history:6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f:20:40"
        );
    }

    #[test]
    fn parse_round_trips() {
        for key in [
            CacheKey::context(lead()),
            CacheKey::history(lead(), 1, 2),
            CacheKey::lead_by_id(lead()),
        ] {
            let back = CacheKey::parse(key.as_str()).unwrap();
            assert_eq!(back, key);
        }
        assert!(CacheKey::parse("nope:1").is_none());
        for tag in [Tag::Org(OrgId::new_random()), Tag::History(lead())] {
            assert_eq!(Tag::parse(&tag.name()), Some(tag));
        }
        assert!(Tag::parse("org:nope").is_none());
        assert!(Tag::parse("lead:x").is_none());
        assert!(CacheKey::parse("lead:x").is_none());
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = Policy {
            ttl: Duration::from_secs(100),
            negative_ttl: Duration::from_secs(10),
            l1_max_ttl: Duration::from_secs(60),
            jitter: 0.1,
            max_stale: Duration::from_secs(3600),
        };
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..2000 {
            let t = p.ttl_for(false).as_secs_f64();
            assert!((90.0..=110.0).contains(&t), "{t}");
            seen_low |= t < 95.0;
            seen_high |= t > 105.0;
        }
        assert!(seen_low && seen_high, "jitter should spread both ways");
        let n = p.ttl_for(true).as_secs_f64();
        assert!((9.0..=11.0).contains(&n));
    }
}
