//! E.164 phone numbers. Every spelling of a number (`+15551234567`, `+1 (555) 123-4567`,
//! `(555) 123-4567` with default region US) becomes one canonical value, and therefore one cache
//! key.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;

use serde::{Serialize, Serializer};

use super::ids::truncate;

/// The region assumed for numbers written without a country code (`default_region` in config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region(phonenumber::country::Id);

impl FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<phonenumber::country::Id>()
            .map(Region)
            .map_err(|_| {
                format!("`{s}` is not an ISO 3166-1 alpha-2 region code (e.g. US, GB, DE)")
            })
    }
}

impl Default for Region {
    fn default() -> Self {
        Region(phonenumber::country::Id::US)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref())
    }
}

/// Why a phone number was refused; the message is safe to return to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid phone number: {reason}")]
pub struct PhoneError {
    input: String,
    reason: &'static str,
}

/// A phone number in E.164 form (`+` and up to 15 digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(Box<str>);

/// Longest raw input we hand to the parser; real numbers with punctuation fit easily.
const MAX_INPUT: usize = 40;

impl PhoneNumber {
    /// Parses any common spelling of a number; numbers without `+` use `region`.
    pub fn parse(raw: &str, region: Region) -> Result<Self, PhoneError> {
        let err = |reason| PhoneError {
            input: truncate(raw),
            reason,
        };
        let s = raw.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.len() > MAX_INPUT {
            return Err(err("it is too long"));
        }
        // The parser underneath has panicked on odd punctuation in the past, so only digits and
        // the usual separators reach it.
        let mut digits = 0usize;
        for (i, c) in s.char_indices() {
            match c {
                '0'..='9' => digits += 1,
                '+' if i == 0 => {}
                ' ' | '-' | '(' | ')' | '.' | '/' => {}
                _ => {
                    return Err(err(
                        "only digits, a leading `+` and the separators ` -().` are allowed",
                    ))
                }
            }
        }
        if !(4..=17).contains(&digits) {
            return Err(err("it must have between 4 and 15 digits"));
        }
        let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region.0), s))
            .map_err(|_| err("it could not be parsed"))?
            .map_err(|_| err("it could not be parsed"))?;
        let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
        let ok = e164.len() >= 5
            && e164.len() <= 16
            && e164.starts_with('+')
            && e164[1..].bytes().all(|b| b.is_ascii_digit());
        if !ok {
            return Err(err("it is not a possible E.164 number"));
        }
        Ok(PhoneNumber(e164.into_boxed_str()))
    }

    /// Parses a number from a query string, where form decoding has already turned a leading
    /// `+` into a space (`?caller=+1555…` arrives as ` 1555…`).
    pub fn parse_query_value(raw: &str, region: Region) -> Result<Self, PhoneError> {
        match raw.strip_prefix(' ') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                Self::parse(&format!("+{rest}"), region)
            }
            _ => Self::parse(raw, region),
        }
    }

    /// Wraps a number that is already canonical (read back from the database).
    pub fn from_e164_unchecked(e164: &str) -> Self {
        PhoneNumber(e164.into())
    }

    /// The canonical `+…` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Parses phone numbers for one default region and remembers recent spellings: webhooks ask
/// about the same numbers over and over, and a full parse costs about a microsecond, more than
/// the rest of an L1 hit's own work. Parsing is a pure function of the spelling, so a remembered
/// answer is always the right one.
#[derive(Debug)]
pub struct PhoneParser {
    region: Region,
    // A std RwLock: held for one lookup or insert, never across an await.
    seen: RwLock<HashMap<Box<str>, PhoneNumber>>,
}

/// Spellings remembered before the memory is cleared and starts again (a few MB at most).
const REMEMBERED: usize = 65_536;

impl PhoneParser {
    pub fn new(region: Region) -> Self {
        PhoneParser {
            region,
            seen: RwLock::new(HashMap::new()),
        }
    }

    pub fn region(&self) -> Region {
        self.region
    }

    /// [`PhoneNumber::parse`] with the parser's region, remembered.
    pub fn parse(&self, raw: &str) -> Result<PhoneNumber, PhoneError> {
        if let Some(p) = self.seen.read().unwrap_or_else(|p| p.into_inner()).get(raw) {
            return Ok(p.clone());
        }
        let parsed = PhoneNumber::parse(raw, self.region)?;
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(raw.into(), parsed.clone());
        Ok(parsed)
    }

    /// [`PhoneNumber::parse_query_value`] with the parser's region, remembered.
    pub fn parse_query_value(&self, raw: &str) -> Result<PhoneNumber, PhoneError> {
        match raw.strip_prefix(' ') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                self.parse(&format!("+{rest}"))
            }
            _ => self.parse(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_remembers_and_agrees_with_a_fresh_parse() {
        let parser = PhoneParser::new(Region::default());
        for raw in [
            "+15551234567",
            "(555) 123-4567",
            "+1 (555) 123-4567",
            "+44 20 7946 0958",
        ] {
            let fresh = PhoneNumber::parse(raw, Region::default()).unwrap();
            assert_eq!(parser.parse(raw).unwrap(), fresh, "{raw}");
            assert_eq!(parser.parse(raw).unwrap(), fresh, "{raw}, remembered");
        }
        assert!(parser.parse("not a phone").is_err());
        assert!(
            parser.parse("not a phone").is_err(),
            "errors are not remembered as numbers"
        );
        assert_eq!(
            parser.parse_query_value(" 15551234567").unwrap().as_str(),
            "+15551234567"
        );
        for i in 0..(REMEMBERED + 10) {
            parser.parse(&format!("+1555{i:07}")).unwrap();
        }
        assert!(parser.seen.read().unwrap().len() <= REMEMBERED, "bounded");
    }

    fn us(s: &str) -> Result<String, PhoneError> {
        PhoneNumber::parse(s, Region::default()).map(|p| p.to_string())
    }

    #[test]
    fn every_spelling_is_the_same_number() {
        for s in [
            "+15551234567",
            "+1 (555) 123-4567",
            "(555) 123-4567",
            "555.123.4567",
            "1-555-123-4567",
            "  +1 555 123 4567 ",
        ] {
            assert_eq!(us(s).unwrap(), "+15551234567", "{s}");
        }
    }

    #[test]
    fn other_regions() {
        assert_eq!(us("+44 20 7946 0958").unwrap(), "+442079460958");
        let gb: Region = "GB".parse().unwrap();
        assert_eq!(
            PhoneNumber::parse("020 7946 0958", gb).unwrap().as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn query_values_get_their_plus_back() {
        let p = PhoneNumber::parse_query_value(" 442079460958", Region::default()).unwrap();
        assert_eq!(p.as_str(), "+442079460958");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            " ",
            "abc",
            "+",
            "12",
            "++15551234567",
            "555-CALL-NOW",
            "  2 22#:",
            "+1 555 123 4567 ext 9",
            "1234567890123456789012",
            "%2B15551234567",
            "+687 11.11.11x",
        ] {
            assert!(us(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn region_codes() {
        assert!("US".parse::<Region>().is_ok());
        assert!("XX".parse::<Region>().is_err());
        assert!("usa".parse::<Region>().is_err());
    }

    #[test]
    fn never_panics_on_odd_input() {
        // Inputs shaped like the ones that crashed the parser upstream, plus separator soup.
        for s in [
            "  2 22#:",
            "+687 11.11.11",
            "003-836-4618",
            "((((((((((1))))))))))",
            "+0000000",
            "+1 ------------- 5",
            "...1.2.3.4...",
            "//////5555",
        ] {
            let _ = us(s);
        }
    }
}
