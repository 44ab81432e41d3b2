//! Closed sets of values: channels, directions and lead statuses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ids::truncate;
use super::ParseError;

macro_rules! closed_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable lowercase label (wire format, database value and cache-key part).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(ParseError(format!(
                        concat!("`{}` is not a valid ", $what, " (expected one of: {})"),
                        truncate(s),
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_enum!(
    /// The medium of a conversation, and the channel a greeting is phrased for.
    Channel, "channel", {
        Voice => "voice",
        Sms => "sms",
        Email => "email",
        Chat => "chat",
        Whatsapp => "whatsapp",
    }
);

closed_enum!(
    /// Who started a conversation.
    Direction, "direction", {
        Inbound => "inbound",
        Outbound => "outbound",
    }
);

closed_enum!(
    /// Where a lead stands in the funnel.
    LeadStatus, "lead status", {
        New => "new",
        Contacted => "contacted",
        Qualified => "qualified",
        Customer => "customer",
        Lost => "lost",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_value() {
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), *c);
        }
        for s in LeadStatus::ALL {
            assert_eq!(s.as_str().parse::<LeadStatus>().unwrap(), *s);
        }
        for d in Direction::ALL {
            assert_eq!(d.as_str().parse::<Direction>().unwrap(), *d);
        }
    }

    #[test]
    fn rejects_unknown_and_wrong_case() {
        assert!("Voice".parse::<Channel>().is_err());
        assert!("fax".parse::<Channel>().is_err());
        assert!("".parse::<LeadStatus>().is_err());
        let msg = "pigeon".parse::<Channel>().unwrap_err().0;
        assert!(msg.contains("voice, sms, email, chat, whatsapp"), "{msg}");
    }
}
