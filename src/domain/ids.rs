//! Typed UUID identifiers, so a lead id can never be passed where an organization id is meant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ParseError;

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of ", $what, ".")]
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
            sqlx::Type,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        #[schema(value_type = uuid::Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random (v4) id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // Accept only the hyphenated form: it is what we emit and what keys are built from.
                if s.len() != 36 {
                    return Err(ParseError(format!(
                        concat!("`{}` is not a valid ", $what, " id (expected a UUID)"),
                        truncate(s)
                    )));
                }
                Uuid::parse_str(s).map(Self).map_err(|_| {
                    ParseError(format!(
                        concat!("`{}` is not a valid ", $what, " id (expected a UUID)"),
                        truncate(s)
                    ))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

id_type!(OrgId, "an organization");
id_type!(LeadId, "a lead");
id_type!(ConversationId, "a conversation");

/// Client input echoed in an error message is cut short so a huge value cannot bloat the answer.
pub(crate) fn truncate(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hyphenated_uuid() {
        let id: LeadId = "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f".parse().unwrap();
        assert_eq!(id.to_string(), "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f");
    }

    #[test]
    fn uppercase_is_normalized() {
        let id: OrgId = "6F1C1C1E-8A43-4C43-9A8E-1B2B3C4D5E6F".parse().unwrap();
        assert_eq!(id.to_string(), "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f");
    }

    #[test]
    fn rejects_garbage_and_other_forms() {
        for bad in [
            "",
            "abc",
            "6f1c1c1e8a434c439a8e1b2b3c4d5e6f",
            "{6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6f}",
            "6f1c1c1e-8a43-4c43-9a8e-1b2b3c4d5e6g",
        ] {
            assert!(bad.parse::<LeadId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn long_input_is_truncated_in_the_message() {
        let err = "x".repeat(10_000).parse::<LeadId>().unwrap_err();
        assert!(err.0.len() < 200);
    }
}
