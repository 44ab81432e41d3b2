//! The call initiation: what a voice platform's call-start webhook needs, in one value. Each part
//! is a cached lookup; the body is assembled from the parts' cached bytes without re-encoding.
//! The HTTP API answers it as JSON with `x-cache`; a webhook adapter renders the same parts in
//! its platform's format.

use bytes::{BufMut, Bytes, BytesMut};

use crate::cache::{CacheStatus, Lookup};

/// The organization that was called, the caller's lead lookup (negative when the caller is not
/// one of its leads), and for a known caller the context and greeting lookups.
#[derive(Debug, Clone)]
pub struct Initiation {
    pub organization: Lookup,
    pub lead: Lookup,
    /// Context and greeting of a known caller (`None` for an unknown one).
    pub known: Option<KnownCaller>,
    /// The greeting for an unknown caller, rendered now: the lead is unknown, or it vanished
    /// between the parts (its greeting lookup came back negative).
    pub rendered_greeting: Option<Bytes>,
}

/// The parts only a known caller has.
#[derive(Debug, Clone)]
pub struct KnownCaller {
    pub context: Lookup,
    pub greeting: Lookup,
}

/// The least favourable of several statuses (a composite answer's `x-cache`). A stale part makes
/// the whole answer stale: that is what a caller must be told.
pub fn combine(a: CacheStatus, b: CacheStatus) -> CacheStatus {
    let rank = |s| match s {
        CacheStatus::HitL1 => 0,
        CacheStatus::HitL2 => 1,
        CacheStatus::Miss => 2,
        CacheStatus::Bypass => 3,
        CacheStatus::Stale => 4,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

impl Initiation {
    /// The parts that were answered (negative parts count for nothing but their own detail).
    fn answered(&self) -> impl Iterator<Item = &Lookup> {
        let extra = self
            .known
            .iter()
            .flat_map(|k| [&k.context, &k.greeting])
            .filter(|l| !l.entry.negative);
        [&self.organization, &self.lead].into_iter().chain(extra)
    }

    /// The least cached part's status.
    pub fn status(&self) -> CacheStatus {
        self.answered()
            .map(|l| l.status)
            .fold(CacheStatus::HitL1, combine)
    }

    /// Seconds since the oldest part was read from Postgres.
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        self.answered()
            .map(|l| l.entry.age_secs(now_ms))
            .max()
            .unwrap_or(0)
    }

    /// Each part's status (`x-cache-detail`).
    pub fn detail(&self) -> String {
        let mut detail = String::with_capacity(80);
        let mut part = |name: &str, l: &Lookup| {
            if !detail.is_empty() {
                detail.push_str(", ");
            }
            detail.push_str(name);
            detail.push('=');
            detail.push_str(l.status.as_str());
        };
        part("organization", &self.organization);
        part("lead", &self.lead);
        if let Some(k) = &self.known {
            part("context", &k.context);
            part("greeting", &k.greeting);
        }
        detail
    }

    /// `{"organization":…,"lead":…,"context":…,"greeting":…}` from the parts' bytes.
    pub fn body(&self) -> Bytes {
        let org = &self.organization.entry.body;
        let lead = &self.lead.entry.body;
        let mut body = BytesMut::with_capacity(org.len() + lead.len() * 4 + 256);
        body.put_slice(b"{\"organization\":");
        body.put_slice(org);
        match &self.known {
            None => body.put_slice(b",\"lead\":null,\"context\":null,\"greeting\":"),
            Some(k) => {
                body.put_slice(b",\"lead\":");
                body.put_slice(lead);
                body.put_slice(b",\"context\":");
                if k.context.entry.negative {
                    body.put_slice(b"null");
                } else {
                    body.put_slice(&k.context.entry.body);
                }
                body.put_slice(b",\"greeting\":");
                if !k.greeting.entry.negative {
                    body.put_slice(&k.greeting.entry.body);
                }
            }
        }
        if let Some(g) = &self.rendered_greeting {
            body.put_slice(g);
        }
        body.put_u8(b'}');
        body.freeze()
    }
}
