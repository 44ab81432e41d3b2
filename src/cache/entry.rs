//! A cached value: the encoded JSON body plus a small header. The same bytes serve every hit, so
//! a hit does no serialization; the Redis form is the header and body in one binary string.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::domain::{LeadId, OrgId};

/// What a loader found in Postgres.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// The encoded JSON answer, its validator (already quoted, e.g. `"7"`), and the ids a
    /// composite answer needs of it.
    Found { body: Bytes, etag: String, ids: Ids },
    /// Nothing there: cached as a negative entry.
    NotFound,
}

/// The organization and lead a cached value is about, kept beside its bytes so that a composite
/// answer (a context's tag, the call initiation) never parses cached JSON to find them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ids {
    pub org: Option<OrgId>,
    pub lead: Option<LeadId>,
}

/// A cached answer. Its bytes are the Redis form (header, etag, body) in one buffer, built once
/// when the value is loaded; `body` and `etag` are slices of it, so an entry is one allocation,
/// an L1 hit copies nothing and a Redis fill sends the same buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The JSON body; empty for a negative entry.
    pub body: Bytes,
    /// The entity tag (quoted); empty for a negative entry.
    pub etag: Bytes,
    /// True when the lookup found nothing.
    pub negative: bool,
    /// When the value was read from Postgres (Unix ms); `age` counts from here.
    pub loaded_at_ms: u64,
    /// When the value stops being fresh (Unix ms).
    pub expires_at_ms: u64,
    /// The whole Redis form that `body` and `etag` point into.
    raw: Bytes,
}

/// Format 2 added the ids; a value of another format reads as a miss.
const MAGIC: &[u8; 3] = b"SC2";
/// Magic, flags, loaded-at, expires-at, organization id, lead id, etag length.
const HEADER: usize = 3 + 1 + 8 + 8 + 16 + 16 + 1;
/// Flag bits: a negative entry, and which ids are present.
const NEGATIVE: u8 = 1;
const HAS_ORG: u8 = 2;
const HAS_LEAD: u8 = 4;

impl Entry {
    /// Builds an entry for a value just loaded, fresh for `ttl`.
    pub fn from_loaded(loaded: Loaded, ttl: Duration) -> Self {
        let now = now_ms();
        let expires_at_ms = now.saturating_add(ttl.as_millis() as u64);
        let (etag, body, ids) = match &loaded {
            Loaded::Found { body, etag, ids } => (etag.as_bytes(), &body[..], *ids),
            Loaded::NotFound => (&b""[..], &b""[..], Ids::default()),
        };
        let mut flags = 0;
        if matches!(loaded, Loaded::NotFound) {
            flags |= NEGATIVE;
        }
        if ids.org.is_some() {
            flags |= HAS_ORG;
        }
        if ids.lead.is_some() {
            flags |= HAS_LEAD;
        }
        let etag = &etag[..etag.len().min(255)];
        let mut buf = BytesMut::with_capacity(HEADER + etag.len() + body.len());
        buf.put_slice(MAGIC);
        buf.put_u8(flags);
        buf.put_u64(now);
        buf.put_u64(expires_at_ms);
        buf.put_slice(&ids.org.map_or([0u8; 16], |o| o.0.into_bytes()));
        buf.put_slice(&ids.lead.map_or([0u8; 16], |l| l.0.into_bytes()));
        buf.put_u8(etag.len() as u8);
        buf.put_slice(etag);
        buf.put_slice(body);
        // Just built in the form `decode` reads: no need to check it again.
        let raw = buf.freeze();
        Entry {
            etag: raw.slice(HEADER..HEADER + etag.len()),
            body: raw.slice(HEADER + etag.len()..),
            negative: flags & NEGATIVE != 0,
            loaded_at_ms: now,
            expires_at_ms,
            raw,
        }
    }

    /// Time left until the entry stops being fresh (zero if already past).
    pub fn remaining(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(now_ms))
    }

    /// Within the last `fraction` of its lifetime at `now` (time to refresh it ahead).
    pub fn nearly_expired(&self, now_ms: u64, fraction: f64) -> bool {
        let life = self.expires_at_ms.saturating_sub(self.loaded_at_ms) as f64;
        (self.expires_at_ms.saturating_sub(now_ms) as f64) < life * fraction
    }

    /// Until when it may be served stale, given the kind's `max_stale`.
    pub fn stale_until(&self, max_stale: Duration) -> u64 {
        self.expires_at_ms
            .saturating_add(max_stale.as_millis() as u64)
    }

    /// Whole seconds since the value was read from Postgres (the `age` header).
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.loaded_at_ms) / 1000
    }

    /// The Redis form: `SC2`, flags, loaded-at, expires-at, organization and lead ids, etag
    /// length, etag, body.
    pub fn encode(&self) -> Bytes {
        self.raw.clone()
    }

    /// Parses the Redis form without copying the body. `None` for anything malformed (a value
    /// written by another version, or not by us), which the caller treats as a miss.
    pub fn decode(raw: Bytes) -> Option<Self> {
        if raw.len() < HEADER || &raw[..3] != MAGIC {
            return None;
        }
        let flags = raw[3];
        if flags & !(NEGATIVE | HAS_ORG | HAS_LEAD) != 0 {
            return None;
        }
        let loaded_at_ms = u64::from_be_bytes(raw[4..12].try_into().ok()?);
        let expires_at_ms = u64::from_be_bytes(raw[12..20].try_into().ok()?);
        let etag_len = usize::from(raw[HEADER - 1]);
        if raw.len() < HEADER + etag_len {
            return None;
        }
        let etag = raw.slice(HEADER..HEADER + etag_len);
        let body = raw.slice(HEADER + etag_len..);
        Some(Entry {
            body,
            etag,
            negative: flags & NEGATIVE != 0,
            loaded_at_ms,
            expires_at_ms,
            raw,
        })
    }

    /// The organization and lead it is about (none for a negative entry). Read from the
    /// header when asked: only composite answers need them, so a hit does not pay for them.
    pub fn ids(&self) -> Ids {
        let flags = self.raw[3];
        let uuid = |at: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&self.raw[at..at + 16]);
            uuid::Uuid::from_bytes(b)
        };
        Ids {
            org: (flags & HAS_ORG != 0).then(|| OrgId(uuid(20))),
            lead: (flags & HAS_LEAD != 0).then(|| LeadId(uuid(36))),
        }
    }

    /// Memory held by this entry: its buffer and itself (for the L1 weigher and byte gauges).
    pub fn weight(&self) -> usize {
        self.raw.len() + std::mem::size_of::<Self>()
    }
}

/// Wall-clock Unix time in milliseconds (entries are shared between processes via Redis).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_found_and_negative() {
        let e = Entry::from_loaded(
            Loaded::Found {
                body: Bytes::from_static(br#"{"a":1}"#),
                etag: "\"3\"".into(),
                ids: Ids::default(),
            },
            Duration::from_secs(10),
        );
        assert_eq!(Entry::decode(e.encode()).unwrap(), e);
        let n = Entry::from_loaded(Loaded::NotFound, Duration::from_secs(1));
        let back = Entry::decode(n.encode()).unwrap();
        assert!(back.negative && back.body.is_empty());
        assert_eq!(back, n);
    }

    #[test]
    fn ids_travel_with_the_bytes() {
        let ids = Ids {
            org: Some(OrgId::new_random()),
            lead: Some(LeadId::new_random()),
        };
        let e = Entry::from_loaded(
            Loaded::Found {
                body: Bytes::from_static(b"{}"),
                etag: "\"1\"".into(),
                ids,
            },
            Duration::from_secs(10),
        );
        let back = Entry::decode(e.encode()).unwrap();
        assert_eq!(back.ids(), ids);
        let only_org = Ids { lead: None, ..ids };
        let e = Entry::from_loaded(
            Loaded::Found {
                body: Bytes::from_static(b"{}"),
                etag: "\"1\"".into(),
                ids: only_org,
            },
            Duration::from_secs(10),
        );
        assert_eq!(Entry::decode(e.encode()).unwrap().ids(), only_org);
    }

    #[test]
    fn one_buffer_backs_body_etag_and_the_redis_form() {
        let e = Entry::from_loaded(
            Loaded::Found {
                body: Bytes::from_static(br#"{"a":1}"#),
                etag: "\"3\"".into(),
                ids: Ids::default(),
            },
            Duration::from_secs(10),
        );
        assert_eq!(&e.body[..], br#"{"a":1}"#);
        assert_eq!(&e.etag[..], b"\"3\"");
        let raw = e.encode();
        assert_eq!(raw.as_ptr(), e.raw.as_ptr(), "encoding copies nothing");
        assert!(raw.as_ptr_range().contains(&e.body.as_ptr()));
    }

    #[test]
    fn rejects_foreign_or_truncated_bytes() {
        assert!(Entry::decode(Bytes::from_static(b"hello")).is_none());
        assert!(Entry::decode(Bytes::new()).is_none());
        let e = Entry::from_loaded(
            Loaded::Found {
                body: Bytes::from_static(b"{}"),
                etag: "\"1\"".into(),
                ids: Ids::default(),
            },
            Duration::from_secs(10),
        );
        let enc = e.encode();
        assert!(Entry::decode(enc.slice(..HEADER + 1)).is_none());
        let mut bad = enc.to_vec();
        bad[3] = 8; // an unknown flag bit
        assert!(Entry::decode(Bytes::from(bad)).is_none());
    }

    #[test]
    fn age_and_remaining() {
        let e = Entry {
            loaded_at_ms: 1_000,
            expires_at_ms: 11_000,
            ..Entry::from_loaded(Loaded::NotFound, Duration::ZERO)
        };
        assert_eq!(e.age_secs(3_500), 2);
        assert_eq!(e.remaining(6_000), Duration::from_secs(5));
        assert_eq!(e.remaining(20_000), Duration::ZERO);
    }
}
