//! Names clients choose: session ids (a CallSid, a browser session id, `call:<id>`), topic
//! names and event types. Each is a short run of `[A-Za-z0-9._:-]`, checked once at the edge, so
//! a Redis key built from one cannot hold a space, a control character or a glob.

use std::fmt;
use std::str::FromStr;

use super::ParseError;

/// True if `s` is 1–`max` characters of `[A-Za-z0-9._:-]`.
fn well_formed(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// At most 40 characters of a bad value, for an error message.
fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(40).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t.escape_debug().to_string()
}

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $what:literal, $max:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The longest one accepted.
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                if well_formed(s, $max) {
                    Ok($name(s.to_owned()))
                } else {
                    Err(ParseError(format!(
                        concat!("`{}` is not a valid ", $what, ": use 1-", $max,
                            " characters of A-Z, a-z, 0-9 and . _ : -"),
                        shown(s)
                    )))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A session's id: 1–128 characters of `[A-Za-z0-9._:-]`.
    SessionId, "session id", 128
);
name_type!(
    /// A topic's name (team or user notifications, broadcasts): as a session id.
    TopicName, "topic name", 128
);
name_type!(
    /// An event's type: 1–64 characters of `[A-Za-z0-9._:-]`.
    EventType, "event type", 64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids() {
        for good in [
            "a",
            "CA1234567890abcdef",
            "call:abc-1.2_3",
            &"x".repeat(128),
        ] {
            assert_eq!(good.parse::<SessionId>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            " a",
            "a b",
            "a/b",
            "a*",
            "é",
            "a\n",
            &"x".repeat(129),
            "{tag}",
        ] {
            let e = bad.parse::<SessionId>().unwrap_err();
            assert!(e.0.contains("not a valid session id"), "{bad}: {e}");
        }
    }

    #[test]
    fn event_types_are_shorter() {
        assert!("transcript.line".parse::<EventType>().is_ok());
        assert!("x".repeat(64).parse::<EventType>().is_ok());
        assert!("x".repeat(65).parse::<EventType>().is_err());
        assert!("a b".parse::<TopicName>().is_err());
    }

    #[test]
    fn errors_show_a_short_escaped_value() {
        let e = format!("{}\u{7}", "y".repeat(60))
            .parse::<SessionId>()
            .unwrap_err();
        assert!(e.0.contains(&format!("`{}…`", "y".repeat(40))), "{e}");
    }
}
