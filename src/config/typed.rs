//! Serde adapters for typed settings: durations kept under their integer `_ms`/`_secs` keys,
//! booleans spelled the way env vars are, addresses and regions parsed once, at load.
//!
//! Every check runs inside a visitor, so figment tags a refusal with the key and the source of
//! the value (a check after `deserialize` returns would lose the source).

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Serializer;

/// A whole number of units; `nonzero` refuses 0 with the same words as the old hand check.
struct Count {
    nonzero: bool,
}

impl Visitor<'_> for Count {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.nonzero {
            "an integer greater than 0"
        } else {
            "a non-negative integer"
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if self.nonzero && v == 0 {
            return Err(E::custom("must be greater than 0"));
        }
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }
}

fn count<'de, D: Deserializer<'de>>(d: D, nonzero: bool) -> Result<u64, D::Error> {
    d.deserialize_u64(Count { nonzero })
}

fn as_millis<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
}

fn as_secs<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.as_secs())
}

/// Declares a serde `with` module for a `Duration` kept under an integer key.
macro_rules! duration_module {
    ($(#[$doc:meta])* $name:ident, $write:ident, $from:path, nonzero: $nonzero:expr) => {
        $(#[$doc])*
        pub(super) mod $name {
            use super::*;
            pub(in crate::config) fn serialize<S: Serializer>(
                v: &Duration,
                s: S,
            ) -> Result<S::Ok, S::Error> {
                $write(v, s)
            }
            pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Duration, D::Error> {
                count(d, $nonzero).map($from)
            }
        }
    };
}

duration_module!(
    /// A `Duration` under a `*_ms` key; 0 allowed.
    millis, as_millis, Duration::from_millis, nonzero: false
);
duration_module!(
    /// A `Duration` under a `*_ms` key that must be greater than 0.
    nonzero_millis, as_millis, Duration::from_millis, nonzero: true
);
duration_module!(
    /// A `Duration` under a `*_secs` key (or a per-kind TTL in seconds); 0 allowed.
    secs, as_secs, Duration::from_secs, nonzero: false
);
duration_module!(
    /// A `Duration` under a `*_secs` key that must be greater than 0.
    nonzero_secs, as_secs, Duration::from_secs, nonzero: true
);

/// A value written as a string and parsed with `FromStr`; `refusal` words the error.
struct Parsed<T> {
    expecting: &'static str,
    refusal: fn(&str, String) -> String,
    _t: PhantomData<T>,
}

impl<T: FromStr> Visitor<'_> for Parsed<T>
where
    T::Err: fmt::Display,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|e: T::Err| E::custom((self.refusal)(v, e.to_string())))
    }
}

/// A listen address (`SocketAddr`), written `"127.0.0.1:8080"`.
pub(super) mod addr {
    use std::net::SocketAddr;

    use super::*;
    pub(in crate::config) fn serialize<S: Serializer>(
        v: &SocketAddr,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<SocketAddr, D::Error> {
        d.deserialize_str(Parsed {
            expecting: "an address like 127.0.0.1:8080",
            refusal: |raw, _| format!("{raw:?} is not an address like 127.0.0.1:8080"),
            _t: PhantomData,
        })
    }
}

/// A phone region (ISO 3166-1 alpha-2), written `"US"`.
pub(super) mod region {
    use crate::domain::Region;

    use super::*;
    pub(in crate::config) fn serialize<S: Serializer>(v: &Region, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Region, D::Error> {
        d.deserialize_str(Parsed {
            expecting: "an ISO 3166-1 alpha-2 region code",
            refusal: |_, e| e,
            _t: PhantomData,
        })
    }
}

/// Accepts `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case), as env vars are written.
pub(super) fn flexible_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean (true/false/1/0)")
        }
        fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            self.visit_i64(v.min(2) as i64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(E::invalid_value(Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}
