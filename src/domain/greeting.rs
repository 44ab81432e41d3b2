//! Greeting templates: `{first_name}`, `{org_name}` and `{time_of_day}` filled in, the time of day
//! taken in the organization's time zone.

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;

/// What a caller with no known first name is called.
pub const UNKNOWN_FIRST_NAME: &str = "there";

/// morning (05:00–11:59), afternoon (12:00–16:59) or evening, in `tz`.
pub fn time_of_day(now: DateTime<Utc>, tz: Tz) -> &'static str {
    match now.with_timezone(&tz).hour() {
        5..=11 => "morning",
        12..=16 => "afternoon",
        _ => "evening",
    }
}

/// Fills a template. Unknown placeholders are left as written.
pub fn render(
    template: &str,
    first_name: Option<&str>,
    org_name: &str,
    tz: Tz,
    now: DateTime<Utc>,
) -> String {
    let first = first_name
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(UNKNOWN_FIRST_NAME);
    template
        .replace("{first_name}", first)
        .replace("{org_name}", org_name)
        .replace("{time_of_day}", time_of_day(now, tz))
}

/// Parses an IANA zone name, falling back to UTC for a value that is not one (writes refuse
/// such values, so this only matters for rows written behind sidecache's back).
pub fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn fills_placeholders_in_the_org_zone() {
        // 15:00 UTC is 10:00 in New York (EST) and 00:00 in Tokyo.
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 15, 0, 0).unwrap();
        let t = "Good {time_of_day}, {first_name}! Thanks for calling {org_name}.";
        assert_eq!(
            render(t, Some("Ada"), "Acme", zone("America/New_York"), now),
            "Good morning, Ada! Thanks for calling Acme."
        );
        assert_eq!(
            render(t, None, "Acme", zone("Asia/Tokyo"), now),
            "Good evening, there! Thanks for calling Acme."
        );
        assert_eq!(
            render(t, Some("  "), "Acme", zone("UTC"), now),
            "Good afternoon, there! Thanks for calling Acme."
        );
    }

    #[test]
    fn unknown_zone_is_utc_and_unknown_placeholders_stay() {
        let now = Utc.with_ymd_and_hms(2026, 1, 15, 20, 0, 0).unwrap();
        assert_eq!(
            render("{x} {time_of_day}", None, "A", zone("Mars/Base"), now),
            "{x} evening"
        );
    }
}
